//! Waking a blocked backend from another thread (`call_soon_threadsafe`).

use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// An eventfd that a backend watches for reading. Writes are coalesced: only
/// the first wake after a drain touches the fd.
pub struct Waker {
    fd: OwnedFd,
    pending: AtomicBool,
}

impl Waker {
    /// Opens a non-blocking, close-on-exec eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory arguments; the result is checked.
        let fd = sys::check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        Ok(Self {
            // SAFETY: `fd` was just opened and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            pending: AtomicBool::new(false),
        })
    }

    /// The fd a backend watches for readability.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes the next (or current) wait return.
    pub fn wake(&self) {
        // A plain load first: a burst of wakes writes the flag once.
        if self.pending.load(Ordering::Acquire) || self.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an fd this struct owns.
        // A full counter (EAGAIN) still leaves the fd readable, so the result
        // needs no handling.
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }

    /// Consumes a wake-up; called by the backend when the fd was readable.
    /// The fd is read before the flag is cleared: a wake racing with the drain
    /// either sees the flag still set (and the loop then sees its callback) or
    /// writes again.
    pub fn drain(&self) {
        let mut buf: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from an owned fd.
        unsafe { libc::read(self.fd(), (&mut buf as *mut u64).cast(), 8) };
        self.pending.swap(false, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn wake_makes_fd_readable_until_drained() {
        let w = Waker::new().unwrap();
        assert!(!readable(w.fd()));
        w.wake();
        w.wake();
        assert!(readable(w.fd()));
        w.drain();
        assert!(!readable(w.fd()));
        w.wake();
        assert!(readable(w.fd()));
    }
}
