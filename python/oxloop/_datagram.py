"""The UDP transport, with its hot paths in Rust.

asyncio's selector datagram transport (so its buffering, flow control,
closing and error handling are asyncio's, version for version) whose reading
and common `sendto` run in the Rust `DatagramCore` for AF_INET and AF_INET6
sockets. Other families (AF_UNIX datagrams) keep asyncio's paths entirely.
"""

from __future__ import annotations

import socket
from asyncio import selector_events

from ._oxloop import DatagramCore

__all__ = ("DatagramTransport",)


class DatagramTransport(selector_events._SelectorDatagramTransport):
    """A transport for a UDP socket (`create_datagram_endpoint`)."""

    _core = None

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        super().__init__(loop, sock, protocol, address, waiter, extra)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            connected = bool(self._extra["peername"])
            self._core = DatagramCore(
                loop, self._sock_fd, sock.family, connected, self, self._protocol
            )

    def set_protocol(self, protocol):
        super().set_protocol(protocol)
        if self._core is not None:
            self._core.set_protocol(protocol)

    def _add_reader(self, fd, callback, *args):
        if self._core is not None and callback == self._read_ready:
            if self.is_reading():
                self._core.start_reading()
        else:
            super()._add_reader(fd, callback, *args)

    def sendto(self, data, addr=None):
        core = self._core
        if core is None or self._buffer or self._conn_lost or not core.try_sendto(data, addr):
            super().sendto(data, addr)

    def _call_connection_lost(self, exc):
        try:
            super()._call_connection_lost(exc)
        finally:
            if self._core is not None:
                self._core.release()
