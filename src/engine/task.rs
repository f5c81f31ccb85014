//! `loop.create_task` without a Python frame: asyncio's own `Task` class,
//! called as asyncio's `BaseEventLoop.create_task` calls it (a Python
//! `create_task` costed about a tenth of a `create_task` + `await`).

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

/// `asyncio.tasks.Task(coro, loop=loop, name=name, context=context)`, the
/// keywords left at None not passed (they are Task's defaults).
///
/// `Task` is looked up in `asyncio.tasks` at each call, as asyncio's code
/// does. No `_source_traceback` entry needs removing in debug mode: with no
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
    let tasks = TASKS.get_or_try_init(py, || {
        PyModule::import(py, "asyncio.tasks").map(Bound::unbind)
    })?;
    let task_class = tasks.bind(py).getattr(intern!(py, "Task"))?;
    // Only what was given is passed: every keyword costs Task's parser.
    let mut args = [
        coro.as_ptr(),
        loop_.as_ptr(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    ];
    for (slot, arg) in args[2..].iter_mut().zip(name.into_iter().chain(context)) {
        *slot = arg.as_ptr();
    }
    let given = usize::from(name.is_some()) | usize::from(context.is_some()) << 1;
    const NAMES: [&[&str]; 4] = [
        &["loop"],
        &["loop", "name"],
        &["loop", "context"],
        &["loop", "name", "context"],
    ];
    let kwnames =
        KWNAMES[given].get_or_try_init(py, || PyTuple::new(py, NAMES[given]).map(Bound::unbind))?;
    // SAFETY: `args` holds one positional argument and then one value per
    // name in `kwnames`, all borrowed references alive for the call.
    unsafe {
        let task =
            ffi::PyObject_Vectorcall(task_class.as_ptr(), args.as_ptr(), 1, kwnames.as_ptr());
        Bound::from_owned_ptr_or_err(py, task)
    }
}
