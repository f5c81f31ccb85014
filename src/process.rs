//! Child-process exit watching with a pidfd: no SIGCHLD handler, no thread.
//!
//! The loop opens a pidfd for each child it spawns and watches it for
//! reading; the kernel makes it readable once the child has exited, and the
//! watcher reaps the child then (`waitpid`, `WNOHANG`) and schedules the
//! callback with its return code as asyncio computes it. Where there are no
//! pidfds (macOS, the BSDs, a `portable` build) `watch_child` says so and
//! the Python side waits for the child with a thread.

use crate::engine::{Engine, GilCell, NativeWatcher, Side, Traverse, Watcher};
use crate::errors::{asyncio_log, os_error};
use crate::sys;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::IntoPyDict;
use pyo3::PyTraverseError;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::OnceLock;

/// What asyncio reports when a child's status was reaped elsewhere.
const UNKNOWN_STATUS: i32 = 255;

/// One child's pidfd and the callback its return code goes to.
#[pyclass(frozen, module = "oxloop._oxloop", name = "ChildWatch")]
pub struct ChildWatch {
    engine: Py<Engine>,
    /// Closed once the child is reaped (the watch itself may live on).
    pidfd: GilCell<Option<OwnedFd>>,
    pid: libc::pid_t,
    callback: Py<PyAny>,
    /// The context the callback runs in.
    context: Py<PyAny>,
    /// Set once the child is reaped.
    returncode: OnceLock<i32>,
}

impl NativeWatcher for ChildWatch {
    fn on_ready(slf: &Bound<'_, Self>, _side: Side) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let engine = this.engine.bind(py);
        let Some(fd) = this.pidfd.lock().as_ref().map(AsRawFd::as_raw_fd) else {
            return Ok(());
        };
        let returncode = match reap(this.pid) {
            Ok(None) => return Ok(()),
            Ok(Some(code)) => code,
            Err(_) => {
                asyncio_log(
                    py,
                    intern!(py, "warning"),
                    (
                        "child process pid %d exit status already read:  will report returncode 255",
                        this.pid,
                    ),
                )?;
                UNKNOWN_STATUS
            }
        };
        let _ = this.returncode.set(returncode);
        drop(engine.get().set_watcher(py, fd, Side::Read, None)?);
        let closed = this.pidfd.lock().take();
        drop(closed);
        let kwargs = [(intern!(py, "context"), this.context.bind(py))].into_py_dict(py)?;
        engine
            .call_method(
                intern!(py, "call_soon"),
                (this.callback.bind(py), returncode),
                Some(&kwargs),
            )
            .map(drop)
    }
}

#[pymethods]
impl ChildWatch {
    /// The child's return code once this watch has reaped it, else None
    /// (also when the loop closed first: the child is then the caller's to wait for).
    #[getter]
    fn returncode(&self) -> Option<i32> {
        self.returncode.get().copied()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        (&self.engine, &self.callback, &self.context).traverse(&visit)
    }
}

/// Reaps `pid` if it has exited: its return code as
/// `os.waitstatus_to_exitcode` gives it (`-signum` when a signal killed it).
fn reap(pid: libc::pid_t) -> io::Result<Option<i32>> {
    let mut status = 0;
    // SAFETY: waitpid writes the status through a live pointer.
    let got = match sys::check(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) }) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return reap(pid),
        got => got?,
    };
    if got == 0 {
        return Ok(None);
    }
    Ok(Some(if libc::WIFSIGNALED(status) {
        -libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }))
}

/// `pidfd_open(2)`, without flags: the fd is only polled (`PIDFD_NONBLOCK`
/// would need Linux 5.10, and EINVAL before it); pidfds are close-on-exec.
#[cfg(linux_native)]
fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall; it returns a new fd or -1.
    let fd = sys::check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just gave us this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// No pidfds here (macOS, the BSDs, a `portable` build): ENOSYS, which makes
/// [`watch_child`] leave the child to the thread watcher.
#[cfg(not(linux_native))]
fn pidfd_open(_pid: libc::pid_t) -> io::Result<OwnedFd> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// Calls `callback(returncode)` in `context` on `loop` once the child `pid`
/// has exited, reaping it; returns the watch. None when the platform or the
/// kernel has no pidfds (the caller then needs another way to wait); OSError when `pid`
/// is no child of ours.
#[pyfunction]
pub fn watch_child<'py>(
    loop_: &Bound<'py, PyAny>,
    pid: libc::pid_t,
    callback: Py<PyAny>,
    context: Py<PyAny>,
) -> PyResult<Option<Bound<'py, ChildWatch>>> {
    let engine = loop_.cast::<Engine>()?;
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => return Ok(None),
        Err(e) => return Err(os_error(e)),
    };
    let fd = pidfd.as_raw_fd();
    let watch = ChildWatch {
        engine: engine.clone().unbind(),
        pidfd: GilCell::new(Some(pidfd)),
        pid,
        callback,
        context,
        returncode: OnceLock::new(),
    };
    let watch = Bound::new(loop_.py(), watch)?;
    drop(
        engine
            .get()
            .set_watcher(loop_.py(), fd, Side::Read, Some(Watcher::native(&watch)?))?,
    );
    Ok(Some(watch))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child the test reaps itself (through `reap`, the code under test).
    #[allow(clippy::zombie_processes)]
    fn spawn(code: &str) -> libc::pid_t {
        let child = std::process::Command::new("sh")
            .args(["-c", code])
            .spawn()
            .expect("sh runs");
        child.id() as libc::pid_t
    }

    #[cfg(linux_native)]
    fn wait_readable(fd: &OwnedFd) {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 10_000) }, 1);
    }

    #[cfg(linux_native)]
    #[test]
    fn a_pidfd_turns_readable_at_exit_and_reaping_gives_the_return_code() {
        for (code, expected) in [("exit 3", 3), ("kill -TERM $$", -libc::SIGTERM)] {
            let pid = spawn(code);
            let fd = pidfd_open(pid).expect("pidfds work on this kernel");
            wait_readable(&fd);
            assert_eq!(reap(pid).unwrap(), Some(expected));
            assert_eq!(reap(pid).unwrap_err().raw_os_error(), Some(libc::ECHILD));
        }
    }

    #[test]
    fn a_running_child_is_not_reaped() {
        let pid = spawn("sleep 5");
        assert_eq!(reap(pid).unwrap(), None);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let reaped = std::iter::repeat_with(|| {
            std::thread::sleep(std::time::Duration::from_millis(1));
            reap(pid).unwrap()
        });
        assert_eq!(reaped.flatten().next(), Some(-libc::SIGKILL));
    }
}
