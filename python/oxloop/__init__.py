"""oxloop: an asyncio event loop with its engine in Rust.

asyncio.run(main(), loop_factory=oxloop.new_event_loop)
oxloop.run(main())
asyncio.set_event_loop_policy(oxloop.EventLoopPolicy())
"""

from ._loop import Loop, SelectorEventLoop, new_event_loop
from ._policy import EventLoopPolicy, install, run

__all__ = (
    "EventLoopPolicy",
    "Loop",
    "SelectorEventLoop",
    "install",
    "new_event_loop",
    "run",
)

__version__ = "0.1.0"
