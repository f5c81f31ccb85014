"""Helpers shared by the benchmarks: loops by name, pinned server processes
measured in turns, and the CPU time a process used."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

from oxloop._bench import (  # noqa: F401 (re-exported)
    URING,
    WITH_HEALTH,
    baseline,
    installed,
    loop_factory,
)
from oxloop._loop import uring_unavailable

TICKS = os.sysconf("SC_CLK_TCK")
SERVER_CPU, CLIENT_CPU = 0, 1


#: The loops compared beside oxloop and asyncio, when installed: uvloop (the
#: reference for ratios) and the Rust loops on PyPI.
RIVALS = ("uvloop", "rloop", "rsloop", "veloxloop")


def available_loops() -> list[str]:
    """oxloop (health figures off, then on, then the io_uring flavour where
    io_uring can be had), each rival that is installed, and asyncio, in
    table order."""
    uring = [] if uring_unavailable() else [URING]
    return ["oxloop", WITH_HEALTH, *uring, *installed(RIVALS), "asyncio"]


def start_server(script: Path, *args: str) -> tuple[subprocess.Popen, int]:
    """Starts a Python benchmark server pinned to SERVER_CPU; returns it and its port."""
    return start_command(sys.executable, str(script), *args)


def start_command(*cmd: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """Starts a server that takes the CPU to pin itself to last and prints its
    port; `env` adds to its environment."""
    proc = subprocess.Popen(
        [*cmd, str(SERVER_CPU)],
        env=None if env is None else {**os.environ, **env},
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


class Servers:
    """One benchmark server per name, all started at once so that their
    measurements can take turns ([`interleaved`]), each stopped (SIGSTOP)
    except while it is served ([`Servers.serving`]): a rival whose server
    spins after a failure must not take CPU from the one measured. Killed on
    exit. A server that does not start is reported on stderr and left out
    (serving it raises KeyError, which `guarded` turns into FAILED)."""

    def __init__(self, names, start, *args):
        self.running: dict[str, tuple[subprocess.Popen, int]] = {}
        for name in names:
            try:
                proc, port = start(name, *args)
            except (subprocess.SubprocessError, ValueError, OSError) as exc:
                print(f"{name}: server failed to start: {exc!r}", file=sys.stderr)
                continue
            proc.send_signal(signal.SIGSTOP)
            self.running[name] = (proc, port)

    def __repr__(self) -> str:
        return f"servers of {', '.join(self.running)}"

    @contextlib.contextmanager
    def serving(self, name: str):
        """The server process of `name` and its port, running for the block."""
        proc, port = self.running[name]
        proc.send_signal(signal.SIGCONT)
        try:
            yield proc, port
        finally:
            proc.send_signal(signal.SIGSTOP)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for proc, _ in self.running.values():
            proc.kill()
            proc.wait()


def interleaved(names, rounds: int, measure, *args) -> dict[str, dict]:
    """Each name's median figures over `rounds` calls of `measure(name, *args)`, the
    names taking turns within each round: this shared machine drifts between
    faster and slower states over seconds, and taking turns exposes every
    loop to the same drift. A name whose measure fails once is FAILED."""
    samples: dict[str, list[dict]] = {name: [] for name in names}
    failed = set()
    for _ in range(rounds):
        for name in names:
            if name not in failed:
                result = guarded(measure, name, *args)
                if result is FAILED:
                    failed.add(name)
                else:
                    samples[name].append(result)
    return {
        name: FAILED
        if name in failed or not runs
        else {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        for name, runs in samples.items()
    }
