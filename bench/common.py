"""Helpers shared by the benchmarks: loops by name, pinned server processes,
and the CPU time a process used."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from oxloop._bench import baseline, installed, loop_factory  # noqa: F401 (re-exported)

TICKS = os.sysconf("SC_CLK_TCK")
SERVER_CPU, CLIENT_CPU = 0, 1


#: The loops compared beside oxloop and asyncio, when installed: uvloop (the
#: reference for ratios) and the Rust loops on PyPI.
RIVALS = ("uvloop", "rloop", "rsloop", "veloxloop")


def available_loops() -> list[str]:
    """oxloop, each rival that is installed, and asyncio, in table order."""
    return ["oxloop", *installed(RIVALS), "asyncio"]


def start_server(script: Path, *args: str) -> tuple[subprocess.Popen, int]:
    """Starts a Python benchmark server pinned to SERVER_CPU; returns it and its port."""
    return start_command(sys.executable, str(script), *args)


def start_command(*cmd: str) -> tuple[subprocess.Popen, int]:
    """Starts a server that takes the CPU to pin itself to last and prints its port."""
    proc = subprocess.Popen(
        [*cmd, str(SERVER_CPU)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # rivals log every reset connection; failures show as NaN
        text=True,
    )
    return proc, int(proc.stdout.readline())


def pinned(*cmd: str) -> list[str]:
    """A command line that runs on CLIENT_CPU."""
    return ["taskset", "-c", str(CLIENT_CPU), *cmd]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mib(pid: int) -> float:
    """Peak resident set size of a process so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


#: A cell whose server or load generator failed: every figure is NaN.
FAILED = dict.fromkeys(("rps", "cpu_us", "p50_us", "p99_us", "rss_mib"), math.nan)


def guarded(run_cell, loop: str, *args) -> dict:
    """`run_cell(loop, *args)`, or FAILED (reported on stderr) if the loop could not serve."""
    try:
        return run_cell(loop, *args)
    except (subprocess.SubprocessError, ValueError, KeyError, AttributeError, OSError) as exc:
        print(f"{loop} {args}: failed: {exc!r}", file=sys.stderr)
        return FAILED
