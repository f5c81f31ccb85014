"""Type stubs for oxloop's Rust extension: the engine under `oxloop.Loop`.

Checked against the built module by `python -m mypy.stubtest oxloop._oxloop`
(`make lint`). What the Rust code calls back by name on the Python objects
that own these cores is declared in `oxloop._seam`.
"""

import asyncio
import contextvars
import selectors
import socket
from collections.abc import Callable, Coroutine, Generator, Iterator
from typing import Any, Self, SupportsIndex, TypeVar, TypeVarTuple, Unpack, final

from typing_extensions import Buffer, disjoint_base

__all__ = [
    "TimerHandle",
    "Engine",
    "StreamCore",
    "DatagramCore",
    "SockOp",
    "Acceptor",
    "TransportTable",
    "ChildWatch",
    "watch_child",
    "PORTABLE",
]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

class TimerHandle(asyncio.TimerHandle):
    """asyncio.TimerHandle with a native cancel(); what oxloop's call_later
    and call_at return."""

    def cancel(self) -> None:
        """Cancels the timer (asyncio's steps, in Rust)."""

@disjoint_base
class Engine:
    """The native core of every oxloop loop: ready queue, timers, fd watchers
    and the iteration. Subclassed by `oxloop.Loop`, which adds asyncio's API."""

    _debug: bool
    """The loop's debug flag (`get_debug()`, set by `set_debug()`)."""
    _stopping: bool
    """True once `stop()` was called, until `run_forever` returns."""
    _thread_id: int | None
    """`threading.get_ident()` of the thread running the loop; None when stopped."""
    @property
    def _closed(self) -> bool:
        """True once `_close_engine()` ran."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        """A new engine, with no backend until `_open()`."""

    def _open(self, selector: selectors.BaseSelector | None = None, proactor: bool = False) -> None:
        """Opens the backend: the user's `selector` if given, else io_uring for
        a `proactor`, else the native one."""

    def time(self) -> float:
        """`loop.time()`: the monotonic clock."""

    def call_soon(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        """`loop.call_soon()`: queues `callback(*args)` for the next iteration."""

    def call_soon_threadsafe(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        """`loop.call_soon_threadsafe()`: `call_soon` from any thread, waking the loop."""

    def call_later(
        self,
        delay: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> TimerHandle:
        """`loop.call_later()`: runs `callback(*args)` after `delay` seconds."""

    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> TimerHandle:
        """`loop.call_at()`: runs `callback(*args)` at `loop.time()` `when`."""

    def create_future(self) -> asyncio.Future[Any]:
        """`loop.create_future()`: an asyncio `Future` on this loop."""

    def create_task(
        self,
        coro: Coroutine[Any, Any, _T] | Generator[Any, None, _T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[_T]:
        """`loop.create_task()`: asyncio's `Task`, or the task factory's."""

    def _write_to_self(self) -> None:
        """Wakes the loop from another thread (asyncio's self-pipe write)."""

    def _add_callback(self, h: asyncio.Handle) -> None:
        """Queues an existing handle unless it is cancelled (asyncio's `_add_callback`)."""

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        """Counts a cancelled timer still in the heap (called by `TimerHandle.cancel()`)."""

    def _add_reader(
        self, fd: Any, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts
    ) -> asyncio.Handle:
        """Watches `fd` (or a file object) for reading, with no transport check."""

    def _add_writer(
        self, fd: Any, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts
    ) -> asyncio.Handle:
        """Watches `fd` (or a file object) for writing, with no transport check."""

    def _remove_reader(self, fd: Any) -> bool:
        """Stops watching `fd` for reading; True when a watcher was removed."""

    def _remove_writer(self, fd: Any) -> bool:
        """Stops watching `fd` for writing; True when a watcher was removed."""

    def _watch_key(self, fd: Any) -> tuple[int, int, asyncio.Handle | None, asyncio.Handle | None]:
        """`(fd, events, reader, writer)` of a watched fd, in selectors' terms; KeyError if none."""

    def _watched_fds(self) -> list[int]:
        """Every watched fd."""

    def _run_once(self) -> None:
        """One iteration: wait for I/O, collect due timers, run what is ready."""

    def _run_until_stopped(self) -> None:
        """Iterates until `stop()` is called (the core of `run_forever`)."""

    def stop(self) -> None:
        """`loop.stop()`: ends `run_forever` after the current iteration."""

    def _health_snapshot(self) -> dict[str, Any]:
        """The health figures now (nanoseconds), for `oxloop.health()`."""

    def _health_reset(self) -> None:
        """Starts the health figures over."""

    def _health_settings(self) -> tuple[bool, int, float | None]:
        """`(enabled, slow callbacks kept, log threshold in seconds or None)`."""

    def _health_configure(self, enabled: bool, slowest: int, log_threshold: float | None) -> None:
        """Changes the health settings (see `_health_settings`)."""

    def is_running(self) -> bool:
        """`loop.is_running()`."""

    def is_closed(self) -> bool:
        """`loop.is_closed()`."""

    def get_debug(self) -> bool:
        """`loop.get_debug()`."""

    def _close_engine(self) -> None:
        """Marks the loop closed and releases the queues, the backend and the waker."""

@final
class StreamCore:
    """The native half of a stream or pipe transport: reads, writes, buffers
    and calls the protocol (`oxloop._transport`, `oxloop._pipes`)."""

    def __new__(
        cls,
        loop_: Engine,
        fd: int,
        transport: Any,
        protocol: asyncio.BaseProtocol,
        pipe: bool = False,
    ) -> Self:
        """The core of `transport` for the connected socket (or, with `pipe`, the pipe) `fd`."""

    @property
    def protocol(self) -> asyncio.BaseProtocol | None:
        """The protocol data goes to; None once released."""

    @property
    def closing(self) -> bool:
        """True once `close()` or `force_close()` was called."""

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Switches protocols (asyncio's `set_protocol`)."""

    def start_reading(self) -> None:
        """Watches the fd for reading unless closing or paused."""

    def stop_reading(self) -> None:
        """Stops watching the fd for reading (after an EOF the protocol keeps open)."""

    def is_reading(self) -> bool:
        """True unless closing or paused."""

    def pause_reading(self) -> bool:
        """Pauses reading; True when it was paused now."""

    def resume_reading(self) -> bool:
        """Resumes reading; True when it was resumed now."""

    def get_write_buffer_size(self) -> int:
        """How many bytes wait to be written."""

    def buffer_empty(self) -> bool:
        """True when nothing waits to be written."""

    def set_sendfile(self, active: bool) -> None:
        """Marks a sendfile in progress (the transport's empty waiter) or done."""

    def write(self, data: Buffer) -> None:
        """asyncio's `write`, flow control included (`_maybe_pause_protocol`)."""

    def writelines(self, list_of_data: Any) -> None:
        """asyncio's `writelines`: buffers every chunk, then one write attempt."""

    def write_eof(self) -> None:
        """asyncio's `write_eof`: shuts the socket for writing once the buffer drains."""

    def close(self) -> None:
        """asyncio's `close`: stops reading; connection_lost once the buffer drained."""

    def force_close(self, exc: BaseException | None = None) -> None:
        """asyncio's `_force_close`: drops the buffer, stops, schedules connection_lost."""

    def release(self) -> None:
        """Drops the protocol, the buffer and the transport once the connection is lost."""

    def prepare_socket(self, sock: socket.socket) -> Any:
        """TCP_NODELAY where asyncio sets it; the socket's name, or None."""

@final
class DatagramCore:
    """The native half of a UDP transport (`oxloop._datagram`): reading and
    the common `sendto`."""

    def __new__(
        cls,
        loop_: Engine,
        fd: int,
        family: int,
        connected: bool,
        transport: Any,
        protocol: asyncio.DatagramProtocol,
    ) -> Self:
        """The core of `transport`, whose socket `fd` of `family` has a peer when `connected`."""

    def start_reading(self) -> None:
        """Watches the socket for datagrams."""

    def set_protocol(self, protocol: asyncio.DatagramProtocol) -> None:
        """Switches the protocol datagrams and errors go to."""

    def try_sendto(self, data: Any, addr: Any = None) -> bool:
        """Sends one datagram at once if that is all `sendto` has to do; False: asyncio's path."""

    def release(self) -> None:
        """Drops the protocol and the cached peer address once the connection is lost."""

@final
class Acceptor:
    """The reader callback of a listening socket without TLS: accepts
    natively and queues `loop._serve_connection` for each connection."""

    def __new__(
        cls,
        loop_: Engine,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        server: asyncio.Server | None,
        backlog: int,
    ) -> Self:
        """The acceptor of `server`'s listening socket `sock`."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        """Accepts what is waiting, at most `backlog` connections (no arguments)."""

@final
class TransportTable:
    """The loop's `_transports`: fd -> the transport that owns it, held
    weakly (asyncio's `WeakValueDictionary`, with plain weak references)."""

    def __new__(cls) -> Self: ...
    def __getitem__(self, key: int, /) -> Any: ...
    def __setitem__(self, fd: int, transport: Any, /) -> None: ...
    def __delitem__(self, key: int, /) -> None: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[int]: ...
    def get(self, key: int, default: Any = None) -> Any:
        """The transport owning `key`'s fd, or `default`."""

    def keys(self) -> list[int]:
        """The fds live transports own."""

    def values(self) -> list[Any]:
        """The live transports."""

    def items(self) -> list[tuple[int, Any]]:
        """`(fd, transport)` for each live transport."""

@final
class SockOp:
    """A native awaitable for `sock_recv`, `sock_recv_into` and `sock_sendall`."""

    @staticmethod
    def recv(loop_: Engine, sock: socket.socket, n: SupportsIndex) -> SockOp:
        """`loop.sock_recv(sock, n)`."""

    @staticmethod
    def recv_into(loop_: Engine, sock: socket.socket, buf: Buffer) -> SockOp:
        """`loop.sock_recv_into(sock, buf)`."""

    @staticmethod
    def sendall(loop_: Engine, sock: socket.socket, data: Buffer) -> SockOp:
        """`loop.sock_sendall(sock, data)`."""

    def __await__(self) -> Self:
        """The operation is its own iterator, as a coroutine is."""

    def __next__(self) -> Any:
        """Steps the operation, as `coroutine.send(None)`."""

    def send(self, _value: Any) -> Any:
        """Steps the operation, as `coroutine.send(value)`."""

    def throw(self, typ: Any, val: Any = None, _tb: Any = None) -> Any:
        """Raises `typ` at the await point, cancelling a pending wait."""

    def close(self) -> None:
        """Abandons the operation, cancelling a pending wait."""

    def _wait_done(self, _fut: asyncio.Future[Any]) -> None:
        """Done callback of the wait's future: stops watching the fd."""

@final
class ChildWatch:
    """One child watched through its pidfd."""

    @property
    def returncode(self) -> int | None:
        """The return code once this watch reaped the child, else None."""

def watch_child(
    loop_: Engine, pid: int, callback: Callable[[int], object], context: contextvars.Context
) -> ChildWatch | None:
    """Calls `callback(returncode)` in `context` once child `pid` exits; None without pidfds."""

#: True when the engine takes the code paths of macOS and the BSDs (the
#: Python selector backend on `selectors.DefaultSelector()`, a self-pipe
#: waker, a thread per child): always there, on Linux in a `portable` build.
PORTABLE: bool
