"""What oxloop's health figures cost: each micro benchmark with the figures
on against off, in one process, in adjacent runs.

    python bench/health_cost.py [--pairs 41] [--scale 0.1] [--only call_soon,...]

micro.py's table compares medians of fresh processes taken seconds apart, and
this machine drifts by more than the few per cent measured here between
them. So each benchmark gets one process and two loops, figures on and off,
and runs on them in ABBA order (off, on, on, off, ...): every on/off pair is
adjacent in time, and a linear drift cancels across the four. The figure is
the median of the pairs' ratios of ops/s (on / off) with its interquartile
range; below 1 the figures cost. No assertion is made.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import oxloop
from oxloop._bench import BENCHMARKS

#: Benchmarks whose time is a child process's start, not the loop's.
SKIPPED = ("spawn+wait (true)", "spawn+communicate (cat)")


def timed(loop, func, n: int) -> float:
    """ops/s of one run of `func` on `loop`."""
    t0 = time.perf_counter()
    func(loop, n)
    return n / (time.perf_counter() - t0)


def ratios(bench: str, pairs: int, scale: float) -> list[float]:
    """The on/off ratios of `pairs` adjacent pairs of runs of `bench`."""
    func, n = BENCHMARKS[bench]
    n = max(1, int(n * scale))
    off, on = oxloop.new_event_loop(), oxloop.new_event_loop()
    oxloop.configure_health(off, enabled=False)
    oxloop.configure_health(on, enabled=True)
    try:
        for loop in (off, on):
            func(loop, n)  # warm-up
        out = []
        for i in range(pairs):
            if i % 2 == 0:
                a = timed(off, func, n)
                b = timed(on, func, n)
            else:
                b = timed(on, func, n)
                a = timed(off, func, n)
            out.append(b / a)
        return out
    finally:
        off.close()
        on.close()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        print(" ".join(map(str, ratios(argv[1], int(argv[2]), float(argv[3])))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=41)
    parser.add_argument("--scale", type=float, default=0.1, help="fraction of each op count")
    parser.add_argument("--only", help="comma-separated benchmark names")
    opts = parser.parse_args(argv)
    benches = opts.only.split(",") if opts.only else [b for b in BENCHMARKS if b not in SKIPPED]
    print(
        f"Python {sys.version.split()[0]}; ops/s with health figures on / off, "
        f"median of {opts.pairs} adjacent pairs (interquartile range)"
    )
    for bench in benches:
        out = subprocess.run(
            [sys.executable, __file__, "--child", bench, str(opts.pairs), str(opts.scale)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        r = list(map(float, out))
        q1, _, q3 = statistics.quantiles(r, n=4)
        print(f"{bench:<32} {statistics.median(r):6.3f}  ({q1:.3f}-{q3:.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
