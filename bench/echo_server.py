"""A TCP echo server for bench/echo.py, on a chosen loop and API.

    python bench/echo_server.py LOOP KIND CPU

LOOP: oxloop | uvloop | asyncio. KIND: protocol | buffered | streams | sock.
Pins itself to CPU, prints its port, serves until killed.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import sys

from common import loop_factory


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class EchoBuffered(asyncio.BufferedProtocol):
    def __init__(self):
        self.buffer = bytearray(256 * 1024)
        self.view = memoryview(self.buffer)

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, nbytes):
        self.transport.write(self.view[:nbytes])


async def serve_streams(listener):
    async def handle(reader, writer):
        try:
            while data := await reader.read(256 * 1024):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, sock=listener)
    await server.serve_forever()


async def serve_sock(listener):
    loop = asyncio.get_running_loop()
    listener.setblocking(False)

    async def handle(conn):
        with conn:
            try:
                while data := await loop.sock_recv(conn, 256 * 1024):
                    await loop.sock_sendall(conn, data)
            except ConnectionError:
                pass

    tasks = set()
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(handle(conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def main(kind: str, listener: socket.socket):
    loop = asyncio.get_running_loop()
    if kind in ("protocol", "buffered"):
        factory = EchoProtocol if kind == "protocol" else EchoBuffered
        server = await loop.create_server(factory, sock=listener)
        await server.serve_forever()
    elif kind == "streams":
        await serve_streams(listener)
    else:
        await serve_sock(listener)


if __name__ == "__main__":
    loop_name, kind, cpu = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.sched_setaffinity(0, {cpu})
    # A thousand connections and more need more fds than a soft limit of 1024.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    print(listener.getsockname()[1], flush=True)
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        runner.run(main(kind, listener))
