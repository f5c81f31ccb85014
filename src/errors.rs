//! Python's side of failure, in one place: OS errors as the matching
//! `OSError` subclasses, asyncio's messages, which exceptions escape a
//! callback, the report a failing protocol method gets, and asyncio's logger.

use pyo3::call::PyCallArgs;
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PySystemExit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
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

/// Logs `args` (a message and its `%` arguments) at `level` through
/// asyncio's logger, looked up at each call as asyncio's modules name it.
pub fn asyncio_log<'py>(
    py: Python<'py>,
    level: &Bound<'py, PyString>,
    args: impl PyCallArgs<'py>,
) -> PyResult<()> {
    let logger = py.import("asyncio.log")?.getattr(intern!(py, "logger"))?;
    logger.call_method1(level, args).map(drop)
}

/// asyncio's error for using a closed loop.
pub fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

/// True for the exceptions asyncio lets escape from a callback.
pub fn escapes(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

/// Reports what a protocol method called by a transport's reading raised,
/// as asyncio reports an exception escaping a transport's read callback:
/// to the loop's exception handler, the transport staying open.
/// SystemExit and KeyboardInterrupt propagate.
pub fn report_protocol_error(
    loop_: &Bound<'_, PyAny>,
    transport: &Bound<'_, PyAny>,
    protocol: Option<&Bound<'_, PyAny>>,
    err: PyErr,
    method: &str,
) -> PyResult<()> {
    let py = loop_.py();
    if escapes(py, &err) {
        return Err(err);
    }
    let context = PyDict::new(py);
    context.set_item(
        "message",
        format!("Exception in callback protocol.{method}()"),
    )?;
    context.set_item("exception", err.value(py))?;
    context.set_item("transport", transport)?;
    context.set_item("protocol", protocol)?;
    loop_
        .call_method1(intern!(py, "call_exception_handler"), (context,))
        .map(drop)
}
