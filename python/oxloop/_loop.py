"""The oxloop event loop classes.

`Loop` puts asyncio's public loop API on top of the Rust `Engine`, which owns
the iteration (ready queue, timers, I/O waiting). What asyncio implements in
pure Python on top of those primitives -- run_until_complete, executors, the
exception handler, async-generator hooks, the `sock_*` coroutines -- is taken
from CPython's own classes of the running version, so its behaviour, error
messages and version differences are asyncio's by construction.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
import warnings
import weakref
from asyncio import base_events, constants, events, format_helpers, unix_events

from . import _children, _health
from ._datagram import DatagramTransport
from ._oxloop import Acceptor, Engine, SockOp, TransportTable
from ._pipes import ReadPipeTransport, WritePipeTransport
from ._transport import SocketTransport, make_ssl_transport

__all__ = ("Loop", "SelectorEventLoop", "new_event_loop")

logger = logging.getLogger("asyncio")

# Patch releases of 3.12 added the `debug` parameter asyncio's Handle passes.
_FORMAT_TAKES_DEBUG = (
    "debug" in inspect.signature(format_helpers._format_callback_source).parameters
)

# Pure-Python methods of asyncio's Unix selector loop (each resolved to the
# most derived of its classes) whose only dependencies are the primitives
# `Engine` provides and the attributes `Loop._init_loop` sets. Stream
# datagram and pipe transports are oxloop's (`_make_socket_transport`,
# `_make_datagram_transport`, `_make_read_pipe_transport`, ...).
_ADOPTED = (
    # running, tasks, executors, errors, debug
    "__repr__",
    "__del__",
    "set_task_factory",
    "get_task_factory",
    "_check_closed",
    "_check_running",
    "_check_callback",
    "_check_default_executor",
    "_asyncgen_finalizer_hook",
    "_asyncgen_firstiter_hook",
    "shutdown_asyncgens",
    "shutdown_default_executor",
    "_do_shutdown",
    "run_until_complete",
    "run_in_executor",
    "set_default_executor",
    "get_exception_handler",
    "set_exception_handler",
    "default_exception_handler",
    "call_exception_handler",
    "_set_coroutine_origin_tracking",
    "set_debug",
    "_add_callback_signalsafe",
    # readers and writers (checks against transports, then the engine)
    "_ensure_fd_no_transport",
    "add_reader",
    "remove_reader",
    "add_writer",
    "remove_writer",
    # the socket API
    "getnameinfo",
    "_getaddrinfo_debug",
    "_ensure_resolved",
    "_sock_read_done",
    "sock_recvfrom",
    "_sock_recvfrom",
    "sock_recvfrom_into",
    "_sock_recvfrom_into",
    "sock_sendto",
    "_sock_sendto",
    "sock_connect",
    "_sock_connect",
    "_sock_write_done",
    "_sock_connect_cb",
    "sock_accept",
    "_sock_accept",
    "sock_sendfile",
    "_sock_sendfile_native",
    "_sock_sendfile_native_impl",
    "_sock_sendfile_update_filepos",
    "_sock_add_cancellation_callback",
    "_sock_sendfile_fallback",
    "_check_sendfile_params",
    # connections, servers, datagrams and TLS (asyncio's Python transports)
    "_connect_sock",
    "create_connection",
    "_create_connection_transport",
    "sendfile",
    "_sendfile_native",
    "_sendfile_fallback",
    "start_tls",
    "create_datagram_endpoint",
    "_create_server_getaddrinfo",
    "create_server",
    "connect_accepted_socket",
    "create_unix_connection",
    "create_unix_server",
    "_accept_connection",
    "_accept_connection2",
    # pipes and subprocesses
    "connect_read_pipe",
    "connect_write_pipe",
    "_log_subprocess",
    "subprocess_shell",
    "subprocess_exec",
    "_child_watcher_callback",
    # signals, through the self-pipe signal.set_wakeup_fd() writes to
    "_make_self_pipe",
    "_close_self_pipe",
    "_read_from_self",
    "_process_self_data",
    "add_signal_handler",
    "_handle_signal",
    "remove_signal_handler",
    "_check_signal",
)


def _adopt(namespace: dict) -> None:
    for name in _ADOPTED:
        func = getattr(unix_events._UnixSelectorEventLoop, name)
        # A method calling super() is bound to asyncio's class hierarchy.
        if "__class__" in func.__code__.co_freevars:
            raise ImportError(f"asyncio's {name} uses super() and cannot be adopted")
        namespace[name] = func


class _Registrations(selectors.BaseSelector):
    """`loop._selector` as asyncio's code and tests inspect it: a read-only
    view of what the engine watches, with `(reader, writer)` handles as each
    key's data. Waiting is the engine's; this object never selects."""

    def __init__(self, loop: Loop):
        self._watch_key = loop._watch_key
        self._watched_fds = loop._watched_fds

    def get_key(self, fileobj):
        fd, events, reader, writer = self._watch_key(fileobj)
        return selectors.SelectorKey(fileobj, fd, events, (reader, writer))

    def get_map(self):
        return {fd: self.get_key(fd) for fd in self._watched_fds()}

    def register(self, fileobj, events, data=None):
        raise NotImplementedError("register through loop.add_reader()/add_writer()")

    def unregister(self, fileobj):
        raise NotImplementedError("unregister through loop.remove_reader()/remove_writer()")

    def select(self, timeout=None):
        raise NotImplementedError("the loop's engine does the waiting")


class Loop(Engine, asyncio.AbstractEventLoop):
    """oxloop's event loop: asyncio's API on the Rust engine (native epoll on
    Linux; `selectors.DefaultSelector()` on macOS and the BSDs)."""

    _adopt(vars())

    def __init__(self):
        self._init_loop(None)

    def _init_loop(self, selector, proactor=False):
        self._open(selector, proactor)
        if _health.watching or os.environ.get("OXLOOP_HEALTH") == "1":
            _health.configure_health(self, enabled=True)
            if _health.watching:
                _health.watched.append(self)
        self._selector = _Registrations(self)
        self._clock_resolution = time.get_clock_info("monotonic").resolution
        self._default_executor = None
        self._exception_handler = None
        self.set_debug(asyncio.coroutines._is_debug_mode())
        self.slow_callback_duration = 0.1
        self._current_handle = None
        self._task_factory = None
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._executor_shutdown_called = False
        self._old_agen_hooks = None
        self._transports = TransportTable()
        self._internal_fds = 0
        self._signal_handlers = {}
        self._unix_server_sockets = {}
        # pid -> (ChildWatch, Popen) of the children watched with a pidfd.
        self._child_watches = {}
        # The socket pair signal.set_wakeup_fd() writes signal numbers to.
        self._make_self_pipe()

    # -- running -----------------------------------------------------------

    def _run_forever_setup(self):
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        self._old_agen_hooks = sys.get_asyncgen_hooks()
        self._thread_id = threading.get_ident()
        sys.set_asyncgen_hooks(
            firstiter=self._asyncgen_firstiter_hook,
            finalizer=self._asyncgen_finalizer_hook,
        )
        events._set_running_loop(self)
        if sys.version_info < (3, 12):
            _running.add(self)

    def _run_forever_cleanup(self):
        self._stopping = False
        self._thread_id = None
        events._set_running_loop(None)
        if sys.version_info < (3, 12):
            _running.discard(self)
        self._set_coroutine_origin_tracking(False)
        if self._old_agen_hooks is not None:
            sys.set_asyncgen_hooks(*self._old_agen_hooks)
            self._old_agen_hooks = None

    def run_forever(self):
        """Run until stop() is called."""
        # Refused before the try: a refused nested call must not reset the
        # running loop's state in the finally.
        self._check_closed()
        self._check_running()
        try:
            self._run_forever_setup()
            self._run_until_stopped()
        finally:
            self._run_forever_cleanup()

    def close(self):
        """Close the loop: drop pending callbacks, release the backend's fds,
        and shut the default executor down without waiting."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self._debug:
            logger.debug("Close %r", self)
        self._close_self_pipe()
        self._close_engine()
        _children.reap_at_close(self)
        self._selector = None
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(
                f"Closing the loop {self!r} on interpreter shutdown stage, "
                "skipping signal handlers removal",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
            self._signal_handlers.clear()

    def _start_serving(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        """Accept connections on `sock` when it is readable: natively, each
        served by `_serve_connection`; with TLS, by asyncio's own path."""
        if sslcontext is None:
            self._add_reader(sock.fileno(), Acceptor(self, sock, protocol_factory, server, backlog))
        else:
            self._add_reader(
                sock.fileno(),
                self._accept_connection,
                protocol_factory,
                sock,
                sslcontext,
                server,
                backlog,
                ssl_handshake_timeout,
                ssl_shutdown_timeout,
            )

    def _serve_connection(self, protocol_factory, conn, peername, server):
        """asyncio's `_accept_connection2` for a connection without TLS, as a
        callback instead of a task (the `Acceptor` queues it in a copy of the
        server's context, as the task ran): the protocol, then its transport.
        The task awaited the transport's waiter only to close the transport
        if cancelled, which cannot befall a callback."""
        protocol = None
        try:
            protocol = protocol_factory()
            self._make_socket_transport(conn, protocol, extra={"peername": peername}, server=server)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            conn.close()
            if self._debug:
                context = {
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                }
                if protocol is not None:
                    context["protocol"] = protocol
                self.call_exception_handler(context)

    def _stop_serving(self, sock):
        """Stop listening on a server socket; a Unix socket's path is removed
        when this loop created it (`create_unix_server(cleanup_socket=True)`)."""
        path = sock.getsockname() if sock in self._unix_server_sockets else None
        self._remove_reader(sock.fileno())
        sock.close()
        if path is None:
            return
        prev_ino = self._unix_server_sockets.pop(sock)
        try:
            if os.stat(path).st_ino == prev_ino:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    _make_ssl_transport = make_ssl_transport

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return WritePipeTransport(self, pipe, protocol, waiter, extra)

    async def _make_subprocess_transport(
        self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs
    ):
        if _children.policy_watcher() is not None:
            # A watcher set through asyncio's deprecated API is honoured.
            return await _watched_subprocess_transport(
                self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra, **kwargs
            )
        waiter = self.create_future()
        transp = unix_events._UnixSubprocessTransport(
            self,
            protocol,
            args,
            shell,
            stdin,
            stdout,
            stderr,
            bufsize,
            waiter=waiter,
            extra=extra,
            **kwargs,
        )
        _children.watch_child(self, transp._proc, transp._process_exited)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    # -- callbacks (called by the engine) ------------------------------------

    def _callback_failed(self, handle, exc):
        """Report what a callback raised, as asyncio's `Handle._run` does."""
        if _FORMAT_TAKES_DEBUG:
            cb = format_helpers._format_callback_source(
                handle._callback, handle._args, debug=self.get_debug()
            )
        else:
            cb = format_helpers._format_callback_source(handle._callback, handle._args)
        context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)

    def _slow_callback(self, obj, duration, log):
        """Name a slow callback for the health figures (the engine calls this
        for a run slow enough to be kept or logged); log it if `log`."""
        name, location = _health.describe(obj)
        if log:
            what = base_events._format_handle(obj) if hasattr(obj, "_callback") else f"<{name}>"
            logger.warning(
                "Executing %s took %.3f seconds (%s at %s)", what, duration, name, location
            )
        return name, location

    def _run_handle_debug(self, handle):
        """Run a handle in debug mode, timing it as asyncio's `_run_once` does."""
        try:
            self._current_handle = handle
            t0 = self.time()
            handle._run()
            dt = self.time() - t0
            if dt >= self.slow_callback_duration:
                logger.warning(
                    "Executing %s took %.3f seconds", base_events._format_handle(handle), dt
                )
        finally:
            self._current_handle = None
        # A traceback of the callback can keep this frame alive: drop the
        # handle, as asyncio's Handle._run does with `self = None`.
        handle = None

    # -- the socket API: the common three are native ----------------------

    def sock_recv(self, sock, n):
        """Receive up to `n` bytes from the non-blocking socket `sock`."""
        return SockOp.recv(self, sock, n)

    def sock_recv_into(self, sock, buf):
        """Receive into `buf` from the non-blocking socket `sock`."""
        return SockOp.recv_into(self, sock, buf)

    def sock_sendall(self, sock, data):
        """Send all of `data` to the non-blocking socket `sock`."""
        return SockOp.sendall(self, sock, data)

    # -- name resolution -----------------------------------------------------

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        """`socket.getaddrinfo` in the default executor; numeric hosts and
        ports are answered at once, since resolving them cannot block."""
        if _is_numeric(host, port):
            return socket.getaddrinfo(host, port, family, type, proto, flags)
        if self._debug:
            func = self._getaddrinfo_debug
        else:
            func = socket.getaddrinfo
        return await self.run_in_executor(None, func, host, port, family, type, proto, flags)


# asyncio's own, for children watched by a watcher set on the policy.
_watched_subprocess_transport = unix_events._UnixSelectorEventLoop._make_subprocess_transport


def _is_numeric(host, port) -> bool:
    """True when getaddrinfo(host, port) needs no lookup: an IP literal (or
    None) and a numeric port (or None)."""
    if isinstance(port, bytes):
        port = port.decode("idna")
    if port is not None and not isinstance(port, int):
        if not (isinstance(port, str) and port.isdigit()):
            return False
    if host is None:
        return True
    if isinstance(host, bytes):
        try:
            host = host.decode("ascii")
        except UnicodeDecodeError:
            return False
    if not isinstance(host, str):
        return False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host.partition("%")[0])
            return True
        except (OSError, ValueError):
            pass
    return False


class SelectorEventLoop(Loop):
    """A loop that waits on the given `selectors.BaseSelector` (for example
    `selectors.SelectSelector()`), or on the platform's own backend when
    none is given (as `Loop`)."""

    def __init__(self, selector=None):
        self._init_loop(selector)


class ProactorEventLoop(Loop):
    """A loop on io_uring (Linux): every method of `Loop`, with readiness
    from io_uring's poll operations. Raises `OSError` saying why where
    io_uring cannot be had (a seccomp filter such as Docker's default
    profile, `io_uring_disabled`, a kernel without it, too little lockable
    memory); the selector loop works there."""

    def __init__(self):
        self._init_loop(None, proactor=True)


Loop.__module__ = SelectorEventLoop.__module__ = ProactorEventLoop.__module__ = "oxloop"


def uring_unavailable() -> str | None:
    """Why `ProactorEventLoop()` cannot be had here (its `OSError`'s
    message), or None where it can: for the test and bench runners, which
    leave the flavour out there."""
    try:
        ProactorEventLoop().close()
    except OSError as e:
        return e.strerror or str(e)
    return None


if sys.version_info < (3, 12):
    # The oxloop loops running in this process.
    _running = weakref.WeakSet()

    def _reset_in_child():
        """asyncio 3.12's on-fork reset, for 3.11 and oxloop's loops: a child
        forked while a loop runs starts with no running loop, no current loop
        and no signal wakeup fd (which would wake the parent's loop)."""
        if _running:
            events._set_running_loop(None)
            signal.set_wakeup_fd(-1)
            policy = events._event_loop_policy
            if policy is not None:
                policy._local = events.BaseDefaultEventLoopPolicy._Local()

    os.register_at_fork(after_in_child=_reset_in_child)


def new_event_loop() -> Loop:
    """A new oxloop loop of the default flavour."""
    return Loop()
