"""Stream transports whose I/O runs in Rust.

`SocketTransport` is asyncio's selector socket transport with the hot paths
(reading, writing, buffering, the protocol calls) in the Rust `StreamCore`.
What stays here is what asyncio does rarely and in Python: error reporting,
connection_lost, EOF, flow-control callbacks and sendfile's empty waiter.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from asyncio import base_events, constants, futures, sslproto, transports, trsock

from ._oxloop import StreamCore

__all__ = ("CoreReading", "CoreTransport", "SocketTransport", "make_ssl_transport")

logger = logging.getLogger("asyncio")

# 3.13's Server tracks its transports (close_clients/abort_clients).
_SERVER_TRACKS_TRANSPORTS = "transport" in inspect.signature(base_events.Server._attach).parameters


class CoreTransport:
    """What every transport around a `StreamCore` shares: its protocol, its
    closing state, fatal errors, and what the loop watches for it."""

    _default_fatal_message = "Fatal error on transport"

    def get_protocol(self):
        return self._core.protocol

    def set_protocol(self, protocol):
        self._core.set_protocol(protocol)

    # The protocol, for code written against asyncio's attribute.
    _protocol = property(get_protocol)

    def is_closing(self):
        return self._core.closing

    def _watched_events(self, fd):
        """The selectors events mask the loop watches `fd` for (for repr)."""
        try:
            return self._loop._selector.get_key(fd).events
        except KeyError:
            return 0

    @staticmethod
    def _expected(exc):
        """True for an OSError that is only logged (in debug mode)."""
        return True

    def _fatal_error(self, exc, message=None):
        if message is None:
            message = self._default_fatal_message
        if isinstance(exc, OSError) and self._expected(exc):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._core.protocol,
                }
            )
        self._core.force_close(exc)


class CoreReading:
    """Pausing and resuming reading, for the transports that read."""

    def is_reading(self):
        return self._core.is_reading()

    def pause_reading(self):
        if self._core.pause_reading() and self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self):
        if self._core.resume_reading() and self._loop.get_debug():
            logger.debug("%r resumes reading", self)


class SocketTransport(
    CoreTransport, CoreReading, transports._FlowControlMixin, transports.Transport
):
    """A transport for a connected TCP or Unix stream socket."""

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    _sock = None

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        # `_FlowControlMixin.__init__(extra, loop)` with the default limits
        # of its `_set_write_buffer_limits()` (64 KiB, a quarter of that):
        # the same state, without three Python calls per connection.
        self._extra = {} if extra is None else extra
        self._loop = loop
        self._protocol_paused = False
        self._high_water = 64 * 1024
        self._low_water = 16 * 1024
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._core = StreamCore(loop, self._sock_fd, self, protocol)
        # `write` below, without the Python call in between: the hot path.
        self.write = self._core.write
        self._extra["socket"] = trsock.TransportSocket(sock)
        self._extra["sockname"] = self._core.prepare_socket(sock)
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._server = server
        self._empty_waiter = None
        if server is not None:
            if _SERVER_TRACKS_TRANSPORTS:
                server._attach(self)
            else:
                server._attach()
        loop._transports[self._sock_fd] = self
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._core.start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self.is_closing():
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._loop is not None and not self._loop.is_closed():
            events = self._watched_events(self._sock_fd)
            info.append("read=polling" if events & 1 else "read=idle")
            state = "polling" if events & 2 else "idle"
            info.append(f"write=<{state}, bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    # -- the transport API ---------------------------------------------------

    def write(self, data):
        self._core.write(data)

    def writelines(self, list_of_data):
        self._core.writelines(list_of_data)

    def write_eof(self):
        self._core.write_eof()

    def can_write_eof(self):
        return True

    def get_write_buffer_size(self):
        return self._core.get_write_buffer_size()

    def close(self):
        self._core.close()

    def abort(self):
        self._force_close(None)

    # -- rare paths, called by the core --------------------------------------

    def _force_close(self, exc):
        self._core.force_close(exc)

    def _call_connection_lost(self, exc):
        try:
            self._core.protocol.connection_lost(exc)
        finally:
            self._sock.close()
            self._sock = None
            self._core.release()
            self._loop = None
            server, self._server = self._server, None
            if server is not None:
                if _SERVER_TRACKS_TRANSPORTS:
                    server._detach(self)
                else:
                    server._detach()
            if self._empty_waiter is not None:
                self._empty_waiter.set_exception(ConnectionError("Connection is closed by peer"))

    def _make_empty_waiter(self):
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        self._core.set_sendfile(True)
        if self._core.buffer_empty():
            self._empty_waiter.set_result(None)
        return self._empty_waiter

    def _reset_empty_waiter(self):
        self._empty_waiter = None
        self._core.set_sendfile(False)

    def _wake_empty_waiter(self, exc):
        if self._empty_waiter is None or self._empty_waiter.done():
            return
        if exc is None:
            self._empty_waiter.set_result(None)
        else:
            self._empty_waiter.set_exception(exc)

    def __del__(self, _warn=warnings.warn):
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()
            if self._server is not None and _SERVER_TRACKS_TRANSPORTS:
                self._server._detach(self)


def make_ssl_transport(
    loop,
    rawsock,
    protocol,
    sslcontext,
    waiter=None,
    *,
    server_side=False,
    server_hostname=None,
    extra=None,
    server=None,
    ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
    ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
):
    """asyncio's SSL protocol over a `SocketTransport`; returns the app transport."""
    ssl_protocol = sslproto.SSLProtocol(
        loop,
        protocol,
        sslcontext,
        waiter,
        server_side,
        server_hostname,
        ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout,
    )
    SocketTransport(loop, rawsock, ssl_protocol, extra=extra, server=server)
    return ssl_protocol._app_transport
