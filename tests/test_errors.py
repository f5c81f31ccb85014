"""Bad input gets asyncio's exception; a raising callback reaches the
exception handler and the loop goes on."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile

import pytest


@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda lp: lp.call_later(None, print), TypeError),
        (lambda lp: lp.call_later("soon", print), TypeError),
        (lambda lp: lp.call_at(None, print), TypeError),
        (lambda lp: lp.call_soon(), TypeError),
        (lambda lp: lp.add_reader(-1, print), ValueError),
        (lambda lp: lp.add_reader(object(), print), ValueError),
        (lambda lp: lp.add_writer("not a file", print), ValueError),
        (lambda lp: lp.remove_reader(-5), ValueError),
        (lambda lp: lp.set_exception_handler(42), TypeError),
        (lambda lp: lp.set_default_executor(object()), TypeError),
        (lambda lp: lp.run_until_complete(42), TypeError),
        (lambda lp: lp.create_task(42), TypeError),
    ],
)
def test_bad_arguments_raise_what_asyncio_raises(loop, call, exc):
    with pytest.raises(exc):
        call(loop)
    # the loop still works afterwards
    assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"


def test_debug_mode_checks_callbacks(loop):
    loop.set_debug(True)

    async def coro():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with call_soon"):
        loop.call_soon(coro)
    # asyncio's call_later goes through call_at, and says so
    with pytest.raises(TypeError, match="a callable object was expected by call_at"):
        loop.call_later(1, 42)
    with pytest.raises(TypeError, match="a callable object was expected by call_at"):
        loop.call_at(1, 42)


def test_regular_files_are_refused_by_add_reader(loop, flavour):
    if flavour in ("oxloop-select", "oxloop-poll"):
        pytest.skip("select() and poll() accept regular files (always ready), as in asyncio")
    with tempfile.TemporaryFile() as f:
        with pytest.raises(PermissionError):
            loop.add_reader(f.fileno(), print)
        assert loop.remove_reader(f.fileno()) is False


def test_raising_callback_reaches_handler_and_loop_goes_on(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def bad():
        raise ZeroDivisionError("bad callback")

    calls = []
    h = loop.call_soon(bad)
    loop.call_soon(calls.append, "after")
    loop.call_later(0, bad)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert calls == ["after"]
    assert len(contexts) == 2
    assert contexts[0]["handle"] is h
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)
    assert contexts[0]["message"].startswith("Exception in callback")


def test_default_exception_handler_logs(loop, caplog):
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(loop.stop)
    with caplog.at_level("ERROR", logger="asyncio"):
        loop.run_forever()
    assert "Exception in callback" in caplog.text
    assert "ZeroDivisionError" in caplog.text


def test_a_raising_exception_handler_is_logged_too(loop, caplog):
    def handler(lp, ctx):
        raise RuntimeError("handler broke")

    loop.set_exception_handler(handler)
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(loop.stop)
    with caplog.at_level("ERROR", logger="asyncio"):
        loop.run_forever()
    assert "Unhandled error in exception handler" in caplog.text


def test_keyboard_interrupt_and_system_exit_escape(loop):
    def interrupt():
        raise KeyboardInterrupt

    loop.call_soon(interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert not loop.is_running()

    def leave():
        raise SystemExit(3)

    loop.call_soon(leave)
    with pytest.raises(SystemExit):
        loop.run_forever()
    # the loop is usable again
    assert loop.run_until_complete(asyncio.sleep(0, 1)) == 1


def test_call_exception_handler_without_handler(loop, caplog):
    with caplog.at_level("ERROR", logger="asyncio"):
        loop.call_exception_handler({"message": "custom message"})
    assert "custom message" in caplog.text


def _open_fds() -> set[int]:
    return set(map(int, os.listdir("/proc/self/fd")))


def test_close_releases_every_fd(loop_factory):
    before = _open_fds()
    for _ in range(20):
        lp = loop_factory()
        r, w = socket.socketpair()
        lp.add_reader(r, print)
        lp.call_later(10, print)
        lp.run_until_complete(asyncio.sleep(0))
        lp.close()
        r.close()
        w.close()
    assert _open_fds() <= before
