//! What watches each file descriptor: asyncio handles (`add_reader`,
//! `add_writer`) or native cores (the Rust transports, `sock_*` waits and
//! child watchers), and the interest the backend must have in it.

use super::context;
use super::gc::Traverse;
use crate::backend::{Interest, Received};
use pyo3::exceptions::{PyAttributeError, PyTypeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::types::PyInt;
use pyo3::PyClass;
use pyo3::PyTraverseError;
use rustc_hash::FxHashMap;
use std::os::fd::RawFd;
use std::sync::Arc;

/// Which side of an fd a callback watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `add_reader`.
    Read,
    /// `add_writer`.
    Write,
}

/// A native core the engine calls directly when its fd is ready, with no
/// Python handle in between. Each is a frozen pyclass, so the engine's
/// watcher holds a reference to the core's Python object: the garbage
/// collector sees one owner of everything the core refers to.
pub trait NativeWatcher: PyClass<Frozen = True> + Sync {
    /// True when the core waits for one report at a time and tries its
    /// syscall before each wait (see [`Interest::oneshot`]).
    const ONESHOT: bool = false;

    /// True when the core calls user code (a protocol's methods): it then
    /// runs in a copy of the context current when it started watching, as
    /// the asyncio handle it replaces would (each `add_reader` or
    /// `add_writer` copies the context of its caller).
    const IN_CONTEXT: bool = false;

    /// The fd is ready on `side`. Errors are the core's to report; what it
    /// returns as `Err` (SystemExit, KeyboardInterrupt) stops the loop.
    fn on_ready(slf: &Bound<'_, Self>, side: Side) -> PyResult<()>;

    /// True when, as the fd's reader, the core takes the bytes themselves
    /// from a backend that receives for it ([`Interest::receive`]).
    fn receives(&self) -> bool {
        false
    }

    /// What the backend received for the core (each in order), to hand on
    /// at the next `on_ready(Side::Read)`. True when the core had nothing
    /// pending, so that read must be queued.
    fn received(_slf: &Bound<'_, Self>, _received: Received) -> bool {
        false
    }

    /// The result of the send the core queued in the backend (the bytes
    /// sent, or a negated errno). True when the core has more to do, so
    /// `on_ready(Side::Write)` must be queued.
    fn sent(_slf: &Bound<'_, Self>, _result: i32) -> bool {
        false
    }
}

/// What the engine calls for a [`NativeWatcher`], whatever its type.
pub trait IoTarget: Send + Sync {
    /// See [`NativeWatcher::on_ready`].
    fn on_ready(&self, py: Python<'_>, side: Side) -> PyResult<()>;

    /// See [`NativeWatcher::receives`].
    fn receives(&self) -> bool;

    /// See [`NativeWatcher::received`].
    fn received(&self, py: Python<'_>, received: Received) -> bool;

    /// See [`NativeWatcher::sent`].
    fn sent(&self, py: Python<'_>, result: i32) -> bool;

    /// Visits the core, for the garbage collector.
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError>;

    /// See [`NativeWatcher::ONESHOT`].
    fn oneshot(&self) -> bool;

    /// The core's Python object: who is watching.
    fn core(&self) -> *mut pyo3::ffi::PyObject;

    /// The core's `repr`, for error reports.
    fn describe(&self, py: Python<'_>) -> PyResult<String>;
}

/// The one adapter from a [`NativeWatcher`] to an [`IoTarget`]: the core,
/// and the context it runs in (see [`NativeWatcher::IN_CONTEXT`]).
struct Native<T> {
    core: Py<T>,
    context: Option<Py<PyAny>>,
}

impl<T: NativeWatcher> IoTarget for Native<T> {
    fn on_ready(&self, py: Python<'_>, side: Side) -> PyResult<()> {
        let core = self.core.bind(py);
        match &self.context {
            None => T::on_ready(core, side),
            Some(ctx) => context::run_in(ctx.bind(py), || T::on_ready(core, side)),
        }
    }

    fn receives(&self) -> bool {
        self.core.get().receives()
    }

    fn received(&self, py: Python<'_>, received: Received) -> bool {
        T::received(self.core.bind(py), received)
    }

    fn sent(&self, py: Python<'_>, result: i32) -> bool {
        T::sent(self.core.bind(py), result)
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        (&self.core, &self.context).traverse(visit)
    }

    fn oneshot(&self) -> bool {
        T::ONESHOT
    }

    fn core(&self) -> *mut pyo3::ffi::PyObject {
        self.core.as_ptr()
    }

    fn describe(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.core.bind(py).as_any().repr()?.to_string())
    }
}

/// What the engine calls for `core` (in a copy of the current context
/// when `T::IN_CONTEXT`).
pub fn target<T: NativeWatcher>(core: &Bound<'_, T>) -> PyResult<Arc<dyn IoTarget>> {
    let context = match T::IN_CONTEXT {
        true => Some(context::copy_current(core.py())?.unbind()),
        false => None,
    };
    Ok(Arc::new(Native {
        core: core.clone().unbind(),
        context,
    }))
}

/// One side's watcher.
pub enum Watcher {
    /// An asyncio Handle, run as a callback.
    Handle(Py<PyAny>),
    /// A native target, called directly.
    Native(Arc<dyn IoTarget>),
}

impl Traverse for Watcher {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Watcher::Handle(h) => visit.call(h),
            Watcher::Native(t) => t.traverse(visit),
        }
    }
}

impl Watcher {
    /// The watcher that calls `core` directly (in a copy of the current
    /// context when `T::IN_CONTEXT`).
    pub fn native<T: NativeWatcher>(core: &Bound<'_, T>) -> PyResult<Self> {
        target(core).map(Watcher::Native)
    }

    /// True when this is `core`'s native watcher.
    pub fn is_core(&self, core: &Bound<'_, PyAny>) -> bool {
        matches!(self, Watcher::Native(t) if t.core() == core.as_ptr())
    }

    /// Another reference to the same watcher.
    pub fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            Watcher::Handle(h) => Watcher::Handle(h.clone_ref(py)),
            Watcher::Native(t) => Watcher::Native(t.clone()),
        }
    }

    /// The asyncio Handle, if it is one.
    pub fn handle(&self) -> Option<&Py<PyAny>> {
        match self {
            Watcher::Handle(h) => Some(h),
            Watcher::Native(_) => None,
        }
    }
}

/// The watchers of one fd: what asyncio's selector key holds.
#[derive(Default)]
pub struct Registration {
    /// Called when the fd is readable.
    pub reader: Option<Watcher>,
    /// Called when the fd is writable.
    pub writer: Option<Watcher>,
    /// The object `add_reader`/`add_writer` was given when it made the
    /// registration (a socket, say), as asyncio's selector key keeps it: the
    /// registration is found through it once its `fileno()` is -1.
    pub fileobj: Option<Py<PyAny>>,
}

impl Registration {
    /// What the backend must report for this fd.
    pub fn interest(&self) -> Interest {
        interest_of(self.reader.as_ref(), self.writer.as_ref())
    }

    /// The watcher of one side.
    pub fn watcher(&self, side: Side) -> Option<&Watcher> {
        match side {
            Side::Read => self.reader.as_ref(),
            Side::Write => self.writer.as_ref(),
        }
    }

    /// The watcher of one side, to replace.
    fn side(&mut self, side: Side) -> &mut Option<Watcher> {
        match side {
            Side::Read => &mut self.reader,
            Side::Write => &mut self.writer,
        }
    }
}

/// What the backend must report for an fd with these watchers.
fn interest_of(reader: Option<&Watcher>, writer: Option<&Watcher>) -> Interest {
    let oneshot = |w: Option<&Watcher>| match w {
        Some(Watcher::Native(t)) => t.oneshot(),
        Some(Watcher::Handle(_)) => false,
        None => true,
    };
    let held = |w: Option<&Watcher>| match w {
        Some(Watcher::Native(t)) => !t.oneshot(),
        Some(Watcher::Handle(_)) => false,
        None => true,
    };
    let (readable, writable) = (reader.is_some(), writer.is_some());
    let any = readable || writable;
    let held = any && held(reader) && held(writer);
    Interest {
        readable,
        writable,
        oneshot: any && oneshot(reader) && oneshot(writer),
        held,
        receive: held && matches!(reader, Some(Watcher::Native(t)) if t.receives()),
    }
}

/// fd → its [`Registration`], as asyncio's selector maps fds to keys.
#[derive(Default)]
pub struct Registry {
    map: FxHashMap<RawFd, Registration>,
}

impl Registry {
    /// The current interest in `fd`.
    pub fn interest(&self, fd: RawFd) -> Interest {
        self.map
            .get(&fd)
            .map(Registration::interest)
            .unwrap_or_default()
    }

    /// The interest in `fd` once `side` is watched by `watcher` instead.
    pub fn interest_with(&self, fd: RawFd, side: Side, watcher: Option<&Watcher>) -> Interest {
        let other = |s| self.watcher(fd, s);
        match side {
            Side::Read => interest_of(watcher, other(Side::Write)),
            Side::Write => interest_of(other(Side::Read), watcher),
        }
    }

    /// The watchers of `fd`, if any.
    pub fn get(&self, fd: RawFd) -> Option<&Registration> {
        self.map.get(&fd)
    }

    /// The watcher of one side of `fd`, if any.
    pub fn watcher(&self, fd: RawFd, side: Side) -> Option<&Watcher> {
        self.map.get(&fd)?.watcher(side)
    }

    /// Replaces one side's watcher and returns the previous one, and the
    /// file object when the registration ends. A new registration keeps
    /// `fileobj`.
    pub fn set(
        &mut self,
        fd: RawFd,
        side: Side,
        watcher: Option<Watcher>,
        fileobj: Option<&Bound<'_, PyAny>>,
    ) -> (Option<Watcher>, Option<Py<PyAny>>) {
        let r = self.map.entry(fd).or_insert_with(|| Registration {
            fileobj: fileobj.map(|f| f.clone().unbind()),
            ..Registration::default()
        });
        let old = std::mem::replace(r.side(side), watcher);
        if r.interest().is_empty() {
            let gone = self.map.remove(&fd).and_then(|r| r.fileobj);
            return (old, gone);
        }
        (old, None)
    }

    /// Ends the registration of `fd`, whatever it holds.
    pub fn remove(&mut self, fd: RawFd) -> Option<Registration> {
        self.map.remove(&fd)
    }

    /// The fd whose registration was made with the object `fileobj`.
    pub fn fd_of(&self, fileobj: &Bound<'_, PyAny>) -> Option<RawFd> {
        self.map
            .iter()
            .find(|(_, r)| r.fileobj.as_ref().is_some_and(|f| f.is(fileobj)))
            .map(|(fd, _)| *fd)
    }

    /// Every watched fd.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.map.keys().copied()
    }

    /// Removes everything, returning it so it can be released once the
    /// registry is no longer borrowed.
    pub fn take_all(&mut self) -> Vec<Registration> {
        std::mem::take(&mut self.map).into_values().collect()
    }
}

impl Traverse for Registry {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.map
            .values()
            .try_for_each(|r| (&r.reader, &r.writer, &r.fileobj).traverse(visit))
    }
}

/// asyncio's `selectors._fileobj_to_fd`: an int, or an object with
/// `fileno()`. `None` for an fd beyond any the OS hands out (which nothing
/// can watch).
pub fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
    let py = obj.py();
    let fd = match obj.cast::<PyInt>() {
        Ok(fd) => fd.clone(),
        Err(_) => obj
            .call_method0(intern!(py, "fileno"))
            .and_then(|n| py.get_type::<PyInt>().call1((n,)))
            .and_then(|n| Ok(n.cast_into::<PyInt>()?))
            .map_err(|e| {
                if e.is_instance_of::<PyAttributeError>(py)
                    || e.is_instance_of::<PyTypeError>(py)
                    || e.is_instance_of::<PyValueError>(py)
                {
                    let repr = obj.repr().map(|r| r.to_string()).unwrap_or_default();
                    PyValueError::new_err(format!("Invalid file object: {repr}"))
                } else {
                    e
                }
            })?,
    };
    if fd.lt(0)? {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {fd}"
        )));
    }
    Ok(fd.extract::<RawFd>().ok())
}
