//! `loop.create_task` and `loop.create_future` without a Python frame:
//! asyncio's own `Task` and `Future` classes, called as asyncio's
//! `BaseEventLoop` calls them (its Python `create_task` cost about a tenth
//! of a `create_task` + `await`). Each class is looked up in its asyncio
//! module at every call, as asyncio's code does.

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule, PyTuple};

/// `loop.create_task(coro, name=name, context=context)` on an open loop:
/// [`new_task`], or, with a task factory set, asyncio's own `create_task`
/// (which calls the factory as each Python version does).
pub fn create_task<'py>(
    loop_: &Bound<'py, PyAny>,
    coro: &Bound<'py, PyAny>,
    name: Option<&Bound<'py, PyAny>>,
    context: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_.py();
    if loop_.getattr(intern!(py, "_task_factory"))?.is_none() {
        return new_task(loop_, coro, name, context);
    }
    static CREATE_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let create_task = CREATE_TASK.get_or_try_init(py, || {
        let base = py.import("asyncio.base_events")?.getattr("BaseEventLoop")?;
        base.getattr("create_task").map(Bound::unbind)
    })?;
    let kwargs = PyDict::new(py);
    kwargs.set_item(intern!(py, "name"), name)?;
    kwargs.set_item(intern!(py, "context"), context)?;
    create_task.bind(py).call((loop_, coro), Some(&kwargs))
}

/// `loop.create_future()`: `asyncio.futures.Future(loop=loop)`.
pub fn create_future<'py>(loop_: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_.py();
    static FUTURES: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    static KWNAMES: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
    let class = module(py, &FUTURES, "asyncio.futures")?.getattr(intern!(py, "Future"))?;
    let kwnames = KWNAMES.get_or_try_init(py, || PyTuple::new(py, ["loop"]).map(Bound::unbind))?;
    vectorcall(&class, &[loop_.as_ptr()], kwnames.bind(py))
}

/// `asyncio.tasks.Task(coro, loop=loop, name=name, context=context)`, the
/// keywords left at None not passed (they are Task's defaults, and every
/// keyword costs Task's argument parser).
///
/// No `_source_traceback` entry needs removing in debug mode: with no
/// Python frame here, the traceback already ends at the caller.
fn new_task<'py>(
    loop_: &Bound<'py, PyAny>,
    coro: &Bound<'py, PyAny>,
    name: Option<&Bound<'py, PyAny>>,
    context: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_.py();
    static TASKS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    static KWNAMES: [PyOnceLock<Py<PyTuple>>; 4] = [const { PyOnceLock::new() }; 4];
    const NAMES: [&[&str]; 4] = [
        &["loop"],
        &["loop", "name"],
        &["loop", "context"],
        &["loop", "name", "context"],
    ];
    let class = module(py, &TASKS, "asyncio.tasks")?.getattr(intern!(py, "Task"))?;
    let mut args = [
        coro.as_ptr(),
        loop_.as_ptr(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    ];
    for (slot, arg) in args[2..].iter_mut().zip(name.into_iter().chain(context)) {
        *slot = arg.as_ptr();
    }
    let given = usize::from(name.is_some()) | (usize::from(context.is_some()) << 1);
    let kwnames =
        KWNAMES[given].get_or_try_init(py, || PyTuple::new(py, NAMES[given]).map(Bound::unbind))?;
    vectorcall(&class, &args[..1 + NAMES[given].len()], kwnames.bind(py))
}

/// The module `name`, imported once into `cell`.
fn module<'py>(
    py: Python<'py>,
    cell: &PyOnceLock<Py<PyModule>>,
    name: &str,
) -> PyResult<Bound<'py, PyModule>> {
    cell.get_or_try_init(py, || PyModule::import(py, name).map(Bound::unbind))
        .map(|m| m.bind(py).clone())
}

/// `callable(args[0], **dict(zip(kwnames, args[1:])))`: the arguments after
/// the first are the keywords' values.
fn vectorcall<'py>(
    callable: &Bound<'py, PyAny>,
    args: &[*mut ffi::PyObject],
    kwnames: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    let positional = args.len() - kwnames.len();
    // SAFETY: `args` are borrowed references the caller keeps alive for the
    // call; the last `kwnames.len()` of them are the keywords' values.
    unsafe {
        let result = ffi::PyObject_Vectorcall(
            callable.as_ptr(),
            args.as_ptr(),
            positional,
            kwnames.as_ptr(),
        );
        Bound::from_owned_ptr_or_err(py, result)
    }
}
