//! asyncio's own `Handle` and `TimerHandle`, made and run from Rust.
//!
//! The loop hands out real `asyncio.Handle` instances and instances of
//! [`TIMER_NAME`], a slot-less subclass of `asyncio.TimerHandle` whose only
//! change is a native `cancel()` ([`cancel_timer`]: asyncio's two Python
//! methods took most of a `call_later(...).cancel()`), so `isinstance`
//! checks, `repr`, `cancel()` and debug tracebacks behave as in asyncio.
//! Outside debug mode they are built and read through their `__slots__`
//! directly: no `__init__`, no attribute lookups on the hot path.
//!
//! Queued handles only the loop holds are kept out of the garbage collector's
//! lists ([`untrack_if_owned`]): a busy loop holds thousands, each with its
//! context copy, and the collector walking them on every young collection
//! cost more than making them. They are reachable from the loop anyway. The
//! loop's traverse visits what such a handle refers to ([`visit`]), so a cycle
//! through a dropped loop is still collected, and a handle that leaves the
//! loop is tracked again ([`retrack`], [`strip`]).

use super::context;
use pyo3::exceptions::PyImportError;
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use pyo3::PyTraverseError;

/// The name of the TimerHandle class the loop makes (in `oxloop._oxloop`).
pub const TIMER_NAME: &str = "TimerHandle";

/// The handle classes and the byte offsets of their slots.
struct Layout {
    handle: Py<PyType>,
    /// oxloop's TimerHandle: what the loop makes and reuses.
    timer: Py<PyType>,
    /// `asyncio.TimerHandle`, for what Python code passes in.
    asyncio_timer: Py<PyType>,
    callback: isize,
    args: isize,
    cancelled: isize,
    loop_: isize,
    source_traceback: isize,
    repr: isize,
    context: isize,
    scheduled: isize,
    when: isize,
}

static LAYOUT: PyOnceLock<Layout> = PyOnceLock::new();

impl Layout {
    /// Whether `p` is exactly a Handle or a TimerHandle the loop makes (so
    /// the slot offsets are valid for it).
    ///
    /// # Safety
    /// `p` must be a live object.
    unsafe fn is_exact(&self, p: *mut ffi::PyObject) -> bool {
        // SAFETY: guaranteed by the caller.
        let tp = unsafe { ffi::Py_TYPE(p) };
        tp == self.handle.as_ptr().cast() || tp == self.timer.as_ptr().cast()
    }
}

fn offset(cls: &Bound<'_, PyType>, name: &str) -> PyResult<isize> {
    let descr = cls.getattr(name)?;
    if descr.get_type().name()? != "member_descriptor" {
        return Err(PyImportError::new_err(format!(
            "asyncio handle slot {name} is not a slot"
        )));
    }
    // SAFETY: a `member_descriptor` is a PyMemberDescrObject whose d_member
    // points at the PyMemberDef of the slot, which lives as long as the class.
    Ok(unsafe { (*(*descr.as_ptr().cast::<ffi::PyMemberDescrObject>()).d_member).offset })
}

fn layout(py: Python<'_>) -> PyResult<&'static Layout> {
    LAYOUT.get_or_try_init(py, || {
        let events = py.import("asyncio.events")?;
        let handle = events.getattr("Handle")?.cast_into::<PyType>()?;
        let asyncio_timer = events.getattr("TimerHandle")?.cast_into::<PyType>()?;
        let namespace = PyDict::new(py);
        namespace.set_item("__slots__", ())?;
        namespace.set_item("__module__", "oxloop._oxloop")?;
        namespace.set_item(
            "__doc__",
            "asyncio.TimerHandle with a native cancel(); what oxloop's call_later and call_at return.",
        )?;
        let timer = py
            .get_type::<PyType>()
            .call1((TIMER_NAME, (&asyncio_timer,), namespace))?
            .cast_into::<PyType>()?;
        Ok(Layout {
            callback: offset(&handle, "_callback")?,
            args: offset(&handle, "_args")?,
            cancelled: offset(&handle, "_cancelled")?,
            loop_: offset(&handle, "_loop")?,
            source_traceback: offset(&handle, "_source_traceback")?,
            repr: offset(&handle, "_repr")?,
            context: offset(&handle, "_context")?,
            scheduled: offset(&timer, "_scheduled")?,
            when: offset(&timer, "_when")?,
            handle: handle.unbind(),
            timer: timer.unbind(),
            asyncio_timer: asyncio_timer.unbind(),
        })
    })
}

/// Checks once, at import, that asyncio's handle classes have the expected
/// slots; returns the TimerHandle class the loop makes, for its `cancel`.
pub fn init(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    Ok(layout(py)?.timer.bind(py).clone())
}

/// The slot at `off` inside `obj`.
///
/// # Safety
/// `obj` must be an instance of asyncio's Handle (or TimerHandle, for the
/// TimerHandle offsets) and `off` one of the offsets in [`Layout`].
unsafe fn slot(obj: *mut ffi::PyObject, off: isize) -> *mut *mut ffi::PyObject {
    // SAFETY: the caller guarantees the offset is inside the object.
    unsafe { obj.cast::<u8>().offset(off).cast() }
}

/// Stores a new reference to `value` in the slot, releasing the old one.
///
/// # Safety
/// As for [`slot`].
unsafe fn put(obj: *mut ffi::PyObject, off: isize, value: *mut ffi::PyObject) {
    // SAFETY: the caller guarantees the slot exists; the old value (possibly
    // NULL) was a strong reference owned by the object.
    unsafe {
        ffi::Py_INCREF(value);
        let old = std::mem::replace(&mut *slot(obj, off), value);
        ffi::Py_XDECREF(old);
    }
}

/// Sets the slots at `offs` to None and hands back what they held, to be
/// released once the handle no longer refers to it (releasing may run a
/// finalizer that looks at the handle).
///
/// # Safety
/// As for [`slot`], for every offset.
unsafe fn clear<const N: usize>(
    py: Python<'_>,
    obj: *mut ffi::PyObject,
    offs: [isize; N],
) -> [Option<Bound<'_, PyAny>>; N] {
    // SAFETY: guaranteed by the caller; each old value (possibly NULL) was a
    // strong reference owned by the object, now owned by the result.
    offs.map(|off| unsafe {
        ffi::Py_INCREF(ffi_none());
        let old = std::mem::replace(&mut *slot(obj, off), ffi_none());
        Bound::from_owned_ptr_or_opt(py, old)
    })
}

/// Whether a handle that ran (or was skipped) can be reused, because nothing
/// but the loop can still reach it: no other reference, no weak reference.
/// Returns whether it is a TimerHandle.
pub fn reusable(h: &Bound<'_, PyAny>) -> Option<bool> {
    let l = LAYOUT.get(h.py())?;
    let p = h.as_ptr();
    // SAFETY: reads the refcount and type of a live object.
    let (refcnt, tp) = unsafe { (ffi::Py_REFCNT(p), ffi::Py_TYPE(p)) };
    let timer = tp == l.timer.as_ptr().cast();
    if refcnt != 1 || !(timer || tp == l.handle.as_ptr().cast()) {
        return None;
    }
    // SAFETY: `p` is a live instance of `tp`, one of asyncio's handle classes.
    (!unsafe { weakly_referenced(p, tp) }).then_some(timer)
}

/// Strips a [`reusable`] handle of what it refers to, for reuse as a new
/// handle: what it held is released here, so finalizers may run.
pub fn strip(h: &Bound<'_, PyAny>) {
    let py = h.py();
    let p = h.as_ptr();
    if let Some(l) = LAYOUT.get(py) {
        // SAFETY: `h` is exactly a Handle/TimerHandle (see `reusable`), whose
        // context slot holds an object or NULL; the context must be tracked
        // before it is released below.
        unsafe { track_again(*slot(p, l.context)) };
        // SAFETY: as above; slots take any object.
        let released = unsafe {
            clear(
                py,
                p,
                [l.callback, l.args, l.context, l.source_traceback, l.repr],
            )
        };
        // SAFETY: as above; a spare is handed out tracked, like a new handle.
        unsafe {
            put(p, l.cancelled, ffi_bool(false));
            if ffi::PyObject_GC_IsTracked(p) == 0 {
                ffi::PyObject_GC_Track(p.cast());
            }
        }
        drop(released);
    }
}

/// Builds a `Handle` (or, with `when`, a `TimerHandle`) for `loop_`, reusing
/// `spare` (taken from the loop's free list) when given.
///
/// `debug` takes asyncio's own constructor, which records the caller's stack.
pub fn new<'py>(
    loop_: &Bound<'py, PyAny>,
    callback: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
    context: Option<&Bound<'py, PyAny>>,
    when: Option<f64>,
    debug: bool,
    spare: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_.py();
    let l = layout(py)?;
    let cls = if when.is_some() { &l.timer } else { &l.handle };
    if debug {
        return match when {
            Some(w) => cls.bind(py).call1((w, callback, args, loop_, context)),
            None => cls.bind(py).call1((callback, args, loop_, context)),
        };
    }
    let context = match context {
        Some(c) => c.clone(),
        None => context::copy_current(py)?,
    };
    let obj = match spare {
        Some(spare) => spare.into_bound(py),
        // SAFETY: allocates a zeroed instance of a heap type whose slots are
        // filled right below, before any other Python code can see the object.
        None => unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyType_GenericAlloc(cls.as_ptr().cast(), 0))?
        },
    };
    let p = obj.as_ptr();
    let none = ffi_none();
    let false_ = ffi_bool(false);
    // SAFETY: `obj` is an instance of `cls` (a spare is of the kind asked
    // for); every offset belongs to it (`scheduled` and `when` only when
    // `cls` is TimerHandle).
    unsafe {
        put(p, l.callback, callback.as_ptr());
        put(p, l.args, args.as_ptr());
        put(p, l.cancelled, false_);
        put(p, l.loop_, loop_.as_ptr());
        put(p, l.source_traceback, none);
        put(p, l.repr, none);
        put(p, l.context, context.as_ptr());
        if let Some(w) = when {
            put(p, l.scheduled, false_);
            put(p, l.when, w.into_pyobject(py)?.as_ptr());
        }
    }
    Ok(obj)
}

/// Takes a queued handle out of the garbage collector's lists when the loop
/// holds it through exactly `owners` references and nothing refers to it
/// weakly, with its context when only the handle holds that; see the module
/// documentation. Every handle untracked here passes through [`retrack`] or
/// [`strip`] when the loop lets go of it: a context must be tracked when it
/// is deallocated.
pub fn untrack_if_owned(h: &Bound<'_, PyAny>, owners: isize) {
    let p = h.as_ptr();
    let Some(l) = LAYOUT.get(h.py()) else { return };
    // SAFETY: reads refcounts, type and tracking of live objects; the type
    // check makes the slot offsets valid; untracking a tracked GC object is
    // always allowed.
    unsafe {
        if ffi::Py_REFCNT(p) != owners
            || !l.is_exact(p)
            || ffi::PyObject_GC_IsTracked(p) == 0
            || weakly_referenced(p, ffi::Py_TYPE(p))
        {
            return;
        }
        ffi::PyObject_GC_UnTrack(p.cast());
        let ctx = *slot(p, l.context);
        if !ctx.is_null()
            && ffi::Py_REFCNT(ctx) == 1
            && ffi::PyObject_IS_GC(ctx) == 1
            && ffi::PyObject_GC_IsTracked(ctx) == 1
        {
            ffi::PyObject_GC_UnTrack(ctx.cast());
        }
    }
}

/// Whether something refers weakly to `p`, an instance of `tp`.
///
/// # Safety
/// `p` must be a live object of type `tp`, one of asyncio's handle classes.
unsafe fn weakly_referenced(p: *mut ffi::PyObject, tp: *mut ffi::PyTypeObject) -> bool {
    // SAFETY: asyncio's handle classes have a weak-reference list at
    // tp_weaklistoffset (negative on 3.12+, where it sits before the header).
    unsafe {
        let off = (*tp).tp_weaklistoffset;
        off != 0 && !(*slot(p, off)).is_null()
    }
}

/// Puts what [`untrack_if_owned`] took out of the garbage collector's lists back in
/// when the loop lets go of the handle: its context always (it must be
/// tracked when it dies), the handle itself if something else still holds it.
pub fn retrack(h: &Bound<'_, PyAny>) {
    let p = h.as_ptr();
    let Some(l) = LAYOUT.get(h.py()) else { return };
    // SAFETY: reads the refcount and type of a live object; a handle's
    // context slot holds an object or NULL.
    unsafe {
        if !l.is_exact(p) {
            return;
        }
        track_again(*slot(p, l.context));
        if ffi::Py_REFCNT(p) > 1 && ffi::PyObject_GC_IsTracked(p) == 0 {
            ffi::PyObject_GC_Track(p.cast());
        }
    }
}

/// Tracks `obj` again if it is a GC object that was untracked.
///
/// # Safety
/// `obj` must be NULL or a live object.
unsafe fn track_again(obj: *mut ffi::PyObject) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if !obj.is_null() && ffi::PyObject_IS_GC(obj) == 1 && ffi::PyObject_GC_IsTracked(obj) == 0 {
            ffi::PyObject_GC_Track(obj.cast());
        }
    }
}

/// Visits a queued handle for the loop's traverse: the handle itself, or,
/// when it is untracked (so only the loop holds it), what it refers to.
pub fn visit(h: &Py<PyAny>, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
    let p = h.as_ptr();
    // SAFETY: the collector runs traverse on an attached thread; the token
    // only reads the layout, no Python API is called.
    let py = unsafe { Python::assume_attached() };
    let Some(l) = LAYOUT.get(py) else {
        return visit.call(h);
    };
    // SAFETY: reads the refcount, type and tracking of a live object.
    let owned =
        unsafe { ffi::Py_REFCNT(p) == 1 && ffi::PyObject_GC_IsTracked(p) == 0 && l.is_exact(p) };
    if !owned {
        return visit.call(h);
    }
    for off in [l.callback, l.args, l.loop_, l.context] {
        // SAFETY: `h` is exactly a Handle/TimerHandle, so the offsets are its
        // slots, each NULL or a strong reference it owns; `Py` is a
        // transparent non-null object pointer, so a non-NULL slot can be
        // borrowed as one for the visit (no reference count is touched).
        unsafe {
            let field = slot(p, off);
            if !(*field).is_null() {
                visit.call(&*field.cast::<Py<PyAny>>())?;
            }
        }
    }
    Ok(())
}

/// `None`, borrowed: a `Py` would be released through PyO3's deferred pool
/// when dropped outside PyO3's own entry points (see `fastcall`).
fn ffi_none() -> *mut ffi::PyObject {
    // SAFETY: the None singleton lives for the whole interpreter.
    unsafe { ffi::Py_None() }
}

fn ffi_bool(b: bool) -> *mut ffi::PyObject {
    // SAFETY: the two bool singletons live for the whole interpreter.
    unsafe {
        if b {
            ffi::Py_True()
        } else {
            ffi::Py_False()
        }
    }
}

fn read_bool(h: &Bound<'_, PyAny>, off: isize) -> bool {
    // SAFETY: `h` is a handle made by asyncio's classes (checked by the
    // callers' construction) and the slot holds a bool or NULL.
    unsafe { *slot(h.as_ptr(), off) == ffi::Py_True() }
}

/// `handle._cancelled`.
pub fn is_cancelled(h: &Bound<'_, PyAny>) -> bool {
    LAYOUT
        .get(h.py())
        .is_some_and(|l| read_bool(h, l.cancelled))
}

/// `timer._scheduled`; false for anything that is not a TimerHandle, since
/// Python code can pass any object to `_timer_handle_cancelled`.
pub fn is_scheduled(h: &Bound<'_, PyAny>) -> bool {
    LAYOUT.get(h.py()).is_some_and(|l| {
        h.is_instance(l.asyncio_timer.bind(h.py())).unwrap_or(false) && read_bool(h, l.scheduled)
    })
}

/// `TimerHandle.cancel()` with asyncio's steps (`TimerHandle.cancel`, then
/// `Handle.cancel`), its method lookups on the loop included, so a loop
/// subclass or instance attribute that replaces them is called as on asyncio.
///
/// `h` must be an instance of the class [`init`] returns.
pub fn cancel_timer(h: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = h.py();
    let l = layout(py)?;
    if read_bool(h, l.cancelled) {
        return Ok(());
    }
    let loop_ = h.getattr(intern!(py, "_loop"))?;
    loop_.call_method1(intern!(py, "_timer_handle_cancelled"), (h,))?;
    if read_bool(h, l.cancelled) {
        return Ok(());
    }
    let p = h.as_ptr();
    // SAFETY: `h` is one of the loop's TimerHandles (the method descriptor
    // checked its type), so the offsets are its slots, which take any object.
    unsafe { put(p, l.cancelled, ffi_bool(true)) };
    if loop_.call_method0(intern!(py, "get_debug"))?.is_truthy()? {
        // Kept in debug mode so slow-callback warnings still name the callback.
        let repr = h.repr()?;
        // SAFETY: as above.
        unsafe { put(p, l.repr, repr.as_ptr()) };
    }
    // SAFETY: as above.
    drop(unsafe { clear(py, p, [l.callback, l.args]) });
    Ok(())
}

/// Sets `timer._scheduled`, as asyncio does when a timer enters or leaves the heap.
pub fn set_scheduled(h: &Bound<'_, PyAny>, value: bool) {
    if let Some(l) = LAYOUT.get(h.py()) {
        // SAFETY: `h` is a TimerHandle; the slot takes any object.
        unsafe { put(h.as_ptr(), l.scheduled, ffi_bool(value)) }
    }
}

/// Whether `obj` is an asyncio Handle (so its slots may be read).
pub fn is_handle(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    obj.is_instance(layout(obj.py())?.handle.bind(obj.py()))
}

/// Runs the handle's callback in its context: `handle._context.run(callback, *args)`.
///
/// Returns the exception the callback raised, if any; reporting it is the caller's job.
pub fn run(h: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = h.py();
    let l = layout(py)?;
    let p = h.as_ptr();
    // SAFETY: `h` is a handle; strong references are taken, because the
    // callback may cancel its own handle, which clears these slots.
    let (ctx, callback, args) = unsafe {
        let get = |off| Bound::from_borrowed_ptr_or_opt(py, *slot(p, off));
        (get(l.context), get(l.callback), get(l.args))
    };
    let (Some(ctx), Some(callback), Some(args)) = (ctx, callback, args) else {
        return Ok(());
    };
    let args = match args.cast_into::<PyTuple>() {
        Ok(t) => t,
        Err(e) => PyTuple::new(
            py,
            e.into_inner().try_iter()?.collect::<PyResult<Vec<_>>>()?,
        )?,
    };
    // SAFETY: a type check of a live object.
    if unsafe { ffi::PyContext_CheckExact(ctx.as_ptr()) } == 0 {
        // What asyncio's Handle does with any other object given as context=.
        let call: Vec<_> = std::iter::once(callback).chain(args.iter()).collect();
        let call = PyTuple::new(py, call)?;
        return ctx.call_method1(intern!(py, "run"), call).map(drop);
    }
    context::run_in(&ctx, || {
        // SAFETY: both are live objects; PyObject_Call returns a new
        // reference or NULL with an exception set.
        let ret =
            unsafe { ffi::PyObject_Call(callback.as_ptr(), args.as_ptr(), std::ptr::null_mut()) };
        // SAFETY: `ret` is what PyObject_Call returned.
        unsafe { Bound::from_owned_ptr_or_err(py, ret) }.map(drop)
    })
}
