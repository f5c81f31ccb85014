"""Pipe transports whose I/O runs in Rust.

asyncio's Unix read and write pipe transports (`connect_read_pipe`,
`connect_write_pipe`, and a subprocess's stdin/stdout/stderr) with reading,
writing and buffering in the Rust `StreamCore`; what stays here is what
asyncio does rarely: the checks on the fd, errors, EOF and connection_lost.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import warnings
from asyncio import futures, transports

from ._oxloop import StreamCore
from ._transport import CoreReading, CoreTransport

__all__ = ("ReadPipeTransport", "WritePipeTransport")

logger = logging.getLogger("asyncio")


class _PipeTransport(CoreTransport):
    """What the read and write pipe transports share."""

    _pipe = None
    _default_fatal_message = "Fatal error on pipe transport"

    def _open(self, loop, pipe, protocol, read):
        self._extra["pipe"] = pipe
        self._loop = loop
        self._fileno = pipe.fileno()
        mode = os.fstat(self._fileno).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            raise ValueError(
                "Pipe transport is for pipes/sockets only."
                if read
                else "Pipe transport is only for pipes, sockets and character devices"
            )
        os.set_blocking(self._fileno, False)
        self._pipe = pipe
        self._core = StreamCore(loop, self._fileno, self, protocol, pipe=True)
        return mode

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._pipe is None:
            info.append("closed")
        elif self.is_closing():
            info.append("closing")
        info.append(f"fd={self._fileno}")
        if self._pipe is not None and self._loop is not None and not self._loop.is_closed():
            polling = self._watched_events(self._fileno) & self._polled
            info.append("polling" if polling else "idle")
            if self._polled == 2:
                info.append(f"bufsize={self.get_write_buffer_size()}")
        elif self._pipe is not None:
            info.append("open")
        else:
            info.append("closed")
        return "<{}>".format(" ".join(info))

    def close(self):
        if self._pipe is not None:
            self._core.close()

    def _close(self, exc=None):
        self._core.force_close(exc)

    def _call_connection_lost(self, exc):
        try:
            self._core.protocol.connection_lost(exc)
        finally:
            self._pipe.close()
            self._pipe = None
            self._core.release()
            self._loop = None

    def __del__(self, _warn=warnings.warn):
        if self._pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._pipe.close()


class ReadPipeTransport(_PipeTransport, CoreReading, transports.ReadTransport):
    """The read end of a pipe, FIFO, socket or character device (a tty)."""

    _polled = 1  # EVENT_READ

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra)
        self._open(loop, pipe, protocol, read=True)
        loop.call_soon(protocol.connection_made, self)
        # Reading starts once connection_made() has run.
        loop.call_soon(self._core.start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    @staticmethod
    def _expected(exc):
        # EIO is how a pty reports that its other side closed.
        return exc.errno == errno.EIO

    def _read_ready__on_eof(self):
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        self._loop.call_soon(self._eof_received)
        self._core.close()

    def _eof_received(self):
        # Looked up when called: a protocol without it fails in this callback
        # (reported by the loop), and the transport still closes.
        self._core.protocol.eof_received()


class WritePipeTransport(_PipeTransport, transports._FlowControlMixin, transports.WriteTransport):
    """The write end of a pipe, FIFO, socket or character device (a tty)."""

    _polled = 2  # EVENT_WRITE

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra, loop)
        mode = self._open(loop, pipe, protocol, read=False)
        loop.call_soon(protocol.connection_made, self)
        # A pipe or socket turns readable when its reader goes away: watch for
        # that once connection_made() has run.
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            loop.call_soon(loop._add_reader, self._fileno, self._read_ready)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def _read_ready(self):
        # The peer closed the pipe.
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        self._close(BrokenPipeError() if self.get_write_buffer_size() else None)

    def get_write_buffer_size(self):
        return self._core.get_write_buffer_size()

    def write(self, data):
        self._core.write(data)

    def can_write_eof(self):
        return True

    def write_eof(self):
        # Closing is all a pipe needs to signal EOF.
        self._core.close()

    def abort(self):
        self._close(None)
