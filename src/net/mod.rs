//! Conversions between the OS's view of sockets and Python's.

use pyo3::exceptions::PyOSError;
use pyo3::PyErr;
use std::io;

/// An `OSError` for `err`, built as Python builds it (`OSError(errno, strerror)`),
/// so it is the matching subclass (ConnectionResetError, BrokenPipeError, ...)
/// with `errno` set.
pub fn os_error(err: io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(code) => {
            // SAFETY: strerror returns a pointer to a NUL-terminated static or
            // thread-local message, read at once.
            let msg = unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) };
            PyOSError::new_err((code, msg.to_string_lossy().into_owned()))
        }
        None => PyErr::from(err),
    }
}
