//! `oxloop._oxloop`: the Rust engine of the oxloop asyncio event loop.
//! This file only registers; the layers live in `engine` and `backend`.

mod backend;
mod engine;

use pyo3::prelude::*;

#[pymodule]
fn _oxloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    engine::handle::init(m.py())?;
    m.add_class::<engine::loop_::Engine>()?;
    Ok(())
}
