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
