"""Stream transports: TCP and Unix sockets, Protocol and BufferedProtocol,
flow control, half-close, errors -- on oxloop and on asyncio's loop."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading

import pytest


class Collect(asyncio.Protocol):
    """Records what the transport does to it."""

    def __init__(self, loop, keep_open=False):
        self.data = bytearray()
        self.events = []
        self.keep_open = keep_open
        self.lost = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        assert isinstance(data, bytes)
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        return self.keep_open

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def connection_lost(self, exc):
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class BufferedEcho(asyncio.BufferedProtocol):
    def __init__(self):
        self.buf = bytearray(1000)

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.transport.write(bytes(self.buf[:nbytes]))


async def serve(loop, factory, family=socket.AF_INET):
    if family == socket.AF_UNIX:
        path = os.path.join(tempfile.mkdtemp(), "sock")
        server = await loop.create_unix_server(factory, path)
        return server, path
    server = await loop.create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_UNIX])
@pytest.mark.parametrize("server_proto", [Echo, BufferedEcho])
def test_echo_round_trips(loop, family, server_proto):
    async def main():
        server, addr = await serve(loop, server_proto, family)
        if family == socket.AF_UNIX:
            reader, writer = await asyncio.open_unix_connection(addr)
        else:
            reader, writer = await asyncio.open_connection(*addr)
        assert isinstance(writer.transport, asyncio.Transport)
        for i in range(50):
            line = f"line {i}\n".encode() * (i + 1)
            writer.write(line)
            assert await reader.readexactly(len(line)) == line
        big = os.urandom(3 * 1024 * 1024)
        writer.write(big)
        assert await reader.readexactly(len(big)) == big
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_extra_info_and_protocol_switch(loop):
    async def main():
        server, addr = await serve(loop, Echo)
        first = Collect(loop)
        transport, _ = await loop.create_connection(lambda: first, *addr)
        assert transport.get_extra_info("peername") == addr
        assert (
            transport.get_extra_info("sockname") == transport.get_extra_info("socket").getsockname()
        )
        assert transport.get_extra_info("nonexistent", 42) == 42
        assert transport.get_protocol() is first
        assert transport.can_write_eof()
        second = Collect(loop)
        transport.set_protocol(second)
        assert transport.get_protocol() is second
        transport.write(b"to the second protocol")
        while len(second.data) < 22:
            await asyncio.sleep(0.001)
        assert bytes(second.data) == b"to the second protocol" and not first.data
        transport.close()
        assert transport.is_closing()
        assert await second.lost is None
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_close_flushes_what_was_written(loop):
    async def main():
        received = loop.create_future()

        class Sink(asyncio.Protocol):
            def connection_made(self, transport):
                self.buf = bytearray()
                transport.pause_reading()
                loop.call_later(0.05, transport.resume_reading)

            def data_received(self, data):
                self.buf += data

            def connection_lost(self, exc):
                received.set_result(bytes(self.buf))

        server, addr = await serve(loop, Sink)
        payload = os.urandom(8 * 1024 * 1024)
        proto = Collect(loop)
        transport, _ = await loop.create_connection(lambda: proto, *addr)
        transport.write(payload)
        assert transport.get_write_buffer_size() > 0
        transport.close()
        # as in asyncio, a transport still flushing after close() takes writes
        transport.write(b"written after close")
        assert await proto.lost is None
        assert await received == payload + b"written after close"
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_abort_drops_the_buffer(loop):
    async def main():
        peer = loop.create_future()

        class Paused(asyncio.Protocol):
            def connection_made(self, transport):
                transport.pause_reading()
                peer.set_result(transport)

        server, addr = await serve(loop, Paused)
        proto = Collect(loop)
        transport, _ = await loop.create_connection(lambda: proto, *addr)
        transport.write(os.urandom(32 * 1024 * 1024))
        assert transport.get_write_buffer_size() > 0
        transport.abort()
        assert transport.get_write_buffer_size() == 0
        assert transport.is_closing()
        assert await proto.lost is None
        (await peer).close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_flow_control_pauses_and_resumes_the_protocol(loop):
    async def main():
        peer = loop.create_future()

        class Slow(asyncio.Protocol):
            def connection_made(self, transport):
                transport.pause_reading()
                peer.set_result(transport)

            def data_received(self, data):
                pass

        server, addr = await serve(loop, Slow)
        proto = Collect(loop)
        transport, _ = await loop.create_connection(lambda: proto, *addr)
        transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        server_side = await peer
        while "pause" not in proto.events:
            transport.write(b"x" * 65536)
        assert transport.get_write_buffer_size() > 64 * 1024
        server_side.resume_reading()
        while "resume" not in proto.events:
            await asyncio.sleep(0.001)
        assert transport.get_write_buffer_size() <= 16 * 1024
        transport.close()
        await proto.lost
        assert proto.events == ["made", "pause", "resume", "lost"]
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_write_eof_half_close(loop):
    async def main():
        got = loop.create_future()

        class Reply(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
                self.buf = b""

            def data_received(self, data):
                self.buf += data

            def eof_received(self):
                self.transport.write(b"reply to " + self.buf)
                self.transport.close()
                got.set_result(self.buf)

        server, addr = await serve(loop, Reply)
        proto = Collect(loop, keep_open=True)
        transport, _ = await loop.create_connection(lambda: proto, *addr)
        transport.write(b"question")
        transport.write_eof()
        with pytest.raises(RuntimeError, match="write_eof"):
            transport.write(b"more")
        assert await got == b"question"
        while "eof" not in proto.events:
            await asyncio.sleep(0.001)
        assert bytes(proto.data) == b"reply to question"
        transport.close()
        assert await proto.lost is None
        assert proto.events == ["made", "eof", "lost"]
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_bad_writes_raise_what_asyncio_raises(loop):
    async def main():
        server, addr = await serve(loop, Echo)
        proto = Collect(loop)
        transport, _ = await loop.create_connection(lambda: proto, *addr)
        for bad in ("text", 42, None, [b"list"]):
            with pytest.raises(TypeError, match="data argument must be a bytes-like object"):
                transport.write(bad)
        transport.write(b"")
        transport.write(bytearray(b"ba"))
        transport.write(memoryview(b"mv"))
        transport.writelines([b"a", bytearray(b"b"), memoryview(b"c")])
        while len(proto.data) < 7:
            await asyncio.sleep(0.001)
        assert bytes(proto.data) == b"bamvabc"
        transport.close()
        await proto.lost
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_peer_reset_reaches_connection_lost(loop):
    async def main():
        accepted = loop.create_future()

        class Keep(asyncio.Protocol):
            def connection_made(self, transport):
                accepted.set_result(transport)

        server, addr = await serve(loop, Keep)
        proto = Collect(loop)
        transport, _ = await loop.create_connection(lambda: proto, *addr)
        peer = await accepted
        sock = peer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.abort()
        exc = await proto.lost
        assert exc is None or isinstance(exc, ConnectionError)
        for _ in range(3):
            transport.write(b"after reset")
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_raising_protocol_reaches_handler_and_closes(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def main():
        class Bad(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
                self.lost = loop.create_future()

            def data_received(self, data):
                raise ValueError("protocol broke")

            def connection_lost(self, exc):
                self.lost.set_result(exc)

        bad = Bad()
        server, addr = await serve(loop, lambda: bad)
        proto = Collect(loop)
        transport, _ = await loop.create_connection(lambda: proto, *addr)
        transport.write(b"boom")
        exc = await bad.lost
        assert isinstance(exc, ValueError)
        await proto.lost
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    assert contexts[0]["message"] == "Fatal error: protocol.data_received() call failed."
    assert isinstance(contexts[0]["exception"], ValueError)
    assert "transport" in contexts[0] and "protocol" in contexts[0]


def test_no_fd_left_after_many_connections(loop, open_fds):
    async def main():
        server, addr = await serve(loop, Echo)
        before = open_fds()
        for _ in range(100):
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
            await writer.wait_closed()
        await asyncio.sleep(0.01)
        assert open_fds() <= before
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


CLIENTS = """
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
for s in socks:
    s.sendall(b"x")
for s in socks:
    assert s.recv(1) == b"x"
print("all answered", flush=True)
sys.stdin.read()
"""


def test_ten_thousand_concurrent_connections(loop, flavour):
    import resource
    import subprocess
    import sys

    if flavour == "oxloop-select":
        pytest.skip("select() is limited to FD_SETSIZE descriptors, as in asyncio")
    n = 10_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < n + 1000:
        pytest.fail(f"the fd hard limit ({hard}) is below {n + 1000}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = set()
    most = 0

    class Counter(asyncio.Protocol):
        def connection_made(self, transport):
            nonlocal most
            self.transport = transport
            held.add(self)
            most = max(most, len(held))

        def data_received(self, data):
            self.transport.write(data)

        def connection_lost(self, exc):
            held.discard(self)

    async def main():
        server = await loop.create_server(Counter, "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLIENTS,
            str(port),
            str(n),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert await asyncio.wait_for(proc.stdout.readline(), 120) == b"all answered\n"
        assert most == n
        proc.stdin.close()
        await proc.wait()
        while held:
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(main())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_peer_reset_during_buffered_writes(loop):
    async def main():
        accepted = loop.create_future()

        class Reset(asyncio.Protocol):
            def connection_made(self, transport):
                transport.pause_reading()
                accepted.set_result(transport)

        server, addr = await serve(loop, Reset)
        proto = Collect(loop)
        transport, _ = await loop.create_connection(lambda: proto, *addr)
        peer = await accepted
        while transport.get_write_buffer_size() == 0:
            transport.write(b"x" * 1024 * 1024)
        sock = peer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.abort()
        exc = await asyncio.wait_for(proto.lost, 30)
        assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
        assert transport.is_closing()
        transport.write(b"dropped: the connection is lost")
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_a_transport_paused_by_another_callback_of_the_iteration_reads_nothing(loop):
    # Both sockets are readable in one iteration; whichever protocol runs
    # first pauses the other, whose queued read must not run (a proxy's
    # backpressure).
    pairs = [socket.socketpair() for _ in range(2)]
    received = []
    transports = []

    class Pausing(asyncio.Protocol):
        def __init__(self, index):
            self.index = index

        def data_received(self, data):
            received.append(self.index)
            transports[1 - self.index].pause_reading()

    async def main():
        for i, (a, _) in enumerate(pairs):
            a.setblocking(False)
            t, _ = await loop.connect_accepted_socket(lambda i=i: Pausing(i), a)
            transports.append(t)
        for _, b in pairs:
            b.send(b"x")
        await asyncio.sleep(0.05)
        assert len(received) == 1
        paused = 1 - received[0]
        transports[paused].resume_reading()
        await asyncio.sleep(0.05)
        assert received[1:] == [paused]
        for t in transports:
            t.close()

    loop.run_until_complete(main())
    for _, b in pairs:
        b.close()


def test_the_end_that_came_with_the_last_bytes_is_handed_on_an_iteration_later(loop):
    # asyncio's loop reads once per readiness report, so the end of the
    # stream comes from its next read: code that stops the loop once the
    # bytes arrived (run_until_complete) may count on the transport being
    # open then. A proactor receives both at once.
    a, b = socket.socketpair()
    a.setblocking(False)
    iteration = 0
    seen = []

    def tick():
        nonlocal iteration
        iteration += 1
        loop.call_soon(tick)

    class Recorder(asyncio.Protocol):
        def data_received(self, data):
            seen.append(("data", iteration))

        def eof_received(self):
            seen.append(("eof", iteration))

    async def main():
        loop.call_soon(tick)
        transport, _ = await loop.connect_accepted_socket(Recorder, a)
        await asyncio.sleep(0.05)  # reading (a proactor's receive in flight)
        b.sendall(b"the last bytes")
        b.shutdown(socket.SHUT_WR)
        while len(seen) < 2:
            await asyncio.sleep(0)
        transport.close()

    loop.run_until_complete(asyncio.wait_for(main(), 5))
    b.close()
    [(first, data_at), (second, eof_at)] = seen
    assert (first, second) == ("data", "eof")
    assert eof_at > data_at


def test_a_loop_run_by_another_thread_hears_its_transport(loop):
    # The transport's watch was armed by this thread's waits; the next run
    # is another thread's (while this one blocks in join).
    import threading

    a, b = socket.socketpair()
    got = []

    class Reader(asyncio.Protocol):
        def data_received(self, data):
            got.append(data)
            loop.stop()

    loop.run_until_complete(loop.connect_accepted_socket(Reader, a))
    loop.run_until_complete(asyncio.sleep(0.01))
    runner = threading.Thread(target=loop.run_forever)
    runner.start()
    b.send(b"x")
    runner.join(30)
    if runner.is_alive():
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
    assert got == [b"x"]
    b.close()


class Taking(asyncio.BufferedProtocol):
    """Takes bytes through a small buffer, pausing its transport every few
    calls and resuming it on the next iteration."""

    def __init__(self, loop, size):
        self.loop = loop
        self.buf = bytearray(size)
        self.data = bytearray()
        self.calls = 0
        self.eof = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.took(bytes(self.buf[:nbytes]))

    def took(self, data):
        self.data += data
        self.calls += 1
        if self.calls % 3 == 0:
            self.transport.pause_reading()
            self.loop.call_soon(self.transport.resume_reading)

    def eof_received(self):
        self.eof.set_result(None)


class TakingPlain(Taking, asyncio.Protocol):
    def data_received(self, data):
        self.took(data)


@pytest.mark.parametrize("kind", [Taking, TakingPlain])
def test_a_transport_paused_and_resumed_gets_every_byte_in_order(loop, kind):
    a, b = socket.socketpair()
    sent = bytes(range(256)) * 4096

    async def main():
        a.setblocking(False)
        _, proto = await loop.connect_accepted_socket(lambda: kind(loop, 7777), a)
        await loop.sock_sendall(b, sent)
        b.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(proto.eof, 30)
        assert proto.data == sent
        proto.transport.close()

    b.setblocking(False)
    loop.run_until_complete(main())
    b.close()


def test_small_then_bulk_then_small_messages_arrive_whole_and_in_order(loop):
    # On io_uring a connection that receives a bulk chunk leaves its
    # receive for readiness and read(): nothing may be lost or reordered.
    a, b = socket.socketpair()
    small = [bytes([i]) * 1000 for i in range(20)]
    bulk = [bytes(range(256)) * 1200, bytes(range(255, -1, -1)) * 1200]
    sent = b"".join(small + bulk + small)

    async def main():
        a.setblocking(False)
        _, proto = await loop.connect_accepted_socket(lambda: Collect(loop), a)
        for message in small:
            await loop.sock_sendall(b, message)
            await asyncio.sleep(0.001)
        for message in bulk:
            await loop.sock_sendall(b, message)
        for message in small:
            await asyncio.sleep(0.001)
            await loop.sock_sendall(b, message)
        b.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(proto.lost, 30)
        assert bytes(proto.data) == sent
        assert proto.events == ["made", "eof", "lost"]

    b.setblocking(False)
    loop.run_until_complete(main())
    b.close()


def test_bulk_flows_from_busy_peers_arrive_whole_and_in_order(loop):
    # On io_uring a connection whose receive a bulk chunk ends may have had
    # more received by then (its peer, in another thread, keeps sending;
    # another connection's ending receive waited for the kernel): that goes
    # to the protocol too, before what read() reads after it.
    pairs = [socket.socketpair() for _ in range(8)]
    sent = b"".join(bytes([i % 256]) * 1000 for i in range(50)) + bytes(range(256)) * 8192

    def peer(b):
        b.sendall(sent)
        b.shutdown(socket.SHUT_WR)

    async def main():
        protos = []
        for a, _ in pairs:
            a.setblocking(False)
            _, proto = await loop.connect_accepted_socket(lambda: Collect(loop), a)
            protos.append(proto)
        threads = [threading.Thread(target=peer, args=(b,)) for _, b in pairs]
        for thread in threads:
            thread.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(p.lost for p in protos)), 30)
        finally:
            for thread in threads:
                await loop.run_in_executor(None, thread.join)
        for proto in protos:
            assert len(proto.data) == len(sent)
            assert proto.data == sent

    loop.run_until_complete(main())
    for _, b in pairs:
        b.close()


def test_what_arrives_while_paused_goes_to_the_protocol_set_meanwhile(loop):
    # start_tls's order: pause, set_protocol, resume.
    a, b = socket.socketpair()
    second = Collect(loop)

    class First(Collect):
        def data_received(self, data):
            super().data_received(data)
            self.transport.pause_reading()

    async def main():
        a.setblocking(False)
        transport, first = await loop.connect_accepted_socket(lambda: First(loop), a)
        b.send(b"one")
        while not first.data:
            await asyncio.sleep(0.01)
        b.send(b"two")
        await asyncio.sleep(0.05)
        assert first.data == b"one"
        transport.set_protocol(second)
        transport.resume_reading()
        b.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(second.lost, 30)
        assert second.data == b"two"
        assert second.events == ["eof", "lost"]

    loop.run_until_complete(main())
    b.close()


def test_a_transport_closed_with_bytes_unread_lets_go_of_its_socket(loop, open_fds):
    a, b = socket.socketpair()
    before = open_fds()

    async def main():
        a.setblocking(False)
        transport, proto = await loop.connect_accepted_socket(lambda: Collect(loop), a)
        transport.pause_reading()
        b.send(b"never read" * 1000)
        await asyncio.sleep(0.05)
        transport.close()
        await asyncio.wait_for(proto.lost, 30)
        assert proto.data == b""

    loop.run_until_complete(main())
    b.settimeout(10)
    # The peer sees the close (a reset, since bytes were left unread).
    try:
        assert b.recv(10) == b""
    except ConnectionResetError:
        pass
    b.close()
    assert open_fds() <= before - 2


def test_a_small_write_counts_as_sent_and_many_arrive_whole_and_in_order(loop):
    # On io_uring a small write is a send made with the loop's next wait:
    # the transport shows it as sent at once, as a send() would have, and
    # what the socket does not take is buffered, paused for and flushed.
    a, b = socket.socketpair()
    messages = [i.to_bytes(4, "big") * 250 for i in range(4000)]

    async def main():
        a.setblocking(False)
        b.setblocking(False)
        transport, proto = await loop.connect_accepted_socket(lambda: Collect(loop), a)
        transport.write(messages[0])
        assert transport.get_write_buffer_size() == 0
        assert await loop.sock_recv(b, 2000) == messages[0]
        for message in messages[1:]:
            transport.write(message)
        assert transport.get_write_buffer_size() > 0
        await asyncio.sleep(0.01)
        assert "pause" in proto.events
        received = bytearray()
        want = sum(map(len, messages[1:]))
        while len(received) < want:
            received += await asyncio.wait_for(loop.sock_recv(b, 65536), 30)
        assert received == b"".join(messages[1:])
        assert transport.get_write_buffer_size() == 0
        assert proto.events == ["made", "pause", "resume"]
        transport.close()
        await asyncio.wait_for(proto.lost, 30)

    loop.run_until_complete(main())
    b.close()


def test_bytes_written_just_before_abort_reach_the_peer(loop):
    # asyncio's loop sends a write at once; on io_uring a pass's second
    # write is a send made with the next wait, made before abort() lets go
    # of the socket.
    a, b = socket.socketpair()

    async def main():
        a.setblocking(False)
        transport, proto = await loop.connect_accepted_socket(lambda: Collect(loop), a)
        transport.write(b"last ")
        transport.write(b"words")
        transport.abort()
        await asyncio.wait_for(proto.lost, 30)

    loop.run_until_complete(main())
    b.settimeout(10)
    received = b""
    while chunk := b.recv(100):
        received += chunk
    assert received == b"last words"
    b.close()


def test_bytes_written_as_the_loop_stops_reach_the_peer_while_it_is_stopped(loop):
    # asyncio's write() sends at once: a caller may stop the loop and wait
    # for the peer's answer synchronously.
    a, b = socket.socketpair()

    async def main():
        a.setblocking(False)
        transport, _ = await loop.connect_accepted_socket(lambda: Collect(loop), a)
        transport.write(b"good")
        transport.write(b"bye")
        return transport

    transport = loop.run_until_complete(main())
    b.settimeout(10)
    received = b""
    while len(received) < len(b"goodbye"):
        chunk = b.recv(100)
        assert chunk, received
        received += chunk
    assert received == b"goodbye"
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))
    b.close()


@pytest.mark.parametrize("debug", [False, True], ids=["quiet", "debug"])
def test_a_raising_eof_received_reaches_the_handler_and_closes(loop, debug):
    loop.set_debug(debug)
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    class BadEof(Collect):
        def eof_received(self):
            super().eof_received()
            raise ValueError("no eof")

    async def main():
        bad = BadEof(loop)
        server, addr = await serve(loop, lambda: bad)
        reader, writer = await asyncio.open_connection(*addr)
        writer.write_eof()
        assert isinstance(await asyncio.wait_for(bad.lost, 10), ValueError)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        server.close()
        await server.wait_closed()
        return bad

    bad = loop.run_until_complete(main())
    assert bad.events == ["made", "eof", "lost"]
    failures = [c for c in contexts if isinstance(c.get("exception"), ValueError)]
    assert [c["message"] for c in failures] == ["Fatal error: protocol.eof_received() call failed."]
    assert failures[0]["protocol"] is bad
