"""Waiting for the child processes a loop spawns.

A child is watched with a pidfd where the kernel has them (Rust,
`_oxloop.watch_child`); elsewhere a thread waits for it, as asyncio's
`ThreadedChildWatcher` does. Neither needs a SIGCHLD handler, and neither
touches children the loop did not spawn.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sys
import threading

from . import _oxloop

__all__ = ("policy_watcher", "reap_at_close", "watch_child")

logger = logging.getLogger("asyncio")

#: False forces the thread fallback (for tests, and kernels without pidfds).
USE_PIDFD = True


def policy_watcher():
    """The child watcher set on asyncio's policy through its deprecated API
    (3.11-3.13), which the loop honours; None when none was set."""
    return getattr(asyncio.get_event_loop_policy(), "_watcher", None)


def watch_child(loop, process, callback):
    """Schedule `callback(returncode)` on `loop` once the child `process` (a
    `subprocess.Popen`) exits, reaping it. `returncode` is negative for a
    child killed by a signal.

    The callback runs where asyncio's own watcher on Linux runs it: from 3.12
    on (a pidfd), in the context of the caller; on 3.11 (a thread), in an
    empty one. That holds whichever way oxloop waits, so code sees the same
    context on macOS (where asyncio's thread would give an empty one)."""
    pid = process.pid
    callers = sys.version_info >= (3, 12)
    context = contextvars.copy_context() if callers else contextvars.Context()
    if USE_PIDFD:
        watch = _oxloop.watch_child(loop, pid, callback, context)
        if watch is not None:
            watches = loop._child_watches
            for done in [p for p, (_, proc) in watches.items() if proc.returncode is not None]:
                del watches[done]
            watches[pid] = (watch, process)
            return
    threading.Thread(
        target=_wait,
        args=(loop, process, callback, context),
        name=f"oxloop-waitpid-{pid}",
        daemon=True,
    ).start()


def reap_at_close(loop):
    """The loop closes: its children are reaped all the same, none left a
    zombie. One its watch reaped keeps that return code in its Popen (the
    callback that would have set it will not run); one still running is
    waited for by a thread through `Popen.wait`, so its return code too
    stays where the transport and `Popen.poll` look."""
    for watch, process in loop._child_watches.values():
        if process.returncode is not None:
            continue
        if watch.returncode is not None:
            process.returncode = watch.returncode
        else:
            threading.Thread(
                target=process.wait, name=f"oxloop-waitpid-{process.pid}", daemon=True
            ).start()
    loop._child_watches.clear()


def _wait(loop, process, callback, context):
    """A thread's wait for `process`, holding its Popen's lock as
    `Popen.wait` does (so `Popen.poll` meanwhile says "running" instead of
    reaping it first). The return code is kept in the Popen at once, so it
    is there even when the loop closed before the callback could run, as
    with a pidfd (`reap_at_close`)."""
    with process._waitpid_lock:
        if process.returncode is not None:
            returncode = process.returncode
        else:
            try:
                _, status = os.waitpid(process.pid, 0)
            except ChildProcessError:
                returncode = 255
                logger.warning(
                    "Unknown child process pid %d, will report returncode 255", process.pid
                )
            else:
                returncode = os.waitstatus_to_exitcode(status)
            process.returncode = returncode
    try:
        loop.call_soon_threadsafe(callback, returncode, context=context)
    except RuntimeError:
        pass  # the loop closed: the return code is in the Popen
