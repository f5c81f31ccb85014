//! The engine's hottest methods as raw C methods: `call_soon`,
//! `call_soon_threadsafe`, `call_later` and `call_at` (`METH_FASTCALL |
//! METH_KEYWORDS`), `get_debug` and `time` (`METH_NOARGS`) and
//! `_timer_handle_cancelled` (`METH_O`); and `cancel` (`METH_NOARGS`) of the
//! TimerHandle class the loop makes ([`handle::cancel_timer`]).
//!
//! Every task step and every future's wake-up is a
//! `loop.call_soon(callback, arg, context=ctx)` made by asyncio's C code,
//! every future it makes asks `loop.get_debug()`, and `TimerHandle.cancel()`
//! calls both of the last two. Through PyO3's generic `#[pymethods]` glue, a
//! call decoded keyword names to UTF-8, compared strings and counted the
//! thread's attachment in a thread-local. Callgrind, instructions per
//! operation before and after: `sleep(0)` 6,466 -> 6,265, future ping-pong
//! 15,468 -> 15,081, `call_later(...).cancel()` 5,656 -> 5,421. These entry
//! points recognize keyword names by identity ([`KwName`]) and take the
//! attached thread as given, which CPython guarantees for a method call.
//!
//! Without PyO3's attachment count, a `Py` dropped here would have its
//! reference released later, from PyO3's pool: the code behind these entry
//! points lets go of objects as `Bound` (an immediate `Py_DECREF`).

use super::handle;
use super::loop_::Engine;
use super::timers::monotonic;
use pyo3::exceptions::{PySystemError, PyTypeError};
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyNone, PyString, PyTuple, PyType};
use pyo3::Borrowed;
use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, Ordering::Relaxed};

/// The method definitions, which CPython keeps pointers to for as long as
/// the interpreter lives.
struct Methods<const N: usize>([ffi::PyMethodDef; N]);

// SAFETY: the definitions are an immutable static; CPython only reads them.
unsafe impl<const N: usize> Sync for Methods<N> {}

const fn def(name: &'static CStr, meth: ffi::PyMethodDefPointer, flags: c_int) -> ffi::PyMethodDef {
    ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: meth,
        ml_flags: flags,
        ml_doc: std::ptr::null::<c_char>(),
    }
}

const fn fastcall(name: &'static CStr, meth: ffi::PyCFunctionFastWithKeywords) -> ffi::PyMethodDef {
    let meth = ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: meth,
    };
    def(name, meth, ffi::METH_FASTCALL | ffi::METH_KEYWORDS)
}

const fn simple(name: &'static CStr, meth: ffi::PyCFunction, flags: c_int) -> ffi::PyMethodDef {
    def(name, ffi::PyMethodDefPointer { PyCFunction: meth }, flags)
}

static METHODS: Methods<7> = Methods([
    fastcall(c"call_soon", call_soon),
    fastcall(c"call_soon_threadsafe", call_soon_threadsafe),
    fastcall(c"call_later", call_later),
    fastcall(c"call_at", call_at),
    simple(c"get_debug", get_debug, ffi::METH_NOARGS),
    simple(c"time", time, ffi::METH_NOARGS),
    simple(
        c"_timer_handle_cancelled",
        timer_handle_cancelled,
        ffi::METH_O,
    ),
]);

static TIMER_METHODS: Methods<1> = Methods([simple(c"cancel", timer_cancel, ffi::METH_NOARGS)]);

/// The native `Engine.time` descriptor, once installed.
static NATIVE_TIME: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

/// Adds the raw methods to the engine's class.
pub fn install(engine: &Bound<'_, PyType>) -> PyResult<()> {
    add_methods(engine, &METHODS)?;
    // The class keeps the descriptor alive for the life of the process.
    NATIVE_TIME.store(engine.getattr("time")?.as_ptr(), Relaxed);
    Ok(())
}

/// True when `time` is the native `Engine.time` (not a subclass's own).
pub fn is_native_time(time: &Bound<'_, PyAny>) -> bool {
    time.as_ptr() == NATIVE_TIME.load(Relaxed)
}

/// Adds the native `cancel` to the TimerHandle class the loop makes.
pub fn install_timer(timer: &Bound<'_, PyType>) -> PyResult<()> {
    add_methods(timer, &TIMER_METHODS)
}

fn add_methods<const N: usize>(
    cls: &Bound<'_, PyType>,
    methods: &'static Methods<N>,
) -> PyResult<()> {
    let py = cls.py();
    for def in &methods.0 {
        // SAFETY: the definition is a static that outlives the descriptor;
        // CPython never writes through the pointer. The result is a new
        // reference or NULL with an exception set.
        let descr = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyDescr_NewMethod(cls.as_ptr().cast(), (&raw const *def).cast_mut()),
            )?
        };
        // SAFETY: ml_name is one of the C string literals above.
        let name = unsafe { CStr::from_ptr(def.ml_name) };
        cls.setattr(name.to_string_lossy().as_ref(), descr)?;
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
    let call = Call::new(args, nargs, kwnames, "call_soon", [&CALLBACK]);
    // SAFETY: forwarded from CPython's call of this method.
    unsafe {
        scheduling(slf, call, |engine, [callback], rest, context| {
            Engine::checked_schedule(engine, "call_soon", None, &callback, &rest, context)
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
    let call = Call::new(args, nargs, kwnames, method, [&CALLBACK]);
    // SAFETY: forwarded from CPython's call of this method.
    unsafe {
        scheduling(slf, call, |engine, [callback], rest, context| {
            let h = Engine::checked_schedule(engine, method, None, &callback, &rest, context)?;
            engine.get()._write_to_self();
            Ok(h)
        })
    }
}

/// `loop.call_later(delay, callback, *args, context=None)`.
unsafe extern "C" fn call_later(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let call = Call::new(args, nargs, kwnames, "call_later", [&DELAY, &CALLBACK]);
    // SAFETY: forwarded from CPython's call of this method.
    unsafe {
        scheduling(slf, call, |engine, [delay, callback], rest, context| {
            if delay.is_none() {
                return Err(PyTypeError::new_err("delay must not be None"));
            }
            let when = Engine::now(engine)? + delay.extract::<f64>()?;
            // asyncio's call_later calls call_at, which checks the callback.
            Engine::checked_schedule(engine, "call_at", Some(when), &callback, &rest, context)
        })
    }
}

/// `loop.call_at(when, callback, *args, context=None)`.
unsafe extern "C" fn call_at(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let call = Call::new(args, nargs, kwnames, "call_at", [&WHEN, &CALLBACK]);
    // SAFETY: forwarded from CPython's call of this method.
    unsafe {
        scheduling(slf, call, |engine, [when, callback], rest, context| {
            if when.is_none() {
                return Err(PyTypeError::new_err("when cannot be None"));
            }
            let when = when.extract()?;
            Engine::checked_schedule(engine, "call_at", Some(when), &callback, &rest, context)
        })
    }
}

/// `loop.get_debug()`.
unsafe extern "C" fn get_debug(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded from CPython's call of this method.
    unsafe {
        method(slf, "get_debug", |engine| {
            Ok(PyBool::new(engine.py(), engine.get().get_debug())
                .to_owned()
                .into_any())
        })
    }
}

/// `loop.time()`.
unsafe extern "C" fn time(slf: *mut ffi::PyObject, _: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: forwarded from CPython's call of this method.
    unsafe {
        method(slf, "time", |engine| {
            Ok(PyFloat::new(engine.py(), monotonic()).into_any())
        })
    }
}

/// `loop._timer_handle_cancelled(handle)`, called by `TimerHandle.cancel()`.
unsafe extern "C" fn timer_handle_cancelled(
    slf: *mut ffi::PyObject,
    timer: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded from CPython's call of this method; `timer` is its
    // argument, borrowed for the call.
    unsafe {
        method(slf, "_timer_handle_cancelled", |engine| {
            let py = engine.py();
            engine.get().timer_cancelled(&Borrowed::from_ptr(py, timer));
            Ok(PyNone::get(py).to_owned().into_any())
        })
    }
}

/// `timer.cancel()` on the loop's TimerHandle class.
unsafe extern "C" fn timer_cancel(
    slf: *mut ffi::PyObject,
    _: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls methods on an attached thread; the method
    // descriptor checked that `slf` is an instance of the class.
    unsafe {
        c_method(slf, "cancel", |timer: &Bound<'_, PyAny>| {
            handle::cancel_timer(timer)?;
            Ok(PyNone::get(timer.py()).to_owned().into_any())
        })
    }
}

/// [`c_method`] for the engine's methods.
///
/// # Safety
/// `slf` is the instance of the engine's class CPython called the method
/// on (the method descriptor checked its type), on an attached thread.
unsafe fn method<'py>(
    slf: *mut ffi::PyObject,
    name: &str,
    body: impl FnOnce(&Bound<'py, Engine>) -> PyResult<Bound<'py, PyAny>>,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded from the caller; the cast is what it guarantees.
    unsafe { c_method(slf, name, |slf| body(slf.cast_unchecked::<Engine>())) }
}

/// Runs a method's `body` as CPython expects of a C method: its result as a
/// new reference, or NULL with the exception set (a panic raises
/// `PanicException`).
///
/// # Safety
/// `slf` is the object CPython called the method on, on an attached thread.
unsafe fn c_method<'py>(
    slf: *mut ffi::PyObject,
    name: &str,
    body: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>>,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls methods on an attached thread.
    let py: Python<'py> = unsafe { Python::assume_attached() };
    let run = AssertUnwindSafe(|| {
        // SAFETY: `slf` is live for the call (see the function's safety section).
        let slf = unsafe { Borrowed::from_ptr(py, slf) };
        body(&slf)
    });
    let result = catch_unwind(run)
        .unwrap_or_else(|_| Err(PanicException::new_err(format!("panic in {name}"))));
    match result {
        Ok(obj) => obj.into_ptr(),
        Err(err) => {
            err.restore(py);
            std::ptr::null_mut()
        }
    }
}

/// What a scheduling call parses into: its named parameters, the rest of
/// the positional arguments, and the context (`None` if not given or None).
type Schedule<'py, const N: usize> = (
    [Bound<'py, PyAny>; N],
    Bound<'py, PyTuple>,
    Option<Bound<'py, PyAny>>,
);

/// [`method`] for the scheduling methods: parses `call`, then runs `body`.
///
/// # Safety
/// As for [`method`]; `call` holds the arguments CPython passed.
unsafe fn scheduling<'py, const N: usize>(
    slf: *mut ffi::PyObject,
    call: Call<N>,
    body: impl FnOnce(
        &Bound<'py, Engine>,
        [Bound<'py, PyAny>; N],
        Bound<'py, PyTuple>,
        Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>>,
) -> *mut ffi::PyObject {
    let name = call.method;
    let parsed = |engine: &Bound<'py, Engine>| {
        // SAFETY: `call` holds the arguments of this call.
        let (named, rest, context) = unsafe { call.parse(engine.py())? };
        body(engine, named, rest, context.as_ref())
    };
    // SAFETY: forwarded from the caller.
    unsafe { method(slf, name, parsed) }
}

/// The arguments of a vectorcall to a method of the signature
/// `(name_1, ..., name_N, *args, context=None)`.
struct Call<const N: usize> {
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    method: &'static str,
    names: [&'static KwName; N],
}

impl<const N: usize> Call<N> {
    fn new(
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
        method: &'static str,
        names: [&'static KwName; N],
    ) -> Self {
        Self {
            args,
            nargs,
            kwnames,
            method,
            names,
        }
    }

    /// The named parameters, the rest of the positional arguments and the
    /// context, with the errors Python gives for a function of that signature.
    ///
    /// # Safety
    /// `args` holds `nargs` objects followed by one per name in `kwnames` (a
    /// tuple of strings, or NULL), all borrowed for the call.
    unsafe fn parse(self, py: Python<'_>) -> PyResult<Schedule<'_, N>> {
        let method = self.method;
        let nargs = usize::try_from(self.nargs)
            .map_err(|_| PySystemError::new_err("negative argument count"))?;
        let positional: &[*mut ffi::PyObject] = if nargs == 0 {
            &[]
        } else {
            // SAFETY: `args` holds nargs positional arguments (see above).
            unsafe { std::slice::from_raw_parts(self.args, nargs) }
        };
        // NULL: not given.
        let mut named = [std::ptr::null_mut(); N];
        for (slot, &arg) in named.iter_mut().zip(positional) {
            *slot = arg;
        }
        let mut context = std::ptr::null_mut();
        if !self.kwnames.is_null() {
            // SAFETY: `kwnames` is a tuple of strings, its values follow the
            // positional arguments.
            let names = unsafe { Borrowed::from_ptr(py, self.kwnames).cast_unchecked::<PyTuple>() };
            for (i, name) in names.iter().enumerate() {
                let slot = if CONTEXT.matches(&name)? {
                    &mut context
                } else if let Some(at) = self.position(&name)? {
                    &mut named[at]
                } else {
                    return Err(PyTypeError::new_err(format!(
                        "{method}() got an unexpected keyword argument '{name}'"
                    )));
                };
                if !slot.is_null() {
                    return Err(PyTypeError::new_err(format!(
                        "{method}() got multiple values for argument '{name}'"
                    )));
                }
                // SAFETY: one value per name follows the positional arguments.
                *slot = unsafe { *self.args.add(nargs + i) };
            }
        }
        if named.iter().any(|p| p.is_null()) {
            return Err(self.missing(&named));
        }
        // SAFETY: every pointer is a live object borrowed for the call (the
        // NULL ones, not given, are excluded above and below).
        let borrowed = |p: *mut ffi::PyObject| unsafe { Borrowed::from_ptr(py, p).to_owned() };
        let rest = positional.get(N..).unwrap_or(&[]);
        Ok((
            named.map(borrowed),
            PyTuple::new(py, rest.iter().map(|&p| borrowed(p)))?,
            Some(context)
                .filter(|c| !c.is_null())
                .map(borrowed)
                .filter(|c| !c.is_none()),
        ))
    }

    /// The error for named parameters not given (NULL in `named`).
    fn missing(&self, named: &[*mut ffi::PyObject; N]) -> PyErr {
        let names: Vec<String> = (0..N)
            .filter(|&i| named[i].is_null())
            .map(|i| format!("'{}'", self.names[i].text))
            .collect();
        let s = if names.len() == 1 { "" } else { "s" };
        PyTypeError::new_err(format!(
            "{}() missing {} required positional argument{s}: {}",
            self.method,
            names.len(),
            names.join(" and ")
        ))
    }

    /// Which named parameter a keyword name is, if any.
    fn position(&self, name: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
        for (i, kw) in self.names.iter().enumerate() {
            if kw.matches(name)? {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
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
static DELAY: KwName = KwName::new("delay");
static WHEN: KwName = KwName::new("when");

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
