"""Helpers shared by the benchmarks: loops by name, pinned server processes,
and the CPU time a process used."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
SERVER_CPU, CLIENT_CPU = 0, 1


def loop_factory(name: str):
    """The `new_event_loop` of oxloop, uvloop or asyncio."""
    if name == "oxloop":
        import oxloop

        return oxloop.new_event_loop
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.SelectorEventLoop


def available_loops() -> list[str]:
    """oxloop, uvloop when installed, and asyncio."""
    loops = ["oxloop"]
    try:
        import uvloop  # noqa: F401

        loops.append("uvloop")
    except ImportError:
        pass
    return [*loops, "asyncio"]


def start_server(script: Path, *args: str) -> tuple[subprocess.Popen, int]:
    """Starts a benchmark server pinned to SERVER_CPU; returns it and its port."""
    proc = subprocess.Popen(
        [sys.executable, str(script), *args, str(SERVER_CPU)], stdout=subprocess.PIPE, text=True
    )
    return proc, int(proc.stdout.readline())


def pinned(*cmd: str) -> list[str]:
    """A command line that runs on CLIENT_CPU."""
    return ["taskset", "-c", str(CLIENT_CPU), *cmd]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS
