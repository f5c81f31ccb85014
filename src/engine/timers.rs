//! The loop's clock and its timers: a heap ordered by deadline, and
//! [`Timers`], the loop's `TimerHandle`s on it with asyncio's rule for
//! dropping cancelled ones.

use super::gc::Traverse;
use super::handle;
use crate::sys;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Below this many timers, cancelled ones are only dropped from the heap's
/// head (asyncio's `_MIN_SCHEDULED_TIMER_HANDLES`).
const MIN_SCHEDULED_TIMER_HANDLES: usize = 100;

/// Seconds on the clock `time.monotonic()` reads.
pub fn monotonic() -> f64 {
    seconds(sys::monotonic_ns())
}

/// The resolution of [`monotonic`], in seconds (asyncio's `_clock_resolution`).
pub fn resolution() -> f64 {
    seconds(sys::monotonic_resolution_ns())
}

/// Nanoseconds into seconds as CPython's `_PyTime_AsSecondsDouble` does
/// (whole nanoseconds divided once), so that `loop.time()` and
/// `time.monotonic()` agree to the bit on the same reading.
pub fn seconds(ns: u64) -> f64 {
    let whole = ns / 1_000_000_000;
    if whole * 1_000_000_000 == ns {
        whole as f64
    } else {
        ns as f64 / 1e9
    }
}

/// A timer: its deadline and scheduling order packed in one integer whose
/// order is (deadline, sequence), so heap comparisons are a single compare.
struct Entry<T> {
    key: u128,
    item: T,
}

/// Maps an f64 to a u64 with the same total order (`f64::total_cmp`).
fn order_bits(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// The inverse of [`order_bits`].
fn from_order_bits(bits: u64) -> f64 {
    f64::from_bits(if bits >> 63 == 1 {
        bits & !(1 << 63)
    } else {
        !bits
    })
}

impl<T> Entry<T> {
    fn when(&self) -> f64 {
        from_order_bits((self.key >> 64) as u64)
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest timer.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key.cmp(&self.key)
    }
}

/// Timers ordered by deadline, then by scheduling order.
pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    seq: u64,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T> TimerHeap<T> {
    /// Schedules `item` at `when` (loop time, seconds). A NaN deadline is
    /// due at once, as in asyncio's loop (which pops a timer unless its
    /// deadline compares at or after the end of the iteration).
    pub fn push(&mut self, when: f64, item: T) {
        let when = if when.is_nan() {
            f64::NEG_INFINITY
        } else {
            when
        };
        self.seq += 1;
        let key = (u128::from(order_bits(when)) << 64) | u128::from(self.seq);
        self.heap.push(Entry { key, item });
    }

    /// The earliest timer.
    pub fn peek(&self) -> Option<(f64, &T)> {
        self.heap.peek().map(|e| (e.when(), &e.item))
    }

    /// Removes the earliest timer.
    pub fn pop(&mut self) -> Option<(f64, T)> {
        self.heap.pop().map(|e| (e.when(), e.item))
    }

    /// Removes the earliest timer if it is due before `end`, with its deadline.
    pub fn pop_due(&mut self, end: f64) -> Option<(f64, T)> {
        match self.heap.peek() {
            Some(e) if e.when() < end => self.pop(),
            _ => None,
        }
    }

    /// How many timers are scheduled, cancelled ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no timer is scheduled.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Keeps the timers for which `keep` is true and returns the others, so
    /// the caller can release them outside any lock.
    pub fn split_off(&mut self, mut keep: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut dropped = Vec::new();
        let kept: Vec<Entry<T>> = std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .filter_map(|e| {
                if keep(&e.item) {
                    Some(e)
                } else {
                    dropped.push(e.item);
                    None
                }
            })
            .collect();
        self.heap = BinaryHeap::from(kept);
        dropped
    }

    /// Every timer, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|e| &e.item)
    }

    /// Removes every timer.
    pub fn take_all(&mut self) -> Vec<T> {
        std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|e| e.item)
            .collect()
    }
}

/// The loop's scheduled `TimerHandle`s. A handle on the heap has its
/// `_scheduled` flag set; cancelling it only counts it
/// ([`Timers::cancelled`]), and [`Timers::prune`] drops cancelled timers as
/// asyncio's `_run_once` does, which keeps memory flat under
/// schedule-then-cancel churn.
#[derive(Default)]
pub struct Timers {
    heap: TimerHeap<Py<PyAny>>,
    /// Cancelled timers still on the heap.
    cancelled: usize,
}

impl Timers {
    /// Schedules `timer` at `when`.
    pub fn push(&mut self, when: f64, timer: Bound<'_, PyAny>) {
        handle::set_scheduled(&timer, true);
        self.heap.push(when, timer.unbind());
    }

    /// `loop._timer_handle_cancelled(timer)` for a timer still on the heap
    /// (`handle::is_scheduled`): counts it.
    pub fn cancelled(&mut self) {
        self.cancelled += 1;
    }

    /// The earliest deadline, cancelled timers included.
    pub fn next_deadline(&self) -> Option<f64> {
        self.heap.peek().map(|(when, _)| when)
    }

    /// Removes the earliest timer if it is due before `end`, with its deadline.
    pub fn pop_due(&mut self, py: Python<'_>, end: f64) -> Option<(f64, Py<PyAny>)> {
        let (when, timer) = self.heap.pop_due(end)?;
        handle::set_scheduled(timer.bind(py), false);
        Some((when, timer))
    }

    /// Timers scheduled and not cancelled.
    pub fn pending(&self) -> usize {
        self.heap.len().saturating_sub(self.cancelled)
    }

    /// Drops cancelled timers as asyncio does: all of them once they are
    /// most of a large heap, otherwise those at its head. Returns them, to
    /// be released once the timers are no longer borrowed.
    pub fn prune(&mut self, py: Python<'_>) -> Vec<Py<PyAny>> {
        let n = self.heap.len();
        let dropped = if n > MIN_SCHEDULED_TIMER_HANDLES && self.cancelled * 2 > n {
            self.cancelled = 0;
            self.heap.split_off(|t| !handle::is_cancelled(t.bind(py)))
        } else {
            let mut dropped = Vec::new();
            while self
                .heap
                .peek()
                .is_some_and(|(_, t)| handle::is_cancelled(t.bind(py)))
            {
                self.cancelled = self.cancelled.saturating_sub(1);
                dropped.extend(self.heap.pop().map(|(_, t)| t));
            }
            dropped
        };
        for t in &dropped {
            handle::set_scheduled(t.bind(py), false);
        }
        dropped
    }

    /// True when no timer is scheduled.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Removes every timer.
    pub fn take_all(&mut self) -> Vec<Py<PyAny>> {
        self.cancelled = 0;
        self.heap.take_all()
    }
}

impl Traverse for Timers {
    /// Heaped timers may be untracked: see [`handle::visit`].
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.heap.iter().try_for_each(|t| handle::visit(t, visit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_then_fifo_order() {
        let mut h = TimerHeap::default();
        h.push(3.0, "c");
        h.push(1.0, "a1");
        h.push(2.0, "b");
        h.push(1.0, "a2");
        let order: Vec<_> = std::iter::from_fn(|| h.pop().map(|(_, x)| x)).collect();
        assert_eq!(order, ["a1", "a2", "b", "c"]);
    }

    #[test]
    fn a_nan_deadline_is_due_at_once() {
        let mut h = TimerHeap::default();
        h.push(1.0, 1);
        h.push(f64::NAN, 2);
        assert_eq!(h.pop_due(0.0).map(|(_, x)| x), Some(2));
        assert_eq!(h.pop_due(0.0), None);
    }

    #[test]
    fn pop_due_respects_the_end_time() {
        let mut h = TimerHeap::default();
        h.push(1.0, 1);
        h.push(2.0, 2);
        assert_eq!(h.pop_due(1.0), None);
        assert_eq!(h.pop_due(1.5), Some((1.0, 1)));
        assert_eq!(h.pop_due(1.5), None);
        assert_eq!(h.peek().map(|(w, _)| w), Some(2.0));
    }

    #[test]
    fn split_off_keeps_order_and_returns_the_rest() {
        let mut h = TimerHeap::default();
        for i in 0..1000 {
            h.push(f64::from(i % 10), i);
        }
        let dropped = h.split_off(|i| i % 2 == 0);
        assert_eq!(dropped.len(), 500);
        assert_eq!(h.len(), 500);
        let mut last = (f64::MIN, -1);
        while let Some((w, i)) = h.pop() {
            assert!(i % 2 == 0);
            assert!((w, i) > last);
            last = (w, i);
        }
    }

    #[test]
    fn order_bits_keep_the_order_of_floats() {
        let xs = [
            f64::NEG_INFINITY,
            -1e300,
            -2.5,
            -0.0,
            0.0,
            1e-300,
            1.0,
            86400.5,
            f64::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(order_bits(w[0]) < order_bits(w[1]), "{} < {}", w[0], w[1]);
        }
        for x in xs {
            assert_eq!(from_order_bits(order_bits(x)).to_bits(), x.to_bits());
        }
    }

    #[test]
    fn clock_is_monotonic_with_ns_resolution() {
        let a = monotonic();
        let b = monotonic();
        assert!(b >= a);
        assert!(resolution() <= 1e-6);
    }
}
