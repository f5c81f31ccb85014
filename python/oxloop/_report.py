"""`python -m oxloop --health-report report.html app.py`: the health figures
of every loop the program made, sampled each second, written when it ends
as one self-contained HTML page (inline SVG charts, no scripts): lag and
utilization over time, and the slow-callback table."""

from __future__ import annotations

import html
import itertools
import math
import threading
import time
from typing import NamedTuple

from . import _health

#: Seconds between two samples.
INTERVAL = 1.0

#: (figure, label, colour) of the lag chart's lines.
_LAG_SERIES = [
    ("max", "max", "#d62728"),
    ("p99", "p99", "#ff7f0e"),
    ("p50", "p50", "#1f77b4"),
]
UTILIZATION_COLOUR = "#2ca02c"


class Sample(NamedTuple):
    """One loop's figures over one interval."""

    #: Seconds since the recording started, at the interval's end (the
    #: first sample of a loop: when its figures began).
    at: float
    #: Busy share of the time the loop ran in the interval (0 if it did not).
    utilization: float
    #: Lag of the callbacks run in the interval, in seconds.
    p50: float
    p99: float
    max: float
    #: Callbacks run in the interval.
    callbacks: int


class Recorder:
    """Samples the watched loops (`oxloop._health.watched`) every `interval`
    seconds from a daemon thread; `write(path)` takes a last sample and
    writes the page."""

    def __init__(self, interval: float = INTERVAL):
        self._interval = interval
        self._start = time.monotonic()
        self._lock = threading.Lock()
        #: Per watched loop: its samples and its previous reading.
        self._samples: dict[int, list[Sample]] = {}
        self._previous: dict[int, _health.Health] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oxloop-health-report", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def sample(self) -> None:
        """Reads every watched loop once and keeps what changed since the
        previous reading."""
        with self._lock:
            at = time.monotonic() - self._start
            for i, loop in enumerate(list(_health.watched)):
                now = _health.health(loop)
                before = self._previous.get(i)
                self._previous[i] = now
                if before is None:
                    began = max(at - now.elapsed, 0.0)
                    self._samples[i] = [Sample(began, 0.0, 0.0, 0.0, 0.0, 0)]
                    lag, running, busy, callbacks = now.lag, now.running, now.busy, now.callbacks
                else:
                    lag = now.lag - before.lag
                    running = now.running - before.running
                    busy = now.busy - before.busy
                    callbacks = now.callbacks - before.callbacks
                share = min(max(busy / running, 0.0), 1.0) if running > 0 else 0.0
                self._samples[i].append(
                    Sample(at, share, lag.p50, lag.p99, lag.max, max(callbacks, 0))
                )

    def write(self, path: str) -> None:
        """Stops sampling, takes a last sample and writes the page to `path`."""
        self._stop.set()
        self._thread.join()
        self.sample()
        loops = []
        for i, loop in enumerate(_health.watched):
            if i in self._previous and self._previous[i].iterations:
                loops.append((i + 1, loop.is_closed(), self._previous[i], self._samples[i]))
        with open(path, "w", encoding="utf-8") as f:
            f.write(page(loops))


def page(loops) -> str:
    """The report: `loops` are `(number, closed, last Health, samples)`."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>oxloop health report</title><style>",
        _STYLE,
        "</style></head><body><h1>oxloop health report</h1>",
    ]
    if not loops:
        parts.append("<p>No oxloop event loop ran.</p>")
    for number, closed, h, samples in loops:
        state = "closed" if closed else "open"
        parts.append(f"<section><h2>Loop {number} ({state})</h2>")
        parts.append(f"<pre class='summary'>{html.escape(h.summary())}</pre>")
        series = [
            (label, colour, [(s.at, getattr(s, key) * 1e3) for s in samples])
            for key, label, colour in _LAG_SERIES
        ]
        parts.append(chart("lag", "Callback lag per second (ms)", series, None))
        use = [("utilization", UTILIZATION_COLOUR, [(s.at, s.utilization * 100) for s in samples])]
        parts.append(chart("utilization", "Utilization per second (%)", use, 100.0))
        parts.append(_slow_table(h.slow_callbacks))
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "".join(parts)


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
pre.summary { background: #f6f6f6; padding: 8px; overflow-x: auto; }
svg { display: block; margin: 12px 0; }
svg text { font: 12px system-ui, sans-serif; fill: #444; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; border-bottom: 1px solid #ddd; }
th { text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""

_W, _H = 900, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 20, 30, 30


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value`."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value)


def chart(name: str, title: str, series, top: float | None) -> str:
    """An SVG step chart of `series`, `(label, colour, [(x, y)])`, each `y`
    held from the previous `x` to its own; the y axis from 0 to `top` (or
    the data's nice ceiling)."""
    points = [p for _, _, data in series for p in data]
    x_end = max((x for x, _ in points), default=0.0) or 1.0
    y_top = top if top is not None else _nice_ceiling(max((y for _, y in points), default=0.0))
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def xy(x, y):
        px = _LEFT + x / x_end * plot_w
        return f"{px:.1f},{_TOP + plot_h - min(y, y_top) / y_top * plot_h:.1f}"

    out = [
        f"<svg class='chart' data-chart='{name}' width='{_W}' height='{_H}' "
        f"viewBox='0 0 {_W} {_H}' xmlns='http://www.w3.org/2000/svg'>",
        f"<text x='{_LEFT}' y='18' style='font-weight:600'>{html.escape(title)}</text>",
        f"<rect x='{_LEFT}' y='{_TOP}' width='{plot_w}' height='{plot_h}' fill='none' "
        "stroke='#bbb'/>",
    ]
    for k in range(5):
        y = y_top * k / 4
        _, py = xy(0, y).split(",")
        out.append(
            f"<line x1='{_LEFT}' x2='{_LEFT + plot_w}' y1='{py}' y2='{py}' stroke='#eee'/>"
            f"<text x='{_LEFT - 6}' y='{float(py) + 4:.1f}' text-anchor='end'>{y:g}</text>"
        )
    step = _nice_ceiling(x_end / 6)
    for k in range(math.floor(x_end / step) + 1):
        px, _ = xy(k * step, 0).split(",")
        out.append(f"<text x='{px}' y='{_H - 10}' text-anchor='middle'>{k * step:g} s</text>")
    legend_x = _LEFT + plot_w
    for label, colour, data in series:
        if len(data) > 1:
            steps = [p for a, b in itertools.pairwise(data) for p in ((a[0], b[1]), b)]
            path = " ".join(xy(x, y) for x, y in steps)
            out.append(
                f"<polyline fill='none' stroke='{colour}' stroke-width='2.5' "
                f"stroke-linejoin='round' points='{path}'/>"
            )
        legend_x -= 70
        out.append(
            f"<rect x='{legend_x}' y='9' width='10' height='10' fill='{colour}'/>"
            f"<text x='{legend_x + 14}' y='18'>{html.escape(label)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _slow_table(slow) -> str:
    if not slow:
        return "<p>No slow callbacks recorded.</p>"
    rows = "".join(
        f"<tr><td class='num'>{s.duration * 1e3:.3f}</td><td>{html.escape(s.name)}</td>"
        f"<td>{html.escape(s.location)}</td>"
        f"<td>{time.strftime('%H:%M:%S', time.localtime(s.timestamp))}</td></tr>"
        for s in slow
    )
    return (
        "<h3>Slowest callbacks</h3><table class='slow'><tr><th>ms</th><th>callback</th>"
        f"<th>location</th><th>started</th></tr>{rows}</table>"
    )
