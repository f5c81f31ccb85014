//! contextvars contexts, as asyncio's handles use them: a copy of the
//! current one taken when a callback is registered, entered around each call.

use pyo3::ffi;
use pyo3::prelude::*;

/// `contextvars.copy_context()`.
pub fn copy_current(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: PyContext_CopyCurrent returns a new reference or NULL with an
    // exception set, which from_owned_ptr_or_err turns into Err.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()) }
}

/// Runs `f` inside `ctx`, as `ctx.run` would. Fails, without running `f`,
/// when `ctx` is no Context or is entered already.
pub fn run_in<R>(ctx: &Bound<'_, PyAny>, f: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
    let py = ctx.py();
    // SAFETY: PyContext_Enter type-checks `ctx` and sets an exception on
    // failure; Exit is called exactly once after a successful Enter, with
    // `ctx` still the current context (`f` cannot leave it entered: every
    // other Enter is paired with its Exit before returning).
    unsafe {
        if ffi::PyContext_Enter(ctx.as_ptr()) != 0 {
            return Err(PyErr::fetch(py));
        }
        let result = f();
        if ffi::PyContext_Exit(ctx.as_ptr()) != 0 {
            return Err(PyErr::fetch(py));
        }
        result
    }
}
