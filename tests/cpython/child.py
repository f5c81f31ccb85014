"""Runs one module of CPython's test.test_asyncio with oxloop as the loop under test.

Invoked by `runner.py` (one process per module); prints nothing of its own but
writes one JSON line per event to --out: {"start": id} before a test and
{"id": id, "outcome": ...} after it, so the parent knows where a hang was.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import sys
import unittest
import warnings

import oxloop


class ProactorAsDefault(oxloop.ProactorEventLoop):
    """The proactor flavour where the tests make asyncio's default loop,
    `SelectorEventLoop()` or the policy's: a loop given a selector waits on
    it, as `oxloop.SelectorEventLoop(selector)` does."""

    def __init__(self, selector=None):
        self._init_loop(selector, proactor=selector is None)


class ProactorPolicy(oxloop.EventLoopPolicy):
    _loop_factory = ProactorAsDefault


def use_oxloop(flavour: str) -> None:
    """Make every loop asyncio creates in this process an oxloop loop, of the
    proactor flavour for "proactor"."""
    policy, loop = oxloop.EventLoopPolicy, oxloop.SelectorEventLoop
    if flavour == "proactor":
        policy, loop = ProactorPolicy, ProactorAsDefault
    asyncio.DefaultEventLoopPolicy = policy
    asyncio.SelectorEventLoop = loop
    asyncio.unix_events.SelectorEventLoop = loop
    asyncio.unix_events.DefaultEventLoopPolicy = policy
    if hasattr(asyncio, "EventLoop"):
        asyncio.EventLoop = loop
        asyncio.unix_events.EventLoop = loop
    asyncio.set_event_loop_policy(None)


def add_native_tests(module, native) -> None:
    """Run test_events' loop tests on oxloop's native backend too (its own
    classes then cover the user-selector backend through SelectorEventLoop;
    `native` makes that loop),
    and test_subprocess's tests with oxloop watching children itself (pidfd,
    then the thread fallback) rather than through a watcher on the policy."""
    from test.test_asyncio import utils as test_utils

    def add(name, *bases, **attrs):
        cls = type(name, (*bases, test_utils.TestCase), attrs)
        cls.__module__ = module.__name__
        setattr(module, name, cls)

    events_mixin = getattr(module, "UnixEventLoopTestsMixin", None)
    if events_mixin is not None:
        add(
            "OxloopNativeEventLoopTests",
            events_mixin,
            create_event_loop=lambda self: native(),
        )
    subprocess_mixin = getattr(module, "SubprocessMixin", None)
    if subprocess_mixin is not None and sys.platform != "win32":
        from oxloop import _children

        def set_up(self, pidfd):
            super(type(self), self).setUp()
            self.addCleanup(setattr, _children, "USE_PIDFD", _children.USE_PIDFD)
            _children.USE_PIDFD = pidfd
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                asyncio.set_child_watcher(None)
            self.loop = native()
            self.set_event_loop(self.loop)

        add("OxloopPidfdSubprocessTests", subprocess_mixin, setUp=lambda s: set_up(s, True))
        add("OxloopThreadSubprocessTests", subprocess_mixin, setUp=lambda s: set_up(s, False))


class Recorder(unittest.TestResult):
    """Streams each test's outcome to a file as it happens."""

    def __init__(self, out, timeout: float):
        super().__init__()
        self.out = out
        self.timeout = timeout
        self.failed_subtests: set[str] = set()

    def emit(self, **record) -> None:
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def startTest(self, test):
        super().startTest(test)
        self.emit(start=test.id())
        faulthandler.dump_traceback_later(self.timeout, exit=True)

    def stopTest(self, test):
        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)

    def addSuccess(self, test):
        outcome = "fail" if test.id() in self.failed_subtests else "pass"
        self.emit(id=test.id(), outcome=outcome)

    def _failed(self, test, err):
        self.emit(id=test.id(), outcome="fail", detail=self._exc_info_to_string(err, test)[-3000:])

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._failed(test, err)

    def addError(self, test, err):
        super().addError(test, err)
        self._failed(test, err)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self.failed_subtests.add(test.id())
            print(self._exc_info_to_string(err, test)[-3000:], file=sys.stderr)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.emit(id=test.id(), outcome="skip", detail=reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.emit(id=test.id(), outcome="pass")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.emit(id=test.id(), outcome="fail", detail="unexpected success")


def flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from flatten(item)
        else:
            yield item


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("module")
    parser.add_argument("--out", required=True)
    parser.add_argument("--skip", default=None, help="file with test ids not to run")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--flavour", choices=("selector", "proactor"), default="selector")
    opts = parser.parse_args()

    use_oxloop(opts.flavour)
    name = f"test.test_asyncio.{opts.module}"
    module = __import__(name, fromlist=["*"])
    native = oxloop.ProactorEventLoop if opts.flavour == "proactor" else oxloop.new_event_loop
    add_native_tests(module, native)
    skip = set()
    if opts.skip:
        with open(opts.skip) as f:
            skip = {line.strip() for line in f if line.strip()}
    tests = [
        t
        for t in flatten(unittest.defaultTestLoader.loadTestsFromModule(module))
        if t.id() not in skip
    ]
    with open(opts.out, "a") as out:
        result = Recorder(out, opts.timeout)
        # Errors in fixtures (setUpClass, setUpModule) reach addError too.
        unittest.TestSuite(tests).run(result)
        result.emit(done=True)


if __name__ == "__main__":
    main()
