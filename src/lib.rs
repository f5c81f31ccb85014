//! `oxloop._oxloop`: the Rust engine of the oxloop asyncio event loop.
//! This file only registers; the layers live in `process`, `transport`,
//! `net`, `engine` and `backend`.

mod backend;
mod engine;
mod net;
mod process;
#[cfg(test)]
mod testing;
mod transport;

use pyo3::prelude::*;

/// The engine relies on the GIL to serialize its state
/// (`engine::gil_cell`): a free-threaded interpreter keeps it on for oxloop.
#[pymodule(gil_used = true)]
fn _oxloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let timer = engine::handle::init(m.py())?;
    engine::fastcall::install_timer(&timer)?;
    m.add(engine::handle::TIMER_NAME, timer)?;
    engine::fork::install();
    m.add_class::<engine::loop_::Engine>()?;
    engine::fastcall::install(&m.py().get_type::<engine::loop_::Engine>())?;
    m.add_class::<transport::stream::StreamCore>()?;
    m.add_class::<transport::datagram::DatagramCore>()?;
    m.add_class::<net::sock::SockOp>()?;
    m.add_function(wrap_pyfunction!(process::watch_child, m)?)?;
    Ok(())
}
