"""A process forked while a loop runs: the child starts clean, the parent's
loop goes on undisturbed (on oxloop and asyncio)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import warnings

import pytest

pytestmark = pytest.mark.parametrize("flavour", ["oxloop", "asyncio"], indirect=True)


def fork_running(loop, loop_factory, in_child):
    """Forks inside a callback of the running `loop`; the child runs
    `in_child()`, a fresh loop from `loop_factory` and exits 0 if all held."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        in_child()
        fresh = loop_factory()
        assert fresh.run_until_complete(asyncio.sleep(0, "fresh")) == "fresh"
        fresh.close()
        code = 0
    finally:
        os._exit(code)


def check_parent_undisturbed(loop, loop_factory, in_child):
    r, w = socket.socketpair()
    got, signalled = [], asyncio.Event()
    loop.add_reader(r, lambda: got.append(r.recv(100)))
    loop.add_signal_handler(signal.SIGUSR1, signalled.set)

    async def main():
        pid = fork_running(loop, loop_factory, in_child)
        _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        w.send(b"after the fork")
        while not got:
            await asyncio.sleep(0.001)
        assert got == [b"after the fork"]
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.wait_for(signalled.wait(), 5)
        woken = loop.create_future()
        threading.Thread(target=loop.call_soon_threadsafe, args=(woken.set_result, 1)).start()
        assert await asyncio.wait_for(woken, 5) == 1

    try:
        loop.run_until_complete(main())
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.remove_reader(r)
        r.close()
        w.close()


def test_a_child_runs_its_own_loop_and_the_parents_goes_on(loop, loop_factory, is_oxloop):
    # asyncio resets the child's loop state from 3.12 on; oxloop on every version.
    clean = is_oxloop or sys.version_info >= (3, 12)

    def in_child():
        if clean:
            assert asyncio._get_running_loop() is None
            assert signal.set_wakeup_fd(-1) == -1

    check_parent_undisturbed(loop, loop_factory, in_child)


def test_a_child_changing_the_inherited_loop_leaves_the_parents_alone(
    loop, loop_factory, is_oxloop
):
    if not is_oxloop:
        pytest.skip("asyncio's selector is shared with the parent: its changes reach the parent")

    def in_child():
        # Unregistering in the child must not unregister in the parent.
        for fd in list(loop._selector.get_map()):
            loop._remove_reader(fd)
        loop.call_soon_threadsafe(lambda: None)

    check_parent_undisturbed(loop, loop_factory, in_child)
