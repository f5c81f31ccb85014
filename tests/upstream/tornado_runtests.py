"""What `tornado.test.runtests` sets up before tornado's tests, for pytest:
access logs silenced (its tests assert that nothing else is logged)."""

from __future__ import annotations

import logging


def pytest_configure(config):
    logging.getLogger("tornado.access").setLevel(logging.CRITICAL)
