//! Handles the loop held the last reference to, kept for reuse: most handles
//! (a task's step, a fired timer) die right after they run, and reusing them
//! saves an allocation, a deallocation and the garbage collector's counting.

use super::gc::Traverse;
use super::gil_cell::GilCell;
use super::handle;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;

/// How many spent handles of each kind a loop keeps for reuse.
const CAP: usize = 1024;

/// Spent `Handle`s and `TimerHandle`s, stripped and ready to be reused.
#[derive(Default)]
pub struct FreeList {
    handles: Vec<Py<PyAny>>,
    timers: Vec<Py<PyAny>>,
}

impl FreeList {
    /// A spent handle (a TimerHandle when `timer`), if one is kept.
    pub fn take(&mut self, timer: bool) -> Option<Py<PyAny>> {
        self.list(timer).pop()
    }

    fn list(&mut self, timer: bool) -> &mut Vec<Py<PyAny>> {
        if timer {
            &mut self.timers
        } else {
            &mut self.handles
        }
    }

    /// Lets go of a handle the loop is done with (it ran, was skipped, or was
    /// pruned from the timers): kept when it is [`handle::reusable`] and the
    /// list has room, otherwise tracked again ([`handle::retrack`]) and
    /// released. The list is borrowed only around its own books: stripping a
    /// handle releases what it held, whose finalizers may call the loop.
    pub fn recycle(cell: &GilCell<Self>, h: Bound<'_, PyAny>) {
        let kept = handle::reusable(&h).filter(|&timer| cell.lock().list(timer).len() < CAP);
        let Some(timer) = kept else {
            handle::retrack(&h);
            return;
        };
        handle::strip(&h);
        let full = {
            let mut free = cell.lock();
            let list = free.list(timer);
            if list.len() < CAP {
                list.push(h.unbind());
                None
            } else {
                Some(h)
            }
        };
        drop(full);
    }

    /// Removes every kept handle.
    pub fn take_all(&mut self) -> Vec<Py<PyAny>> {
        let mut all = std::mem::take(&mut self.handles);
        all.append(&mut self.timers);
        all
    }
}

impl Traverse for FreeList {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        (&self.handles, &self.timers).traverse(visit)
    }
}
