"""A pytest plugin that puts oxloop under an upstream library's test suite.

oxloop's policy becomes asyncio's default, so every loop the suite gets
from `asyncio.new_event_loop()`, `asyncio.run()` or a policy reset is an
oxloop loop (a suite that builds `asyncio.SelectorEventLoop` itself keeps
asyncio's). The number of oxloop loops made is printed at the end: the
runner checks the suite really ran on oxloop.
"""

from __future__ import annotations

import asyncio

import oxloop

_made = 0


class _CountingPolicy(oxloop.EventLoopPolicy):
    def new_event_loop(self):
        global _made
        _made += 1
        return super().new_event_loop()


def pytest_configure(config):
    asyncio.DefaultEventLoopPolicy = _CountingPolicy
    asyncio.set_event_loop_policy(_CountingPolicy())


def pytest_unconfigure(config):
    print(f"\nOXLOOP LOOPS {_made}")
