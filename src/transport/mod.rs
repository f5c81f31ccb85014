//! Transports: bytes moving between the OS and protocols. They know the
//! engine's watcher interface, never which backend waits.

pub mod buffer;
pub mod datagram;
pub mod stream;
mod stream_reader;

use crate::engine::handle;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Reports what a protocol method called by a transport's reading raised,
/// as asyncio reports an exception escaping a transport's read callback:
/// to the loop's exception handler, the transport staying open.
/// SystemExit and KeyboardInterrupt propagate.
fn report_protocol_error(
    loop_: &Bound<'_, PyAny>,
    transport: &Bound<'_, PyAny>,
    protocol: Option<&Bound<'_, PyAny>>,
    err: PyErr,
    method: &str,
) -> PyResult<()> {
    let py = loop_.py();
    if handle::escapes(py, &err) {
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
