"""TCP echo benchmark: server CPU-seconds per request, oxloop vs uvloop vs asyncio.

    python bench/echo.py [--seconds 1] [--rounds 3] [--kinds protocol,buffered,streams,sock]
                         [--sizes 1024,10240,102400] [--conns 1,10,100]
                         [--loops LOOPS | --uring-variants] [--churn]

Each server runs in its own process pinned to CPU 0; the compiled load
generator (bench/loadgen, built here with cargo) runs pinned to CPU 1. The
loops take turns, window by window, and each figure is the median of a
cell's windows. The figure that separates fast loops is the server's CPU
time per request (the load generator saturates its core first);
requests/s and p50/p99 latency are reported beside it, with ratios to
uvloop. No assertion is made. With --churn every request has a connection
of its own (connect, echo, close): the cost of accepting and closing.
"""

from __future__ import annotations

import argparse
import json
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
    peak_rss_mib,
    pinned,
    start_command,
    start_server,
)

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen" / "target" / "release" / "oxloop-loadgen"
#: The Rust echo servers (bench/loadgen/src/bin), no Python: the floor of CPU
#: per request with epoll readiness, and with io_uring completions.
REFERENCES = {
    "reference": HERE / "loadgen" / "target" / "release" / "oxloop-reference-server",
    "io_uring ref": HERE / "loadgen" / "target" / "release" / "oxloop-uring-reference-server",
}
#: The io_uring reference server less one of its techniques (issue 16: what
#: each brings): sends by system call as a loop's `transport.write` makes
#: them, instead of a pass's sends batched as operations; plain fds instead
#: of registered files.
URING_VARIANTS = {
    "uring send()": {"OXLOOP_URING_SEND": "now"},
    "uring plain fds": {"OXLOOP_URING_FIXED": "0"},
}
#: The kinds the reference servers stand beside (they have no Python API).
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


def echo_server(name: str, kind: str) -> tuple[subprocess.Popen, int]:
    """The echo server of loop `name` (or of a reference server) for `kind`."""
    if name in REFERENCES:
        return start_command(str(REFERENCES[name]))
    if name in URING_VARIANTS:
        return start_command(str(REFERENCES["io_uring ref"]), env=URING_VARIANTS[name])
    return start_server(HERE / "echo_server.py", name, kind)


def load(
    port: int, conns: int, size: int, seconds: float, churn: bool, **kwargs
) -> subprocess.CompletedProcess:
    """Runs the load generator against `port` for `seconds`; with `churn`, a
    connection per request."""
    args = [str(port), str(conns), str(size), str(seconds), *(["churn"] if churn else [])]
    cmd = pinned(str(LOADGEN), *args)
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kwargs)


def warm_up(name: str, servers: Servers, size: int, conns: int, churn: bool) -> None:
    """Half a second of load on the server of `name`."""
    with servers.serving(name) as (_, port):
        load(port, conns, size, 0.5, churn)


def window(name: str, servers: Servers, size: int, conns: int, seconds: float, churn: bool) -> dict:
    """The figures of one measurement window on the (warmed-up) server of `name`."""
    with servers.serving(name) as (proc, port):
        before = cpu_seconds(proc.pid)
        run = load(port, conns, size, seconds, churn, timeout=seconds + 30)
        result = json.loads(run.stdout)
        used = cpu_seconds(proc.pid) - before
        rss = peak_rss_mib(proc.pid)
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


def table(
    loops: list[str],
    kinds,
    sizes,
    conns,
    seconds: float,
    rounds: int,
    variants: bool = False,
    churn: bool = False,
) -> list[dict]:
    """Runs every (kind, size, conns) cell on every loop, printing each row.

    One server per loop serves every concurrency of a (kind, size); in each
    cell, after a warm-up, the loops take turns for `rounds` windows of
    `seconds` and each figure is the median (peak RSS: the server's peak so
    far, which at the highest concurrency is that of the whole size). With no
    loops, the reference servers alone, in ratio to the epoll one, and with
    `variants` the io_uring one's URING_VARIANTS beside them; with `churn`, a
    connection per request."""
    build_loadgen()
    base = baseline(loops) if loops else "reference"
    cells = []
    print(
        f"Python {sys.version.split()[0]}; TCP echo, server CPU µs/request (ratio to {base}), "
        f"requests/s, p50/p99 µs; median of {rounds} windows of {seconds} s"
        + ("; a connection per request" if churn else "")
    )
    header = [*loops, *REFERENCES, *(URING_VARIANTS if variants else ())]
    print(f"{'kind':<9}{'size':>7}{'conns':>6}  " + "".join(f"{name:>36}" for name in header))
    for kind in kinds:
        names = header if kind in REFERENCE_KINDS else loops
        for size in sizes:
            with Servers(names, echo_server, kind) as servers:
                for n in conns:
                    for name in names:
                        guarded(warm_up, name, servers, size, n, churn)
                    row = interleaved(names, rounds, window, servers, size, n, seconds, churn)
                    cells.append({"kind": kind, "size": size, "conns": n, **row})
                    text = "".join(
                        f"{r['cpu_us']:>8.1f} ({r['cpu_us'] / row[base]['cpu_us']:4.2f}x) "
                        f"{r['rps']:>8.0f}/s {r['p50_us']:>4}/{r['p99_us']:<5}"
                        for r in row.values()
                    )
                    print(f"{kind:<9}{size:>7}{n:>6}  {text}", flush=True)
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement window")
    parser.add_argument("--rounds", type=int, default=3, help="windows per cell (median)")
    parser.add_argument("--kinds", default="protocol,buffered,streams,sock")
    parser.add_argument("--sizes", default="1024,10240,102400")
    parser.add_argument("--conns", default="1,10,100")
    parser.add_argument("--loops", help="comma-separated loop modules (default: all installed)")
    parser.add_argument(
        "--uring-variants",
        action="store_true",
        help="no loops: the reference servers and the io_uring one's variants",
    )
    parser.add_argument(
        "--churn", action="store_true", help="a connection per request (connect, echo, close)"
    )
    parser.add_argument("--json", help="write every cell here")
    opts = parser.parse_args()
    if opts.uring_variants:
        loops = []
    else:
        loops = opts.loops.split(",") if opts.loops else available_loops()
    cells = table(
        loops,
        opts.kinds.split(","),
        [int(size) for size in opts.sizes.split(",")],
        [int(n) for n in opts.conns.split(",")],
        opts.seconds,
        opts.rounds,
        opts.uring_variants,
        opts.churn,
    )
    if opts.json:
        Path(opts.json).write_text(json.dumps(cells, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
