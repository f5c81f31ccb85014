//! The one helper every system call goes through, C's "-1 and errno"
//! convention as an `io::Result` (std's `cvt`, mio's `syscall!`), and the
//! few calls whose spelling differs between the platforms.

use std::io;
use std::os::fd::RawFd;

/// A system call's return type whose negative values mean failure.
pub trait SyscallReturn: Copy {
    /// True when the call failed (and `errno` says why).
    fn failed(self) -> bool;
}

macro_rules! syscall_return {
    ($($t:ty),*) => {$(
        impl SyscallReturn for $t {
            fn failed(self) -> bool {
                self < 0
            }
        }
    )*};
}
syscall_return!(i32, i64, isize);

/// `ret`, or the thread's `errno` as an `io::Error` when the call failed.
pub fn check<T: SyscallReturn>(ret: T) -> io::Result<T> {
    if ret.failed() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The most bytes one `read`/`write`/`send`/`writev` is asked to move:
/// macOS refuses more than `INT_MAX` with EINVAL (CPython caps `os.write`
/// there the same way); Linux moves at most 0x7ffff000 anyway.
pub const MAX_IO: usize = i32::MAX as usize;

/// Flags for `send`/`sendmsg`/`sendto` on a socket: a gone peer is EPIPE,
/// never SIGPIPE. macOS has no `MSG_NOSIGNAL` on every version it runs;
/// there [`no_sigpipe`] sets `SO_NOSIGPIPE` on the socket instead.
#[cfg(not(target_vendor = "apple"))]
pub const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
/// Flags for `send`/`sendmsg`/`sendto` on a socket (see [`no_sigpipe`]).
#[cfg(target_vendor = "apple")]
pub const SEND_FLAGS: libc::c_int = 0;

/// Makes writes to the socket `fd` fail with EPIPE instead of raising
/// SIGPIPE where [`SEND_FLAGS`] cannot say so (macOS: `SO_NOSIGPIPE`).
/// Called when a transport is made on a socket and when a `sock_sendall`
/// starts; a no-op elsewhere.
pub fn no_sigpipe(fd: RawFd) {
    #[cfg(target_vendor = "apple")]
    {
        let on: libc::c_int = 1;
        // SAFETY: passes a live c_int of the size given; a failure (not a
        // socket) leaves the fd as it was, and its writes then say why.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_NOSIGPIPE,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    #[cfg(not(target_vendor = "apple"))]
    let _ = fd;
}

/// Makes the fresh `fd` non-blocking and close-on-exec, for the platforms
/// whose calls (`pipe`, `socketpair`) take no such flags.
pub fn set_nonblocking_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller owns, with integer arguments only.
    unsafe {
        let flags = check(libc::fcntl(fd, libc::F_GETFL))?;
        check(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    set_cloexec(fd)
}

/// Makes the fresh `fd` close-on-exec, for the calls that take no such
/// flag (`accept` on macOS).
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller owns, with integer arguments only.
    unsafe {
        let flags = check(libc::fcntl(fd, libc::F_GETFD))?;
        check(libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC))?;
    }
    Ok(())
}

/// The clock `time.monotonic()` reads: `CLOCK_MONOTONIC`, except on macOS,
/// where CPython reads `mach_absolute_time()`, which is `CLOCK_UPTIME_RAW`
/// (it stops while the machine sleeps; macOS's `CLOCK_MONOTONIC` does not).
#[cfg(not(target_vendor = "apple"))]
const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;
#[cfg(target_vendor = "apple")]
const CLOCK: libc::clockid_t = libc::CLOCK_UPTIME_RAW;

/// Nanoseconds on the clock `time.monotonic()` reads.
#[inline]
pub fn monotonic_ns() -> u64 {
    // SAFETY: `ts` is a live timespec; the clock exists on every platform
    // that names it.
    nanoseconds(|ts| unsafe { libc::clock_gettime(CLOCK, ts) })
}

/// The resolution of [`monotonic_ns`], in nanoseconds.
pub fn monotonic_resolution_ns() -> u64 {
    // SAFETY: as in `monotonic_ns`.
    nanoseconds(|ts| unsafe { libc::clock_getres(CLOCK, ts) })
}

/// A clock reading in whole nanoseconds.
// time_t and c_long are i64 on 64-bit targets, narrower elsewhere.
#[allow(clippy::unnecessary_cast)]
#[inline]
fn nanoseconds(read: impl FnOnce(&mut libc::timespec) -> libc::c_int) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    read(&mut ts);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_returns_carry_errno() {
        assert_eq!(check(3i32).unwrap(), 3);
        // SAFETY: closing an fd that cannot be open fails without side effects.
        let err = check(unsafe { libc::close(-1) }).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        // SAFETY: as above; `read` into no memory with a bad fd.
        let err = check(unsafe { libc::read(-1, std::ptr::null_mut(), 0) }).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }
}
