"""oxloop: an asyncio event loop with its engine in Rust.

asyncio.run(main(), loop_factory=oxloop.new_event_loop)
oxloop.run(main())
asyncio.set_event_loop_policy(oxloop.EventLoopPolicy())
"""

from ._export import HealthCollector
from ._health import Health, Lag, SlowCallback, configure_health, health, reset_health
from ._loop import Loop, ProactorEventLoop, SelectorEventLoop, new_event_loop
from ._otel import observe_health
from ._policy import EventLoopPolicy, install, run

__all__ = (
    "EventLoopPolicy",
    "Health",
    "HealthCollector",
    "Lag",
    "Loop",
    "ProactorEventLoop",
    "SelectorEventLoop",
    "SlowCallback",
    "configure_health",
    "health",
    "install",
    "new_event_loop",
    "observe_health",
    "reset_health",
    "run",
)

__version__ = "0.1.0"
