"""Instructions per operation of the loop's hot paths, counted by callgrind.

    python bench/callgrind.py [--loop oxloop] [--only call_soon,...] [--n 2000]

Each workload runs under `valgrind --tool=callgrind` twice, with n and 2n
operations; the difference divided by n is what one operation costs, with
start-up and the interpreter's own set-up cancelled out. With a fixed hash
seed, instruction counts are repeatable where timings on a shared machine
are not, so this is what a change to a hot path is checked with (before and
after).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys

from oxloop._bench import BENCHMARKS, loop_factory, nonblocking_pair

#: The micro benchmarks whose cost per operation is a hot path of the loop.
MICRO = (
    "call_soon",
    "call_later fire",
    "call_later cancel",
    "asyncio.timeout around sleep(0)",
    "create_task+await",
    "future ping-pong",
    "sleep(0)",
    "add_reader ping-pong",
    "sock ping-pong",
    "UDP echo 64 B (32 in flight)",
)


def protocol_pingpong(loop, n):
    """n round trips of 64 bytes between two stream transports (Protocol)."""
    a, b = nonblocking_pair()
    done = loop.create_future()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    class Client(asyncio.Protocol):
        count = 0

        def connection_made(self, transport):
            self.transport = transport
            transport.write(b"x" * 64)

        def data_received(self, data):
            self.count += 1
            if self.count == n:
                done.set_result(None)
            else:
                self.transport.write(data)

    async def main():
        server, _ = await loop.connect_accepted_socket(Echo, a)
        client, _ = await loop.connect_accepted_socket(Client, b)
        await done
        client.close()
        server.close()

    loop.run_until_complete(main())


WORKLOADS = {name: BENCHMARKS[name][0] for name in MICRO}
WORKLOADS["Protocol ping-pong 64 B"] = protocol_pingpong


def run_one(loop_name: str, name: str, n: int) -> None:
    """Runs one workload of n operations in this process."""
    loop = loop_factory(loop_name)()
    try:
        WORKLOADS[name](loop, n)
    finally:
        loop.close()


def instructions(loop_name: str, name: str, n: int) -> int:
    """What the whole process executed for one workload of n operations."""
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--child",
        loop_name,
        name,
        str(n),
    ]
    # A fixed hash seed: string hashes decide dict layouts, and so counts.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stderr
    match = re.search(r"Collected : (\d+)", out)
    if match is None:
        raise RuntimeError(f"no instruction count for {name}:\n{out}")
    return int(match.group(1))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        run_one(argv[1], argv[2], int(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", default="oxloop")
    parser.add_argument("--only", help="comma-separated workload names")
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 1
    names = args.only.split(",") if args.only else list(WORKLOADS)
    print(f"instructions per operation on {args.loop} (callgrind, n={args.n})")
    for name in names:
        small = instructions(args.loop, name, args.n)
        large = instructions(args.loop, name, 2 * args.n)
        print(f"{name:34} {(large - small) / args.n:12,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
