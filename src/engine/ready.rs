//! The ready queue: what runs in the next iteration, each entry with the
//! time it became due, for the loop's lag figures.

use super::gc::Traverse;
use super::handle;
use super::registry::{IoTarget, Side, Watcher};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;
use std::collections::VecDeque;
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

/// The due time of an entry queued by the callback running now: the loop
/// can run it once that callback returns, and stamps it then
/// ([`ReadyQueue::stamp_pending`]). One queued outside any callback keeps
/// it: it is due when the iteration that runs it starts
/// ([`ReadyQueue::begin_iteration`]).
pub const PENDING: u64 = u64::MAX;

/// Ready entries in order, with when each became due (health clock ticks;
/// 0 while health figures are off).
#[derive(Default)]
pub struct ReadyQueue {
    entries: VecDeque<(Ready, u64)>,
    /// How many [`PENDING`] entries were pushed since the last stamp.
    pending: usize,
}

impl ReadyQueue {
    /// Queues `entry`, due since `due`.
    #[inline]
    pub fn push(&mut self, entry: Ready, due: u64) {
        self.pending += usize::from(due == PENDING);
        self.entries.push_back((entry, due));
    }

    /// The first entry and when it became due.
    #[inline]
    pub fn pop(&mut self) -> Option<(Ready, u64)> {
        self.entries.pop_front()
    }

    /// Entries queued.
    #[inline]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Stamps the [`PENDING`] entries as due at `now`. They are the last
    /// ones pushed: only the running callback (or code outside any
    /// callback) pushes them, and nothing is popped until it returns.
    #[inline]
    pub fn stamp_pending(&mut self, now: u64) {
        match self.pending {
            0 => return,
            // The common case (a task's next step): the last entry.
            1 => {
                if let Some((_, due @ PENDING)) = self.entries.back_mut() {
                    *due = now;
                    self.pending = 0;
                    return;
                }
            }
            _ => {}
        }
        let mut left = std::mem::take(&mut self.pending);
        for (_, due) in self.entries.iter_mut().rev() {
            if *due == PENDING {
                *due = now;
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
    }

    /// An iteration starts: the [`PENDING`] entries queued so far are due
    /// at its start, which the loop substitutes as it pops them; only those
    /// queued from now on are stamped.
    #[inline]
    pub fn begin_iteration(&mut self) {
        self.pending = 0;
    }

    /// Makes every entry due at `now` (health figures were just turned on:
    /// what was queued before carries no due time).
    pub fn restamp(&mut self, now: u64) {
        self.pending = 0;
        for (_, due) in &mut self.entries {
            *due = now;
        }
    }

    /// Takes every entry.
    pub fn take_all(&mut self) -> Vec<Ready> {
        self.pending = 0;
        self.entries.drain(..).map(|(r, _)| r).collect()
    }
}

impl Traverse for ReadyQueue {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.entries.iter().try_for_each(|(r, _)| r.traverse(visit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_entries_are_stamped_once() {
        Python::initialize();
        Python::attach(|py| {
            let mut q = ReadyQueue::default();
            for due in [PENDING, 5, PENDING, PENDING] {
                q.push(Ready::Callback(py.None()), due);
            }
            q.stamp_pending(7);
            q.push(Ready::Callback(py.None()), PENDING);
            q.stamp_pending(9);
            q.stamp_pending(11);
            let dues: Vec<u64> = std::iter::from_fn(|| q.pop().map(|(_, d)| d)).collect();
            assert_eq!(dues, [7, 5, 7, 7, 9]);
        });
    }

    #[test]
    fn entries_queued_before_an_iteration_stay_pending_through_it() {
        Python::initialize();
        Python::attach(|py| {
            let mut q = ReadyQueue::default();
            q.push(Ready::Callback(py.None()), PENDING);
            q.begin_iteration();
            q.push(Ready::Callback(py.None()), PENDING);
            q.stamp_pending(3);
            q.restamp(4);
            q.push(Ready::Callback(py.None()), PENDING);
            let dues: Vec<u64> = std::iter::from_fn(|| q.pop().map(|(_, d)| d)).collect();
            assert_eq!(dues, [4, 4, PENDING]);
            let mut q = ReadyQueue::default();
            q.push(Ready::Callback(py.None()), PENDING);
            q.begin_iteration();
            q.push(Ready::Callback(py.None()), PENDING);
            q.stamp_pending(3);
            let dues: Vec<u64> = std::iter::from_fn(|| q.pop().map(|(_, d)| d)).collect();
            assert_eq!(dues, [PENDING, 3]);
        });
    }
}
