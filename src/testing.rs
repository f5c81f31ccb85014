//! Helpers for the unit tests.

use std::os::fd::{FromRawFd, OwnedFd};

/// A connected pair of non-blocking Unix stream sockets.
pub fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
    assert_eq!(r, 0);
    for fd in fds {
        crate::sys::set_nonblocking_cloexec(fd).unwrap();
    }
    // SAFETY: both fds were just created and are owned here.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// What the native backends' tests watch for, and the byte they send.
#[cfg(linux_native)]
pub mod watch {
    use crate::backend::Interest;
    use std::os::fd::RawFd;

    /// A user's read watch (`add_reader`).
    pub const R: Interest = Interest {
        readable: true,
        writable: false,
        oneshot: false,
        held: false,
        receive: false,
    };
    /// A user's write watch (`add_writer`).
    pub const W: Interest = Interest {
        readable: false,
        writable: true,
        oneshot: false,
        held: false,
        receive: false,
    };
    /// Nothing watched.
    pub const NONE: Interest = Interest {
        readable: false,
        writable: false,
        oneshot: false,
        held: false,
        receive: false,
    };
    /// A `sock_*` wait for reading.
    pub const R_ONCE: Interest = Interest { oneshot: true, ..R };

    /// Writes one byte to `fd`.
    pub fn send_byte(fd: RawFd) {
        // SAFETY: writes one byte from a static buffer.
        assert_eq!(unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) }, 1);
    }

    /// Asserts that `fd`'s peer is closed: a read sees the end at once.
    pub fn assert_peer_closed(fd: RawFd) {
        let mut byte = 0u8;
        // SAFETY: reads at most one byte into a local.
        let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
        assert_eq!(n, 0, "{}", std::io::Error::last_os_error());
    }
}
