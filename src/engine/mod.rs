//! The iteration: ready queue, timers, fd watchers and asyncio's handles.
//!
//! What the layers above use is re-exported here: the [`Engine`], the
//! watcher interface native cores implement ([`NativeWatcher`], [`Watcher`],
//! [`Side`]) and the traversal helper ([`Traverse`]).

mod context;
mod fastcall;
mod fork;
mod free_list;
mod gc;
mod gil_cell;
mod handle;
mod health;
mod io;
mod loop_;
mod ready;
mod registry;
mod task;
mod timers;

pub use gc::Traverse;
pub use gil_cell::GilCell;
pub use loop_::Engine;
pub use registry::{NativeWatcher, Side, Watcher};

use pyo3::prelude::*;

/// Adds the engine's classes to the extension module: `Engine` and
/// `TimerHandle`, each with its raw C methods, and starts counting forks.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let timer = handle::init(m.py())?;
    fastcall::install_timer(&timer)?;
    m.add(handle::TIMER_NAME, timer)?;
    fork::install();
    m.add_class::<Engine>()?;
    fastcall::install(&m.py().get_type::<Engine>())
}
