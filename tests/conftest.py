"""Every behaviour test runs on each oxloop flavour and on asyncio's own loop,
the reference: a test that fails on asyncio is a wrong test."""

from __future__ import annotations

import asyncio
import os
import selectors

import oxloop
import pytest
from oxloop._loop import uring_unavailable

FLAVOURS = {
    "asyncio": asyncio.SelectorEventLoop,
    "oxloop": oxloop.new_event_loop,
    "oxloop-select": lambda: oxloop.SelectorEventLoop(selectors.SelectSelector()),
    "oxloop-poll": lambda: oxloop.SelectorEventLoop(selectors.PollSelector()),
}


# Where io_uring cannot be had (a seccomp filter, the portable build),
# tests/test_proactor.py checks the error instead.
if uring_unavailable() is None:
    FLAVOURS["oxloop-uring"] = oxloop.ProactorEventLoop


@pytest.fixture(params=list(FLAVOURS))
def flavour(request) -> str:
    return request.param


@pytest.fixture
def loop_factory(flavour):
    return FLAVOURS[flavour]


@pytest.fixture
def loop(loop_factory):
    loop = loop_factory()
    yield loop
    if not loop.is_closed():
        loop.close()


@pytest.fixture(autouse=True)
def fresh_policy():
    """asyncio's loop leaves its child watcher on the policy (3.11-3.13),
    which oxloop honours as one the user set: each test starts without it."""
    yield
    asyncio.set_event_loop_policy(None)


@pytest.fixture
def is_oxloop(flavour) -> bool:
    return flavour.startswith("oxloop")


@pytest.fixture
def open_fds():
    """A function counting the process's open fds, to compare before and after."""

    def count() -> int:
        return len(os.listdir("/proc/self/fd"))

    return count
