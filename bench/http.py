"""HTTP/1.1 keep-alive benchmark: an httptools server under wrk, oxloop vs
uvloop vs asyncio, reported as server CPU µs per request (ratio to uvloop),
requests/s and wrk's p50/p99 latency.

    python bench/http.py [--seconds 5] [--conns 10,100]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from common import available_loops, cpu_seconds, pinned, start_server

HERE = Path(__file__).resolve().parent


def parse_wrk(text: str) -> dict:
    def micros(value: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
        return float(number) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]

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
    result["cpu_us"] = used / max(result["requests"], 1) * 1e6
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--conns", default="10,100")
    opts = parser.parse_args()
    loops = available_loops()
    base = "uvloop" if "uvloop" in loops else "asyncio"
    print(f"Python {sys.version.split()[0]}; HTTP/1.1 keep-alive (httptools) under wrk")
    print(f"{'conns':>6}  " + "".join(f"{name:>38}" for name in loops))
    for conns in map(int, opts.conns.split(",")):
        row = {name: run_cell(name, conns, opts.seconds) for name in loops}
        text = "".join(
            f"{r['cpu_us']:>7.2f} ({r['cpu_us'] / row[base]['cpu_us']:4.2f}x) "
            f"{r['rps']:>8.0f}/s {r['p50_us']:>5.0f}/{r['p99_us']:<6.0f}"
            for r in row.values()
        )
        print(f"{conns:>6}  {text}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
