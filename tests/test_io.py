"""add_reader / add_writer and the sock_* coroutines."""

from __future__ import annotations

import array
import asyncio
import os
import socket
import tempfile

import pytest


def nonblocking_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of non-blocking sockets."""
    pair = socket.socketpair()
    for sock in pair:
        sock.setblocking(False)
    return pair


def test_reader_is_level_triggered_and_removable(loop):
    r, w = socket.socketpair()
    r.setblocking(False)
    seen = []

    def on_read():
        seen.append(r.recv(1))
        if len(seen) == 3:
            assert loop.remove_reader(r) is True
            loop.stop()

    loop.add_reader(r.fileno(), on_read)
    w.send(b"abc")
    loop.run_forever()
    assert seen == [b"a", b"b", b"c"]
    assert loop.remove_reader(r) is False
    r.close()
    w.close()


def test_writer_and_file_objects(loop):
    r, w = socket.socketpair()
    fired = []
    loop.add_writer(w, lambda: (fired.append("w"), loop.remove_writer(w), loop.stop()))
    loop.run_forever()
    assert fired == ["w"]
    assert loop.remove_writer(w.fileno()) is False
    r.close()
    w.close()


def test_reader_and_writer_on_one_fd(loop):
    r, w = socket.socketpair()
    events = []

    def on_write():
        events.append("write")
        loop.remove_writer(r)
        w.send(b"x")

    def on_read():
        events.append("read")
        loop.remove_reader(r)
        loop.stop()

    loop.add_reader(r, on_read)
    loop.add_writer(r, on_write)
    loop.run_forever()
    assert events == ["write", "read"]
    r.close()
    w.close()


def test_replacing_a_reader_cancels_the_old_handle(loop):
    r, w = socket.socketpair()
    loop.add_reader(r, print)
    calls = []
    loop.add_reader(r, lambda: (calls.append(r.recv(10)), loop.stop()))
    w.send(b"hi")
    loop.run_forever()
    assert calls == [b"hi"]
    assert loop.remove_reader(r)
    r.close()
    w.close()


def test_pipes_are_watched(loop):
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    got = []
    loop.add_reader(rfd, lambda: (got.append(os.read(rfd, 100)), loop.stop()))
    os.write(wfd, b"through a pipe")
    loop.run_forever()
    assert got == [b"through a pipe"]
    loop.remove_reader(rfd)
    os.close(rfd)
    os.close(wfd)


def test_remove_after_close_returns_false(loop):
    r, w = socket.socketpair()
    loop.add_reader(r, print)
    loop.close()
    assert loop.remove_reader(r) is False
    assert loop.remove_writer(r) is False
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.add_reader(r, print)
    r.close()
    w.close()


def test_sock_ping_pong(loop):
    a, b = nonblocking_pair()

    async def main():
        for i in range(100):
            msg = f"ping {i}".encode()
            await loop.sock_sendall(a, msg)
            assert await loop.sock_recv(b, 100) == msg
        big = os.urandom(4 * 1024 * 1024)
        sender = asyncio.ensure_future(loop.sock_sendall(a, big))
        got = bytearray()
        buf = bytearray(65536)
        while len(got) < len(big):
            n = await loop.sock_recv_into(b, buf)
            got += buf[:n]
        await sender
        assert bytes(got) == big

    loop.run_until_complete(main())
    a.close()
    b.close()


def test_sock_accept_connect(loop):
    srv = socket.create_server(("127.0.0.1", 0))
    srv.setblocking(False)
    port = srv.getsockname()[1]

    async def main():
        cli = socket.socket()
        cli.setblocking(False)
        accept = asyncio.ensure_future(loop.sock_accept(srv))
        await loop.sock_connect(cli, ("localhost", port))
        conn, addr = await accept
        conn.setblocking(False)
        await loop.sock_sendall(cli, b"hello")
        assert await loop.sock_recv(conn, 5) == b"hello"
        conn.close()
        cli.close()

    loop.run_until_complete(main())
    srv.close()


def test_sock_udp(loop):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))

    async def main():
        await loop.sock_sendto(a, b"dgram", b.getsockname())
        data, addr = await loop.sock_recvfrom(b, 100)
        assert (data, addr) == (b"dgram", a.getsockname())
        await loop.sock_sendto(b, b"back", a.getsockname())
        buf = bytearray(10)
        n, addr = await loop.sock_recvfrom_into(a, buf)
        assert bytes(buf[:n]) == b"back"

    loop.run_until_complete(main())
    a.close()
    b.close()


@pytest.mark.parametrize(
    ("size", "error"),
    [("1", TypeError), (1.5, TypeError), (-1, ValueError), (2**70, OverflowError)],
)
def test_sock_recv_checks_its_size_when_awaited(loop, size, error):
    a, b = socket.socketpair()
    a.setblocking(False)

    async def main():
        pending = loop.sock_recv(a, size)
        with pytest.raises(error):
            await pending

    with a, b:
        loop.run_until_complete(main())


def test_cancelled_sock_recv_loses_no_data_and_no_registration(loop):
    a, b = nonblocking_pair()

    async def main():
        t = asyncio.ensure_future(loop.sock_recv(b, 100))
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert loop.remove_reader(b) is False
        a.send(b"kept")
        assert await loop.sock_recv(b, 100) == b"kept"

    loop.run_until_complete(main())
    a.close()
    b.close()


def test_sock_waits_survive_closed_and_reused_fds(loop):
    """A socket that finished a wait is closed and its fd number reused by
    another socket: the new socket's waits, add_reader and a transport on it
    all still hear about their data."""

    async def recv_after_wait(a, b):
        waiting = asyncio.ensure_future(loop.sock_recv(b, 100))
        await asyncio.sleep(0.01)
        a.send(b"x")
        assert await waiting == b"x"

    async def main():
        for _ in range(3):
            a, b = nonblocking_pair()
            await recv_after_wait(a, b)
            old_fd = b.fileno()
            a.close()
            b.close()
            c, d = nonblocking_pair()
            assert old_fd in (c.fileno(), d.fileno())
            await recv_after_wait(c, d)
            await recv_after_wait(d, c)
            readable = loop.create_future()
            loop.add_reader(d, readable.set_result, None)
            c.send(b"y")
            await readable
            assert loop.remove_reader(d)
            assert d.recv(10) == b"y"
            c.close()
            d.close()

    loop.run_until_complete(asyncio.wait_for(main(), 10))


def test_socket_waited_on_then_given_to_a_transport(loop):
    a, b = nonblocking_pair()

    async def main():
        waiting = asyncio.ensure_future(loop.sock_recv(b, 100))
        await asyncio.sleep(0.01)
        a.send(b"first")
        assert await waiting == b"first"
        got = loop.create_future()

        class Take(asyncio.Protocol):
            def data_received(self, data):
                got.set_result(data)

        transport, _ = await loop.create_connection(Take, sock=b)
        a.send(b"second")
        assert await got == b"second"
        transport.close()

    loop.run_until_complete(asyncio.wait_for(main(), 10))
    a.close()


def test_sock_recv_and_sendall_at_once_on_one_socket(loop):
    a, b = nonblocking_pair()
    big = os.urandom(8 * 1024 * 1024)

    async def drain_peer():
        got = bytearray()
        while len(got) < len(big):
            got += await loop.sock_recv(a, 1 << 20)
        return bytes(got)

    async def main():
        # b waits to read while its sendall waits for room: both sides of
        # one fd are watched by one-shot waits at the same time.
        reply = asyncio.ensure_future(loop.sock_recv(b, 100))
        sending = asyncio.ensure_future(loop.sock_sendall(b, big))
        await asyncio.sleep(0.01)
        assert not sending.done()
        received = asyncio.ensure_future(drain_peer())
        await sending
        assert await received == big
        await loop.sock_sendall(a, b"done")
        assert await reply == b"done"

    loop.run_until_complete(asyncio.wait_for(main(), 20))
    a.close()
    b.close()


def test_sock_recv_through_bulk_and_small_reads(loop):
    a, b = nonblocking_pair()
    big = os.urandom(3 * 1024 * 1024)

    async def main():
        # Bulk transfers (reads of 64 KiB and more) and small messages in
        # turn on one socket, and a read smaller than what is waiting.
        for size in (100, 256 * 1024):
            sender = asyncio.ensure_future(loop.sock_sendall(a, big))
            got = bytearray()
            while len(got) < len(big):
                chunk = await loop.sock_recv(b, size)
                assert 0 < len(chunk) <= size
                got += chunk
            await sender
            assert bytes(got) == big
            await loop.sock_sendall(a, b"small")
            assert await loop.sock_recv(b, 256 * 1024) == b"small"
        a.close()
        assert await loop.sock_recv(b, 256 * 1024) == b""

    loop.run_until_complete(asyncio.wait_for(main(), 20))
    b.close()


def test_blocking_socket_is_refused_in_debug(loop):
    a, b = socket.socketpair()
    loop.set_debug(True)
    with pytest.raises(ValueError, match="non-blocking"):
        loop.run_until_complete(loop.sock_recv(a, 1))
    a.close()
    b.close()


def test_sock_sendfile(loop):
    srv = socket.create_server(("127.0.0.1", 0))
    payload = os.urandom(256 * 1024)

    async def main():
        cli = socket.socket()
        cli.setblocking(False)
        await loop.sock_connect(cli, srv.getsockname())
        conn, _ = await loop.run_in_executor(None, srv.accept)
        with tempfile.TemporaryFile() as f:
            f.write(payload)
            f.seek(0)
            reader = loop.run_in_executor(None, _recv_all, conn, len(payload))
            sent = await loop.sock_sendfile(cli, f)
            assert sent == len(payload)
            assert await reader == payload
        cli.close()
        conn.close()

    loop.run_until_complete(main())
    srv.close()


def _recv_all(sock, n):
    data = b""
    while len(data) < n:
        data += sock.recv(n - len(data))
    return data


def test_getaddrinfo_and_getnameinfo(loop, is_oxloop):
    async def main():
        numeric = await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        assert numeric == socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        named = await loop.getaddrinfo("localhost", "80", type=socket.SOCK_STREAM)
        assert named == socket.getaddrinfo("localhost", "80", type=socket.SOCK_STREAM)
        assert await loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST) == (
            "127.0.0.1",
            socket.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST)[1],
        )
        with pytest.raises(socket.gaierror):
            await loop.getaddrinfo("256.256.256.256.invalid.", 80, flags=socket.AI_NUMERICHOST)

    executor_before = getattr(loop, "_default_executor", None)
    assert executor_before is None
    if is_oxloop:
        # numeric hosts are answered without a thread hop
        loop.run_until_complete(loop.getaddrinfo("::1", 443))
        assert loop._default_executor is None
    loop.run_until_complete(main())


def test_sock_operations_behave_as_coroutines(loop):
    a, b = nonblocking_pair()

    async def main():
        op = loop.sock_recv(b, 100)
        assert asyncio.iscoroutine(op)
        a.send(b"first")
        await asyncio.sleep(0)
        # nothing happens before the first step
        assert b.recv(100) == b"first"
        a.send(b"second")
        assert await op == b"second"
        # a wait that ends does not take the next wait's registration with it
        loop.call_later(0.01, a.send, b"third")
        assert await loop.sock_recv(b, 100) == b"third"
        waiter = asyncio.ensure_future(loop.sock_recv(b, 100))
        await asyncio.sleep(0.01)
        a.send(b"fourth")
        assert await waiter == b"fourth"
        buf = bytearray(3)
        a.send(b"abcdef")
        assert await loop.sock_recv_into(b, buf) == 3 and buf == bytearray(b"abc")
        assert await loop.sock_recv(b, 100) == b"def"
        big = os.urandom(2 * 1024 * 1024)
        sender = asyncio.ensure_future(loop.sock_sendall(a, memoryview(big)))
        got = bytearray()
        while len(got) < len(big):
            got += await loop.sock_recv(b, 65536)
        assert await sender is None
        assert bytes(got) == big

    loop.run_until_complete(main())
    a.close()
    b.close()


@pytest.mark.parametrize("side", ["reader", "writer"])
def test_a_socket_closed_while_registered_is_found_by_the_object(loop, side):
    # anyio closes a socket while a receive or send waits, then removes it.
    add, remove = getattr(loop, f"add_{side}"), getattr(loop, f"remove_{side}")
    a, b = nonblocking_pair()
    add(a, lambda: None)
    a.close()
    assert remove(a) is True
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        remove(a)  # no registration is left to find it by
    b.close()


@pytest.mark.parametrize("side", ["reader", "writer"])
def test_a_socket_closed_while_watched_is_closed_for_its_peer(loop, side):
    # The loop must not keep the socket open (an io_uring poll holds its file).
    a, b = nonblocking_pair()
    getattr(loop, f"add_{side}")(a, lambda: None)
    loop.run_until_complete(asyncio.sleep(0.01))
    a.close()
    b.settimeout(5)
    assert b.recv(10) == b""
    b.close()


def test_the_next_socket_with_a_closed_ones_fd_sees_its_events(loop, flavour):
    # A socket closed while registered and never removed: its fd number,
    # reused by the next socket, must not keep the old watcher.
    if flavour == "asyncio":
        pytest.xfail(
            "asyncio's selector keeps the closed socket's key, and re-adding a reader "
            "under that fd only replaces the key's data: the new socket never reaches epoll"
        )
    a, b = nonblocking_pair()
    fd = a.fileno()
    loop.add_reader(a, lambda: None)
    a.close()
    reused, d = nonblocking_pair()
    if reused.fileno() != fd:  # the kernel hands out the lowest free number
        os.dup2(reused.fileno(), fd)
        reused.close()
        reused = socket.socket(fileno=fd)
    got = []

    def on_read():
        got.append(reused.recv(10))
        loop.stop()

    loop.add_reader(reused, on_read)
    d.send(b"hello")
    loop.call_later(5, loop.stop)
    loop.run_forever()
    assert got == [b"hello"]
    assert loop.remove_reader(reused) is True
    for s in (b, d, reused):
        s.close()


def test_fds_no_os_hands_out_are_never_watched(loop):
    assert loop.remove_reader(10**100) is False
    assert loop.remove_writer(2**40) is False
    with pytest.raises(OverflowError):
        loop.add_reader(2**40, lambda: None)
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.add_reader(-1, lambda: None)
    with pytest.raises(ValueError, match="Invalid file object"):
        loop.remove_reader("nope")


def test_sock_buffers_of_any_format(loop):
    a, b = nonblocking_pair()

    async def main():
        target = array.array("i", [0, 0])
        await loop.sock_sendall(a, array.array("i", [7, -1]).tobytes())
        got = 0
        while got < 8:
            view = memoryview(target).cast("B")[got:]
            got += await loop.sock_recv_into(b, view if got else target)
        assert list(target) == [7, -1]
        with pytest.raises(BufferError):
            await loop.sock_sendall(a, memoryview(b"abcdef")[::2])

    loop.run_until_complete(main())
    a.close()
    b.close()


def test_buffered_protocol_buffers_of_any_format(loop):
    a, b = nonblocking_pair()
    received = loop.create_future()

    class Reader(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = array.array("i", [0] * 4)
            self.got = 0

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            self.got += nbytes
            if not received.done():
                received.set_result(bytes(memoryview(self.buf).cast("B")[:nbytes]))

    async def main():
        transport, _ = await loop.connect_accepted_socket(Reader, a)
        b.send(b"12345678")
        assert await received == b"12345678"
        transport.close()

    loop.run_until_complete(main())
    b.close()


def test_a_transports_socket_is_refused_to_readers_and_sock_calls_until_it_closes(loop):
    a, b = nonblocking_pair()

    async def main():
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=b)
        for watch in (loop.add_reader, loop.add_writer):
            with pytest.raises(RuntimeError, match="is used by transport"):
                watch(b, print)
        with pytest.raises(RuntimeError, match="is used by transport"):
            await loop.sock_recv(b, 1)
        transport.close()
        # Closing: the socket is the caller's again until the transport lets go.
        loop.add_reader(b, print)
        assert loop.remove_reader(b)
        await asyncio.sleep(0)
        # Gone: a new socket on the same fd number is nobody's.
        c, d = nonblocking_pair()
        loop.add_reader(d, print)
        assert loop.remove_reader(d)
        c.send(b"y")
        assert await loop.sock_recv(d, 1) == b"y"
        c.close()
        d.close()

    loop.run_until_complete(asyncio.wait_for(main(), 10))
    a.close()
