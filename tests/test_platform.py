"""What differs between the platforms: the clock every flavour reads, and
the code paths a build takes (epoll, an eventfd and pidfds on Linux; the
Python selector backend, a self-pipe and a thread per child where the build
is portable, as on macOS and the BSDs)."""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
import signal
import subprocess
import sys
import time

import oxloop
import pytest
from oxloop import _oxloop


def test_loop_time_reads_time_monotonic(loop):
    # asyncio's loop.time() is time.monotonic(); code mixes the two freely.
    for _ in range(1000):
        before = time.monotonic()
        now = loop.time()
        after = time.monotonic()
        assert before <= now <= after


def open_fds() -> dict[int, str]:
    """Each open fd and what it is, as /proc names it (without its inode
    number); not the fd listdir itself had open."""
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[int(fd)] = re.sub(r":\[\d+\]$", "", os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:
            pass
    return fds


proc_fds = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="reads Linux's /proc/self/fd"
)


@proc_fds
def test_the_loop_waits_and_wakes_the_way_the_build_says():
    before = open_fds()
    loop = oxloop.new_event_loop()
    opened = {fd: kind for fd, kind in open_fds().items() if fd not in before}
    # Either way, the socket pair signals are written to (asyncio's scheme).
    if _oxloop.PORTABLE:
        # selectors.DefaultSelector() (an EpollSelector on Linux) and a pipe.
        waiting = ["anon_inode:[eventpoll]", "pipe", "pipe"]
    else:
        waiting = ["anon_inode:[eventfd]", "anon_inode:[eventpoll]"]
    assert sorted(opened.values()) == sorted(waiting + ["socket", "socket"])
    try:
        woken = loop.create_future()

        def from_a_thread():
            time.sleep(0.05)
            loop.call_soon_threadsafe(woken.set_result, "woken")

        loop.run_in_executor(None, from_a_thread)
        assert loop.run_until_complete(woken) == "woken"
    finally:
        loop.close()
    assert not opened.keys() & open_fds().keys()


def test_children_are_watched_the_way_the_build_says():
    loop = oxloop.new_event_loop()
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"])
    try:
        exited = loop.create_future()
        watch = _oxloop.watch_child(loop, child.pid, exited.set_result, contextvars.Context())
        if _oxloop.PORTABLE:
            # No pidfds: oxloop's Python side then waits with a thread.
            assert watch is None
            assert child.wait() == 7
        else:
            assert loop.run_until_complete(exited) == 7
            assert watch.returncode == 7
    finally:
        if child.returncode is None:
            child.poll()
        loop.close()


def test_a_signal_handler_may_use_the_loop_while_it_waits(loop):
    # A handler set with signal.signal runs inside the wait (a Python
    # selector's select() runs it on EINTR); it may call into the loop, as
    # finalizers there may (a StreamWriter closing its transport). A select()
    # or poll() retried after the handler does not see the new reader, so a
    # ticking timer ends each wait soon.
    r, w = os.pipe()
    os.set_blocking(r, False)
    got = loop.create_future()

    def on_readable():
        loop.remove_reader(r)
        got.set_result(os.read(r, 10))

    def on_alarm(signum, frame):
        loop.add_reader(r, on_readable)
        os.write(w, b"ping")

    def tick():
        if not got.done():
            loop.call_later(0.01, tick)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    tick()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert loop.run_until_complete(asyncio.wait_for(got, 10)) == b"ping"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        os.close(r)
        os.close(w)
