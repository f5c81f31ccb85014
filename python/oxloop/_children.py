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

__all__ = ("policy_watcher", "watch_child")

logger = logging.getLogger("asyncio")

#: False forces the thread fallback (for tests, and kernels without pidfds).
USE_PIDFD = True


def policy_watcher():
    """The child watcher set on asyncio's policy through its deprecated API
    (3.11-3.13), which the loop honours; None when none was set."""
    return getattr(asyncio.get_event_loop_policy(), "_watcher", None)


def watch_child(loop, pid, callback):
    """Schedule `callback(returncode)` on `loop` once child `pid` exits,
    reaping it. `returncode` is negative for a child killed by a signal.

    The callback runs where asyncio's own watcher would run it: with a pidfd
    (3.12 on), in the context of the caller; waited for by a thread, in the
    thread's empty one."""
    if USE_PIDFD and sys.version_info >= (3, 12):
        if _oxloop.watch_child(loop, pid, callback, contextvars.copy_context()):
            return
    elif USE_PIDFD and _oxloop.watch_child(loop, pid, callback, contextvars.Context()):
        return
    threading.Thread(
        target=_wait, args=(loop, pid, callback), name=f"oxloop-waitpid-{pid}", daemon=True
    ).start()


def _wait(loop, pid, callback):
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        returncode = 255
        logger.warning("Unknown child process pid %d, will report returncode 255", pid)
    else:
        returncode = os.waitstatus_to_exitcode(status)
    try:
        loop.call_soon_threadsafe(callback, returncode)
    except RuntimeError:
        logger.warning("Loop %r that handles pid %r is closed", loop, pid)
