"""The Rust<->Python seam: what the Rust cores reach by name in Python.

`oxloop._oxloop.pyi` declares what the extension gives Python. This module
declares the other direction: the attributes and methods the Rust code
looks up by string (`intern!(py, "...")`, `getattr`, `call_method`) on the
Python objects that own its cores or that it is handed. Each is a
`typing.Protocol`, so that a type checker, `isinstance`, and
`tests/test_seam.py` can hold both sides to it: that test checks that the
real classes satisfy these Protocols and that every underscore name in the
Rust sources is declared here (and nothing declared here is gone from them).

Two kinds:
- oxloop's own Python classes (`LoopSeam`, the `...StreamCoreOwner`s), whose
  members may be renamed only together with the Rust code;
- asyncio's private state that oxloop reads natively (`StreamReaderState`,
  `StreamReaderProtocolState`, `HandleState`, `TimerHandleState`,
  `FutureState`), checked against each supported Python version.

Methods are declared with the arguments the Rust code passes, positionally.
Nothing here is imported at run time by oxloop itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ._oxloop import TransportTable

__all__ = (
    "ASYNCIO_PROTOCOLS",
    "OXLOOP_PROTOCOLS",
    "PROTOCOLS",
    "FutureState",
    "HandleState",
    "LoopSeam",
    "ReadingStreamCoreOwner",
    "SocketStreamCoreOwner",
    "StreamCoreOwner",
    "StreamReaderProtocolState",
    "StreamReaderState",
    "TimerHandleState",
    "WritingStreamCoreOwner",
)


# -- oxloop's own Python classes -------------------------------------------


@runtime_checkable
class LoopSeam(Protocol):
    """What the Rust engine and cores call on the loop: `oxloop.Loop` (a
    subclass of `_oxloop.Engine`) and its subclasses. Some are the Engine's
    own native methods, looked up by name so that a subclass's override runs."""

    _transports: TransportTable
    """fd -> transport, held weakly. Read by src/transport/sock.rs, which
    asks it natively whether `_ensure_fd_no_transport` must look."""

    _task_factory: Callable[..., Any] | None
    """`set_task_factory`'s factory. Read by src/engine/task.rs: None lets
    `create_task` make asyncio's Task natively."""

    def _check_callback(self, callback: Any, method: str, /) -> None:
        """asyncio's debug-mode callback check. Called by src/engine/loop_.rs
        (debug mode) for `call_soon`, `call_soon_threadsafe`, `call_at`."""

    def _run_handle_debug(self, handle: asyncio.Handle, /) -> None:
        """Runs one ready handle in debug mode, timing it. Called by
        src/engine/loop_.rs (debug mode)."""

    def _callback_failed(self, handle: asyncio.Handle, exc: BaseException, /) -> None:
        """Reports what a callback raised, as `Handle._run` does. Called by
        src/engine/loop_.rs."""

    def _slow_callback(self, obj: Any, duration: float, log: bool, /) -> tuple[str, str]:
        """Names a slow callback (a handle, or a native core) as
        `(name, "file:line")` for the health figures, logging it if `log`.
        Called by src/engine/loop_.rs (health figures on)."""

    def _ensure_fd_no_transport(self, fd: int, /) -> None:
        """asyncio's check that no transport owns `fd`. Called by
        src/transport/sock.rs before a `sock_*` operation waits on it."""

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle, /) -> None:
        """Counts a cancelled timer. Called on `handle._loop` by
        src/engine/handle.rs (the native `TimerHandle.cancel`)."""

    def get_debug(self) -> bool:
        """The debug flag. Called on `handle._loop` by src/engine/handle.rs
        (the native `TimerHandle.cancel`)."""

    def _accept_connection(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sock: Any,
        sslcontext: None,
        server: asyncio.Server | None,
        backlog: int,
        /,
    ) -> None:
        """asyncio's accept path. Called by src/transport/server.rs in debug
        mode and when accepting fails for lack of fds or memory."""

    def _serve_connection(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        conn: Any,
        peername: Any,
        server: asyncio.Server | None,
        /,
    ) -> None:
        """Makes an accepted connection's protocol and transport. Queued by
        src/transport/server.rs for each connection it accepts."""

    def call_soon(self, callback: Callable[[Any], object], arg: Any, /) -> asyncio.Handle:
        """Schedules `callback(arg)`. Called by src/transport/stream.rs
        (`transport._call_connection_lost(exc)`) and src/process.rs (a
        child's exit callback with its return code)."""

    def create_future(self) -> asyncio.Future[Any]:
        """A future on this loop. Called by src/transport/sock.rs for the wait of
        a `sock_recv`/`sock_recv_into`/`sock_sendall`."""

    def call_exception_handler(self, context: dict[str, Any], /) -> None:
        """The loop's exception handler. Called by src/errors.rs for an
        exception a protocol method raised in a pipe or datagram read."""


@runtime_checkable
class StreamCoreOwner(Protocol):
    """What src/transport/stream.rs calls on the transport that owns a
    `StreamCore` (`oxloop._transport.SocketTransport` and the pipe transports
    of `oxloop._pipes`): the rare paths that stay in Python."""

    def _fatal_error(self, exc: BaseException, message: str, /) -> None:
        """asyncio's `_fatal_error`: report `exc` and force-close. Called by
        src/transport/stream.rs on an OS error or a raising protocol."""

    def _call_connection_lost(self, exc: BaseException | None, /) -> None:
        """Calls `protocol.connection_lost(exc)` and lets the fd go. Called
        (or scheduled with `loop.call_soon`) by src/transport/stream.rs."""


@runtime_checkable
class ReadingStreamCoreOwner(StreamCoreOwner, Protocol):
    """A `StreamCore` owner that reads a pipe (`ReadPipeTransport`); a
    socket's EOF handling is the core's own."""

    def _read_ready__on_eof(self) -> None:
        """The peer closed its side: asyncio's EOF handling for a pipe.
        Called by src/transport/stream.rs when a pipe's read returns 0 bytes."""


@runtime_checkable
class WritingStreamCoreOwner(StreamCoreOwner, Protocol):
    """A `StreamCore` owner that writes (`SocketTransport`,
    `WritePipeTransport`); the method is asyncio's `_FlowControlMixin`'s."""

    def _maybe_resume_protocol(self) -> None:
        """Resumes the protocol's writing once the buffer is below the low
        water mark. Called by src/transport/stream.rs after each flush."""


@runtime_checkable
class SocketStreamCoreOwner(WritingStreamCoreOwner, Protocol):
    """A `StreamCore` owner that also serves `sendfile` (`SocketTransport`)."""

    def _wake_empty_waiter(self, exc: BaseException | None, /) -> None:
        """Completes sendfile's empty waiter: None once the buffer drained,
        or the write error. Called by src/transport/stream.rs while a
        sendfile is in progress."""

    def _maybe_pause_protocol(self) -> None:
        """Pauses the protocol's writing once the buffer is above the high
        water mark (asyncio's `_FlowControlMixin`). Called by
        src/transport/stream.rs when a send the backend made with its wait
        left bytes to buffer, as `write()` does for a `send()`'s rest."""


# -- asyncio's private state that oxloop reads natively ----------------------


@runtime_checkable
class StreamReaderState(Protocol):
    """`asyncio.StreamReader`'s private state, which src/transport/stream_reader.rs
    reads and writes to feed the reader natively (what `feed_data` does).
    asyncio's private state oxloop reads natively; checked against each
    supported Python version."""

    _buffer: bytearray
    """The bytes not yet read; src/transport/stream_reader.rs reads onto its end."""
    _eof: bool
    """EOF was fed; read by src/transport/stream_reader.rs (no native feeding then)."""
    _limit: int
    """The buffer limit; read by src/transport/stream_reader.rs for flow control."""
    _paused: bool
    """Reading is paused; read and set by src/transport/stream_reader.rs."""
    _waiter: asyncio.Future[None] | None
    """The read waiting for data; woken and cleared by src/transport/stream_reader.rs."""
    _transport: asyncio.BaseTransport | None
    """The transport to pause; read (and cleared when it cannot pause) by
    src/transport/stream_reader.rs."""


@runtime_checkable
class StreamReaderProtocolState(Protocol):
    """`asyncio.StreamReaderProtocol`'s private state, read by
    src/transport/stream_reader.rs. asyncio's private state oxloop reads
    natively; checked against each supported Python version."""

    _stream_reader_wr: weakref.ReferenceType[asyncio.StreamReader] | None
    """A weak reference to the protocol's StreamReader (None once it is gone)."""


@runtime_checkable
class HandleState(Protocol):
    """`asyncio.Handle`'s slots, which src/engine/handle.rs reads and writes
    at their offsets (found at import: each must stay a slot) to make, run
    and cancel handles natively. asyncio's private state oxloop reads
    natively; checked against each supported Python version."""

    _callback: Callable[..., object] | None
    """The callback (None once cancelled)."""
    _args: tuple[Any, ...] | None
    """Its arguments (None once cancelled)."""
    _cancelled: bool
    """Set by `cancel()`."""
    _loop: asyncio.AbstractEventLoop
    """The loop; src/engine/handle.rs calls its `_timer_handle_cancelled` and `get_debug`."""
    _source_traceback: Any
    """Where the handle was made (debug mode), else None."""
    _repr: str | None
    """The repr kept at cancellation in debug mode."""
    _context: contextvars.Context
    """The context the callback runs in."""


@runtime_checkable
class TimerHandleState(HandleState, Protocol):
    """`asyncio.TimerHandle`'s slots, read and written by src/engine/handle.rs
    for the loop's timer heap. asyncio's private state oxloop reads natively;
    checked against each supported Python version."""

    _scheduled: bool
    """The timer is in the loop's heap."""
    _when: float
    """When it is due, in `loop.time()`."""


@runtime_checkable
class FutureState(Protocol):
    """`asyncio.Future`'s flag for the task stepping it. asyncio's private
    state oxloop reads natively; checked against each supported Python
    version."""

    _asyncio_future_blocking: bool
    """Set by src/transport/sock.rs on the future a `SockOp` yields, as
    `Future.__await__` does before yielding itself to the task."""


OXLOOP_PROTOCOLS: tuple[type, ...] = (
    LoopSeam,
    StreamCoreOwner,
    ReadingStreamCoreOwner,
    WritingStreamCoreOwner,
    SocketStreamCoreOwner,
)
"""The Protocols of oxloop's own Python classes."""

ASYNCIO_PROTOCOLS: tuple[type, ...] = (
    StreamReaderState,
    StreamReaderProtocolState,
    HandleState,
    TimerHandleState,
    FutureState,
)
"""The Protocols of asyncio's private state oxloop reads natively."""

PROTOCOLS: tuple[type, ...] = OXLOOP_PROTOCOLS + ASYNCIO_PROTOCOLS
"""Every Protocol of the seam."""
