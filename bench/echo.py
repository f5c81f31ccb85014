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
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen" / "target" / "release" / "oxloop-loadgen"
TICKS = os.sysconf("SC_CLK_TCK")


def build_loadgen() -> None:
    subprocess.run(
        [
            "cargo",
            "build",
            "--release",
            "-q",
            "--manifest-path",
            str(HERE / "loadgen" / "Cargo.toml"),
        ],
        check=True,
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def run_cell(loop: str, kind: str, size: int, conns: int, seconds: float) -> dict:
    server = subprocess.Popen(
        [sys.executable, str(HERE / "echo_server.py"), loop, kind, "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline())
        warm = subprocess.run(
            ["taskset", "-c", "1", str(LOADGEN), str(port), str(conns), str(size), "0.5"],
            capture_output=True,
            text=True,
            check=True,
        )
        del warm
        before = cpu_seconds(server.pid)
        out = subprocess.run(
            ["taskset", "-c", "1", str(LOADGEN), str(port), str(conns), str(size), str(seconds)],
            capture_output=True,
            text=True,
            check=True,
        )
        used = cpu_seconds(server.pid) - before
        result = json.loads(out.stdout)
    finally:
        server.kill()
        server.wait()
    requests = max(result["requests"], 1)
    return {
        "rps": requests / result["seconds"],
        "cpu_us": used / requests * 1e6,
        "p50_us": result["p50_us"],
        "p99_us": result["p99_us"],
    }


def available_loops() -> list[str]:
    loops = ["oxloop"]
    try:
        import uvloop  # noqa: F401

        loops.append("uvloop")
    except ImportError:
        pass
    return loops + ["asyncio"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--kinds", default="protocol,buffered,streams,sock")
    parser.add_argument("--sizes", default="1024,10240,102400")
    parser.add_argument("--conns", default="1,10,100")
    parser.add_argument("--json", help="write every cell here")
    opts = parser.parse_args()
    build_loadgen()
    loops = available_loops()
    base = "uvloop" if "uvloop" in loops else "asyncio"
    cells = []
    print(
        f"Python {sys.version.split()[0]}; server CPU µs/request (ratio to {base}), "
        "requests/s, p50/p99 µs"
    )
    print(f"{'kind':<9}{'size':>7}{'conns':>6}  " + "".join(f"{name:>36}" for name in loops))
    for kind in opts.kinds.split(","):
        for size in map(int, opts.sizes.split(",")):
            for conns in map(int, opts.conns.split(",")):
                row = {name: run_cell(name, kind, size, conns, opts.seconds) for name in loops}
                cells.append({"kind": kind, "size": size, "conns": conns, **row})
                text = "".join(
                    f"{r['cpu_us']:>8.1f} ({r['cpu_us'] / row[base]['cpu_us']:4.2f}x) "
                    f"{r['rps']:>8.0f}/s {r['p50_us']:>4}/{r['p99_us']:<5}"
                    for r in row.values()
                )
                print(f"{kind:<9}{size:>7}{conns:>6}  {text}", flush=True)
                time.sleep(0.2)
    if opts.json:
        Path(opts.json).write_text(json.dumps(cells, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
