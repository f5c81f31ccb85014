//! `oxloop._oxloop`: the Rust engine of the oxloop asyncio event loop.
//! This file only registers; the layers live in `process`, `transport`,
//! `engine`, `health`, `backend` and `net` (see docs/architecture.md).

pub mod backend;
pub mod engine;
pub mod errors;
pub mod health;
pub mod net;
pub mod process;
pub mod sys;
#[cfg(test)]
mod testing;
pub mod transport;

use pyo3::prelude::*;

/// The engine relies on the GIL to serialize its state
/// (`engine::gil_cell`): a free-threaded interpreter keeps it on for oxloop.
#[pymodule(gil_used = true)]
fn _oxloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    engine::register(m)?;
    m.add_class::<transport::stream::StreamCore>()?;
    m.add_class::<transport::datagram::DatagramCore>()?;
    m.add_class::<transport::sock::SockOp>()?;
    m.add_class::<transport::server::Acceptor>()?;
    m.add_class::<transport::table::TransportTable>()?;
    m.add_class::<process::ChildWatch>()?;
    m.add_function(wrap_pyfunction!(process::watch_child, m)?)?;
    m.add("PORTABLE", cfg!(not(linux_native)))?;
    Ok(())
}
