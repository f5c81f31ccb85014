"""UDP and Unix datagram endpoints, on oxloop and asyncio."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import sys
import tempfile
import weakref

import pytest

pytestmark = pytest.mark.parametrize("flavour", ["oxloop", "asyncio"], indirect=True)


class Recorder(asyncio.DatagramProtocol):
    def __init__(self, loop):
        self.datagrams = []
        self.errors = []
        self.arrived = asyncio.Event()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.datagrams.append((data, addr))
        self.arrived.set()

    def error_received(self, exc):
        self.errors.append(exc)
        self.arrived.set()

    def connection_lost(self, exc):
        self.lost.set_result(exc)

    async def next(self):
        await asyncio.wait_for(self.arrived.wait(), 5)
        self.arrived.clear()

    async def until(self, count):
        while len(self.datagrams) < count:
            await self.next()


async def endpoint_pair(loop, factory=None, host="127.0.0.1"):
    """A server endpoint on `host`, its protocol made by `factory` (a Recorder
    by default), and a client connected to it: (server, its protocol, client,
    its protocol)."""
    server, sp = await loop.create_datagram_endpoint(
        factory or (lambda: Recorder(loop)), local_addr=(host, 0)
    )
    client, cp = await loop.create_datagram_endpoint(
        lambda: Recorder(loop), remote_addr=server.get_extra_info("sockname")[:2]
    )
    return server, sp, client, cp


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_addresses_are_the_socket_modules(loop, host):
    async def main():
        server, sp, client, cp = await endpoint_pair(loop, host=host)
        client.sendto(b"ping")
        await sp.next()
        [(data, addr)] = sp.datagrams
        assert data == b"ping"
        assert addr == client.get_extra_info("sockname")
        assert type(addr) is tuple and len(addr) == (2 if host == "127.0.0.1" else 4)
        server.sendto(b"pong", addr)
        server.sendto(bytearray(b"pong2"), addr)
        server.sendto(memoryview(b"xpong3")[1:], list(addr) and addr)
        await cp.until(3)
        assert [d for d, _ in cp.datagrams] == [b"pong", b"pong2", b"pong3"]
        assert cp.datagrams[0][1] == server.get_extra_info("sockname")
        assert server.get_write_buffer_size() == 0
        client.close()
        server.close()
        assert await cp.lost is None and await sp.lost is None
        assert server.is_closing()

    loop.run_until_complete(main())


def test_a_host_name_address_is_resolved_by_the_socket_module(loop):
    async def main():
        server, sp = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        port = server.get_extra_info("sockname")[1]
        client, _ = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), family=socket.AF_INET
        )
        client.sendto(b"by name", ("localhost", port))
        await sp.next()
        assert sp.datagrams[0][0] == b"by name"
        client.close()
        server.close()

    loop.run_until_complete(main())


def test_bad_sendto_arguments(loop):
    async def main():
        server, _, client, _ = await endpoint_pair(loop)
        with pytest.raises(TypeError, match="bytes-like"):
            client.sendto("text")
        with pytest.raises(ValueError, match="Invalid address"):
            client.sendto(b"x", ("127.0.0.2", 1))
        client.close()
        server.close()

    loop.run_until_complete(main())


def test_reuse_address_is_refused(loop):
    async def main():
        # Refused with ValueError before the parameter's removal, TypeError after.
        with pytest.raises((ValueError, TypeError), match="reuse_address"):
            await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), reuse_address=True
            )

    loop.run_until_complete(main())


def test_refused_peer_reaches_error_received(loop):
    async def main():
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()
        probe.close()
        client, cp = await loop.create_datagram_endpoint(lambda: Recorder(loop), remote_addr=closed)
        client.sendto(b"anyone?")
        await cp.next()
        if not cp.errors:  # the refusal can come back on the next send instead
            client.sendto(b"anyone?")
            await cp.next()
        assert isinstance(cp.errors[0], ConnectionRefusedError)
        assert not client.is_closing()
        client.close()

    loop.run_until_complete(main())


def test_a_raising_datagram_received_is_reported_and_reading_goes_on(loop):
    errors = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))

    class Fails(Recorder):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"boom":
                raise ZeroDivisionError

    async def main():
        server, sp, client, _ = await endpoint_pair(loop, lambda: Fails(loop))
        client.sendto(b"boom")
        await sp.next()
        client.sendto(b"after")
        await sp.next()
        assert [d for d, _ in sp.datagrams] == [b"boom", b"after"]
        assert not server.is_closing()
        client.close()
        server.close()

    loop.run_until_complete(main())
    assert [type(e) for e in errors] == [ZeroDivisionError]


def test_a_protocol_without_datagram_received_is_reported_and_the_loop_goes_on(loop):
    errors = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))

    async def main():
        server, _ = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        server.set_protocol(asyncio.Protocol())  # has no datagram_received
        client, _ = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), remote_addr=server.get_extra_info("sockname")
        )
        client.sendto(b"lost")
        for _ in range(100):
            if errors:
                break
            await asyncio.sleep(0.01)
        client.close()
        server.close()

    loop.run_until_complete(main())
    assert [type(e) for e in errors] == [AttributeError]


def test_empty_datagrams_follow_the_running_pythons_rule(loop):
    # asyncio sends empty datagrams from 3.12.? on; before, sendto(b"") did nothing.
    sends_empty = sys.version_info >= (3, 13)

    async def main():
        server, sp, client, _ = await endpoint_pair(loop)
        client.sendto(b"")
        client.sendto(b"end")
        while not sp.datagrams or sp.datagrams[-1][0] != b"end":
            await sp.next()
        assert [d for d, _ in sp.datagrams] == ([b"", b"end"] if sends_empty else [b"end"])
        client.close()
        server.close()

    loop.run_until_complete(main())


def test_abort_loses_the_connection_at_once(loop):
    async def main():
        server, sp = await loop.create_datagram_endpoint(
            lambda: Recorder(loop), local_addr=("127.0.0.1", 0)
        )
        server.abort()
        assert await sp.lost is None
        assert server.get_extra_info("socket").fileno() == -1

    loop.run_until_complete(main())


def test_a_closed_endpoint_is_freed_without_the_cycle_collector(loop):
    async def main():
        server, sp, client, cp = await endpoint_pair(loop)
        client.sendto(b"ping")
        await sp.next()
        server.close()
        client.close()
        await sp.lost
        await cp.lost
        return [weakref.ref(o) for o in (server, sp, client, cp)]

    gc.disable()
    try:
        refs = loop.run_until_complete(main())
        assert [r() for r in refs] == [None] * 4
    finally:
        gc.enable()


def test_unix_datagrams(loop):
    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "server.sock")
            server, sp = await loop.create_datagram_endpoint(
                lambda: Recorder(loop), local_addr=path, family=socket.AF_UNIX
            )
            client_path = os.path.join(tmp, "client.sock")
            client, cp = await loop.create_datagram_endpoint(
                lambda: Recorder(loop),
                local_addr=client_path,
                remote_addr=path,
                family=socket.AF_UNIX,
            )
            client.sendto(b"over unix")
            await sp.next()
            assert sp.datagrams == [(b"over unix", client_path)]
            server.sendto(b"back", client_path)
            await cp.next()
            assert cp.datagrams == [(b"back", path)]
            client.close()
            server.close()

    loop.run_until_complete(main())


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
