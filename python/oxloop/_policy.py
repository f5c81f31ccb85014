"""Ways to make asyncio use oxloop: `run`, the policy, `install`."""

from __future__ import annotations

import asyncio
import warnings

from ._loop import Loop, new_event_loop

__all__ = ("EventLoopPolicy", "install", "run")


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An event loop policy whose loops are oxloop loops.

    For code that cannot pass `loop_factory`: `asyncio.set_event_loop_policy(
    oxloop.EventLoopPolicy())`. Child watchers (3.11, 3.12) stay asyncio's.
    """

    _loop_factory = Loop

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__}>"


def install() -> None:
    """Make oxloop asyncio's default loop for this process (sets the policy)."""
    with warnings.catch_warnings():
        # 3.14 deprecates policies; the call still does what it says.
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None, **kwargs):
    """Run the coroutine `main` on a new oxloop loop: `asyncio.run` with
    oxloop's loop factory. Extra keyword arguments go to `asyncio.Runner`."""
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop, **kwargs) as runner:
        return runner.run(main)
