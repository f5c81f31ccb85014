"""Subprocesses: 10 MiB through pipes both ways, a killed child's return
code, a thousand children leaving no fd and no zombie -- on oxloop and
asyncio."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.parametrize("flavour", ["oxloop", "asyncio"], indirect=True)


def test_ten_mebibytes_through_cat_both_ways(loop):
    payload = os.urandom(10 * 1024 * 1024)

    async def main():
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        out, _ = await proc.communicate(payload)
        assert out == payload
        assert proc.returncode == 0

    loop.run_until_complete(main())


def test_killed_process_reports_minus_signum(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec("sleep", "60")
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == -signal.SIGTERM

    loop.run_until_complete(main())


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return False


def test_a_thousand_subprocesses_leave_no_fd_and_no_zombie(loop, open_fds):
    pids = []

    async def one():
        proc = await asyncio.create_subprocess_exec(
            "true", stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        pids.append(proc.pid)
        await proc.communicate()
        assert proc.returncode == 0

    async def main():
        before = open_fds()
        for _ in range(20):
            await asyncio.gather(*(one() for _ in range(50)))
        await asyncio.sleep(0.05)
        assert open_fds() <= before

    loop.run_until_complete(main())
    assert len(pids) == 1000
    assert not [pid for pid in pids if is_zombie(pid)]


def wait_reaped(pid: int, deadline: float = 10.0) -> bool:
    """Whether `pid` is gone (reaped) within `deadline` seconds."""
    end = time.monotonic() + deadline
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
        time.sleep(0.01)
    return not os.path.exists(f"/proc/{pid}")


def test_children_left_at_close_are_reaped(loop, flavour, is_oxloop):
    if flavour == "asyncio" and sys.version_info >= (3, 12):
        # Not run: each zombie would be waited for until the deadline.
        pytest.xfail("asyncio's pidfd watcher (3.12+) drops children at close: zombies")
    procs = []

    async def spawn(code):
        proc = await asyncio.create_subprocess_exec("sh", "-c", code)
        procs.append((proc, proc._transport._proc))
        return proc

    async def main():
        done = await spawn("exit 3")
        await spawn("sleep 0.2; exit 7")
        await done.wait()
        await spawn("exit 5")

    loop.run_until_complete(main())
    loop.close()
    assert [wait_reaped(proc.pid) for proc, _ in procs] == [True] * 3
    if is_oxloop:
        # Each return code stays where the transport's Popen keeps it.
        end = time.monotonic() + 10
        while any(p.returncode is None for _, p in procs) and time.monotonic() < end:
            time.sleep(0.01)
        assert [p.returncode for _, p in procs] == [3, 7, 5]
