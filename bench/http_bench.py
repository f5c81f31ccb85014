"""HTTP/1.1 keep-alive benchmark: an httptools server under wrk, oxloop vs
uvloop vs asyncio, reported as server CPU µs per request (ratio to uvloop),
requests/s and wrk's p50/p99 latency.

    python bench/http_bench.py [--seconds 5] [--conns 10,100]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from common import available_loops, baseline, cpu_seconds, guarded, pinned, start_server

HERE = Path(__file__).resolve().parent


def parse_wrk(text: str) -> dict:
    def micros(value: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
        return float(number) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[unit]

    return {
        "requests": int(re.search(r"(\d+) requests in", text).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50_us": micros(re.search(r"50%\s+(\S+)", text).group(1)),
        "p99_us": micros(re.search(r"99%\s+(\S+)", text).group(1)),
    }


def run_cell(loop: str, conns: int, seconds: float) -> dict:
    server, port = start_server(HERE / "http_server.py", loop)
    try:
        url = f"http://127.0.0.1:{port}/"
        wrk = pinned("wrk", "-t1", f"-c{conns}", "--latency")
        subprocess.run([*wrk, "-d1s", url], capture_output=True, check=True)  # warm-up
        before = cpu_seconds(server.pid)
        out = subprocess.run(
            [*wrk, f"-d{seconds}s", url], capture_output=True, text=True, check=True
        )
        used = cpu_seconds(server.pid) - before
    finally:
        server.kill()
        server.wait()
    result = parse_wrk(out.stdout)
    if not result["requests"]:
        raise ValueError("no request served")
    result["cpu_us"] = used / result["requests"] * 1e6
    return result


def table(loops: list[str], conns, seconds: int) -> list[dict]:
    """Runs every concurrency on every loop, printing each row."""
    base = baseline(loops)
    print(f"Python {sys.version.split()[0]}; HTTP/1.1 keep-alive (httptools) under wrk")
    print(f"{'conns':>6}  " + "".join(f"{name:>38}" for name in loops))
    cells = []
    for n in conns:
        row = {name: guarded(run_cell, name, n, seconds) for name in loops}
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
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--conns", default="10,100")
    parser.add_argument("--loops", help="comma-separated loop modules (default: all installed)")
    opts = parser.parse_args()
    loops = opts.loops.split(",") if opts.loops else available_loops()
    table(loops, [int(n) for n in opts.conns.split(",")], opts.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
