"""Health figures as OpenTelemetry metrics (`pip install oxloop[otel]`).

OpenTelemetry's API has observable counters and gauges but no observable
histogram, and its Python SDK takes no pre-aggregated points: a histogram
is fed one measurement at a time, which per callback would cost more than
the figures themselves. So the lag is exported as OpenTelemetry's Node.js
runtime instrumentation exports its event loop delay (`nodejs.eventloop.
delay.p50` ...): its percentiles, mean, min and max over each collection
interval, as gauges, and its sum as a counter. The exact histogram
is in the Prometheus export.
"""

from __future__ import annotations

import weakref

from ._health import _COUNTERS, _GAUGES, _loop_of, health

_PREFIX = "oxloop.loop."

#: The lag figures exported as gauges: (name, attribute of `Lag`).
_LAG_GAUGES = [
    ("min", "min"),
    ("max", "max"),
    ("mean", "mean"),
    ("p50", "p50"),
    ("p90", "p90"),
    ("p99", "p99"),
    ("p999", "p999"),
]


def observe_health(loop=None, *, meter_provider=None, attributes=None) -> None:
    """Publishes the health figures of `loop` (the running loop by default)
    as OpenTelemetry metrics of the meter `oxloop`, from `meter_provider`
    (the global one by default), each with `attributes`. The figures are
    read when the SDK collects, in its thread; a loop garbage-collected
    since publishes nothing.

    Counters (monotonic, since the loop was made or its figures reset):
    `oxloop.loop.busy_time`, `oxloop.loop.idle_time` (s), `oxloop.loop.
    iterations`, `.callbacks`, `.io_events`, `.timers_fired`,
    `.timers_cancelled`, `.threadsafe_wakeups`, `.lag.sum` (s; over
    `.callbacks`, the mean lag). Gauges: `oxloop.loop.utilization` (since the figures began),
    `oxloop.loop.lag.min/max/mean/p50/p90/p99/p999` (s, over the interval
    since the previous collection), `oxloop.loop.slowest_callback` (s),
    `.ready`, `.ready_max`, `.timers_pending`, `.fds_watched`,
    `.transports_open`. One collection reads the figures once; with several
    readers, "since the previous collection" means any reader's.
    """
    try:
        from opentelemetry import metrics
    except ImportError as exc:
        raise ImportError(
            "oxloop.observe_health needs opentelemetry-api: pip install oxloop[otel]"
        ) from exc

    loop = _loop_of(loop)
    provider = meter_provider or metrics.get_meter_provider()
    meter = provider.get_meter("oxloop")
    collection = _Collection(weakref.ref(loop))
    attributes = dict(attributes or {})

    def instrument(kind, name, unit, description, value):
        def callback(options):
            reading = collection.reading(name)
            if reading is None:
                return []
            return [metrics.Observation(value(reading), attributes)]

        kind(_PREFIX + name, callbacks=[callback], unit=unit, description=description)

    counter, gauge = meter.create_observable_counter, meter.create_observable_gauge
    instrument(counter, "busy_time", "s", "Seconds the loop was busy.", lambda h: h.busy)
    instrument(counter, "idle_time", "s", "Seconds the loop waited for I/O.", lambda h: h.idle)
    instrument(
        gauge,
        "utilization",
        "1",
        "Share of the time the loop ran that it was busy.",
        lambda h: h.utilization,
    )
    for name, _, text in _COUNTERS:
        instrument(counter, name, "{" + name + "}", text, _attribute(name))
    for name, _, text in _GAUGES:
        instrument(gauge, name, "{" + name + "}", text, _attribute(name))
    instrument(counter, "lag.sum", "s", "Sum of the callbacks' lags.", lambda h: h.lag.total)
    for name, attribute in _LAG_GAUGES:
        instrument(
            gauge,
            f"lag.{name}",
            "s",
            f"Callback lag ({name}) since the previous collection.",
            _lag(collection, attribute),
        )
    instrument(
        gauge,
        "slowest_callback",
        "s",
        "How long the slowest callback ran.",
        lambda h: h.slow_callbacks[0].duration if h.slow_callbacks else 0.0,
    )


def _attribute(name):
    return lambda h: getattr(h, name)


class _Collection:
    """One reading of a loop's figures per collection, shared by all its
    instruments, so that one collection's figures are of one instant. A
    collection is over when an instrument is read again."""

    def __init__(self, ref):
        self._ref = ref
        self._read: set[str] = set()
        self._health = None
        #: The lags measured since the previous collection (all of them at the first).
        self.interval = None

    def reading(self, instrument: str):
        """The figures for `instrument` in this collection; None once the
        loop is gone."""
        if self._health is None or instrument in self._read:
            loop = self._ref()
            if loop is None:
                return None
            now = health(loop)
            self.interval = now.lag if self._health is None else now.lag - self._health.lag
            self._health = now
            self._read.clear()
        self._read.add(instrument)
        return self._health


def _lag(collection, attribute):
    """One lag figure over the lags measured since the previous collection."""
    return lambda h: getattr(collection.interval, attribute)
