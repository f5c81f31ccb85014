//! Knowing that the process forked, cheaply: a counter the C library's
//! `pthread_atfork` child handler bumps, which an engine compares with the
//! value it saw when it opened its backend.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Once;

static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn in_child() {
    // Async-signal-safe: one atomic increment.
    FORKS.fetch_add(1, Relaxed);
}

/// Starts counting forks (once per process).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
}

/// How many times this process is a forked child of one that loaded us.
pub fn generation() -> u64 {
    FORKS.load(Relaxed)
}
