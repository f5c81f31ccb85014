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
import socket
import sys
import threading
import time
import warnings
import weakref
from asyncio import base_events, events, format_helpers, selector_events, unix_events

from ._oxloop import Engine

__all__ = ("Loop", "SelectorEventLoop", "new_event_loop")

logger = logging.getLogger("asyncio")

# Patch releases of 3.12 added the `debug` parameter asyncio's Handle passes.
_FORMAT_TAKES_DEBUG = (
    "debug" in inspect.signature(format_helpers._format_callback_source).parameters
)

# Pure-Python methods of asyncio's loops whose only dependencies are the
# primitives `Engine` provides (and the attributes `Loop.__init__` sets).
_ADOPTED = {
    base_events.BaseEventLoop: (
        "__repr__",
        "create_future",
        "create_task",
        "set_task_factory",
        "get_task_factory",
        "_check_closed",
        "_check_default_executor",
        "_asyncgen_finalizer_hook",
        "_asyncgen_firstiter_hook",
        "shutdown_asyncgens",
        "shutdown_default_executor",
        "_do_shutdown",
        "_check_running",
        "run_until_complete",
        "_check_callback",
        "run_in_executor",
        "set_default_executor",
        "_getaddrinfo_debug",
        "getnameinfo",
        "sock_sendfile",
        "_sock_sendfile_fallback",
        "_check_sendfile_params",
        "_ensure_resolved",
        "get_exception_handler",
        "set_exception_handler",
        "default_exception_handler",
        "call_exception_handler",
        "_set_coroutine_origin_tracking",
        "set_debug",
        "_add_callback_signalsafe",
        "__del__",
    ),
    selector_events.BaseSelectorEventLoop: (
        "_make_self_pipe",
        "_close_self_pipe",
        "_read_from_self",
        "_ensure_fd_no_transport",
        "add_reader",
        "remove_reader",
        "add_writer",
        "remove_writer",
        "sock_recv",
        "_sock_read_done",
        "_sock_recv",
        "sock_recv_into",
        "_sock_recv_into",
        "sock_recvfrom",
        "_sock_recvfrom",
        "sock_recvfrom_into",
        "_sock_recvfrom_into",
        "sock_sendall",
        "_sock_sendall",
        "sock_sendto",
        "_sock_sendto",
        "sock_connect",
        "_sock_connect",
        "_sock_write_done",
        "_sock_connect_cb",
        "sock_accept",
        "_sock_accept",
        "_stop_serving",
    ),
    unix_events._UnixSelectorEventLoop: (
        "_process_self_data",
        "add_signal_handler",
        "_handle_signal",
        "remove_signal_handler",
        "_check_signal",
        "_sock_sendfile_native",
        "_sock_sendfile_native_impl",
        "_sock_sendfile_update_filepos",
        "_sock_add_cancellation_callback",
    ),
}


def _adopt(namespace: dict) -> None:
    for source, names in _ADOPTED.items():
        for name in names:
            namespace[name] = source.__dict__[name]


class Loop(Engine, asyncio.AbstractEventLoop):
    """oxloop's event loop: asyncio's API on the Rust engine (native epoll)."""

    _adopt(vars())

    def __init__(self):
        self._init_loop(None)

    def _init_loop(self, selector):
        self._open(selector)
        self._selector = selector
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
        self._transports = weakref.WeakValueDictionary()
        self._internal_fds = 0
        self._signal_handlers = {}
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

    def _run_forever_cleanup(self):
        self._stopping = False
        self._thread_id = None
        events._set_running_loop(None)
        self._set_coroutine_origin_tracking(False)
        if self._old_agen_hooks is not None:
            sys.set_asyncgen_hooks(*self._old_agen_hooks)
            self._old_agen_hooks = None

    def run_forever(self):
        """Run until stop() is called."""
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
    `selectors.SelectSelector()`), or on native epoll when none is given."""

    def __init__(self, selector=None):
        self._init_loop(selector)


Loop.__module__ = SelectorEventLoop.__module__ = "oxloop"


def new_event_loop() -> Loop:
    """A new oxloop loop of the default flavour."""
    return Loop()
