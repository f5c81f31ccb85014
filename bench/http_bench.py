"""HTTP/1.1 keep-alive benchmark: an httptools server under wrk, oxloop vs
uvloop vs asyncio, reported as server CPU µs per request (ratio to uvloop),
requests/s and wrk's p50/p99 latency.

    python bench/http_bench.py [--seconds 1] [--rounds 3] [--conns 10,100]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from common import (
    Servers,
    available_loops,
    baseline,
    cpu_seconds,
    guarded,
    interleaved,
    pinned,
    start_server,
)

HERE = Path(__file__).resolve().parent


def parse_wrk(text: str) -> dict:
    def micros(value: str) -> float:
        match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
        if match is None:
            raise ValueError(f"wrk printed a latency of {value!r}:\n{text}")
        number, unit = match.groups()
        return float(number) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[unit]

    return {
        "requests": int(re.search(r"(\d+) requests in", text).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50_us": micros(re.search(r"50%\s+(\S+)", text).group(1)),
        "p99_us": micros(re.search(r"99%\s+(\S+)", text).group(1)),
    }


def http_server(name: str) -> tuple[subprocess.Popen, int]:
    """The HTTP server of loop `name`."""
    return start_server(HERE / "http_server.py", name)


def wrk(
    name: str, servers: Servers, conns: int, seconds: int
) -> tuple[subprocess.CompletedProcess, float]:
    """Runs wrk against the server of `name` for `seconds`; returns it and
    the server's CPU seconds meanwhile."""
    with servers.serving(name) as (proc, port):
        url = f"http://127.0.0.1:{port}/"
        cmd = pinned("wrk", "-t1", f"-c{conns}", "--latency", f"-d{seconds}s", url)
        before = cpu_seconds(proc.pid)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30)
        return out, cpu_seconds(proc.pid) - before


def window(name: str, servers: Servers, conns: int, seconds: int) -> dict:
    """The figures of one measurement window on the (warmed-up) server of `name`."""
    out, used = wrk(name, servers, conns, seconds)
    result = parse_wrk(out.stdout)
    if not result["requests"]:
        raise ValueError("no request served")
    result["cpu_us"] = used / result["requests"] * 1e6
    return result


def table(loops: list[str], conns, seconds: int, rounds: int) -> list[dict]:
    """Runs every concurrency on every loop, printing each row: after a
    warm-up, the loops take turns for `rounds` windows of `seconds`, and each
    figure is the median."""
    base = baseline(loops)
    print(
        f"Python {sys.version.split()[0]}; HTTP/1.1 keep-alive (httptools) under wrk; "
        f"median of {rounds} windows of {seconds} s"
    )
    print(f"{'conns':>6}  " + "".join(f"{name:>38}" for name in loops))
    cells = []
    with Servers(loops, http_server) as servers:
        for n in conns:
            for name in loops:
                guarded(wrk, name, servers, n, 1)  # warm-up
            row = interleaved(loops, rounds, window, servers, n, seconds)
            cells.append({"conns": n, **row})
            text = "".join(
                f"{r['cpu_us']:>7.2f} ({r['cpu_us'] / row[base]['cpu_us']:4.2f}x) "
                f"{r['rps']:>8.0f}/s {r['p50_us']:>5.0f}/{r['p99_us']:<6.0f}"
                for r in row.values()
            )
            print(f"{n:>6}  {text}", flush=True)
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=1, help="per measurement window")
    parser.add_argument("--rounds", type=int, default=3, help="windows per cell (median)")
    parser.add_argument("--conns", default="10,100")
    parser.add_argument("--loops", help="comma-separated loop modules (default: all installed)")
    opts = parser.parse_args()
    loops = opts.loops.split(",") if opts.loops else available_loops()
    table(loops, [int(n) for n in opts.conns.split(",")], opts.seconds, opts.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
