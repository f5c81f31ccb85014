"""Real services for the integration tests (see tests/services.py), one of
each for the session."""

from __future__ import annotations

import pytest

from tests.services import postgres_server, redis_server


@pytest.fixture(scope="session")
def redis_port():
    with redis_server() as port:
        yield port


@pytest.fixture(scope="session")
def postgres_port():
    with postgres_server() as port:
        yield port
