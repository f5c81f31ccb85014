//! Conversions between the OS's view of sockets and Python's: errors, and
//! reads that become one `bytes`.

pub mod sock;

use pyo3::exceptions::PyOSError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;

/// The most one read takes: asyncio's `_SelectorTransport.max_size`.
pub const MAX_READ: usize = 256 * 1024;

thread_local! {
    /// The buffer small reads land in before they become one `bytes`.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_READ]);
}

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

/// `recv(2)` into raw memory.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes for the duration of the call.
pub unsafe fn recv_raw(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: guaranteed by the caller.
    let n = unsafe { libc::recv(fd, ptr.cast(), len, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Receives up to `len` bytes straight into a new `bytes` (neither zeroed nor
/// copied when the read fills it); empty at EOF. For large reads.
pub fn recv_new_bytes(py: Python<'_>, fd: RawFd, len: usize) -> io::Result<Bound<'_, PyBytes>> {
    // SAFETY: a new bytes object of `len` bytes that nothing else sees yet;
    // recv fills its first `got` bytes, and only those are ever read (a
    // shorter read is copied out below).
    let (data, read) = unsafe {
        let raw = ffi::PyBytes_FromStringAndSize(std::ptr::null(), len as ffi::Py_ssize_t);
        let data = Bound::from_owned_ptr_or_err(py, raw).map_err(io::Error::other)?;
        let read = recv_raw(fd, ffi::PyBytes_AsString(raw).cast(), len);
        (data.cast_into_unchecked::<PyBytes>(), read)
    };
    let got = read?;
    Ok(if got == len {
        data
    } else {
        PyBytes::new(py, &data.as_bytes()[..got])
    })
}

/// Receives up to `len` (at most [`MAX_READ`]) bytes through the thread's
/// shared buffer into a new `bytes` sized to what arrived; empty at EOF.
/// For small reads, where one copy is cheaper than a large allocation.
pub fn recv_copied(py: Python<'_>, fd: RawFd, len: usize) -> io::Result<Bound<'_, PyBytes>> {
    READ_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let len = len.min(buf.len());
        // SAFETY: the thread's buffer is live and at least `len` long.
        let n = unsafe { recv_raw(fd, buf.as_mut_ptr(), len)? };
        Ok(PyBytes::new(py, &buf[..n]))
    })
}
