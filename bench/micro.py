"""In-process micro benchmarks: oxloop vs asyncio vs uvloop, in one run.

    python bench/micro.py [--repeat 5] [--scale 1.0] [--only call_soon,...]

Each (loop, benchmark, repetition) runs in a fresh process; the table shows
the median ops/s and the ratio to uvloop (and to asyncio when uvloop is not
installed). No assertion is made on the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

from common import available_loops, loop_factory


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


def b_reader_pingpong(loop, n):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
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
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--json", help="write the medians here")
    parser.add_argument("--child", nargs=2, metavar=("LOOP", "BENCH"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        print(run_one(opts.child[0], opts.child[1], opts.scale))
        return 0

    benches = opts.only.split(",") if opts.only else list(BENCHMARKS)
    loops = available_loops()
    base = "uvloop" if "uvloop" in loops else "asyncio"
    medians: dict[str, dict[str, float]] = {}
    print(f"Python {sys.version.split()[0]}, median of {opts.repeat} runs, ops/s (ratio to {base})")
    header = f"{'benchmark':<30}" + "".join(f"{name:>20}" for name in loops)
    print(header)
    for bench in benches:
        row = {}
        for name in loops:
            samples = []
            for _ in range(opts.repeat):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", name, bench, "--scale", str(opts.scale)],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=dict(os.environ),
                )
                samples.append(float(out.stdout.strip()))
            row[name] = statistics.median(samples)
        medians[bench] = row
        cells = "".join(f"{row[name]:>12,.0f} ({row[name] / row[base]:4.2f}x)" for name in loops)
        print(f"{bench:<30}{cells}", flush=True)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"python": sys.version.split()[0], "medians": medians}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
