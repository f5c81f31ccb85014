//! The slowest callbacks: the N longest runs, slowest first.

/// One callback's run.
#[derive(Clone, Debug, PartialEq)]
pub struct SlowCallback {
    /// How long it ran, in nanoseconds.
    pub duration: u64,
    /// When it started, on the loop's clock (nanoseconds).
    pub started: u64,
    /// The callback's qualified name (a task's coroutine's).
    pub name: String,
    /// `file:line` of its code (a task's suspension point).
    pub location: String,
}

/// The `capacity` slowest callbacks seen.
#[derive(Clone, Debug)]
pub struct Slowest {
    capacity: usize,
    entries: Vec<SlowCallback>,
}

impl Slowest {
    /// Keeps the `capacity` slowest.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Vec::new(),
        }
    }

    /// A run must last longer than this to enter the list.
    #[inline]
    pub fn floor(&self) -> u64 {
        if self.entries.len() < self.capacity {
            0
        } else {
            self.entries.last().map_or(u64::MAX, |e| e.duration)
        }
    }

    /// Enters a run longer than [`Slowest::floor`], dropping the fastest
    /// entry when full.
    pub fn insert(&mut self, entry: SlowCallback) {
        if self.capacity == 0 || (self.is_full() && entry.duration <= self.floor()) {
            return;
        }
        let at = self
            .entries
            .partition_point(|e| e.duration >= entry.duration);
        self.entries.insert(at, entry);
        self.entries.truncate(self.capacity);
    }

    fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity
    }

    /// The entries, slowest first.
    pub fn entries(&self) -> &[SlowCallback] {
        &self.entries
    }

    /// How many it keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(duration: u64) -> SlowCallback {
        SlowCallback {
            duration,
            started: 0,
            name: format!("cb{duration}"),
            location: String::new(),
        }
    }

    #[test]
    fn keeps_the_slowest_in_order() {
        let mut s = Slowest::new(3);
        assert_eq!(s.floor(), 0);
        for d in [5, 1, 9, 3, 7, 2] {
            if d > s.floor() {
                s.insert(run(d));
            }
        }
        let kept: Vec<u64> = s.entries().iter().map(|e| e.duration).collect();
        assert_eq!(kept, [9, 7, 5]);
        assert_eq!(s.floor(), 5);
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let mut s = Slowest::new(0);
        s.insert(run(1));
        assert!(s.entries().is_empty());
        assert_eq!(s.floor(), u64::MAX);
    }
}
