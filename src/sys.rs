//! The one helper every system call goes through: C's "-1 and errno"
//! convention as an `io::Result` (std's `cvt`, mio's `syscall!`).

use std::io;

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
