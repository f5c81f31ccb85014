"""Every benchmark in one run, and the report made from it.

    python bench/run.py [--seconds 1] [--rounds 3] [--repeat 5] [--out docs]
                        [--report-only | --only references]

Runs the micro benchmarks (oxloop._bench), the TCP echo table (echo.py) and
the HTTP table (http.py) on every loop installed, and the reference
servers (epoll against io_uring) up to a thousand connections, then writes
OUT/benchmarks.md (method, machine, tables of ratios), OUT/benchmarks.png
(bar chart of ratios to uvloop) and OUT/benchmarks.json (every raw figure).
The report is generated from the run, never edited by hand.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import echo
import http_bench
from common import URING, WITH_HEALTH, available_loops, baseline
from oxloop import _bench as micro

ECHO_KINDS = ("protocol", "buffered", "streams", "sock")
ECHO_SIZES = (1024, 10240, 102400)
ECHO_CONNS = (1, 10, 100)
#: Where io_uring is said to win: many connections (issue 16, step 1).
REFERENCE_CONNS = (10, 100, 1000)
HTTP_CONNS = (10, 100)


def machine() -> dict:
    """What the figures were measured on."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d"),
    }


def version(loop: str) -> str:
    if loop == "asyncio":
        return f"Python {sys.version.split()[0]}"
    # oxloop's other columns (its health figures on, its io_uring flavour).
    package = "oxloop" if loop in (WITH_HEALTH, URING) else loop
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def size_label(size: int) -> str:
    return f"{size // 1024} KiB"


def ratio_table(header: list[str], rows: list[tuple[str, dict]], loops, base, better) -> str:
    """A markdown table of `value (ratio to base)` per loop; `better` marks the best."""
    lines = [
        "| " + " | ".join([*header, *loops]) + " |",
        "|" + "---|" * (len(header) + len(loops)),
    ]
    for label, row in rows:
        measured = [row[name] for name in loops if row.get(name) is not None]
        measured = [value for value in measured if not math.isnan(value)]
        best = better(measured) if measured else None
        cells = []
        for name in loops:
            value = row.get(name)
            if value is None:
                cells.append("—")
                continue
            if math.isnan(value):
                cells.append("failed")
                continue
            ratio = value / row[base]
            text = f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"
            text += f" ({ratio:.2f}x)"
            cells.append(f"**{text}**" if value == best else text)
        lines.append("| " + label + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference_table(cells: list[dict]) -> str:
    """The reference servers side by side: CPU per request (ratio to the
    epoll one), requests/s and p50/p99 latency."""
    names = list(echo.REFERENCES)
    lines = [
        "| size | conns | " + " | ".join(names) + " |",
        "|" + "---|" * (2 + len(names)),
    ]
    for cell in cells:
        base = cell[names[0]]["cpu_us"]
        figures = [
            f"{r['cpu_us']:.1f} µs ({r['cpu_us'] / base:.2f}x), {r['rps'] / 1000:,.0f}k/s, "
            f"{r['p50_us']:.0f}/{r['p99_us']:.0f} µs"
            for r in (cell[name] for name in names)
        ]
        label = f"{size_label(cell['size'])} | {cell['conns']}"
        lines.append(f"| {label} | " + " | ".join(figures) + " |")
    return "\n".join(lines)


def chart(results: dict, loops: list[str], base: str, path: Path) -> None:
    """Bar chart: each cell's speed relative to `base` (higher is better) per loop."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, speedups = [], {name: [] for name in loops}
    for bench, row in results["micro"].items():
        labels.append(bench)
        for name in loops:
            speedups[name].append(row[name] / row[base])
    for cell in results["echo"]:
        labels.append(f"echo {cell['kind']} {size_label(cell['size'])} c{cell['conns']}")
        for name in loops:
            speedups[name].append(cell[base]["cpu_us"] / cell[name]["cpu_us"])
    for cell in results["http"]:
        labels.append(f"HTTP c{cell['conns']}")
        for name in loops:
            speedups[name].append(cell[base]["cpu_us"] / cell[name]["cpu_us"])
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(labels) * len(loops) ** 0.5 + 1.5))
    height = 0.8 / len(loops)
    for i, name in enumerate(loops):
        positions = [row + (i - (len(loops) - 1) / 2) * height for row in range(len(labels))]
        ax.barh(positions, speedups[name], height=height, label=name)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(
        f"speed relative to {base} (ops/s ratio; echo and HTTP: {base}'s CPU per request "
        "÷ the loop's), log scale, higher is better"
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: dict, loops: list[str], base: str, png: str) -> str:
    info = results["machine"]
    micro_rows = list(results["micro"].items())
    echo_loops = [*loops, *echo.REFERENCES]
    echo_rows = [
        (
            f"{cell['kind']} | {size_label(cell['size'])} | {cell['conns']}",
            {name: cell[name]["cpu_us"] for name in echo_loops if name in cell},
        )
        for cell in results["echo"]
    ]
    rss_rows = [
        (
            f"{cell['kind']} | {size_label(cell['size'])} | {cell['conns']}",
            {name: cell[name]["rss_mib"] for name in loops},
        )
        for cell in results["echo"]
        if cell["conns"] == max(ECHO_CONNS)
    ]
    http_rows = [
        (str(cell["conns"]), {name: cell[name]["cpu_us"] for name in loops})
        for cell in results["http"]
    ]
    rps_rows = [
        (
            f"{cell['kind']} | {size_label(cell['size'])} | {cell['conns']}",
            {name: cell[name]["rps"] for name in loops},
        )
        for cell in results["echo"]
    ]
    versions = ", ".join(f"{name} {results['loops'][name]}" for name in loops)
    return f"""# Benchmarks

Generated by `python bench/run.py` (`make bench`) on {info["date"]}; do not edit by hand.
Raw figures: [benchmarks.json](benchmarks.json).

## Method
- Machine: {info["cpu"]}, {info["cores"]} cores, Linux {info["kernel"]}, Python {info["python"]}.
- Loops: {versions}. "oxloop" is `oxloop.new_event_loop()` (epoll), "oxloop+health" the
  same with its health figures on, "oxloop-uring" `oxloop.ProactorEventLoop()` (io_uring).
- Micro benchmarks (`oxloop._bench`, what `python -m oxloop bench` runs in a quick version):
  each (loop, benchmark) runs {results["repeat"]} times, each time in a fresh process, the
  loops taking turns; the figure is the median ops/s.
- TCP echo (`bench/echo.py`) and HTTP (`bench/http_bench.py`): each server runs in its own
  process pinned to CPU 0, the load generator (bench/loadgen, compiled Rust; wrk for HTTP)
  pinned to CPU 1. After a warm-up, the loops take turns for {results.get("rounds", 1)}
  windows of {results["seconds"]} s per cell, and each figure is the median of its windows
  (this machine drifts between faster and slower states over seconds; taking turns exposes
  every loop to the same drift). The load generator saturates its core
  first, so the figure that separates loops is the **server's CPU time per request** (user +
  system, from /proc); lower is better. Requests/s and peak RSS (VmHWM; one server per loop
  serves a kind and size at every concurrency) are given beside it.
- Ratios are to {base} in the same run. This is a shared 2-core machine: figures move by
  ±10–20 % between runs; compare ratios, not absolute numbers.

![ratios to {base}]({png})

## Micro benchmarks: ops/s (ratio to {base}), higher is better
{ratio_table(["benchmark"], micro_rows, loops, base, max)}

## TCP echo: server CPU µs per request (ratio to {base}), lower is better
{ratio_table(["kind", "size", "conns"], echo_rows, echo_loops, base, min)}

"reference" and "io_uring ref" are bench/loadgen's Rust echo servers (no Python): the
floor for the Protocol and BufferedProtocol servers, waiting with epoll (a read and a
send per request) and with io_uring (completions; what it does, and its figures up to
c1000, in the last section).

## TCP echo: requests/s (ratio to {base})
{ratio_table(["kind", "size", "conns"], rps_rows, loops, base, max)}

## TCP echo: peak RSS of the server, MiB (ratio to {base}), lower is better
{ratio_table(["kind", "size", "conns"], rss_rows, loops, base, min)}

## HTTP/1.1 keep-alive (httptools, wrk): server CPU µs per request, lower is better
{ratio_table(["conns"], http_rows, loops, base, min)}
{references_section(results)}"""


def references_section(results: dict) -> str:
    """io_uring against epoll, reference server to reference server, up to
    a thousand connections (`run.py --only references` measures it anew)."""
    section = results.get("references")
    if section is None:
        return ""
    return f"""
## io_uring vs epoll: the reference servers up to c1000 (issue 16)
Server CPU per request (ratio to the epoll reference), requests/s, p50/p99 latency;
measured {section["date"]}, {section["rounds"]} windows of {section["seconds"]} s per cell,
the two servers taking turns. What the io_uring server does is in
`bench/loadgen/src/bin/oxloop-uring-reference-server.rs`; what the figures say, in
[io_uring.md](io_uring.md).

{reference_table(section["cells"])}
"""


def references(opts) -> dict:
    """The reference servers' cells at REFERENCE_CONNS, and how they were
    measured (one kind: they serve every kind alike)."""
    cells = echo.table([], ["protocol"], ECHO_SIZES, REFERENCE_CONNS, opts.seconds, opts.rounds)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "seconds": opts.seconds,
        "rounds": opts.rounds,
        "cells": cells,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per echo/HTTP window")
    parser.add_argument("--rounds", type=int, default=3, help="windows per echo/HTTP cell")
    parser.add_argument("--repeat", type=int, default=5, help="runs per micro benchmark")
    parser.add_argument("--loops", help="comma-separated loop modules (default: all installed)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs"))
    parser.add_argument(
        "--report-only", action="store_true", help="remake the report from OUT/benchmarks.json"
    )
    parser.add_argument(
        "--only",
        choices=["references"],
        help="measure this section anew, keep the rest of OUT/benchmarks.json",
    )
    opts = parser.parse_args()
    out = Path(opts.out)
    if opts.report_only or opts.only:
        if not (out / "benchmarks.json").exists():
            parser.error(f"{out / 'benchmarks.json'} is missing: run every benchmark first")
        results = json.loads((out / "benchmarks.json").read_text())
    if opts.only == "references":
        results["references"] = references(opts)
        (out / "benchmarks.json").write_text(json.dumps(results, indent=1) + "\n")
    elif not opts.report_only:
        loops = opts.loops.split(",") if opts.loops else available_loops()
        results = {
            "machine": machine(),
            "seconds": opts.seconds,
            "rounds": opts.rounds,
            "repeat": opts.repeat,
            "loops": {name: version(name) for name in loops},
            "micro": micro.run(loops, list(micro.BENCHMARKS), opts.repeat, 1.0),
            "echo": echo.table(
                loops, ECHO_KINDS, ECHO_SIZES, ECHO_CONNS, opts.seconds, opts.rounds
            ),
            "http": http_bench.table(loops, HTTP_CONNS, max(1, round(opts.seconds)), opts.rounds),
            "references": references(opts),
        }
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmarks.json").write_text(json.dumps(results, indent=1) + "\n")
    loops = list(results["loops"])
    base = baseline(loops)
    chart(results, loops, base, out / "benchmarks.png")
    (out / "benchmarks.md").write_text(report(results, loops, base, "benchmarks.png"))
    print(f"wrote {out / 'benchmarks.md'}, benchmarks.png, benchmarks.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
