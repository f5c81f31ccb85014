"""Micro benchmarks of the loop's primitives, each loop in fresh processes.

`python -m oxloop bench` runs a quick version (oxloop vs asyncio, plus uvloop
when installed); bench/micro.py in the repository runs the full one against
every rival loop installed. The table shows median ops/s and the ratio to
uvloop (to asyncio when uvloop is not installed). No assertion is made.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

#: The column of oxloop with its health figures on; "oxloop" has them off.
WITH_HEALTH = "oxloop+health"
#: `oxloop.ProactorEventLoop`, the io_uring flavour.
URING = "oxloop-uring"


def loop_factory(name: str):
    """The `new_event_loop` of a loop module by name (asyncio: its selector
    loop); "oxloop" with its health figures off, "oxloop+health" on."""
    if name == "asyncio":
        return asyncio.SelectorEventLoop
    if name in ("oxloop", WITH_HEALTH):
        import oxloop

        def new_event_loop():
            loop = oxloop.new_event_loop()
            oxloop.configure_health(loop, enabled=name == WITH_HEALTH)
            return loop

        return new_event_loop
    if name == URING:
        import oxloop

        return oxloop.ProactorEventLoop
    return importlib.import_module(name).new_event_loop


def installed(names) -> list[str]:
    """Those of the loops `names` whose module can be imported here."""
    return [name for name in names if importlib.util.find_spec(name.split("+")[0])]


def baseline(loops: list[str]) -> str:
    """The loop ratios are given against: uvloop when compared, else asyncio,
    else the first loop."""
    return next((name for name in ("uvloop", "asyncio") if name in loops), loops[0])


def noop(*args):
    pass


def b_call_soon(loop, n):
    for _ in range(n):
        loop.call_soon(noop)
    loop.call_soon(loop.stop)
    loop.run_forever()


def b_call_later_fire(loop, n):
    # Delays spread over the first millisecond: a zero delay would let a loop
    # turn the timer into call_soon (uvloop does), which is not what is measured.
    for i in range(n):
        loop.call_later((i % 100 + 1) * 1e-5, noop)
    loop.call_later(0.0011, loop.stop)
    loop.run_forever()


def b_call_later_cancel(loop, n):
    for _ in range(n):
        loop.call_later(1000, noop).cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()


def b_timeout(loop, n):
    # What every finished asyncio.timeout() / wait_for() costs: a timer set,
    # then cancelled (the step in between is a sleep(0)).
    async def main():
        for _ in range(n):
            async with asyncio.timeout(3600):
                await asyncio.sleep(0)

    loop.run_until_complete(main())


def b_create_task(loop, n):
    async def child():
        pass

    async def main():
        for _ in range(n):
            await loop.create_task(child())

    loop.run_until_complete(main())


def b_future_pingpong(loop, n):
    async def main():
        box = [None]

        async def pong():
            for _ in range(n):
                fut = loop.create_future()
                box[0] = fut
                await fut

        t = loop.create_task(pong())
        for _ in range(n):
            await asyncio.sleep(0)
            box[0].set_result(None)
        await t

    loop.run_until_complete(main())


def b_sleep0(loop, n):
    async def main():
        for _ in range(n):
            await asyncio.sleep(0)

    loop.run_until_complete(main())


def b_threadsafe_burst(loop, n):
    count = [0]

    def tick():
        count[0] += 1
        if count[0] == n:
            loop.stop()

    def producer():
        for _ in range(n):
            loop.call_soon_threadsafe(tick)

    t = threading.Thread(target=producer)
    loop.call_soon(t.start)
    loop.run_forever()
    t.join()


def b_threadsafe_roundtrip(loop, n):
    done = threading.Event()

    def worker():
        for _ in range(n):
            done.clear()
            loop.call_soon_threadsafe(done.set)
            done.wait()
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    loop.call_soon(t.start)
    loop.run_forever()
    t.join()


def nonblocking_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of non-blocking sockets."""
    pair = socket.socketpair()
    for sock in pair:
        sock.setblocking(False)
    return pair


def b_reader_pingpong(loop, n):
    a, b = nonblocking_pair()
    left = [n]

    def on_b():
        b.recv(1)
        b.send(b"x")

    def on_a():
        a.recv(1)
        left[0] -= 1
        if left[0] == 0:
            loop.stop()
        else:
            a.send(b"x")

    loop.add_reader(b.fileno(), on_b)
    loop.add_reader(a.fileno(), on_a)
    a.send(b"x")
    loop.run_forever()
    loop.remove_reader(a.fileno())
    loop.remove_reader(b.fileno())
    a.close()
    b.close()


def b_sock_pingpong(loop, n):
    a, b = nonblocking_pair()

    async def echo():
        for _ in range(n):
            data = await loop.sock_recv(b, 100)
            await loop.sock_sendall(b, data)

    async def main():
        t = loop.create_task(echo())
        for _ in range(n):
            await loop.sock_sendall(a, b"ping")
            await loop.sock_recv(a, 100)
        await t

    loop.run_until_complete(main())
    a.close()
    b.close()


def b_udp_echo(loop, n):
    window = 32

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data, addr)

    class Client(asyncio.DatagramProtocol):
        def __init__(self):
            self.sent = self.received = 0
            self.done = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport
            for _ in range(min(window, n)):
                self.send()

        def send(self):
            if self.sent < n:
                self.sent += 1
                self.transport.sendto(b"x" * 64)

        def datagram_received(self, data, addr):
            self.received += 1
            if self.received == n:
                self.done.set_result(None)
            self.send()

    async def main():
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        client, proto = await loop.create_datagram_endpoint(
            Client, remote_addr=server.get_extra_info("sockname")
        )
        await proto.done
        client.close()
        server.close()

    loop.run_until_complete(main())


def b_pipe_stream(loop, n):
    chunk = b"x" * 65536

    class Sink(asyncio.Protocol):
        def __init__(self):
            self.left = n * len(chunk)
            self.done = loop.create_future()

        def data_received(self, data):
            self.left -= len(data)
            if self.left == 0:
                self.done.set_result(None)

    async def main():
        r, w = os.pipe()
        rt, sink = await loop.connect_read_pipe(Sink, os.fdopen(r, "rb", 0))
        wt, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb", 0))
        for _ in range(n):
            wt.write(chunk)
            if wt.get_write_buffer_size() > 1 << 20:
                await asyncio.sleep(0)
        await sink.done
        wt.close()
        rt.close()

    loop.run_until_complete(main())


def b_spawn_wait(loop, n):
    async def main():
        for _ in range(n):
            proc = await asyncio.create_subprocess_exec("true")
            await proc.wait()

    loop.run_until_complete(main())


def b_spawn_communicate(loop, n):
    async def main():
        for _ in range(n):
            proc = await asyncio.create_subprocess_exec(
                "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            out, _ = await proc.communicate(b"x" * 4096)
            assert len(out) == 4096

    loop.run_until_complete(main())


BENCHMARKS = {
    "call_soon": (b_call_soon, 200_000),
    "call_later fire": (b_call_later_fire, 100_000),
    "call_later cancel": (b_call_later_cancel, 100_000),
    "asyncio.timeout around sleep(0)": (b_timeout, 50_000),
    "create_task+await": (b_create_task, 50_000),
    "future ping-pong": (b_future_pingpong, 50_000),
    "sleep(0)": (b_sleep0, 100_000),
    "threadsafe burst": (b_threadsafe_burst, 100_000),
    "threadsafe round trip": (b_threadsafe_roundtrip, 10_000),
    "add_reader ping-pong": (b_reader_pingpong, 50_000),
    "sock ping-pong": (b_sock_pingpong, 30_000),
    "UDP echo 64 B (32 in flight)": (b_udp_echo, 50_000),
    "pipe stream (64 KiB writes)": (b_pipe_stream, 5_000),
    "spawn+wait (true)": (b_spawn_wait, 300),
    "spawn+communicate (cat)": (b_spawn_communicate, 200),
}


def run_one(loop_name: str, bench: str, scale: float) -> float:
    """ops/s of one benchmark on one loop, in this process."""
    func, n = BENCHMARKS[bench]
    n = max(1, int(n * scale))
    loop = loop_factory(loop_name)()
    try:
        func(loop, max(1, n // 10))  # warm-up
        t0 = time.perf_counter()
        func(loop, n)
        return n / (time.perf_counter() - t0)
    finally:
        loop.close()


def sample(loop_name: str, bench: str, scale: float) -> float:
    """ops/s of one benchmark on one loop, in a fresh process; NaN if it failed
    or hung (some rival loops do on some benchmarks)."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "oxloop._bench", "--child", loop_name, bench, str(scale)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        return math.nan
    return float(out.stdout) if out.returncode == 0 else math.nan


def median(samples) -> float:
    """The median, NaN if any sample failed."""
    samples = list(samples)
    return math.nan if any(map(math.isnan, samples)) else statistics.median(samples)


def cell(value: float, base: float) -> str:
    """`value (ratio)` for a table; a failed run shows as "failed"."""
    if math.isnan(value):
        return f"{'failed':>20}"
    return f"{value:>12,.0f} ({value / base:4.2f}x)"


def run(loops: list[str], benches: list[str], repeat: int, scale: float) -> dict:
    """Prints the table row by row; returns {benchmark: {loop: median ops/s}}."""
    base = baseline(loops)
    print(f"Python {sys.version.split()[0]}, median of {repeat} runs, ops/s (ratio to {base})")
    print(f"{'benchmark':<30}" + "".join(f"{name:>20}" for name in loops))
    medians = {}
    for bench in benches:
        # The loops take turns, so that each sees the machine's drift alike.
        runs = [{name: sample(name, bench, scale) for name in loops} for _ in range(repeat)]
        row = {name: median(run[name] for run in runs) for name in loops}
        medians[bench] = row
        cells = "".join(cell(row[name], row[base]) for name in loops)
        print(f"{bench:<30}{cells}", flush=True)
    return medians


def main(argv: list[str], loops: list[str] | None = None, repeat: int = 3, scale=0.3) -> int:
    """Command line of `python -m oxloop bench` (quick defaults) and bench/micro.py."""
    parser = argparse.ArgumentParser(prog="python -m oxloop bench", description=__doc__)
    parser.add_argument("--repeat", type=int, default=repeat)
    parser.add_argument("--scale", type=float, default=scale, help="fraction of each op count")
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--loops", help="comma-separated loop modules to compare")
    parser.add_argument("--json", help="write the medians here")
    opts = parser.parse_args(argv)
    if opts.loops:
        loops = opts.loops.split(",")
    loops = loops or ["oxloop", WITH_HEALTH, *installed(["uvloop"]), "asyncio"]
    benches = opts.only.split(",") if opts.only else list(BENCHMARKS)
    unknown = set(benches) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    medians = run(loops, benches, opts.repeat, opts.scale)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"python": sys.version.split()[0], "medians": medians}, f, indent=1)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(run_one(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    else:
        sys.exit(main(sys.argv[1:]))
