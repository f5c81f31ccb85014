"""Serving: how a server's loop accepts connections -- the order of
`protocol_factory()` and the protocol's first callbacks, the context each
connection gets, a failing factory, the accepted socket -- on oxloop and on
asyncio's loop."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import resource
import socket
import tempfile
import weakref

import pytest

from tests.test_stream_transports import Echo

var = contextvars.ContextVar("var", default="unset")


class Traced(asyncio.Protocol):
    """Records its callbacks in `log` with the value of `var` each saw, and
    sets `var` as the factory did, for the later callbacks to show it."""

    def __init__(self, log, name, lost):
        self.log, self.name, self.lost = log, name, lost
        log.append(("factory", name, var.get()))
        var.set(name)

    def connection_made(self, transport):
        self.transport = transport
        self.log.append(("made", self.name, var.get()))

    def data_received(self, data):
        self.log.append(("data", self.name, var.get()))
        self.transport.write(data)

    def connection_lost(self, exc):
        self.lost.set_result(None)


async def echo_once(addr, data=b"ping"):
    """Connects, sends `data`, returns what comes back before EOF."""
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(data)
    writer.write_eof()
    got = await reader.read()
    writer.close()
    await writer.wait_closed()
    return got


def test_each_connection_runs_in_its_own_copy_of_the_servers_context(loop):
    log = []

    async def main():
        var.set("server")
        losts = []

        def factory():
            losts.append(loop.create_future())
            return Traced(log, f"conn{len(losts)}", losts[-1])

        server = await loop.create_server(factory, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        for _ in range(2):
            assert await echo_once(addr) == b"ping"
            await losts[-1]
        assert var.get() == "server"
        server.close()
        await server.wait_closed()

    contextvars.Context().run(loop.run_until_complete, main())
    assert log == [
        ("factory", "conn1", "server"),
        ("made", "conn1", "conn1"),
        ("data", "conn1", "conn1"),
        ("factory", "conn2", "server"),
        ("made", "conn2", "conn2"),
        ("data", "conn2", "conn2"),
    ]


def test_connections_made_in_one_wake_up_are_served_in_accept_order(loop):
    log = []

    async def main():
        losts = []

        def factory():
            losts.append(loop.create_future())
            return Traced(log, len(losts), losts[-1])

        server = await loop.create_server(factory, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        # Connected before the loop looks: one readiness accepts all three.
        clients = [socket.create_connection(addr) for _ in range(3)]
        while sum(event == "made" for event, _, _ in log) < 3:
            await asyncio.sleep(0.01)
        for c in clients:
            c.close()
        await asyncio.gather(*losts)
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    assert [(event, n) for event, n, _ in log] == [
        ("factory", 1),
        ("factory", 2),
        ("factory", 3),
        ("made", 1),
        ("made", 2),
        ("made", 3),
    ]


@pytest.mark.parametrize("debug", [False, True], ids=["quiet", "debug"])
def test_a_failing_protocol_factory_closes_that_connection_and_serving_goes_on(loop, debug):
    loop.set_debug(debug)
    # Only what the handler was told: keeping the exception would keep the
    # failed connection's socket open through its traceback.
    reports = []
    loop.set_exception_handler(
        lambda lp, ctx: reports.append((ctx["message"], type(ctx.get("exception"))))
    )
    calls = 0

    def factory():
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ZeroDivisionError("no protocol")
        return Echo()

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        reader, writer = await asyncio.open_connection(*addr)
        if debug:
            # asyncio's report holds the socket in a cycle with the
            # traceback: it closes when the collector runs.
            while not reports:
                await asyncio.sleep(0.01)
            gc.collect()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        await writer.wait_closed()
        assert await echo_once(addr) == b"ping"
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    failures = [message for message, exc in reports if exc is ZeroDivisionError]
    assert failures == (["Error on transport creation for incoming connection"] if debug else [])


def listener(family, proto):
    """A listening socket of `family` ("tcp" with `proto`, or "unix")."""
    if family == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(os.path.join(tempfile.mkdtemp(), "sock"))
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
        sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


@pytest.mark.parametrize("family, proto", [("tcp", 0), ("tcp", socket.IPPROTO_TCP), ("unix", 0)])
def test_an_accepted_socket_is_non_blocking_not_inherited_and_named(loop, family, proto):
    sock = listener(family, proto)
    name = sock.getsockname()
    seen = {}

    class Look(asyncio.Protocol):
        def connection_made(self, transport):
            conn = transport.get_extra_info("socket")
            seen.update(
                timeout=conn.gettimeout(),
                inheritable=os.get_inheritable(conn.fileno()),
                family=conn.family,
                type=conn.type,
                proto=conn.proto,
                sockname=transport.get_extra_info("sockname"),
                peername=transport.get_extra_info("peername"),
            )
            if family == "tcp":
                seen["nodelay"] = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            transport.close()

    async def main():
        if family == "unix":
            server = await loop.create_unix_server(Look, sock=sock)
            reader, writer = await asyncio.open_unix_connection(name)
        else:
            server = await loop.create_server(Look, sock=sock)
            reader, writer = await asyncio.open_connection(*name)
        assert await reader.read() == b""
        client = writer.get_extra_info("sockname")
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return client

    client = loop.run_until_complete(main())
    assert seen["timeout"] == 0.0
    assert seen["inheritable"] is False
    assert (seen["family"], seen["type"], seen["proto"]) == (sock.family, socket.SOCK_STREAM, proto)
    assert (seen["sockname"], seen["peername"]) == (name, client)
    if family == "tcp":
        # asyncio sets TCP_NODELAY only where the socket says IPPROTO_TCP.
        assert seen["nodelay"] is (proto == socket.IPPROTO_TCP)


def test_a_finished_connection_is_freed_without_the_cycle_collector(loop, is_oxloop):
    if not is_oxloop:
        pytest.skip("asyncio's transport holds itself in a cycle (its _read_ready_cb)")
    refs = []

    class Kept(Echo):
        def connection_made(self, transport):
            super().connection_made(transport)
            refs.append((weakref.ref(self), weakref.ref(transport)))

    async def main():
        server = await loop.create_server(Kept, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        for _ in range(3):
            assert await echo_once(addr) == b"ping"
        while any(transport() is not None for _, transport in refs):
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()

    gc.disable()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 10))
    finally:
        gc.enable()
    assert len(refs) == 3
    assert all(protocol() is None for protocol, _ in refs)


def test_out_of_fds_the_server_reports_waits_and_accepts_later(loop):
    reports = []
    loop.set_exception_handler(
        lambda lp, ctx: reports.append((ctx["message"], type(ctx.get("exception"))))
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        client = socket.socket()
        client.setblocking(False)
        client.connect_ex(addr)
        # No fd left for accept() to return.
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 16, hard))
        try:
            while True:
                held.append(os.dup(0))
        except OSError:
            pass
        while not reports:
            await asyncio.sleep(0.01)
        while held:
            os.close(held.pop())
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        # asyncio's retry, a second later, accepts it.
        await loop.sock_sendall(client, b"ping")
        assert await asyncio.wait_for(loop.sock_recv(client, 4), 10) == b"ping"
        client.close()
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(asyncio.wait_for(main(), 20))
    finally:
        while held:
            os.close(held.pop())
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # asyncio's accept loop goes on after the error: a report per try.
    assert reports == [("socket.accept() out of system resource", OSError)] * 100
