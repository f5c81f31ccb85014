"""TCP echo benchmark: server CPU-seconds per request, oxloop vs uvloop vs asyncio.

    python bench/echo.py [--seconds 5] [--kinds protocol,buffered,streams,sock]
                         [--sizes 1024,10240,102400] [--conns 1,10,100]

Each server runs in its own process pinned to CPU 0; the compiled load
generator (bench/loadgen, built here with cargo) runs pinned to CPU 1. The
figure that separates fast loops is the server's CPU time per request (the
load generator saturates its core first); requests/s and p50/p99 latency are
reported beside it, with ratios to uvloop. No assertion is made.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import (
    available_loops,
    baseline,
    cpu_seconds,
    guarded,
    peak_rss_mib,
    pinned,
    start_command,
    start_server,
)

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen" / "target" / "release" / "oxloop-loadgen"
#: The Rust epoll echo server (bench/loadgen/src/bin): the floor of CPU per request.
REFERENCE = HERE / "loadgen" / "target" / "release" / "oxloop-reference-server"
#: The kinds the reference server stands beside (it has no Python API).
REFERENCE_KINDS = ("protocol", "buffered")


def build_loadgen() -> None:
    subprocess.run(
        [
            "cargo",
            "build",
            "--release",
            "-q",
            "--bins",
            "--manifest-path",
            str(HERE / "loadgen" / "Cargo.toml"),
        ],
        check=True,
    )


def run_cell(loop: str, kind: str, size: int, conns: int, seconds: float) -> dict:
    if loop == "reference":
        server, port = start_command(str(REFERENCE))
    else:
        server, port = start_server(HERE / "echo_server.py", loop, kind)
    try:
        load = pinned(str(LOADGEN), str(port), str(conns), str(size))
        subprocess.run([*load, "0.5"], capture_output=True, check=True)  # warm-up
        before = cpu_seconds(server.pid)
        out = subprocess.run(
            [*load, str(seconds)], capture_output=True, text=True, check=True, timeout=seconds + 30
        )
        used = cpu_seconds(server.pid) - before
        rss = peak_rss_mib(server.pid)
        result = json.loads(out.stdout)
    finally:
        server.kill()
        server.wait()
    requests = result["requests"]
    if not requests:
        raise ValueError("no request served")
    return {
        "rps": requests / result["seconds"],
        "cpu_us": used / requests * 1e6,
        "p50_us": result["p50_us"],
        "p99_us": result["p99_us"],
        "rss_mib": rss,
    }


def table(loops: list[str], kinds, sizes, conns, seconds: float) -> list[dict]:
    """Runs every (kind, size, conns) cell on every loop, printing each row."""
    build_loadgen()
    base = baseline(loops)
    cells = []
    print(
        f"Python {sys.version.split()[0]}; TCP echo, server CPU µs/request (ratio to {base}), "
        "requests/s, p50/p99 µs"
    )
    header = [*loops, "reference"]
    print(f"{'kind':<9}{'size':>7}{'conns':>6}  " + "".join(f"{name:>36}" for name in header))
    for kind in kinds:
        for size in sizes:
            for n in conns:
                names = [*loops, "reference"] if kind in REFERENCE_KINDS else loops
                row = {name: guarded(run_cell, name, kind, size, n, seconds) for name in names}
                cells.append({"kind": kind, "size": size, "conns": n, **row})
                text = "".join(
                    f"{r['cpu_us']:>8.1f} ({r['cpu_us'] / row[base]['cpu_us']:4.2f}x) "
                    f"{r['rps']:>8.0f}/s {r['p50_us']:>4}/{r['p99_us']:<5}"
                    for r in row.values()
                )
                print(f"{kind:<9}{size:>7}{n:>6}  {text}", flush=True)
                time.sleep(0.2)
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--kinds", default="protocol,buffered,streams,sock")
    parser.add_argument("--sizes", default="1024,10240,102400")
    parser.add_argument("--conns", default="1,10,100")
    parser.add_argument("--loops", help="comma-separated loop modules (default: all installed)")
    parser.add_argument("--json", help="write every cell here")
    opts = parser.parse_args()
    cells = table(
        opts.loops.split(",") if opts.loops else available_loops(),
        opts.kinds.split(","),
        [int(size) for size in opts.sizes.split(",")],
        [int(n) for n in opts.conns.split(",")],
        opts.seconds,
    )
    if opts.json:
        Path(opts.json).write_text(json.dumps(cells, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
