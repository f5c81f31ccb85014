//! A backend that waits on a `selectors.BaseSelector`: the one the user
//! passed to `SelectorEventLoop(selector)`, or, where epoll is not the
//! backend, `selectors.DefaultSelector()`. The only backend that touches
//! Python.

use super::waker::Waker;
use super::{Backend, Event, Interest, UnlockedWait};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

/// `selectors.EVENT_READ` and `selectors.EVENT_WRITE`.
const EVENT_READ: u8 = 1;
const EVENT_WRITE: u8 = 2;

/// A selector with the waker registered in it.
pub struct PySelector {
    selector: Option<Py<PyAny>>,
    waker: Arc<Waker>,
    /// The selector is ours (`DefaultSelector()`), not the user's: a forked
    /// child gets a fresh one.
    owned: bool,
}

fn mask(interest: Interest) -> u8 {
    (if interest.readable { EVENT_READ } else { 0 })
        | (if interest.writable { EVENT_WRITE } else { 0 })
}

impl PySelector {
    /// Wraps `selector` and registers the waker's fd in it.
    pub fn new(selector: Py<PyAny>, waker: Arc<Waker>) -> PyResult<Self> {
        Python::attach(|py| selector.call_method1(py, "register", (waker.fd(), EVENT_READ)))?;
        Ok(Self {
            selector: Some(selector),
            waker,
            owned: false,
        })
    }

    /// A new `selectors.DefaultSelector()`, with the waker's fd registered.
    pub fn platform(waker: Arc<Waker>) -> PyResult<Self> {
        let selector = Python::attach(|py| {
            py.import(intern!(py, "selectors"))?
                .call_method0(intern!(py, "DefaultSelector"))
                .map(Bound::unbind)
        })?;
        let mut this = Self::new(selector, waker)?;
        this.owned = true;
        Ok(this)
    }

    fn selector(&self) -> io::Result<&Py<PyAny>> {
        self.selector
            .as_ref()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }
}

impl Backend for PySelector {
    fn set_interest(&mut self, fd: RawFd, old: Interest, new: Interest) -> io::Result<()> {
        let selector = self.selector()?;
        Python::attach(|py| {
            let sel = selector.bind(py);
            if new.is_empty() {
                sel.call_method1(intern!(py, "unregister"), (fd,)).map(drop)
            } else if old.is_empty() {
                sel.call_method1(intern!(py, "register"), (fd, mask(new)))
                    .map(drop)
            } else {
                sel.call_method1(intern!(py, "modify"), (fd, mask(new)))
                    .map(drop)
            }
        })
        .map_err(io::Error::from)
    }

    fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()> {
        select(self.selector()?, &self.waker, timeout, events)
    }

    fn waits_detached(&self) -> bool {
        false
    }

    /// `select()` runs signal handlers and finalizers, which may add or
    /// remove a reader: the engine must not hold this backend meanwhile.
    fn unlocked_wait(&self) -> Option<UnlockedWait> {
        let selector = Python::attach(|py| self.selector().ok().map(|s| s.clone_ref(py)))?;
        let waker = self.waker.clone();
        Some(Box::new(move |timeout, events| {
            select(&selector, &waker, timeout, events)
        }))
    }

    fn close(&mut self) {
        if let Some(selector) = self.selector.take() {
            Python::attach(|py| {
                if let Err(e) = selector.call_method0(py, "close") {
                    e.write_unraisable(py, Some(selector.bind(py)));
                }
            });
        }
    }

    fn reopen(&mut self, waker: Arc<Waker>) -> io::Result<bool> {
        if !self.owned {
            return Ok(false);
        }
        let mut parents = std::mem::replace(self, Self::platform(waker)?);
        // Not closed: unregistering would change the epoll set the parent
        // shares. On Linux dropping it closes our copy of the epoll fd; a
        // kqueue is not inherited, so there its fd number may already be
        // another fd of the child's, which dropping would close.
        if !cfg!(target_os = "linux") {
            std::mem::forget(parents.selector.take());
        }
        Ok(true)
    }
}

/// One `selector.select(timeout)`: its reports appended to `events`, a
/// wake-up drained and left out.
fn select(
    selector: &Py<PyAny>,
    waker: &Waker,
    timeout: Option<Duration>,
    events: &mut Vec<Event>,
) -> io::Result<()> {
    let wfd = waker.fd();
    Python::attach(|py| -> PyResult<()> {
        let ready = selector.call_method1(py, "select", (timeout.map(|t| t.as_secs_f64()),))?;
        for item in ready.bind(py).try_iter()? {
            let item = item?;
            let pair = item.cast::<PyTuple>()?;
            let fd: RawFd = pair.get_item(0)?.getattr(intern!(py, "fd"))?.extract()?;
            let bits: u8 = pair.get_item(1)?.extract()?;
            if fd == wfd {
                waker.drain();
            } else {
                events.push(Event {
                    fd,
                    readable: bits & EVENT_READ != 0,
                    writable: bits & EVENT_WRITE != 0,
                    received: None,
                    sent: None,
                });
            }
        }
        Ok(())
    })
    .map_err(io::Error::from)
}
