//! What the ready queue holds.

use super::gc::Traverse;
use super::handle;
use super::registry::{IoTarget, Side, Watcher};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;
use std::sync::Arc;

/// One entry of the ready queue.
pub enum Ready {
    /// An asyncio Handle: `call_soon`, a due timer, an `add_reader` callback.
    Callback(Py<PyAny>),
    /// A native core whose fd is ready on one side.
    Io(Arc<dyn IoTarget>, Side),
}

impl Ready {
    /// What a watcher that fired puts on the queue.
    pub fn from_watcher(w: Watcher, side: Side) -> Self {
        match w {
            Watcher::Handle(h) => Ready::Callback(h),
            Watcher::Native(t) => Ready::Io(t, side),
        }
    }
}

impl Traverse for Ready {
    /// A queued handle may be untracked: what it refers to is visited
    /// ([`handle::visit`]).
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Ready::Callback(h) => handle::visit(h, visit),
            Ready::Io(t, _) => t.traverse(visit),
        }
    }
}
