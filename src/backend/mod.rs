//! Waiting for the OS. Every backend implements [`Backend`]; the engine and the
//! transports only ever talk to this trait, so a readiness backend (epoll, a
//! user's Python selector) and a completion backend (io_uring, whose poll ops
//! report readiness through the same [`Event`]) are interchangeable.

#[cfg(linux_native)]
pub mod bufring;
#[cfg(linux_native)]
pub mod epoll;
pub mod pyselector;
#[cfg(linux_native)]
pub mod uring;
pub mod waker;

use pyo3::prelude::*;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

/// A wait taken out of a backend ([`Backend::unlocked_wait`]): its timeout
/// and where the reports go, as for [`Backend::wait`].
pub type UnlockedWait = Box<dyn FnOnce(Option<Duration>, &mut Vec<Event>) -> io::Result<()>>;

/// What the loop wants to hear about one file descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    /// Report when the fd is readable.
    pub readable: bool,
    /// Report when the fd is writable.
    pub writable: bool,
    /// Every watcher waits for one report and tries its syscall before
    /// waiting again (the `sock_*` operations): the backend may disarm the fd
    /// once it reported it and keep it registered while nobody waits, so a
    /// wait costs one call into the OS instead of two.
    pub oneshot: bool,
    /// Every watcher is a transport's or a child watcher's: the loop's own,
    /// which stops watching before the fd is closed, so the backend may
    /// hold the fd's file while it is watched (io_uring's poll operations
    /// do). A user's `add_reader` or `sock_*` wait may outlive its fd (the
    /// user closes the socket), and a closed socket must close.
    pub held: bool,
    /// The reader takes the bytes themselves (a socket transport's): a
    /// backend that receives for it ([`Backend::receives`]) reads into its
    /// own buffers and reports them as [`Event::received`]; another
    /// reports readiness. Only with `held`.
    pub receive: bool,
}

impl Interest {
    /// True when nothing is watched, i.e. the fd should leave the backend.
    pub fn is_empty(self) -> bool {
        !self.readable && !self.writable
    }

    /// The `poll` events to watch for (epoll's `EPOLLIN` and `EPOLLOUT`
    /// are the same bits).
    pub fn poll_events(self) -> u32 {
        let mut m = 0;
        if self.readable {
            m |= libc::POLLIN as u32;
        }
        if self.writable {
            m |= libc::POLLOUT as u32;
        }
        m
    }
}

/// What a backend that receives ([`Interest::receive`]) read for an fd.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Bytes, in a buffer of the backend's, lent until the chunk drops.
    #[cfg(linux_native)]
    Data(bufring::Chunk),
    /// The peer closed its side.
    Eof,
    /// The receive failed with this errno.
    Error(i32),
}

/// One report for a registered fd: readiness, or what was received.
#[derive(Debug, PartialEq, Eq)]
pub struct Event {
    /// The fd the report is about.
    pub fd: RawFd,
    /// Reading will not block (or an error/hang-up is pending); set too
    /// when `received` is.
    pub readable: bool,
    /// Writing will not block (or an error/hang-up is pending).
    pub writable: bool,
    /// What was received for the fd's reader, in order with the fd's
    /// other reports.
    pub received: Option<Received>,
    /// The result of the send queued for the fd ([`Backend::send`]): the
    /// bytes sent, or a negated errno (`-EAGAIN`: the socket took none).
    pub sent: Option<i32>,
}

impl Event {
    /// The report of `revents` (`poll`'s, or epoll's same bits): errors and
    /// hang-ups wake both directions, as `selectors` does.
    pub fn from_revents(fd: RawFd, revents: u32) -> Self {
        Event {
            fd,
            readable: revents & !(libc::POLLOUT as u32) != 0,
            writable: revents & !(libc::POLLIN as u32) != 0,
            received: None,
            sent: None,
        }
    }

    /// The report of what was received for `fd`'s reader.
    pub fn received(fd: RawFd, received: Received) -> Self {
        Event {
            fd,
            readable: true,
            writable: false,
            received: Some(received),
            sent: None,
        }
    }

    /// The report of the send queued for `fd`: `result` is the bytes sent
    /// or a negated errno.
    pub fn sent(fd: RawFd, result: i32) -> Self {
        Event {
            fd,
            readable: false,
            writable: false,
            received: None,
            sent: Some(result),
        }
    }
}

/// The boundary between the engine and the OS's waiting primitive.
///
/// Level-triggered, like asyncio's selectors: an fd that stays ready is
/// reported by every `wait` until its interest is removed. A one-shot fd
/// (see [`Interest::oneshot`]) may also be reported once after its interest
/// was removed; the engine ignores reports for fds nobody watches.
pub trait Backend: Send {
    /// Moves `fd` from interest `old` to `new` (register, modify or remove).
    fn set_interest(&mut self, fd: RawFd, old: Interest, new: Interest) -> io::Result<()>;

    /// Blocks up to `timeout` (`None`: until something happens) and appends the
    /// reports to `events`. Wake-ups from [`waker::Waker`] end the wait but are
    /// not reported. `ErrorKind::Interrupted` means a signal arrived.
    fn wait(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> io::Result<()>;

    /// Whether `wait` may be called with the interpreter detached. A backend
    /// that calls into Python (the user-selector one) says no.
    fn waits_detached(&self) -> bool;

    /// A wait to run without the engine's lock on this backend, for a
    /// backend whose wait runs Python code (a signal handler, a finalizer)
    /// that may call back into the loop and so into this backend; None
    /// (the default): `wait` is called under the lock.
    fn unlocked_wait(&self) -> Option<UnlockedWait> {
        None
    }

    /// Whether the backend receives for readers that ask it to
    /// ([`Interest::receive`]); false (the default): it reports readiness.
    fn receives(&self) -> bool {
        false
    }

    /// What the backend had received for `fd` and not yet reported when
    /// its reader stopped receiving (a `set_interest` that dropped
    /// [`Interest::receive`]), in order: the stopped reader's, appended to
    /// `into`.
    fn take_received(&mut self, _fd: RawFd, _into: &mut Vec<Received>) {}

    /// Whether the backend sends for transports ([`Backend::send`]); false
    /// (the default): they send by system call.
    fn sends(&self) -> bool {
        false
    }

    /// Queues a send of the `len` bytes at `ptr` on the socket `fd`, made
    /// by the next wait with every other operation queued (one system call
    /// for all), without waiting for room: that wait reports its result
    /// ([`Event::sent`]). One send per fd at a time.
    ///
    /// # Safety
    /// The bytes stay alive and unchanged until the report is taken from
    /// a wait, or until [`Backend::flush_sends`] or [`Backend::close`]
    /// returned.
    unsafe fn send(&mut self, _fd: RawFd, _ptr: *const u8, _len: usize) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Makes the sends queued now, before their wait: their bytes are
    /// free once it returns (their reports come with the next wait).
    fn flush_sends(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Releases what the backend holds from the OS (or the user's
    /// selector), making the sends queued first.
    fn close(&mut self);

    /// In a forked child: lets go of the kernel state shared with the
    /// parent's loop without changing it, and starts afresh around `waker`,
    /// watching nothing. False when the backend keeps its state (a user's
    /// selector, whose state is the user's).
    fn reopen(&mut self, waker: Arc<waker::Waker>) -> io::Result<bool>;
}

/// Which backend a loop waits on.
pub enum Kind {
    /// The platform's own: epoll on Linux, and elsewhere (or built
    /// `portable`) the Python selector backend on
    /// `selectors.DefaultSelector()` (kqueue on macOS and the BSDs), the
    /// backend this project's tests run on Linux too.
    Native,
    /// The user's `selectors.BaseSelector`, passed to
    /// `SelectorEventLoop(selector)`.
    Selector(Py<PyAny>),
    /// io_uring, for `ProactorEventLoop()`.
    Uring,
}

/// Opens the backend of `kind`, with `waker` registered in it.
pub fn open(kind: Kind, waker: Arc<waker::Waker>) -> PyResult<Box<dyn Backend>> {
    Ok(match kind {
        Kind::Selector(s) => Box::new(pyselector::PySelector::new(s, waker)?),
        #[cfg(linux_native)]
        Kind::Native => Box::new(epoll::Epoll::new(waker)?),
        #[cfg(not(linux_native))]
        Kind::Native => Box::new(pyselector::PySelector::platform(waker)?),
        #[cfg(linux_native)]
        Kind::Uring => Box::new(uring::Uring::new(waker).map_err(|e| {
            match e
                .get_ref()
                .and_then(|i| i.downcast_ref::<uring::Unavailable>())
            {
                Some(u) => pyo3::exceptions::PyOSError::new_err((u.errno, u.message.clone())),
                None => e.into(),
            }
        })?),
        #[cfg(not(linux_native))]
        Kind::Uring => {
            return Err(pyo3::exceptions::PyOSError::new_err((
                libc::ENOSYS,
                "io_uring is not available: it is Linux's; the selector loop \
                 (oxloop.new_event_loop()) works here",
            )))
        }
    })
}

/// Rounds a timeout up to whole milliseconds, as asyncio's selectors do, so a
/// wait never ends before the timer it waits for is due.
pub fn timeout_ms(timeout: Option<Duration>) -> i32 {
    match timeout {
        None => -1,
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000);
            ms.min(i32::MAX as u128) as i32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_rounds_up_to_milliseconds() {
        assert_eq!(timeout_ms(None), -1);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 0);
        assert_eq!(timeout_ms(Some(Duration::from_nanos(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1500))), 2);
        assert_eq!(timeout_ms(Some(Duration::from_millis(7))), 7);
        assert_eq!(timeout_ms(Some(Duration::from_secs(u64::MAX))), i32::MAX);
    }
}
