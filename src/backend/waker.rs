//! Waking a blocked backend from another thread (`call_soon_threadsafe`).

use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// An fd that a backend watches for reading, made readable from any thread:
/// an eventfd on Linux, a self-pipe elsewhere. Writes are coalesced: only the
/// first wake after a drain touches the fd, so at most one write is unread.
pub struct Waker {
    read: OwnedFd,
    /// The pipe's write end; None for an eventfd, which is both ends.
    write: Option<OwnedFd>,
    pending: AtomicBool,
}

/// A non-blocking, close-on-exec eventfd: the read end and no write end.
#[cfg(linux_native)]
fn channel() -> io::Result<(OwnedFd, Option<OwnedFd>)> {
    // SAFETY: eventfd has no memory arguments; the result is checked.
    let fd = sys::check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok((unsafe { OwnedFd::from_raw_fd(fd) }, None))
}

/// A non-blocking, close-on-exec pipe: its read and write ends.
#[cfg(not(linux_native))]
fn channel() -> io::Result<(OwnedFd, Option<OwnedFd>)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    sys::check(unsafe { libc::pipe(fds.as_mut_ptr()) })?;
    // SAFETY: both fds were just opened and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    sys::set_nonblocking_cloexec(fds[0])?;
    sys::set_nonblocking_cloexec(fds[1])?;
    Ok((read, Some(write)))
}

impl Waker {
    /// Opens the platform's wake-up channel.
    pub fn new() -> io::Result<Self> {
        let (read, write) = channel()?;
        Ok(Self {
            read,
            write,
            pending: AtomicBool::new(false),
        })
    }

    /// The fd a backend watches for readability.
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Makes the next (or current) wait return.
    pub fn wake(&self) {
        // A plain load first: a burst of wakes writes the flag once.
        if self.pending.load(Ordering::Acquire) || self.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let fd = self.write.as_ref().unwrap_or(&self.read).as_raw_fd();
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an fd this struct owns
        // (an eventfd takes exactly a u64; a pipe any bytes). A full eventfd
        // counter or pipe (EAGAIN) still leaves the fd readable, so the
        // result needs no handling.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }

    /// Consumes a wake-up; called by the backend when the fd was readable.
    /// The fd is read before the flag is cleared: a wake racing with the drain
    /// either sees the flag still set (and the loop then sees its callback) or
    /// writes again.
    pub fn drain(&self) {
        // Room for the eventfd's counter, or for every unread pipe write.
        let mut buf = [0u8; 64];
        // SAFETY: reads at most `buf.len()` bytes into a live buffer from an
        // owned fd.
        unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
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
