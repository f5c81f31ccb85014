"""asyncio streams (start_server, open_connection, StreamReader): oxloop feeds
asyncio's own StreamReader itself, so these check that every reading
pattern, flow control, EOF and the odd cases (a subclass, an exported
buffer, a cancelled read) behave as on asyncio's loop."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest


async def serve(handler, **kwargs):
    server = await asyncio.start_server(handler, "127.0.0.1", 0, **kwargs)
    return server, server.sockets[0].getsockname()[:2]


async def closed(server, *writers):
    for writer in writers:
        writer.close()
        await writer.wait_closed()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("size", [1, 1000, 300 * 1024, 3 * 1024 * 1024])
def test_echo_keeps_every_byte_in_order(loop, size):
    payload = os.urandom(size)

    async def main():
        async def echo(reader, writer):
            while data := await reader.read(64 * 1024):
                writer.write(data)
                await writer.drain()
            writer.close()

        server, addr = await serve(echo)
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        received = await reader.read()
        assert reader.at_eof()
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        await closed(server, writer)

    loop.run_until_complete(asyncio.wait_for(main(), 30))


def test_lines_and_exact_reads_across_chunks(loop):
    async def main():
        async def talk(reader, writer):
            for piece in (b"first li", b"ne\nsecond line\nabc", b"defgh", b"|tail"):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.close()

        server, addr = await serve(talk)
        reader, writer = await asyncio.open_connection(*addr)
        assert await reader.readline() == b"first line\n"
        assert await reader.readline() == b"second line\n"
        assert await reader.readexactly(5) == b"abcde"
        assert await reader.readuntil(b"|") == b"fgh|"
        with pytest.raises(asyncio.IncompleteReadError) as caught:
            await reader.readexactly(10)
        assert caught.value.partial == b"tail"
        assert await reader.read(10) == b""
        await closed(server, writer)

    loop.run_until_complete(asyncio.wait_for(main(), 30))


def test_small_limit_pauses_the_transport_until_read(loop):
    limit = 1024
    total = 32 * 1024 * 1024

    async def main():
        sent = loop.create_future()

        async def flood(reader, writer):
            writer.write(b"z" * total)
            await writer.drain()
            sent.set_result(None)
            writer.close()

        server, addr = await serve(flood)
        reader, writer = await asyncio.open_connection(*addr, limit=limit)
        while len(reader._buffer) <= 2 * limit:
            await asyncio.sleep(0.001)
        # Past twice the limit the reader paused its transport, so the
        # buffer stops growing and the sender cannot finish.
        await asyncio.sleep(0.05)
        assert reader._paused
        assert len(reader._buffer) < total
        assert not sent.done()
        received = 0
        while data := await reader.read(65536):
            received += len(data)
        assert received == total
        await sent
        await closed(server, writer)

    loop.run_until_complete(asyncio.wait_for(main(), 30))


def test_cancelled_read_leaves_the_data_for_the_next(loop):
    async def main():
        go = asyncio.Event()

        async def later(reader, writer):
            await go.wait()
            writer.write(b"data")
            await writer.drain()
            writer.close()

        server, addr = await serve(later)
        reader, writer = await asyncio.open_connection(*addr)
        pending = asyncio.ensure_future(reader.read(100))
        await asyncio.sleep(0.01)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        go.set()
        assert await reader.read(100) == b"data"
        await closed(server, writer)

    loop.run_until_complete(asyncio.wait_for(main(), 30))


def test_reader_subclass_gets_its_feed_data_called(loop):
    class Counting(asyncio.StreamReader):
        fed = 0

        def feed_data(self, data):
            Counting.fed += len(data)
            super().feed_data(data)

    async def main():
        async def hello(reader, writer):
            writer.write(b"hello")
            await writer.drain()
            writer.close()

        server, addr = await serve(hello)
        reader = Counting()
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.create_connection(lambda: protocol, *addr)
        assert await reader.read() == b"hello"
        assert Counting.fed == 5
        transport.close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(asyncio.wait_for(main(), 30))


def test_data_for_an_exported_buffer_fails_as_on_asyncio(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def main():
        async def twice(reader, writer):
            writer.write(b"one")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"two")
            await writer.drain()
            await reader.read()
            writer.close()

        server, addr = await serve(twice)
        reader, writer = await asyncio.open_connection(*addr)
        while not reader._buffer:
            await asyncio.sleep(0.001)
        view = memoryview(reader._buffer)  # resizing the buffer now fails
        while not writer.transport.is_closing():
            await asyncio.sleep(0.001)
        view.release()
        assert bytes(reader._buffer) == b"one"
        assert isinstance(reader.exception(), BufferError)
        with pytest.raises(BufferError):
            await writer.wait_closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(asyncio.wait_for(main(), 30))
    assert contexts[0]["message"] == "Fatal error: protocol.data_received() call failed."
    assert isinstance(contexts[0]["exception"], BufferError)
