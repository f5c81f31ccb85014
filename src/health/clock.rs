//! The clock the health figures are read on, in ticks: the CPU's
//! time-stamp counter where it is invariant (x86-64: read in about 10 ns,
//! where the vDSO's `clock_gettime` takes about 25, and a reading per
//! callback is the figures' main cost), else the monotonic clock in
//! nanoseconds. Ticks become nanoseconds at the rate measured between the
//! process's first reading and the latest conversion, fixed once a second
//! has passed: no calibration loop at start-up.

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
/// How long the rate is measured over before it is fixed.
const CALIBRATION_NS: u64 = 1_000_000_000;
/// The shortest span a rate is measured over.
const MIN_SPAN_NS: u64 = 1_000_000;

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
        Origin {
            tsc,
            ticks: read(tsc),
            ns: monotonic_ns(),
        }
    })
}

/// The clock now, in ticks.
#[inline]
pub fn now() -> u64 {
    read(origin().tsc)
}

/// Nanoseconds per tick.
fn rate() -> f64 {
    let fixed = f64::from_bits(RATE.load(Relaxed));
    if fixed > 0.0 {
        return fixed;
    }
    let o = origin();
    if !o.tsc {
        RATE.store(1f64.to_bits(), Relaxed);
        return 1.0;
    }
    let mut ns = monotonic_ns();
    while ns - o.ns < MIN_SPAN_NS {
        std::hint::spin_loop();
        ns = monotonic_ns();
    }
    let ticks = read(true);
    let rate = (ns - o.ns) as f64 / ticks.saturating_sub(o.ticks).max(1) as f64;
    if ns - o.ns >= CALIBRATION_NS {
        RATE.store(rate.to_bits(), Relaxed);
    }
    rate
}

/// A span of `ticks`, in nanoseconds.
pub fn to_nanos(ticks: u64) -> u64 {
    (ticks as f64 * rate()) as u64
}

/// A span of `ns` nanoseconds, in ticks.
pub fn from_nanos(ns: u64) -> u64 {
    (ns as f64 / rate()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        // Until the rate is fixed, each conversion measures it anew over
        // at least a millisecond, so two conversions may differ by the
        // clocks' read jitter over that span: well under 1e-4.
        for ns in [0, 1_000, 1_000_000, 50_000_000_000] {
            let back = to_nanos(from_nanos(ns));
            assert!(back.abs_diff(ns) <= ns / 10_000 + 2, "{ns} -> {back}");
        }
    }

    #[test]
    fn ticks_follow_the_monotonic_clock() {
        let t0 = now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let slept = to_nanos(now() - t0);
        assert!((19_000_000..200_000_000).contains(&slept), "{slept}");
    }
}
