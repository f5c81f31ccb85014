"""A keep-alive HTTP/1.1 server on httptools for bench/http_bench.py.

    python bench/http_server.py LOOP CPU

Answers every request with a small fixed response; pins itself to CPU,
prints its port, serves until killed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import httptools
from common import loop_factory

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
    b"Connection: keep-alive\r\n\r\nHello, world!"
)


class HttpProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self):
        self.transport.write(RESPONSE)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def main(listener: socket.socket):
    server = await asyncio.get_running_loop().create_server(HttpProtocol, sock=listener)
    await server.serve_forever()


if __name__ == "__main__":
    loop_name, cpu = sys.argv[1], int(sys.argv[2])
    os.sched_setaffinity(0, {cpu})
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    print(listener.getsockname()[1], flush=True)
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        runner.run(main(listener))
