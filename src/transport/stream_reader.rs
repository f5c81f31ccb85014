//! asyncio streams fed natively.
//!
//! `asyncio.start_server` and `asyncio.open_connection` give the transport an
//! `asyncio.StreamReaderProtocol`, whose `data_received` hands each `bytes`
//! to `StreamReader.feed_data`: three Python calls and a `bytes` made only
//! to be copied into the reader's `bytearray`. For exactly those classes the
//! transport reads into that `bytearray` itself and then does what the rest
//! of `feed_data` does, in the same order. Subclasses, a reader at EOF and a
//! buffer someone exports take asyncio's own path.

use pyo3::exceptions::PyNotImplementedError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyType};

/// True for a protocol of exactly asyncio's `StreamReaderProtocol` class.
pub fn is_stream_protocol(protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    static CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let class = CLASS.import(protocol.py(), "asyncio.streams", "StreamReaderProtocol")?;
    Ok(protocol.get_type().is(class))
}

/// The `asyncio.StreamReader` behind a `StreamReaderProtocol` and its buffer,
/// when the transport may feed it itself: exactly asyncio's class, not at
/// EOF, its buffer a `bytearray` nothing exports. `None` sends the data
/// through `protocol.data_received`, as asyncio does.
pub fn feedable<'py>(
    protocol: &Bound<'py, PyAny>,
) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, PyByteArray>)>> {
    let py = protocol.py();
    static CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let class = CLASS.import(py, "asyncio.streams", "StreamReader")?;
    let weak = protocol.getattr(intern!(py, "_stream_reader_wr"))?;
    if weak.is_none() {
        return Ok(None);
    }
    let reader = weak.call0()?;
    if !reader.get_type().is(class) || reader.getattr(intern!(py, "_eof"))?.is_truthy()? {
        return Ok(None);
    }
    let Ok(buffer) = reader
        .getattr(intern!(py, "_buffer"))?
        .cast_into_exact::<PyByteArray>()
    else {
        return Ok(None);
    };
    // SAFETY: `buffer` is a live bytearray (checked above); reading its
    // export count has no side effect.
    let exported = unsafe { (*buffer.as_ptr().cast::<ffi::PyByteArrayObject>()).ob_exports > 0 };
    Ok((!exported).then_some((reader, buffer)))
}

/// What `StreamReader.feed_data` does once the data is in the buffer: wakes
/// the read waiting for it, and pauses the transport when the buffer holds
/// more than twice the reader's limit.
pub fn fed(reader: &Bound<'_, PyAny>, buffer: &Bound<'_, PyByteArray>) -> PyResult<()> {
    let py = reader.py();
    let waiter = reader.getattr(intern!(py, "_waiter"))?;
    if !waiter.is_none() {
        reader.setattr(intern!(py, "_waiter"), py.None())?;
        if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
    }
    let transport = reader.getattr(intern!(py, "_transport"))?;
    if transport.is_none() || reader.getattr(intern!(py, "_paused"))?.is_truthy()? {
        return Ok(());
    }
    let limit = reader.getattr(intern!(py, "_limit"))?;
    let over = match limit.extract::<i64>() {
        Ok(limit) => buffer.len() as i64 > limit.saturating_mul(2),
        Err(_) => limit.mul(2)?.lt(buffer.len())?,
    };
    if !over {
        return Ok(());
    }
    match transport.call_method0(intern!(py, "pause_reading")) {
        Ok(_) => reader.setattr(intern!(py, "_paused"), true),
        Err(e) if e.is_instance_of::<PyNotImplementedError>(py) => {
            reader.setattr(intern!(py, "_transport"), py.None())
        }
        Err(e) => Err(e),
    }
}
