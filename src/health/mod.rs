//! Loop health figures: how busy the loop is, how late its callbacks run,
//! which ones ran longest, and what it did. Pure bookkeeping on readings of
//! [`clock`] (in ticks), which the engine takes: one per callback (its end
//! is the next one's start, and an iteration's first run starts at the
//! latest reading unless the loop did bulk work since), two per wait. Readings become nanoseconds only in a [`Snapshot`]. No Python
//! objects.

pub mod clock;
mod histogram;
mod slow;

pub use histogram::Histogram;
pub use slow::{SlowCallback, Slowest};

/// How many slowest callbacks a loop keeps unless told otherwise.
pub const DEFAULT_SLOWEST: usize = 10;

/// Runs this short (in ticks: 25-100 µs on a 1-4 GHz counter, 100 µs on
/// the monotonic clock) are never among the slowest: naming a run costs
/// microseconds, which the shortest runs would pay while the list fills.
pub const SLOWEST_MIN: u64 = 100_000;

/// What the loop did, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Iterations of the loop (`_run_once`).
    pub iterations: u64,
    /// Callbacks run: handles and native I/O callbacks (set by snapshots:
    /// while recording, the lag histogram counts them).
    pub callbacks: u64,
    /// Readiness events the backend reported.
    pub io_events: u64,
    /// Timers that came due and were queued.
    pub timers_fired: u64,
    /// Timers cancelled while scheduled.
    pub timers_cancelled: u64,
    /// Wake-ups asked for from other threads (`call_soon_threadsafe`).
    pub threadsafe_wakeups: u64,
    /// The most callbacks ready at the start of one iteration.
    pub ready_max: u64,
}

/// One loop's figures since it was made or last reset.
#[derive(Clone)]
pub struct Health {
    /// Whether the engine records anything.
    pub enabled: bool,
    /// What the loop did.
    pub counters: Counters,
    since: u64,
    running: u64,
    run_started: Option<u64>,
    idle: u64,
    wait_started: Option<u64>,
    /// The latest reading, and whether the loop did bulk work since
    /// ([`Health::worked`]).
    last: u64,
    stale: bool,
    lag: Histogram,
    slowest: Slowest,
    log_threshold: Option<u64>,
    /// Runs longer than this are named or logged: the lower of the slowest
    /// list's floor and the log threshold (less one).
    notable: u64,
}

/// A reading of [`Health`] at one instant, spans in progress included, in
/// nanoseconds (instants on the clock the reading was anchored to).
pub struct Snapshot {
    /// How long ago the figures started.
    pub elapsed: u64,
    /// Time the loop ran (`run_forever` or an iteration).
    pub running: u64,
    /// Of that, time it waited for I/O.
    pub idle: u64,
    /// See [`Counters`].
    pub counters: Counters,
    /// The lag histogram's non-empty buckets: `(index, low, high, count)`.
    pub lag_buckets: Vec<(usize, u64, u64, u64)>,
    /// The sum of the lags.
    pub lag_sum: u64,
    /// The largest lag.
    pub lag_max: u64,
    /// The slowest callbacks, slowest first, `started` on the anchor's clock.
    pub slowest: Vec<SlowCallback>,
}

impl Default for Health {
    /// Figures that record nothing.
    fn default() -> Self {
        Self::new(0, false)
    }
}

impl Health {
    /// Figures starting at `now`, recorded if `enabled`.
    pub fn new(now: u64, enabled: bool) -> Self {
        Self {
            enabled,
            counters: Counters::default(),
            since: now,
            running: 0,
            run_started: None,
            idle: 0,
            wait_started: None,
            last: now,
            stale: true,
            lag: Histogram::default(),
            slowest: Slowest::new(DEFAULT_SLOWEST),
            log_threshold: None,
            notable: SLOWEST_MIN,
        }
    }

    fn update_notable(&mut self) {
        let log = self.log_threshold.map_or(u64::MAX, |t| t.saturating_sub(1));
        self.notable = self.slowest_floor().min(log);
    }

    /// Runs at most this long are not among the slowest.
    fn slowest_floor(&self) -> u64 {
        self.slowest.floor().max(SLOWEST_MIN)
    }

    /// Runs at least this long are reported to the loop's logger
    /// (clock ticks; `None`: never).
    pub fn log_threshold(&self) -> Option<u64> {
        self.log_threshold
    }

    /// Sets [`Health::log_threshold`].
    pub fn set_log_threshold(&mut self, threshold: Option<u64>) {
        self.log_threshold = threshold;
        self.update_notable();
    }

    /// Starts over at `now`, keeping the settings and the spans in progress.
    pub fn reset(&mut self, now: u64) {
        let fresh = Self {
            run_started: self.run_started.map(|_| now),
            wait_started: self.wait_started.map(|_| now),
            slowest: Slowest::new(self.slowest.capacity()),
            log_threshold: self.log_threshold,
            ..Self::new(now, self.enabled)
        };
        *self = fresh;
        self.update_notable();
    }

    /// Keeps the `n` slowest callbacks from now on (those kept so far, up to `n`).
    pub fn keep_slowest(&mut self, n: usize) {
        let mut slowest = Slowest::new(n);
        for e in self.slowest.entries() {
            slowest.insert(e.clone());
        }
        self.slowest = slowest;
        self.update_notable();
    }

    /// The loop starts running (`run_forever`); false when it already was.
    pub fn run_started(&mut self, now: u64) -> bool {
        if self.run_started.is_some() {
            return false;
        }
        self.run_started = Some(now);
        self.last = now;
        true
    }

    /// The loop stops running.
    pub fn run_stopped(&mut self, now: u64) {
        if let Some(start) = self.run_started.take() {
            self.running += now.saturating_sub(start);
        }
    }

    /// The loop starts waiting for I/O.
    #[inline]
    pub fn wait_started(&mut self, now: u64) {
        self.wait_started = Some(now);
    }

    /// The wait ends with `events` reports.
    #[inline]
    pub fn wait_ended(&mut self, now: u64, events: usize) {
        if let Some(start) = self.wait_started.take() {
            self.idle += now.saturating_sub(start);
        }
        self.last = now;
        self.counters.io_events += events as u64;
    }

    /// The loop did work between two runs that is no callback's (pruned
    /// cancelled timers, queued due ones, dispatched I/O events): the next
    /// iteration's first run starts at a reading of its own.
    #[inline]
    pub fn worked(&mut self) {
        self.stale = true;
    }

    /// Where an iteration's first run starts: the latest reading (the
    /// previous run's end, the wait's end, the run's start), unless the
    /// loop worked since; then the clock now.
    #[inline]
    pub fn iteration_start(&mut self) -> u64 {
        if self.stale {
            self.stale = false;
            self.last = clock::now();
        }
        self.last
    }

    /// Notes a reading taken between runs: the next run starts there.
    #[inline]
    pub fn saw(&mut self, now: u64) {
        self.last = now;
    }

    /// An iteration with `ready` callbacks to run begins.
    #[inline]
    pub fn iteration(&mut self, ready: usize) {
        self.counters.iterations += 1;
        self.counters.ready_max = self.counters.ready_max.max(ready as u64);
    }

    /// A callback ran from `start` to `end`, `lag` ticks after it was due;
    /// true when it is slow enough to be named ([`Health::add_slow`]) or
    /// logged.
    #[inline]
    pub fn ran(&mut self, start: u64, end: u64, lag: u64) -> bool {
        self.last = end;
        self.lag.record(lag);
        end.saturating_sub(start) > self.notable
    }

    /// How many slow callbacks are kept.
    pub fn slowest_capacity(&self) -> usize {
        self.slowest.capacity()
    }

    /// Whether a run of `duration` belongs in the slowest list.
    pub fn is_slowest(&self, duration: u64) -> bool {
        duration > self.slowest_floor()
    }

    /// Enters a slow callback's run.
    pub fn add_slow(&mut self, entry: SlowCallback) {
        self.slowest.insert(entry);
        self.update_notable();
    }

    /// The figures at `now` (ticks), counting the run and the wait in
    /// progress; instants relative to `anchor`, the same moment on another
    /// clock, in nanoseconds.
    pub fn snapshot(&self, now: u64, anchor: u64) -> Snapshot {
        let rate = clock::rate(now);
        let ns = |ticks| rate.to_nanos(ticks);
        let open = |start: Option<u64>| start.map_or(0, |s| now.saturating_sub(s));
        let counters = Counters {
            callbacks: self.lag.count(),
            ..self.counters
        };
        Snapshot {
            elapsed: ns(now.saturating_sub(self.since)),
            running: ns(self.running + open(self.run_started)),
            idle: ns(self.idle + open(self.wait_started)),
            counters,
            lag_buckets: self
                .lag
                .buckets()
                .into_iter()
                .map(|(i, low, high, n)| (i, ns(low), ns(high), n))
                .collect(),
            lag_sum: ns(self.lag.sum()),
            lag_max: ns(self.lag.max()),
            slowest: self
                .slowest
                .entries()
                .iter()
                .map(|e| SlowCallback {
                    duration: ns(e.duration),
                    started: anchor.saturating_sub(ns(now.saturating_sub(e.started))),
                    ..e.clone()
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_and_idle_include_spans_in_progress() {
        let mut h = Health::new(100, true);
        assert!(h.run_started(100));
        assert!(!h.run_started(150));
        h.wait_started(200);
        let s = h.snapshot(300, 0);
        let ns = clock::to_nanos;
        assert_eq!((s.running, s.idle), (ns(200), ns(100)));
        h.wait_ended(400, 2);
        h.run_stopped(500);
        let s = h.snapshot(10_000, 0);
        assert_eq!(
            (s.running, s.idle, s.counters.io_events),
            (ns(400), ns(200), 2)
        );
    }

    #[test]
    fn reset_starts_over_but_keeps_settings_and_spans() {
        let mut h = Health::new(0, true);
        h.set_log_threshold(Some(7));
        h.keep_slowest(2);
        h.run_started(0);
        h.iteration(3);
        assert!(h.ran(0, 8, 1));
        h.add_slow(SlowCallback {
            duration: SLOWEST_MIN + 5,
            started: 0,
            name: "a".into(),
            location: "f:1".into(),
        });
        h.reset(50);
        let s = h.snapshot(60, 0);
        assert_eq!(s.counters, Counters::default());
        let ns = clock::to_nanos;
        assert_eq!(
            (s.elapsed, s.running, s.lag_buckets.len()),
            (ns(10), ns(10), 0)
        );
        assert!(s.slowest.is_empty());
        assert_eq!(h.log_threshold(), Some(7));
        assert_eq!(h.slowest.capacity(), 2);
    }

    #[test]
    fn a_run_is_named_when_long_and_the_list_has_room_or_it_beats_the_slowest() {
        let mut h = Health::new(0, true);
        h.keep_slowest(1);
        let long = SLOWEST_MIN + 10;
        assert!(!h.ran(0, SLOWEST_MIN, 0));
        assert!(h.ran(0, long, 0));
        h.add_slow(SlowCallback {
            duration: long,
            started: 0,
            name: "a".into(),
            location: String::new(),
        });
        assert!(!h.ran(0, long, 0));
        assert!(h.ran(0, long + 1, 0));
        h.set_log_threshold(Some(3));
        assert!(h.ran(0, 3, 0));
        assert_eq!(h.snapshot(0, 0).counters.callbacks, 5);
    }
}
