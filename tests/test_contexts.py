"""Which contextvars context each protocol callback runs in.

asyncio runs a transport's callbacks in copies of the context current where
the transport was made (for a server's connections, where the server was
made), a few of them elsewhere. Each scenario records, for every callback,
the values of a `ContextVar` it saw; the test runs it on the flavour and on
asyncio's loop and compares callback by callback, and checks the values
that matter to request tracing outright.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
import ssl
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import FLAVOURS

var = contextvars.ContextVar("var", default="unset")


class Log:
    """Every callback's name, with the set of values of `var` it ran with."""

    def __init__(self):
        self.seen: dict[str, set[str]] = {}

    def record(self, role, event):
        self.seen.setdefault(f"{role}.{event}", set()).add(var.get())


class Recorder(asyncio.Protocol, asyncio.DatagramProtocol, asyncio.SubprocessProtocol):
    """Records every callback; sets `var` in connection_made, to show whether
    later callbacks share that context. `on_data` and `on_eof` script it."""

    def __init__(self, log, role, on_data=None, on_eof=None):
        self.log, self.role = log, role
        self.on_data, self.on_eof = on_data, on_eof
        loop = asyncio.get_running_loop()
        self.lost = loop.create_future()
        self.resumed = loop.create_future()
        self.exited = loop.create_future()
        self.received = loop.create_future()

    def _record(self, event):
        self.log.record(self.role, event)

    def connection_made(self, transport):
        self._record("connection_made")
        self.transport = transport
        var.set(f"{self.role}.connection_made")

    def data_received(self, data):
        self._record("data_received")
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self):
        self._record("eof_received")
        if self.on_eof is not None:
            self.on_eof(self)

    def pause_writing(self):
        self._record("pause_writing")

    def resume_writing(self):
        self._record("resume_writing")
        if not self.resumed.done():
            self.resumed.set_result(None)

    def connection_lost(self, exc):
        self._record("connection_lost")
        if not self.lost.done():
            self.lost.set_result(exc)

    def datagram_received(self, data, addr):
        self._record("datagram_received")
        if self.on_data is not None:
            self.on_data(self, (data, addr))
        if not self.received.done():
            self.received.set_result(data)

    def error_received(self, exc):
        self._record("error_received")
        if not self.received.done():
            self.received.set_result(exc)

    def pipe_data_received(self, fd, data):
        self._record("pipe_data_received")

    def pipe_connection_lost(self, fd, exc):
        self._record("pipe_connection_lost")

    def process_exited(self):
        self._record("process_exited")
        self.exited.set_result(None)


class BufferedRecorder(Recorder, asyncio.BufferedProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buf = bytearray(65536)

    def get_buffer(self, sizehint):
        self._record("get_buffer")
        return self.buf

    def buffer_updated(self, nbytes):
        self._record("buffer_updated")


def answer_at_eof(proto):
    """A server's side: say goodbye at EOF, then close."""
    proto.transport.write(b"bye")
    proto.transport.close()


BIG = b"x" * (8 * 1024 * 1024)


async def stream_exchange(log, make_server, make_connection, buffered=False):
    """The client writes past its high-water mark (pause, resume), half-closes;
    the server answers and closes."""
    server_proto = BufferedRecorder if buffered else Recorder
    var.set("server")
    server = await make_server(lambda: server_proto(log, "server", on_eof=answer_at_eof))
    var.set("client")
    transport, client = await make_connection(lambda: Recorder(log, "client"), server)
    var.set("elsewhere")
    transport.set_write_buffer_limits(high=1)
    transport.write(BIG)
    await asyncio.wait_for(client.resumed, 10)
    transport.write_eof()
    await asyncio.wait_for(client.lost, 10)
    server.close()
    await server.wait_closed()


def tcp_server(ssl_context=None):
    async def make(factory):
        loop = asyncio.get_running_loop()
        return await loop.create_server(factory, "127.0.0.1", 0, ssl=ssl_context)

    return make


def tcp_connection(ssl_context=None):
    async def make(factory, server):
        loop = asyncio.get_running_loop()
        port = server.sockets[0].getsockname()[1]
        return await loop.create_connection(
            factory,
            "127.0.0.1",
            port,
            ssl=ssl_context,
            server_hostname="localhost" if ssl_context else None,
        )

    return make


def certificate() -> Path:
    """CPython's test certificate for localhost (3.12 moved it to certdata/)."""
    import test

    root = Path(test.__file__).parent
    return next(p for p in (root / "certdata" / "keycert.pem", root / "keycert.pem") if p.exists())


def ssl_contexts():
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certificate())
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return server, client


async def tcp(log):
    await stream_exchange(log, tcp_server(), tcp_connection())


async def tcp_buffered(log):
    await stream_exchange(log, tcp_server(), tcp_connection(), buffered=True)


def answer_data(proto, data):
    """A TLS server's side (TLS has no half-close): answer, then close."""
    answer_at_eof(proto)


async def tls(log):
    server_context, client_context = ssl_contexts()
    var.set("server")
    served = []

    def serve():
        served.append(Recorder(log, "server", on_data=answer_data))
        return served[-1]

    server = await tcp_server(server_context)(serve)
    var.set("client")
    transport, client = await tcp_connection(client_context)(
        lambda: Recorder(log, "client"), server
    )
    var.set("elsewhere")
    transport.write(b"hello")
    await asyncio.wait_for(client.lost, 10)
    # The server's end may close a pass after the client's, and 3.11's
    # wait_closed() does not wait for connections: both are recorded.
    await asyncio.wait_for(served[0].lost, 10)
    server.close()
    await server.wait_closed()


async def unix(log):
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "sock")

        async def make_server(factory):
            return await loop.create_unix_server(factory, path)

        async def make_connection(factory, server):
            return await loop.create_unix_connection(factory, path)

        await stream_exchange(log, make_server, make_connection)


async def accepted_socket(log):
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    var.set("a")
    ta, pa = await loop.connect_accepted_socket(lambda: Recorder(log, "a"), a)
    var.set("b")
    tb, pb = await loop.connect_accepted_socket(lambda: Recorder(log, "b", on_eof=answer_at_eof), b)
    var.set("elsewhere")
    ta.write(b"hello")
    ta.write_eof()
    await asyncio.wait_for(pa.lost, 10)
    await asyncio.wait_for(pb.lost, 10)


async def datagram(log):
    loop = asyncio.get_running_loop()

    def echo(proto, received):
        data, addr = received
        proto.transport.sendto(data, addr)

    var.set("server")
    st, sp = await loop.create_datagram_endpoint(
        lambda: Recorder(log, "server", on_data=echo), local_addr=("127.0.0.1", 0)
    )
    var.set("client")
    ct, cp = await loop.create_datagram_endpoint(
        lambda: Recorder(log, "client"), remote_addr=st.get_extra_info("sockname")
    )
    # A port nobody listens on: the refusal comes back as error_received.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    refusing = probe.getsockname()
    probe.close()
    var.set("refused")
    rt, rp = await loop.create_datagram_endpoint(
        lambda: Recorder(log, "refused"), remote_addr=refusing
    )
    var.set("elsewhere")
    ct.sendto(b"ping")
    await asyncio.wait_for(cp.received, 10)
    rt.sendto(b"anyone?")
    await asyncio.wait_for(rp.received, 10)
    for transport, proto in ((ct, cp), (st, sp), (rt, rp)):
        transport.close()
        await proto.lost


async def pipes(log):
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    var.set("reader")
    rt, rp = await loop.connect_read_pipe(lambda: Recorder(log, "reader"), os.fdopen(r, "rb", 0))
    var.set("writer")
    wt, wp = await loop.connect_write_pipe(lambda: Recorder(log, "writer"), os.fdopen(w, "wb", 0))
    var.set("elsewhere")
    wt.set_write_buffer_limits(high=1)
    wt.write(BIG)
    await asyncio.wait_for(wp.resumed, 10)
    wt.close()
    await asyncio.wait_for(wp.lost, 10)
    await asyncio.wait_for(rp.lost, 10)


async def subprocess(log):
    loop = asyncio.get_running_loop()
    var.set("subprocess")
    transport, proto = await loop.subprocess_exec(
        lambda: Recorder(log, "process"),
        sys.executable,
        "-c",
        "import sys; sys.stdout.write(sys.stdin.read())",
    )
    var.set("elsewhere")
    stdin = transport.get_pipe_transport(0)
    stdin.write(b"hello")
    stdin.close()
    await asyncio.wait_for(proto.exited, 10)
    await asyncio.wait_for(proto.lost, 10)
    transport.close()


SCENARIOS = {
    f.__name__: f
    for f in (tcp, tcp_buffered, tls, unix, accepted_socket, datagram, pipes, subprocess)
}


def run(loop_factory, scenario) -> dict[str, set[str]]:
    log = Log()
    loop = loop_factory()
    try:
        # A fresh context, so nothing set by one run leaks into the next.
        contextvars.Context().run(loop.run_until_complete, SCENARIOS[scenario](log))
    finally:
        loop.close()
    return log.seen


# What request tracing relies on: the data and flow-control callbacks see the
# context the transport was made in (never a value set in connection_made,
# which runs in a copy of its own).
EXPECTED = {
    "tcp": {
        "client.data_received": {"client"},
        "client.eof_received": {"client"},
        "client.pause_writing": {"elsewhere"},
        "client.resume_writing": {"elsewhere"},
        "server.data_received": {"server"},
        "server.eof_received": {"server"},
    },
    "tcp_buffered": {"server.get_buffer": {"server"}, "server.buffer_updated": {"server"}},
    # asyncio's SSLProtocol calls the app's connection_made from its own
    # data_received: for TLS the two share a context.
    "tls": {
        "client.data_received": {"client.connection_made"},
        "server.data_received": {"server.connection_made"},
    },
    "unix": {"client.data_received": {"client"}, "server.data_received": {"server"}},
    "accepted_socket": {"b.data_received": {"b"}, "a.data_received": {"a"}},
    "datagram": {
        "server.datagram_received": {"server"},
        "client.datagram_received": {"client"},
        "refused.error_received": {"refused"},
    },
    "pipes": {
        "reader.data_received": {"reader"},
        "reader.eof_received": {"reader"},
        "writer.resume_writing": {"elsewhere"},
    },
    "subprocess": {"process.pipe_data_received": {"subprocess"}},
}


def settle_order(seen: dict[str, set[str]], scenario: str) -> None:
    """A subprocess transport's connection_lost runs where the last of
    process_exited and the pipes' ends ran, an order the OS decides: it is
    checked against those, then left out of the comparison."""
    if scenario == "subprocess":
        lost = seen.pop("process.connection_lost")
        assert lost <= seen["process.process_exited"] | seen["process.pipe_connection_lost"]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_protocol_callbacks_context(loop_factory, scenario):
    seen = run(loop_factory, scenario)
    for callback, values in EXPECTED[scenario].items():
        assert seen[callback] == values, callback
    reference = run(FLAVOURS["asyncio"], scenario)
    settle_order(seen, scenario)
    settle_order(reference, scenario)
    assert seen == reference
