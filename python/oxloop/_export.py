"""Health figures in Prometheus's text exposition format, and a collector
for `prometheus_client` (when that package is installed)."""

from __future__ import annotations

import math

from ._health import _COUNTERS, _GAUGES, Health

_PREFIX = "oxloop_"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str], **more: str) -> str:
    items = {**labels, **more}
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in items.items()) + "}"


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def families(health: Health):
    """`(name, type, help, [(suffix, extra labels, value)])` of each metric."""
    yield (
        "utilization",
        "gauge",
        "Share of the time the loop ran that it was busy (not waiting for I/O).",
        [("", {}, health.utilization)],
    )
    yield ("busy_seconds_total", "counter", "Seconds the loop was busy.", [("", {}, health.busy)])
    yield (
        "idle_seconds_total",
        "counter",
        "Seconds the loop waited for I/O.",
        [("", {}, health.idle)],
    )
    buckets = [
        ("_bucket", {"le": _number(bound)}, count) for bound, count in health.lag.cumulative()
    ]
    yield (
        "lag_seconds",
        "histogram",
        "Delay between when a callback was due and when it started.",
        [*buckets, ("_sum", {}, health.lag.total), ("_count", {}, health.lag.count)],
    )
    yield (
        "lag_max_seconds",
        "gauge",
        "The largest callback lag.",
        [("", {}, health.lag.max)],
    )
    slowest = health.slow_callbacks[0].duration if health.slow_callbacks else 0.0
    yield (
        "slowest_callback_seconds",
        "gauge",
        "How long the slowest callback ran.",
        [("", {}, slowest)],
    )
    for name, kind, text in _COUNTERS:
        yield (f"{name}_total", kind, text, [("", {}, getattr(health, name))])
    for name, kind, text in _GAUGES:
        yield (name, kind, text, [("", {}, getattr(health, name))])


def prometheus_text(readings) -> str:
    """The exposition text of `readings`, `(Health, labels)` pairs (one per
    loop), each metric family once."""
    readings = list(readings)
    by_family: dict[str, list[str]] = {}
    heads: dict[str, str] = {}
    for health, labels in readings:
        for name, kind, text, samples in families(health):
            full = _PREFIX + name
            heads[full] = f"# HELP {full} {text}\n# TYPE {full} {kind}\n"
            by_family.setdefault(full, []).extend(
                f"{full}{suffix}{_labels(labels, **extra)} {_number(value)}\n"
                for suffix, extra, value in samples
            )
    return "".join(heads[name] + "".join(lines) for name, lines in by_family.items())


class HealthCollector:
    """A `prometheus_client` collector of one loop's figures:
    `prometheus_client.REGISTRY.register(HealthCollector(loop))`. Scrapes run
    in the exporter's thread and read the loop's figures as they are then."""

    def __init__(self, loop, labels: dict[str, str] | None = None):
        self._loop = loop
        self._labels = labels or {}

    def collect(self):
        from prometheus_client.parser import text_string_to_metric_families

        from ._health import health

        yield from text_string_to_metric_families(
            prometheus_text([(health(self._loop), self._labels)])
        )
