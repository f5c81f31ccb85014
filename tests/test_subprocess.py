"""Subprocesses: 10 MiB through pipes both ways, a killed child's return
code, a thousand children leaving no fd and no zombie -- on oxloop and
asyncio."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

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
