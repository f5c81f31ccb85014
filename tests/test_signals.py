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

from .conftest import FLAVOURS

pytestmark = pytest.mark.parametrize(
    "flavour", [f for f in ("oxloop", "oxloop-uring", "asyncio") if f in FLAVOURS], indirect=True
)


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
elif sys.argv[1] == "oxloop-uring":
    import oxloop
    factory = oxloop.ProactorEventLoop
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


class Alarm(Exception):
    pass


def test_a_python_signal_handler_runs_while_the_loop_waits_on_a_transport(loop):
    # signal.signal, no wakeup fd: the wait must end for the handler to run,
    # and here it is the first one after a transport's read (on io_uring, a
    # wait that also submitted the read's next poll).
    import socket

    def on_alarm(signum, frame):
        raise Alarm

    previous = signal.signal(signal.SIGUSR1, on_alarm)
    # To the loop's thread, blocked in its wait (pytest-timeout owns SIGALRM).
    timer = threading.Timer(
        0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1)
    )
    a, b = socket.socketpair()
    got = []

    class Reader(asyncio.Protocol):
        def data_received(self, data):
            got.append(data)

    async def main():
        await loop.connect_accepted_socket(Reader, a)
        loop.call_later(0.05, b.send, b"x")
        timer.start()
        await asyncio.sleep(30)

    try:
        with pytest.raises(Alarm):
            loop.run_until_complete(main())
        assert got == [b"x"]
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
        b.close()
