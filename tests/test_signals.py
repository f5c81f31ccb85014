"""Signal handlers and Ctrl-C (SIGINT ending a blocked loop), on oxloop and
asyncio."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

pytestmark = pytest.mark.parametrize("flavour", ["oxloop", "asyncio"], indirect=True)


def test_signal_burst_keeps_the_loop_responsive(loop):
    counts = {signal.SIGUSR1: 0, signal.SIGUSR2: 0}

    def on_signal(signum):
        counts[signum] += 1

    for signum in counts:
        loop.add_signal_handler(signum, on_signal, signum)

    def burst():
        for _ in range(5000):
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR2)

    async def main():
        await loop.run_in_executor(None, burst)
        while not all(counts.values()):
            await asyncio.sleep(0.001)
        assert await asyncio.wait_for(asyncio.sleep(0, "responsive"), 5) == "responsive"

    try:
        loop.run_until_complete(main())
    finally:
        for signum in counts:
            assert loop.remove_signal_handler(signum)
    assert all(n >= 1 for n in counts.values())


SLEEPER = """
import asyncio, sys
if sys.argv[1] == "oxloop":
    import oxloop
    factory = oxloop.new_event_loop
else:
    factory = asyncio.SelectorEventLoop
print("running", flush=True)
try:
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.sleep(3600))
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_ctrl_c_interrupts_a_blocked_loop(flavour):
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SLEEPER), flavour],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "running\n"
    timer = threading.Timer(0.2, proc.send_signal, (signal.SIGINT,))
    timer.start()
    out, _ = proc.communicate(timeout=30)
    timer.join()
    assert out == "interrupted\n"
