"""Pipe transports (connect_read_pipe, connect_write_pipe) on ptys, pipes and
FIFOs, on oxloop and asyncio."""

from __future__ import annotations

import asyncio
import errno
import os
import pty
import tempfile
import threading

import pytest

pytestmark = pytest.mark.parametrize("flavour", ["oxloop", "asyncio"], indirect=True)


class Recorder(asyncio.Protocol):
    """Records every protocol call, in order."""

    def __init__(self, loop):
        self.calls = []
        self.data = bytearray()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.calls.append("made")

    def data_received(self, data):
        self.data += data
        if self.calls[-1] != "data":
            self.calls.append("data")

    def eof_received(self):
        self.calls.append("eof")

    def pause_writing(self):
        self.calls.append("pause")

    def resume_writing(self):
        self.calls.append("resume")

    def connection_lost(self, exc):
        self.calls.append("lost")
        self.lost.set_result(exc)


def test_read_pipe_gets_data_then_eof_then_connection_lost(loop):
    r, w = os.pipe()

    async def main():
        transport, proto = await loop.connect_read_pipe(
            lambda: Recorder(loop), os.fdopen(r, "rb", 0)
        )
        assert transport.get_extra_info("pipe").fileno() == r
        assert transport.is_reading()
        os.write(w, b"hello ")
        os.write(w, b"pipe")
        await asyncio.sleep(0.05)
        os.close(w)
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert proto.calls == ["made", "data", "eof", "lost"]
        assert bytes(proto.data) == b"hello pipe"
        assert transport.is_closing()

    loop.run_until_complete(main())


def test_read_pipe_pauses_and_resumes(loop):
    r, w = os.pipe()

    async def main():
        transport, proto = await loop.connect_read_pipe(
            lambda: Recorder(loop), os.fdopen(r, "rb", 0)
        )
        await asyncio.sleep(0)
        transport.pause_reading()
        assert not transport.is_reading()
        os.write(w, b"held")
        await asyncio.sleep(0.05)
        assert proto.data == b""
        transport.resume_reading()
        await asyncio.sleep(0.05)
        assert proto.data == b"held"
        transport.close()
        assert await proto.lost is None
        os.close(w)

    loop.run_until_complete(main())


def test_a_raising_data_received_is_reported_and_reading_goes_on(loop):
    r, w = os.pipe()
    errors = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))

    class Fails(Recorder):
        def data_received(self, data):
            super().data_received(data)
            if len(self.data) == 1:
                raise ZeroDivisionError

    async def main():
        transport, proto = await loop.connect_read_pipe(lambda: Fails(loop), os.fdopen(r, "rb", 0))
        os.write(w, b"a")
        await asyncio.sleep(0.05)
        os.write(w, b"b")
        await asyncio.sleep(0.05)
        os.close(w)
        await proto.lost
        assert bytes(proto.data) == b"ab"

    loop.run_until_complete(main())
    assert [type(e) for e in errors] == [ZeroDivisionError]


def test_a_protocol_without_data_methods_fails_once_per_read(loop, is_oxloop):
    # A SubprocessProtocol has neither data_received nor eof_received: each
    # read is reported once (the data is consumed, the loop does not spin).
    r, w = os.pipe()
    errors = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))
    lost = []

    class NoData(asyncio.SubprocessProtocol):
        def connection_lost(self, exc):
            lost.append(exc)

    async def iterations(n):
        for _ in range(n):
            await asyncio.sleep(0)

    async def until_errors(n):
        while len(errors) < n:
            await asyncio.sleep(0)

    async def main():
        transport, _ = await loop.connect_read_pipe(NoData, os.fdopen(r, "rb", 0))
        os.write(w, b"123456789")
        await asyncio.wait_for(until_errors(1), 5)
        await iterations(20)
        assert len(errors) == 1
        os.close(w)
        await asyncio.wait_for(until_errors(2), 5)
        await iterations(20)
        assert len(errors) == 2
        assert transport.is_closing()
        transport.close()
        await iterations(5)

    loop.run_until_complete(main())
    assert [str(e) for e in errors] == [
        "'NoData' object has no attribute 'data_received'",
        "'NoData' object has no attribute 'eof_received'",
    ]
    # asyncio's transport never finishes (its eof_received lookup fails
    # before connection_lost is scheduled, so the pipe stays open until
    # collected); oxloop's closes.
    assert lost == ([None] if is_oxloop else [])


def test_write_pipe_flow_control_and_close_flushing_everything(loop):
    r, w = os.pipe()
    payload = os.urandom(4 * 1024 * 1024)
    received = bytearray()

    def drain():
        while chunk := os.read(r, 65536):
            received.extend(chunk)
        os.close(r)

    async def main():
        transport, proto = await loop.connect_write_pipe(
            lambda: Recorder(loop), os.fdopen(w, "wb", 0)
        )
        transport.set_write_buffer_limits(high=64 * 1024)
        transport.write(payload[:1])
        transport.write(bytearray(payload[1:1000]))
        transport.write(memoryview(payload)[1000:])
        assert transport.get_write_buffer_size() > 0
        assert proto.calls == ["made", "pause"]
        reader = threading.Thread(target=drain)
        reader.start()
        transport.close()
        transport.write(b"dropped after close")
        assert await asyncio.wait_for(proto.lost, 30) is None
        await loop.run_in_executor(None, reader.join)
        assert proto.calls == ["made", "pause", "resume", "lost"]

    loop.run_until_complete(main())
    assert received == payload


@pytest.mark.parametrize("buffered", [False, True])
def test_write_pipe_sees_its_reader_go_away(loop, buffered):
    r, w = os.pipe()

    async def main():
        transport, proto = await loop.connect_write_pipe(
            lambda: Recorder(loop), os.fdopen(w, "wb", 0)
        )
        await asyncio.sleep(0)
        if buffered:
            transport.write(b"x" * (1024 * 1024))
        os.close(r)
        exc = await asyncio.wait_for(proto.lost, 5)
        if buffered:
            assert isinstance(exc, BrokenPipeError)
        else:
            assert exc is None
        assert transport.get_write_buffer_size() == 0

    loop.run_until_complete(main())


def test_write_eof_closes_the_write_pipe(loop):
    r, w = os.pipe()

    async def main():
        transport, proto = await loop.connect_write_pipe(
            lambda: Recorder(loop), os.fdopen(w, "wb", 0)
        )
        assert transport.can_write_eof()
        transport.write(b"last words")
        transport.write_eof()
        assert transport.is_closing()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert os.read(r, 100) == b"last words"
        assert os.read(r, 100) == b""
        os.close(r)

    loop.run_until_complete(main())


def test_a_fifo_both_ways(loop):
    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "fifo")
            os.mkfifo(path)
            rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            rt, rp = await loop.connect_read_pipe(lambda: Recorder(loop), os.fdopen(rfd, "rb", 0))
            wt, wp = await loop.connect_write_pipe(lambda: Recorder(loop), os.fdopen(wfd, "wb", 0))
            wt.write(b"through the fifo")
            wt.close()
            assert await asyncio.wait_for(rp.lost, 5) is None
            assert await wp.lost is None
            assert bytes(rp.data) == b"through the fifo"
            assert rt.is_closing()

    loop.run_until_complete(main())


def test_a_pty_reads_until_its_other_side_closes(loop):
    master, slave = pty.openpty()

    async def main():
        transport, proto = await loop.connect_read_pipe(
            lambda: Recorder(loop), os.fdopen(master, "rb", 0)
        )
        os.write(slave, b"on the tty\n")
        await asyncio.sleep(0.05)
        os.close(slave)
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, OSError) and exc.errno == errno.EIO
        assert b"on the tty" in proto.data

    loop.run_until_complete(main())


def test_a_pty_is_written_to(loop):
    master, slave = pty.openpty()

    async def main():
        transport, proto = await loop.connect_write_pipe(
            lambda: Recorder(loop), os.fdopen(slave, "wb", 0)
        )
        transport.write(b"to the tty\n")
        transport.close()
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert b"to the tty" in os.read(master, 100)
        os.close(master)

    loop.run_until_complete(main())


@pytest.mark.parametrize("connect", ["connect_read_pipe", "connect_write_pipe"])
def test_regular_files_are_refused(loop, connect):
    async def main():
        with tempfile.TemporaryFile() as f:
            with pytest.raises(ValueError, match="Pipe transport is"):
                await getattr(loop, connect)(asyncio.Protocol, f)

    loop.run_until_complete(main())
