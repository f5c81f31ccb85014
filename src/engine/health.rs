//! The loop's health figures as Python sees them: a snapshot turned into
//! the dict `oxloop._health` builds its `Health` object from (times in
//! nanoseconds, instants on the loop's clock).

use crate::health::Snapshot;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// `snapshot`, with the gauges read beside it: callbacks
/// ready, timers pending and fds watched.
pub fn to_dict<'py>(
    py: Python<'py>,
    snapshot: &Snapshot,
    enabled: bool,
    gauges: [usize; 3],
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let c = &snapshot.counters;
    let [ready, timers_pending, fds_watched] = gauges;
    let slowest: Vec<_> = snapshot
        .slowest
        .iter()
        .map(|e| (e.duration, e.started, e.name.as_str(), e.location.as_str()))
        .collect();
    for (key, value) in [
        ("enabled", enabled.into_pyobject(py)?.to_owned().into_any()),
        ("elapsed", snapshot.elapsed.into_pyobject(py)?.into_any()),
        ("running", snapshot.running.into_pyobject(py)?.into_any()),
        ("idle", snapshot.idle.into_pyobject(py)?.into_any()),
        ("iterations", c.iterations.into_pyobject(py)?.into_any()),
        ("callbacks", c.callbacks.into_pyobject(py)?.into_any()),
        ("io_events", c.io_events.into_pyobject(py)?.into_any()),
        ("timers_fired", c.timers_fired.into_pyobject(py)?.into_any()),
        (
            "timers_cancelled",
            c.timers_cancelled.into_pyobject(py)?.into_any(),
        ),
        (
            "threadsafe_wakeups",
            c.threadsafe_wakeups.into_pyobject(py)?.into_any(),
        ),
        ("ready_max", c.ready_max.into_pyobject(py)?.into_any()),
        ("ready", ready.into_pyobject(py)?.into_any()),
        (
            "timers_pending",
            timers_pending.into_pyobject(py)?.into_any(),
        ),
        ("fds_watched", fds_watched.into_pyobject(py)?.into_any()),
        ("lag_sum", snapshot.lag_sum.into_pyobject(py)?.into_any()),
        ("lag_max", snapshot.lag_max.into_pyobject(py)?.into_any()),
        (
            "lag_buckets",
            (&snapshot.lag_buckets).into_pyobject(py)?.into_any(),
        ),
        ("slowest", slowest.into_pyobject(py)?.into_any()),
    ] {
        d.set_item(key, value)?;
    }
    Ok(d)
}
