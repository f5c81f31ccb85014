"""Subprocesses, signals and datagrams under load, on oxloop and asyncio."""

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


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


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


def test_a_thousand_subprocesses_leave_no_fd_and_no_zombie(loop):
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


def test_udp_echo_of_a_hundred_thousand_datagrams(loop):
    total, window = 100_000, 64

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data, addr)

    class Client(asyncio.DatagramProtocol):
        def __init__(self):
            self.received = 0
            self.sent = 0
            self.done = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport
            for _ in range(window):
                self.send()

        def send(self):
            if self.sent < total:
                self.transport.sendto(self.sent.to_bytes(4, "big"))
                self.sent += 1

        def datagram_received(self, data, addr):
            self.received += 1
            if self.received == total:
                self.done.set_result(None)
            self.send()

    async def main():
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        port = server.get_extra_info("sockname")[1]
        client, proto = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
        await asyncio.wait_for(proto.done, 120)
        assert proto.received == total
        client.close()
        server.close()

    loop.run_until_complete(main())


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
