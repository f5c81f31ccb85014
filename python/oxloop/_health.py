"""Loop health figures: `oxloop.health()` and what it returns.

The engine measures (src/health/): the time the loop ran and, of that, the
time it waited for I/O; each callback's lag (how long after it was due it
started) into a log-linear histogram; the slowest callbacks; counters. This
module turns a reading of those into a `Health` object and text.
"""

from __future__ import annotations

import asyncio
import functools
import math
import operator
import time
from asyncio import format_helpers
from fractions import Fraction
from typing import NamedTuple

_NS = 1e9

#: Upper bounds of the lag histogram's buckets in the Prometheus and
#: OpenTelemetry exports, in seconds.
LAG_BUCKETS = (
    0.00001,
    0.0001,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class SlowCallback(NamedTuple):
    """One of the slowest callbacks: what it was and how long it ran."""

    #: The callback's qualified name; for a task's step, its coroutine's.
    name: str
    #: `file:line` of its code; for a task's step, the line the coroutine
    #: was suspended at when the step ended.
    location: str
    #: How long it ran, in seconds.
    duration: float
    #: When it started, in the loop's time (`loop.time()`).
    when: float
    #: When it started, as a Unix timestamp (`time.time()`).
    timestamp: float


class Lag:
    """The lag of the callbacks run: how long after each became due (a
    `call_soon` once its caller returned, a timer at its deadline, an I/O
    callback once the wait reported its fd) it started. Seconds; percentiles
    are exact to within 1/32 of their value (the histogram's buckets)."""

    def __init__(self, buckets, total: int, high: int):
        #: `(index, low, high, count)` of the histogram's non-empty buckets,
        #: bounds in nanoseconds, lowest first. The index names a bucket
        #: across readings (its bounds in nanoseconds may move by the clock
        #: rate's calibration).
        self._buckets = [(i, lo, hi, n) for i, lo, hi, n in buckets]
        #: How many callbacks were measured.
        self.count: int = sum(b[3] for b in self._buckets)
        self._sum = total
        self._min = self._buckets[0][1] if self._buckets else 0
        self._max = high

    @property
    def max(self) -> float:
        """The largest lag, in seconds (exact)."""
        return self._max / _NS

    @property
    def min(self) -> float:
        """The smallest lag, in seconds (its bucket's low end)."""
        return self._min / _NS

    @property
    def mean(self) -> float:
        """The mean lag, in seconds (exact; 0 when nothing was measured)."""
        return self._sum / self.count / _NS if self.count else 0.0

    @property
    def total(self) -> float:
        """The sum of the lags, in seconds."""
        return self._sum / _NS

    def percentile(self, q: float) -> float:
        """The lag at or below which `q` percent of the callbacks started
        (nearest rank), in seconds; 0 when nothing was measured."""
        if not 0 <= q <= 100 or math.isnan(q):
            raise ValueError(f"percentile must be in [0, 100], not {q!r}")
        if not self.count:
            return 0.0
        if q == 0:
            return self.min
        # The decimal `q` exactly: 99.9 / 100 * 1000 is 999.0000000000001 in floats.
        rank = max(1, math.ceil(Fraction(str(q)) * self.count / 100))
        seen = 0
        for _, _, hi, n in self._buckets:
            seen += n
            if seen >= rank:
                return min(max(hi, self._min), self._max) / _NS
        return self.max

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def p999(self) -> float:
        return self.percentile(99.9)

    def cumulative(self, bounds=LAG_BUCKETS) -> list[tuple[float, int]]:
        """`(upper bound in seconds, count of lags at or below it)` for each
        bound, then `(inf, count)`: the shape of a Prometheus histogram. A
        histogram bucket counts under a bound when its midpoint is at or
        below it."""
        out = []
        i = seen = 0
        for bound in bounds:
            limit = bound * _NS
            while (
                i < len(self._buckets) and (self._buckets[i][1] + self._buckets[i][2]) / 2 <= limit
            ):
                seen += self._buckets[i][3]
                i += 1
            out.append((bound, seen))
        out.append((math.inf, self.count))
        return out

    def __sub__(self, earlier: Lag) -> Lag:
        """The lags measured since `earlier` (a reading of the same figures);
        min and max are those of the later reading's buckets."""
        before = {i: n for i, _, _, n in earlier._buckets}
        buckets = [(i, lo, hi, n - before.get(i, 0)) for i, lo, hi, n in self._buckets]
        buckets = [b for b in buckets if b[3] > 0]
        high = min(max((b[2] for b in buckets), default=0), self._max)
        return Lag(buckets, max(self._sum - earlier._sum, 0), high)

    def __repr__(self) -> str:
        return (
            f"<Lag count={self.count} p50={_ms(self.p50)} p99={_ms(self.p99)} max={_ms(self.max)}>"
        )


class Health:
    """A reading of one loop's health figures since the loop was made or its
    figures were last reset (`oxloop.reset_health`)."""

    def __init__(self, raw: dict, transports: int):
        #: Whether the loop records figures (`oxloop.configure_health`).
        self.enabled: bool = raw["enabled"]
        #: Seconds the figures cover (since creation or the last reset).
        self.elapsed: float = raw["elapsed"] / _NS
        #: Seconds the loop ran (in `run_forever` or one of its iterations).
        self.running: float = raw["running"] / _NS
        #: Of those, seconds it waited for I/O (idle).
        self.idle: float = min(raw["idle"], raw["running"]) / _NS
        #: Of those, seconds it was busy: running callbacks and itself.
        self.busy: float = self.running - self.idle
        #: Iterations of the loop.
        self.iterations: int = raw["iterations"]
        #: Callbacks run (handles, and native I/O callbacks of transports).
        self.callbacks: int = raw["callbacks"]
        #: Readiness events the backend reported.
        self.io_events: int = raw["io_events"]
        #: Timers that came due (as asyncio, the loop queues one cancelled
        #: behind an earlier due timer and skips it when it comes up).
        self.timers_fired: int = raw["timers_fired"]
        #: Timers cancelled while scheduled.
        self.timers_cancelled: int = raw["timers_cancelled"]
        #: Wake-ups from other threads (`call_soon_threadsafe`).
        self.threadsafe_wakeups: int = raw["threadsafe_wakeups"]
        #: Callbacks ready now, and the most ready at one iteration's start.
        self.ready: int = raw["ready"]
        self.ready_max: int = raw["ready_max"]
        #: Timers scheduled now (not cancelled).
        self.timers_pending: int = raw["timers_pending"]
        #: File descriptors watched now.
        self.fds_watched: int = raw["fds_watched"]
        #: Socket transports open now.
        self.transports_open: int = transports
        #: See `Lag`.
        self.lag = Lag(raw["lag_buckets"], raw["lag_sum"], raw["lag_max"])
        offset = time.time() - time.monotonic()
        #: The slowest callbacks, slowest first (`SlowCallback`).
        self.slow_callbacks: list[SlowCallback] = [
            SlowCallback(name, location, d / _NS, started / _NS, started / _NS + offset)
            for d, started, name, location in raw["slowest"]
        ]

    @property
    def utilization(self) -> float:
        """The share of the time the loop ran that it was busy, in [0, 1]
        (Node.js's event loop utilization); 0 for a loop that never ran."""
        return self.busy / self.running if self.running > 0 else 0.0

    def to_dict(self) -> dict:
        """The figures as plain data (JSON-ready)."""
        return {
            "enabled": self.enabled,
            "elapsed": self.elapsed,
            "running": self.running,
            "busy": self.busy,
            "idle": self.idle,
            "utilization": self.utilization,
            "lag": {
                "count": self.lag.count,
                "mean": self.lag.mean,
                "p50": self.lag.p50,
                "p90": self.lag.p90,
                "p99": self.lag.p99,
                "p999": self.lag.p999,
                "max": self.lag.max,
            },
            "slow_callbacks": [s._asdict() for s in self.slow_callbacks],
            **{name: getattr(self, name) for name, _, _ in _COUNTERS + _GAUGES},
        }

    def to_prometheus(self, labels: dict[str, str] | None = None) -> str:
        """The figures in Prometheus's text exposition format, metric names
        prefixed `oxloop_`; `labels` are added to every sample."""
        from ._export import prometheus_text

        return prometheus_text([(self, labels or {})])

    def summary(self) -> str:
        """A few lines for a person: utilization, lag, counters, the slowest
        callbacks."""
        lag = self.lag
        lines = [
            f"utilization {self.utilization:.1%} (busy {self.busy:.3f} s, idle {self.idle:.3f} s,"
            f" over {self.running:.3f} s running)",
            f"lag p50 {_ms(lag.p50)}  p90 {_ms(lag.p90)}  p99 {_ms(lag.p99)}"
            f"  p99.9 {_ms(lag.p999)}  max {_ms(lag.max)}  ({lag.count} callbacks)",
            f"iterations {self.iterations}  callbacks {self.callbacks}  I/O events"
            f" {self.io_events}  timers fired {self.timers_fired}, cancelled"
            f" {self.timers_cancelled}  threadsafe wake-ups {self.threadsafe_wakeups}",
            f"now: ready {self.ready} (max {self.ready_max})  timers {self.timers_pending}"
            f"  fds {self.fds_watched}  transports {self.transports_open}",
        ]
        if self.slow_callbacks:
            lines.append("slowest callbacks:")
            lines += [
                f"  {_ms(s.duration):>10}  {s.name}  ({s.location})" for s in self.slow_callbacks
            ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"<Health utilization={self.utilization:.3f} lag_p99={_ms(self.lag.p99)}"
            f" callbacks={self.callbacks}>"
        )


#: (attribute, Prometheus type, help) of the counters and gauges.
_COUNTERS = [
    ("iterations", "counter", "Iterations of the event loop."),
    ("callbacks", "counter", "Callbacks run."),
    ("io_events", "counter", "I/O readiness events reported by the backend."),
    ("timers_fired", "counter", "Timers that came due."),
    ("timers_cancelled", "counter", "Timers cancelled while scheduled."),
    ("threadsafe_wakeups", "counter", "Wake-ups from other threads (call_soon_threadsafe)."),
]
_GAUGES = [
    ("ready", "gauge", "Callbacks ready to run."),
    ("ready_max", "gauge", "The most callbacks ready at the start of one iteration."),
    ("timers_pending", "gauge", "Timers scheduled."),
    ("fds_watched", "gauge", "File descriptors watched."),
    ("transports_open", "gauge", "Socket transports open."),
]


#: Whether `python -m oxloop --health` or `--health-report` watches every
#: loop made ([`watch`]).
watching = False

#: The loops made while watching, closed ones too, kept for the reports at
#: exit.
watched: list = []


def watch() -> None:
    """Turns the figures on for every loop made in this process from now on,
    and keeps those loops for the reports at exit."""
    global watching
    watching = True


def report(file) -> None:
    """Prints the figures of every watched loop that ran to `file`."""
    for i, loop in enumerate(watched):
        h = health(loop)
        if h.iterations:
            print(
                f"oxloop health, loop {i + 1} ({'closed' if loop.is_closed() else 'open'}):",
                file=file,
            )
            print(h.summary(), file=file, flush=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _loop_of(loop):
    if loop is None:
        loop = asyncio.get_running_loop()
    if not hasattr(loop, "_health_snapshot"):
        raise TypeError(f"{loop!r} is not an oxloop event loop")
    return loop


def health(loop=None, *, reset: bool = False) -> Health:
    """The health figures of `loop` (the running loop by default) since it
    was made or last reset; with `reset`, starts them over after reading."""
    loop = _loop_of(loop)
    snapshot = Health(loop._health_snapshot(), len(getattr(loop, "_transports", ())))
    if reset:
        loop._health_reset()
    return snapshot


def reset_health(loop=None) -> None:
    """Starts the health figures of `loop` (the running loop by default) over."""
    _loop_of(loop)._health_reset()


_UNSET = object()

#: The most slow callbacks a loop keeps (each entry costs an insertion into
#: a sorted list).
MAX_SLOW_CALLBACKS = 10_000


def configure_health(
    loop=None, *, enabled=None, slow_callbacks=None, log_slow_callbacks=_UNSET
) -> dict:
    """Changes how `loop` (the running loop by default) measures itself;
    returns the settings now in force.

    - `enabled`: record figures or not (off by default; the `OXLOOP_HEALTH=1`
      environment variable turns them on for new loops). Enabling starts the
      figures over.
    - `slow_callbacks`: how many of the slowest callbacks to keep (10; at
      most MAX_SLOW_CALLBACKS).
    - `log_slow_callbacks`: a callback that runs at least this many seconds
      is logged to asyncio's logger, as debug mode's `Executing <Handle ...>
      took 0.123 seconds`, naming its line; `None` (the default) logs none.
    """
    loop = _loop_of(loop)
    on, keep, log = loop._health_settings()
    if enabled is not None:
        on = bool(enabled)
    if slow_callbacks is not None:
        keep = operator.index(slow_callbacks)
        if not 0 <= keep <= MAX_SLOW_CALLBACKS:
            raise ValueError(f"slow_callbacks must be in [0, {MAX_SLOW_CALLBACKS}], not {keep}")
    if log_slow_callbacks is not _UNSET:
        log = log_slow_callbacks
        if log is not None:
            log = float(log)
            if not log >= 0:
                raise ValueError("log_slow_callbacks must be a non-negative number of seconds")
    loop._health_configure(on, keep, log)
    on, keep, log = loop._health_settings()
    # The engine keeps the threshold in clock ticks: shown to the microsecond.
    log = None if log is None else round(log, 6)
    return {"enabled": on, "slow_callbacks": keep, "log_slow_callbacks": log}


# -- naming callbacks ---------------------------------------------------------


def _location(func) -> str:
    source = format_helpers._get_function_source(func)
    return f"{source[0]}:{source[1]}" if source else ""


def _coroutine(task):
    get_coro = getattr(task, "get_coro", None)
    return get_coro() if get_coro is not None else None


def describe(obj) -> tuple[str, str]:
    """`(name, "file:line")` of what a ready entry runs: a handle's callback
    (for a task's step, its coroutine and the line it is suspended at), or a
    transport's protocol method for a native I/O callback."""
    callback = getattr(obj, "_callback", None)
    if callback is None:
        return _describe_native(obj)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Future) and hasattr(owner, "get_coro"):
        coro = _coroutine(owner)
        if coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
            name = getattr(coro, "__qualname__", type(coro).__qualname__)
            if frame is not None:
                return name, f"{frame.f_code.co_filename}:{frame.f_lineno}"
            if code is not None:
                return name, f"{code.co_filename}:{code.co_firstlineno}"
            return name, ""
    func = callback
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return name, _location(callback)


def _describe_native(core) -> tuple[str, str]:
    protocol = getattr(core, "protocol", None)
    if protocol is None:
        return type(core).__qualname__, ""
    for method in ("buffer_updated", "data_received", "datagram_received"):
        func = getattr(protocol, method, None)
        if func is not None and (method != "buffer_updated" or hasattr(protocol, "get_buffer")):
            return f"{type(protocol).__qualname__}.{method}", _location(func)
    return type(protocol).__qualname__, ""
