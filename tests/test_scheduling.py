"""call_soon / call_later / call_at / call_soon_threadsafe, handles, run/stop."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
import threading
import time
import warnings
import weakref
from unittest import mock

import pytest


def test_loop_type_and_module(loop, is_oxloop):
    assert isinstance(loop, asyncio.AbstractEventLoop)
    if is_oxloop:
        assert type(loop).__module__.split(".")[0] == "oxloop"


def test_call_soon_runs_in_fifo_order_with_args(loop):
    calls = []
    for i in range(5):
        loop.call_soon(calls.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
def test_call_soon_arguments(loop, method):
    schedule = getattr(loop, method)
    calls = []
    context = contextvars.copy_context()
    schedule(callback=calls.append, context=None)  # no argument: append() raises
    schedule(calls.append, "positional", context=context)
    # What asyncio's C tasks pass: a keyword name that is equal to, but not,
    # the interned string.
    kwname = "".join(["con", "text"])
    schedule(calls.append, "built name", **{kwname: context})
    for bad in (
        lambda: schedule(),
        lambda: schedule(calls.append, 1, unknown=2),
        lambda: schedule(calls.append, callback=calls.append),
        lambda: schedule(context=context),
    ):
        with pytest.raises(TypeError):
            bad()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx["exception"]))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["positional", "built name"]
    assert [type(e) for e in errors] == [TypeError]


def test_call_later_and_call_at_arguments(loop):
    calls = []
    context = contextvars.copy_context()
    loop.call_later(delay=0, callback=calls.append, context=context)  # raises: no argument
    loop.call_later(0, calls.append, "later", context=None)
    loop.call_at(when=loop.time(), callback=calls.append)  # raises too
    loop.call_at(loop.time(), calls.append, "at", context=context)
    for bad in (
        lambda: loop.call_later(),
        lambda: loop.call_later(0),
        lambda: loop.call_later(None, calls.append),
        lambda: loop.call_at(None, calls.append),
        lambda: loop.call_later(0, calls.append, delay=0),
        lambda: loop.call_at(0, calls.append, unknown=1),
    ):
        with pytest.raises(TypeError):
            bad()
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx["exception"]))
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert calls == ["later", "at"]
    assert [type(e) for e in errors] == [TypeError, TypeError]


def test_callbacks_added_while_running_wait_for_next_iteration(loop):
    calls = []

    def first():
        calls.append("first")
        loop.call_soon(calls.append, "nested")
        loop.stop()

    loop.call_soon(first)
    loop.call_soon(calls.append, "second")
    loop.run_forever()
    assert calls == ["first", "second"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["first", "second", "nested"]


def test_handles_are_asyncio_handles(loop):
    h = loop.call_soon(print)
    t = loop.call_later(10, print)
    assert isinstance(h, asyncio.Handle) and not isinstance(h, asyncio.TimerHandle)
    assert isinstance(t, asyncio.TimerHandle)
    assert "print" in repr(h)
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    assert t.when() == pytest.approx(loop.time() + 10, abs=0.5)
    t.cancel()
    assert t.cancelled()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Handle.get_context is 3.12+")
def test_handle_get_context(loop):
    ctx = contextvars.copy_context()
    assert loop.call_soon(print, context=ctx).get_context() is ctx
    assert loop.call_later(1, print, context=ctx).get_context() is ctx


def test_cancelled_callbacks_do_not_run(loop):
    calls = []
    h = loop.call_soon(calls.append, 1)
    t = loop.call_later(0, calls.append, 2)
    h.cancel()
    t.cancel()
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert calls == []


def test_timers_fire_in_deadline_order_and_never_early(loop):
    fired = []
    start = loop.time()
    for delay in (0.03, 0.01, 0.02, 0.01):
        loop.call_later(delay, lambda d=delay: fired.append((d, loop.time() - start)))
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert [d for d, _ in fired] == [0.01, 0.01, 0.02, 0.03]
    for delay, elapsed in fired:
        assert elapsed >= delay


def test_call_at_uses_loop_time(loop):
    fired = []
    when = loop.time() + 0.01
    h = loop.call_at(when, lambda: fired.append(loop.time()))
    assert h.when() == when
    loop.call_at(when + 0.01, loop.stop)
    loop.run_forever()
    assert fired and fired[0] >= when


def test_time_is_monotonic_clock(loop):
    before = time.monotonic()
    now = loop.time()
    after = time.monotonic()
    assert before <= now <= after


def test_context_argument_is_used(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    seen = []
    loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    loop.call_later(0, lambda: seen.append(var.get()), context=ctx)
    loop.call_soon(lambda: seen.append(var.get()))
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert sorted(seen) == ["default", "in-ctx", "in-ctx"]


def test_timers_follow_a_replaced_time(loop):
    """Libraries' tests patch `loop.time` to control when timers fire:
    call_later reads it, and so does the loop deciding which timers are due."""
    fired = []

    async def turns():
        for _ in range(3):
            await asyncio.sleep(0)

    async def main():
        now = loop.time()
        with mock.patch.object(loop, "time") as time:
            time.return_value = now
            loop.call_later(1000, fired.append, "later")
            loop.call_at(now + 2000, fired.append, "at")
            await turns()
            assert fired == []
            time.return_value = now + 1000
            await turns()
            assert fired == ["later"]
            time.return_value = now + 2000
            await turns()
            assert fired == ["later", "at"]
        # The real clock again.
        assert abs(loop.time() - now) < 1000

    loop.run_until_complete(main())


def test_a_context_argument_is_used_through_its_run_method(loop):
    """asyncio runs a handle as `context.run(callback, *args)`: an object
    without `run` fails in the callback (reported, the loop goes on)."""
    errors = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))
    ran = []

    class Runner:
        def run(self, callback, *args):
            ran.append("runner")
            return callback(*args)

    loop.call_soon(ran.append, "no context", context="not a context")
    loop.call_soon(ran.append, "duck", context=Runner())
    loop.call_later(0, ran.append, "timer", context=Runner())
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert [type(e) for e in errors] == [AttributeError]
    assert ran == ["runner", "duck", "runner", "timer"]


def test_callbacks_run_in_a_copy_of_the_callers_context(loop):
    """Without context=, every scheduling method captures the caller's
    context (a thread's own for call_soon_threadsafe), and what a callback
    sets stays in its copy."""
    var = contextvars.ContextVar("var", default="default")
    seen = []

    def record(tag):
        seen.append((tag, var.get()))
        var.set("set-by-callback")

    def from_thread():
        var.set("thread")
        loop.call_soon_threadsafe(record, "threadsafe-other-thread")

    var.set("caller")
    loop.call_soon(record, "soon")
    loop.call_later(0, record, "later")
    loop.call_soon_threadsafe(record, "threadsafe")
    worker = threading.Thread(target=from_thread)
    worker.start()
    worker.join()
    var.set("changed-after")
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert sorted(seen) == [
        ("later", "caller"),
        ("soon", "caller"),
        ("threadsafe", "caller"),
        ("threadsafe-other-thread", "thread"),
    ]
    assert var.get() == "changed-after"


def test_call_soon_threadsafe_wakes_a_blocked_loop(loop):
    got = []

    def worker():
        time.sleep(0.05)
        loop.call_soon_threadsafe(got.append, threading.get_ident())
        loop.call_soon_threadsafe(loop.stop)

    loop.call_later(30, loop.stop)  # a safety net, never reached
    t = threading.Thread(target=worker)
    t.start()
    loop.run_forever()
    t.join()
    assert got == [t.ident]


def test_call_soon_threadsafe_burst_from_threads(loop):
    n, threads = 2000, 4
    got = []
    done = threading.Barrier(threads + 1)

    def worker(k):
        for i in range(n):
            loop.call_soon_threadsafe(got.append, (k, i))
        done.wait()

    async def main():
        ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        await loop.run_in_executor(None, done.wait)
        for t in ts:
            t.join()
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert len(got) == n * threads
    for k in range(threads):
        assert [i for kk, i in got if kk == k] == list(range(n))


def test_stop_before_run_forever_runs_one_iteration(loop):
    calls = []
    loop.call_soon(calls.append, 1)
    loop.stop()
    loop.run_forever()
    assert calls == [1]
    assert not loop.is_running()


def test_run_until_complete_returns_and_raises(loop):
    async def ok():
        await asyncio.sleep(0)
        return 42

    async def bad():
        raise ValueError("boom")

    assert loop.run_until_complete(ok()) == 42
    with pytest.raises(ValueError, match="boom"):
        loop.run_until_complete(bad())


def test_run_until_complete_stopped_early(loop):
    async def forever():
        await asyncio.sleep(3600)

    loop.call_soon(loop.stop)
    task = loop.create_task(forever())
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed"):
        loop.run_until_complete(task)
    task.cancel()
    loop.run_until_complete(asyncio.gather(task, return_exceptions=True))


def test_is_running_and_running_loop(loop):
    seen = []

    async def main():
        seen.append((loop.is_running(), asyncio.get_running_loop() is loop))

    loop.run_until_complete(main())
    assert seen == [(True, True)]
    assert not loop.is_running()


def test_nested_run_is_refused(loop):
    async def main():
        with pytest.raises(RuntimeError, match="already running"):
            loop.run_until_complete(asyncio.sleep(0))
        with pytest.raises(RuntimeError, match="already running"):
            loop.run_forever()

    loop.run_until_complete(main())


def test_running_another_loop_inside_is_refused(loop, loop_factory):
    other = loop_factory()
    try:

        async def main():
            with pytest.raises(RuntimeError, match="another loop is running"):
                other.run_until_complete(asyncio.sleep(0))

        loop.run_until_complete(main())
    finally:
        other.close()


def test_closed_loop_refuses_work(loop):
    loop.close()
    assert loop.is_closed()
    loop.close()  # a second close is a no-op
    coro = asyncio.sleep(0)
    for call in (
        lambda: loop.call_soon(print),
        lambda: loop.call_later(1, print),
        lambda: loop.call_at(1, print),
        lambda: loop.call_soon_threadsafe(print),
        lambda: loop.run_forever(),
        lambda: loop.run_until_complete(coro),
        lambda: loop.create_task(coro),
    ):
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            call()
    coro.close()


def test_closing_a_running_loop_is_refused(loop):
    async def main():
        with pytest.raises(RuntimeError, match="Cannot close a running event loop"):
            loop.close()

    loop.run_until_complete(main())


def test_tasks_names_context_and_factory(loop):
    var = contextvars.ContextVar("v", default=0)
    ctx = contextvars.copy_context()
    ctx.run(var.set, 7)

    async def get():
        return var.get()

    async def main():
        t = loop.create_task(get(), name="worker", context=ctx)
        assert t.get_name() == "worker"
        assert isinstance(t, asyncio.Task)
        return await t

    assert loop.run_until_complete(main()) == 7
    assert loop.get_task_factory() is None
    made = []

    def factory(lp, coro, **kw):
        made.append(coro)
        return asyncio.Task(coro, loop=lp, **kw)

    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    assert loop.run_until_complete(get()) == 0
    assert len(made) == 1
    with pytest.raises(TypeError):
        loop.set_task_factory(42)


def test_create_task_passes_only_what_it_was_given(loop):
    calls = []

    def factory(lp, coro, **kw):
        calls.append(sorted(kw))
        return asyncio.Task(coro, loop=lp, **kw)

    async def nothing():
        pass

    async def main():
        unnamed = loop.create_task(nothing())
        assert unnamed.get_name().startswith("Task-")
        await unnamed
        loop.set_task_factory(factory)
        ctx = contextvars.copy_context()
        named = loop.create_task(nothing(), name="n", context=ctx)
        assert named.get_name() == "n"
        await named
        await loop.create_task(nothing(), name=None, context=None)

    loop.run_until_complete(main())
    assert calls == [["context"], []]


def test_create_task_source_traceback_ends_at_the_caller(loop):
    loop.set_debug(True)

    async def nothing():
        pass

    async def main():
        task = loop.create_task(nothing())
        line = sys._getframe().f_lineno - 1
        last = task._source_traceback[-1]
        assert (last.filename, last.lineno) == (__file__, line)
        await task

    loop.run_until_complete(main())


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are 3.12+")
def test_eager_task_factory(loop):
    order = []

    async def child():
        order.append("child-start")
        await asyncio.sleep(0)

    async def main():
        t = asyncio.create_task(child())
        order.append("after-create")
        await t

    loop.set_task_factory(asyncio.eager_task_factory)
    loop.run_until_complete(main())
    assert order == ["child-start", "after-create"]


def test_many_cancelled_timers_are_released(loop):
    import tracemalloc

    async def main():
        for _ in range(1000):
            for _ in range(1000):
                loop.call_later(3600, print).cancel()
            await asyncio.sleep(0)

    tracemalloc.start()
    try:
        loop.run_until_complete(main())
        loop.run_until_complete(asyncio.sleep(0))
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A million kept handles would hold well over 100 MB.
    assert current < 20 * 1024 * 1024


def test_timer_cancel_tells_the_loop_once_and_drops_the_callback(loop):
    told = []
    tell = loop._timer_handle_cancelled
    # An instance attribute replaces the loop's method, as for any Python object.
    loop._timer_handle_cancelled = lambda timer: (told.append(timer), tell(timer))
    t = loop.call_later(3600, print, "x")
    assert isinstance(t, asyncio.TimerHandle)
    t.cancel()
    t.cancel()
    assert told == [t]
    assert t.cancelled() and t._callback is None and t._args is None
    assert repr(t).startswith("<TimerHandle cancelled when=")
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_timer_cancel_in_debug_mode_keeps_what_it_was(loop):
    loop.set_debug(True)
    t = loop.call_later(3600, print, "x")
    t.cancel()
    assert t._callback is None
    assert repr(t).startswith("<TimerHandle cancelled when=")
    assert "print('x')" in repr(t)


def test_timer_cancel_that_the_loop_refuses_leaves_the_timer(loop):
    def refuse(timer):
        raise RuntimeError("refused")

    loop._timer_handle_cancelled = refuse
    t = loop.call_later(0, print, "x")
    with pytest.raises(RuntimeError, match="refused"):
        t.cancel()
    assert not t.cancelled() and t._callback is print


def test_cancelled_timers_are_pruned_but_kept_ones_stay_intact(loop):
    def callback():
        pass

    fired = []
    kept = loop.call_later(0, callback)
    kept.cancel()
    watched = weakref.ref(loop.call_later(0, callback))
    watched().cancel()
    for _ in range(3):
        loop.call_later(0, callback).cancel()
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    # Timers made after the pruning (perhaps from reused handles) are whole.
    later = [loop.call_later(0, fired.append, i) for i in range(5)]
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert fired == [0, 1, 2, 3, 4]
    assert not any(t.cancelled() for t in later)
    assert kept.cancelled() and kept._callback is None
    assert all(t is not kept and t is not watched() for t in later)
    assert watched() is None or watched().cancelled()


def test_runner_with_loop_factory(loop_factory):
    async def main():
        return type(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        kind = runner.run(main())
        assert kind is type(runner.get_loop())
    if sys.version_info >= (3, 12):
        assert asyncio.run(main(), loop_factory=loop_factory) is kind


def test_handles_kept_by_the_caller_stay_intact(loop):
    import weakref

    def first():
        pass

    def second():
        pass

    kept = [loop.call_soon(first) for _ in range(3)]
    watched = weakref.ref(loop.call_soon(first))
    loop.call_soon(loop.stop)
    loop.run_forever()
    for _ in range(10):
        loop.call_soon(second)
        loop.call_later(0, second)
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert len({id(h) for h in kept}) == 3
    assert all(h._callback is first and not h.cancelled() for h in kept)
    h = watched()
    assert h is None or h._callback is first


class Node:
    """An object in a reference cycle with a handle: node → handle → node.ping."""

    def ping(self):
        pass


def _collected(ref) -> bool:
    for _ in range(3):
        gc.collect()
    return ref() is None


def test_cycles_through_handles_the_loop_let_go_of_are_collected(loop):
    ran, cancelled_timer, cancelled = Node(), Node(), Node()
    ran.handle = loop.call_soon(ran.ping)
    cancelled_timer.handle = loop.call_later(3600, cancelled_timer.ping)
    cancelled_timer.handle.cancel()
    cancelled.handle = loop.call_soon(cancelled.ping)
    cancelled.handle.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()
    refs = [weakref.ref(node) for node in (ran, cancelled_timer, cancelled)]
    del ran, cancelled_timer, cancelled
    assert [_collected(ref) for ref in refs] == [True, True, True]


def test_pending_callbacks_survive_collections(loop):
    class Box:
        def hit(self):
            hits.append(self)

    hits = []
    var = contextvars.ContextVar("var")
    seen = []
    for _ in range(1000):
        loop.call_soon(Box().hit)
    var.set(Node())
    loop.call_soon(lambda: seen.append(type(var.get())))
    loop.call_later(0, lambda: seen.append(type(var.get())))
    gc.collect()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(hits) == 1000 and all(type(box) is Box for box in hits)
    assert seen == [Node, Node]


@pytest.mark.parametrize("pending", [1, 100])
@pytest.mark.parametrize("kept_last", [False, True])
def test_a_dropped_loop_with_pending_callbacks_is_collected(loop_factory, kept_last, pending):
    loop = loop_factory()
    node = Node()
    node.handle = loop.call_soon(node.ping)
    for _ in range(pending):
        loop.call_soon(loop.stop)  # the loop refers to itself through its queue
        loop.call_later(3600, Node().ping)
    if kept_last:
        node.timer = loop.call_later(3600, loop.stop)
    else:
        loop.call_later(3600, loop.stop)
    ref = weakref.ref(loop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del loop, node
        assert _collected(ref)


def test_handles_held_by_another_thread_while_they_run(loop):
    n = 2000
    done = []

    def tick():
        done.append(1)
        if len(done) == n:
            loop.stop()

    def producer():
        for _ in range(n):
            handle = loop.call_soon_threadsafe(tick)
            time.sleep(0.0001)  # the loop runs it and iterates again meanwhile
            del handle

    thread = threading.Thread(target=producer)
    loop.call_soon(thread.start)
    loop.run_forever()
    thread.join()
    assert len(done) == n


def test_a_nan_delay_runs_at_once(loop):
    ran = []
    loop.call_later(float("nan"), ran.append, "nan")
    loop.call_later(3600, ran.append, "later")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["nan"]
