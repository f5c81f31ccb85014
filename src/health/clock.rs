//! The clock the health figures are read on, in ticks: the CPU's
//! time-stamp counter where it is invariant (x86-64: read in about 10 ns,
//! where the vDSO's `clock_gettime` takes about 25, and a reading per
//! callback is the figures' main cost), else the monotonic clock in
//! nanoseconds. Ticks become nanoseconds at the rate measured between the
//! process's first reading and a later one, measured again each time that
//! span has doubled and fixed once it reaches a second: no calibration loop
//! at start-up, no clock reading per conversion.

use crate::sys::monotonic_ns;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

/// The first reading: whether the counter is used, and the counter and the
/// monotonic clock at one instant.
struct Origin {
    tsc: bool,
    ticks: u64,
    ns: u64,
}

/// Nanoseconds per tick (f64 bits) once fixed; 0 until then.
static RATE: AtomicU64 = AtomicU64::new(0);
/// Until then, the rate last measured (f64 bits), and the tick count at
/// which it is measured again: when the span it was measured over has
/// doubled. About ten measurements fix the rate, each a cold call.
static PROVISIONAL: AtomicU64 = AtomicU64::new(0);
static REFRESH_AT: AtomicU64 = AtomicU64::new(0);
/// How long the rate is measured over before it is fixed.
const CALIBRATION_NS: u64 = 1_000_000_000;
/// The shortest span a rate is measured over.
const MIN_SPAN_NS: u64 = 1_000_000;
/// The most the two monotonic readings around a counter reading may be
/// apart: a measured rate is good to twice this over its span.
const MAX_READ_GAP_NS: u64 = 1_000;

#[cfg(target_arch = "x86_64")]
// `__cpuid` is safe from Rust 1.87 on, unsafe before.
#[allow(unused_unsafe)]
fn invariant_tsc() -> bool {
    use std::arch::x86_64::__cpuid;
    // SAFETY: every x86-64 CPU has CPUID; leaf 0x8000_0007 is read only if
    // the highest extended leaf reaches it. Its EDX bit 8 is the invariant
    // TSC (constant rate, not stopped in sleep states).
    unsafe { __cpuid(0x8000_0000).eax >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0 }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn read(tsc: bool) -> u64 {
    if tsc {
        // SAFETY: RDTSC exists on every x86-64 CPU.
        unsafe { std::arch::x86_64::_rdtsc() }
    } else {
        monotonic_ns()
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn invariant_tsc() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn read(_tsc: bool) -> u64 {
    monotonic_ns()
}

fn origin() -> &'static Origin {
    static ORIGIN: OnceLock<Origin> = OnceLock::new();
    ORIGIN.get_or_init(|| {
        let tsc = invariant_tsc();
        let (ticks, ns) = paired(tsc);
        Origin { tsc, ticks, ns }
    })
}

/// How often [`paired`] tries for a gap within [`MAX_READ_GAP_NS`].
const PAIRING_TRIES: u32 = 100;

/// The counter and the monotonic clock read at one instant, to within
/// [`MAX_READ_GAP_NS`]: a reading preempted between the two is taken again.
/// Where the clocks are that slow to read (an emulated clock source,
/// valgrind), the closest of [`PAIRING_TRIES`] readings.
fn paired(tsc: bool) -> (u64, u64) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..PAIRING_TRIES {
        let before = monotonic_ns();
        let ticks = read(tsc);
        let gap = monotonic_ns().saturating_sub(before);
        if gap < best.0 {
            best = (gap, ticks, before + gap / 2);
        }
        if gap <= MAX_READ_GAP_NS {
            break;
        }
    }
    (best.1, best.2)
}

/// The clock now, in ticks.
#[inline]
pub fn now() -> u64 {
    read(origin().tsc)
}

/// Nanoseconds per tick at tick count `now`: a conversion factor a caller
/// holding a reading uses without reading the clock again.
#[derive(Clone, Copy)]
pub struct Rate(f64);

impl Rate {
    /// A span of `ticks`, in nanoseconds.
    #[inline]
    pub fn to_nanos(self, ticks: u64) -> u64 {
        (ticks as f64 * self.0) as u64
    }

    /// A span of `seconds`, in ticks (0 for a negative or NaN span).
    #[inline]
    pub fn from_seconds(self, seconds: f64) -> u64 {
        (seconds * 1e9 / self.0) as u64
    }

    /// A span of `ns` nanoseconds, in ticks.
    #[inline]
    pub fn from_nanos(self, ns: u64) -> u64 {
        (ns as f64 / self.0) as u64
    }
}

/// The rate at tick count `now` (a reading of [`now`]): an atomic load or
/// two, but for the few measurements of the process's first second.
#[inline]
pub fn rate(now: u64) -> Rate {
    let fixed = RATE.load(Relaxed);
    if fixed != 0 {
        return Rate(f64::from_bits(fixed));
    }
    if now < REFRESH_AT.load(Relaxed) {
        return Rate(f64::from_bits(PROVISIONAL.load(Relaxed)));
    }
    measure()
}

/// Measures the rate over the span since the first reading (at least
/// [`MIN_SPAN_NS`]: a measurement that soon waits that long, once), fixing
/// it once the span reaches [`CALIBRATION_NS`].
#[cold]
fn measure() -> Rate {
    let o = origin();
    if !o.tsc {
        RATE.store(1f64.to_bits(), Relaxed);
        return Rate(1.0);
    }
    let (ticks, ns) = loop {
        let (ticks, ns) = paired(true);
        if ns - o.ns >= MIN_SPAN_NS {
            break (ticks, ns);
        }
        std::hint::spin_loop();
    };
    let span = ticks.saturating_sub(o.ticks).max(1);
    let rate = (ns - o.ns) as f64 / span as f64;
    if ns - o.ns >= CALIBRATION_NS {
        RATE.store(rate.to_bits(), Relaxed);
    } else {
        PROVISIONAL.store(rate.to_bits(), Relaxed);
        REFRESH_AT.store(ticks.saturating_add(span), Relaxed);
    }
    Rate(rate)
}

/// A span of `ticks`, in nanoseconds.
pub fn to_nanos(ticks: u64) -> u64 {
    rate(now()).to_nanos(ticks)
}

/// A span of `ns` nanoseconds, in ticks.
pub fn from_nanos(ns: u64) -> u64 {
    rate(now()).from_nanos(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        let rate = rate(now());
        for ns in [0, 1_000, 1_000_000, 50_000_000_000] {
            let back = rate.to_nanos(rate.from_nanos(ns));
            assert!(back.abs_diff(ns) <= ns / 1_000_000 + 2, "{ns} -> {back}");
        }
        assert_eq!(rate.from_seconds(f64::NAN), 0);
        assert_eq!(rate.from_seconds(-1.0), 0);
    }

    #[test]
    fn measurements_agree() {
        // Two measurements differ by at most a microsecond of reading gap
        // (or, where the clocks are slow to read, the closest pairing's)
        // over at least a millisecond of span each.
        let first = rate(now()).0;
        std::thread::sleep(std::time::Duration::from_millis(3));
        let second = rate(now()).0;
        assert!(
            (first - second).abs() <= first * 1e-2,
            "{first} vs {second}"
        );
    }

    #[test]
    fn ticks_follow_the_monotonic_clock() {
        let (t0, m0) = (now(), monotonic_ns());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (t1, m1) = (now(), monotonic_ns());
        let (slept, expected) = (to_nanos(t1 - t0), m1 - m0);
        assert!(
            slept.abs_diff(expected) <= expected / 100 + 100_000,
            "{slept} vs {expected}"
        );
    }
}
