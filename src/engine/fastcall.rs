//! `call_soon` and `call_soon_threadsafe` as raw `METH_FASTCALL |
//! METH_KEYWORDS` methods of the engine.
//!
//! Every task step and every future's wake-up is a
//! `loop.call_soon(callback, arg, context=ctx)` made by asyncio's C code.
//! Through PyO3's generic `#[pymethods]` glue, that call decoded the keyword
//! name to UTF-8, compared strings and counted the thread's attachment in a
//! thread-local (callgrind: 200 of the 6,450 instructions of a `sleep(0)`
//! step, 390 of a future ping-pong round). These entry points recognize
//! keyword names by identity ([`KwName`]) and take the attached thread as
//! given, which CPython guarantees for a method call.
//!
//! Without PyO3's attachment count, a `Py` dropped here would have its
//! reference released later, from PyO3's pool: the code behind these entry
//! points lets go of objects as `Bound` (an immediate `Py_DECREF`).

use super::loop_::Engine;
use pyo3::exceptions::{PySystemError, PyTypeError};
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};
use pyo3::Borrowed;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, Ordering::Relaxed};

/// A method definition CPython keeps a pointer to for as long as the
/// interpreter lives.
struct MethodDef(ffi::PyMethodDef);

// SAFETY: the definitions are immutable statics; CPython only reads them.
unsafe impl Sync for MethodDef {}

impl MethodDef {
    const fn new(name: &'static CStr, meth: ffi::PyCFunctionFastWithKeywords) -> Self {
        Self(ffi::PyMethodDef {
            ml_name: name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: meth,
            },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: std::ptr::null::<c_char>(),
        })
    }
}

static CALL_SOON: MethodDef = MethodDef::new(c"call_soon", call_soon);
static CALL_SOON_THREADSAFE: MethodDef =
    MethodDef::new(c"call_soon_threadsafe", call_soon_threadsafe);

/// Adds the raw methods to the engine's class.
pub fn install(engine: &Bound<'_, PyType>) -> PyResult<()> {
    let py = engine.py();
    for (name, def) in [
        ("call_soon", &CALL_SOON),
        ("call_soon_threadsafe", &CALL_SOON_THREADSAFE),
    ] {
        // SAFETY: the definition is a static that outlives the descriptor;
        // CPython never writes through the pointer. The result is a new
        // reference or NULL with an exception set.
        let descr = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyDescr_NewMethod(engine.as_ptr().cast(), (&raw const def.0).cast_mut()),
            )?
        };
        engine.setattr(name, descr)?;
    }
    Ok(())
}

/// `loop.call_soon(callback, *args, context=None)`.
unsafe extern "C" fn call_soon(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded from CPython's call of this method.
    unsafe {
        entry(slf, args, nargs, kwnames, "call_soon", |engine, call| {
            Engine::checked_schedule(engine, "call_soon", None, &call.0, &call.1, call.2.as_ref())
        })
    }
}

/// `loop.call_soon_threadsafe(callback, *args, context=None)`.
unsafe extern "C" fn call_soon_threadsafe(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let method = "call_soon_threadsafe";
    // SAFETY: forwarded from CPython's call of this method.
    unsafe {
        entry(slf, args, nargs, kwnames, method, |engine, call| {
            let h =
                Engine::checked_schedule(engine, method, None, &call.0, &call.1, call.2.as_ref())?;
            engine.get()._write_to_self();
            Ok(h)
        })
    }
}

/// `(callback, args, context)` of a call.
type Call<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyTuple>,
    Option<Bound<'py, PyAny>>,
);

/// What CPython calls: parses `(callback, *args, context=None)` and runs
/// `body`, turning its error (or a panic) into a raised exception.
///
/// # Safety
/// The arguments are those of a `METH_FASTCALL | METH_KEYWORDS` method of
/// the engine's class, called by CPython on an attached thread.
unsafe fn entry(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    method: &str,
    body: impl for<'py> FnOnce(&Bound<'py, Engine>, Call<'py>) -> PyResult<Bound<'py, PyAny>>,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls methods on an attached thread.
    let py = unsafe { Python::assume_attached() };
    let run = AssertUnwindSafe(|| {
        // SAFETY: the method descriptor checked that `slf` is an instance
        // of the engine's class; the argument vector is the caller's.
        let engine = unsafe { Borrowed::from_ptr(py, slf).cast_unchecked::<Engine>() };
        // SAFETY: as above.
        let call = unsafe { parse(py, args, nargs, kwnames, method)? };
        body(&engine, call)
    });
    let result = catch_unwind(run)
        .unwrap_or_else(|_| Err(PanicException::new_err(format!("panic in {method}"))));
    match result {
        Ok(obj) => obj.into_ptr(),
        Err(err) => {
            err.restore(py);
            std::ptr::null_mut()
        }
    }
}

/// Parses `(callback, *args, context=None)` from a vectorcall, with the
/// errors Python gives for a function of that signature.
///
/// # Safety
/// `args` holds `nargs` objects followed by one per name in `kwnames` (a
/// tuple of strings, or NULL), all borrowed for the call.
unsafe fn parse<'py>(
    py: Python<'py>,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    method: &str,
) -> PyResult<Call<'py>> {
    let nargs = usize::try_from(nargs).map_err(|_| PySystemError::new_err("negative nargs"))?;
    // SAFETY: `args` holds nargs positional arguments (see above).
    let positional: &[*mut ffi::PyObject] = if nargs == 0 {
        &[]
    } else {
        unsafe { std::slice::from_raw_parts(args, nargs) }
    };
    let mut callback = positional.first().copied();
    let mut context = None;
    if !kwnames.is_null() {
        // SAFETY: `kwnames` is a tuple of strings, its values follow the
        // positional arguments.
        let names = unsafe { Borrowed::from_ptr(py, kwnames).cast_unchecked::<PyTuple>() };
        for (i, name) in names.iter().enumerate() {
            // SAFETY: one value per name follows the positional arguments.
            let value = unsafe { *args.add(nargs + i) };
            let slot = if CONTEXT.matches(&name)? {
                &mut context
            } else if CALLBACK.matches(&name)? {
                &mut callback
            } else {
                return Err(PyTypeError::new_err(format!(
                    "{method}() got an unexpected keyword argument '{name}'"
                )));
            };
            if slot.replace(value).is_some() {
                return Err(PyTypeError::new_err(format!(
                    "{method}() got multiple values for argument '{name}'"
                )));
            }
        }
    }
    let Some(callback) = callback else {
        return Err(PyTypeError::new_err(format!(
            "{method}() missing 1 required positional argument: 'callback'"
        )));
    };
    let rest = positional.get(1..).unwrap_or(&[]);
    // SAFETY: every pointer is a live object borrowed for the call.
    let borrowed = |p: *mut ffi::PyObject| unsafe { Borrowed::from_ptr(py, p).to_owned() };
    let context = context.map(borrowed).filter(|c| !c.is_none());
    Ok((
        borrowed(callback),
        PyTuple::new(py, rest.iter().map(|&p| borrowed(p)))?,
        context,
    ))
}

/// A keyword name, recognized by the identity of the last string found
/// equal to it: asyncio's C tasks pass the same (not interned) `"context"`
/// string on every call, and comparing text through the generic rich
/// comparison cost more than the rest of the parse.
struct KwName {
    text: &'static str,
    /// A strong reference to the last string equal to `text` (NULL: none yet).
    seen: AtomicPtr<ffi::PyObject>,
}

static CONTEXT: KwName = KwName::new("context");
static CALLBACK: KwName = KwName::new("callback");

impl KwName {
    const fn new(text: &'static str) -> Self {
        Self {
            text,
            seen: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Whether `name` (a keyword name, so a string) is this name.
    fn matches(&self, name: &Bound<'_, PyAny>) -> PyResult<bool> {
        if name.as_ptr() == self.seen.load(Relaxed) {
            return Ok(true);
        }
        if name.cast::<PyString>()?.to_str()? != self.text {
            return Ok(false);
        }
        let old = self.seen.swap(name.clone().into_ptr(), Relaxed);
        // SAFETY: `old` is NULL or the strong reference `seen` held.
        drop(unsafe { Bound::from_owned_ptr_or_opt(name.py(), old) });
        Ok(true)
    }
}
