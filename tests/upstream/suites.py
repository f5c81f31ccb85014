"""The upstream test suites oxloop runs under, pinned.

Each is the test suite inside a library's published source distribution
(PyPI's sdist of the pinned version, checked against its sha256), run with
pytest on asyncio's loop (the reference) and on oxloop. The library itself is
the version `requirements.txt` installs, the same one.

Left out, and why:
  websockets   its sdist prunes its tests (MANIFEST.in: `prune tests`), and
               only package registries are reachable from CI
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Suite:
    """One library's suite: where its tests are and how to run them."""

    name: str
    dist: str
    version: str
    sha256: str
    #: What pytest runs (paths, -k), from the unpacked sdist's top folder.
    select: tuple[str, ...]
    #: pytest options for every run (a rerun of some tests too).
    options: tuple[str, ...] = ()
    #: Plugins of tests/upstream/ every run loads: what the library's own
    #: test runner sets up that its pytest configuration does not.
    plugins: tuple[str, ...] = ()
    #: Seconds for one run of the whole suite on one loop.
    budget: float = 600.0
    #: The pytest option that takes the URL of a redis-server, when the
    #: suite needs one: the runner starts it (tests/services.py) for both
    #: loops' runs.
    redis_url_option: str = ""
    #: Whether pytest-asyncio runs: the suite's tests use it. It is off for
    #: the others, which never had it.
    pytest_asyncio: bool = False


SUITES = {
    s.name: s
    for s in (
        Suite(
            name="anyio",
            dist="anyio",
            version="4.16.0",
            sha256="59bb03251907983d1603d27c3087ddb1e93299ea2163adcdba37899a4fb12ffb",
            # The asyncio backend (plain and eager tasks) is what runs on
            # the loop under test; uvloop's and trio's parameters are not.
            # CI's containers resolve no IPv6 localhost: those parameters
            # fail in setup and leak sockets into later tests' warnings.
            select=("tests", "-k", "not uvloop and not trio and not ipv6 and not dualstack"),
        ),
        Suite(
            name="uvicorn",
            dist="uvicorn",
            version="0.54.0",
            sha256="a2e33cbfaa0306f8e6b0c13e0cb89d7d7a2da3e62b90c66e18c33d9807b28620",
            # Its addopts want pytest-xdist; its benchmarks, pytest-codspeed.
            select=("tests", "--ignore=tests/benchmarks"),
            options=("-o", "addopts="),
        ),
        Suite(
            name="aiohttp",
            dist="aiohttp",
            version="3.14.5",
            sha256="5558a7f5a05af9ecf744af91e5baefc436f93c9333e656c27ec253f9a6bbe178",
            # Its whole suite takes 14 minutes here, most of it parsers,
            # cookies and payloads that never touch a loop: these are the
            # modules that drive servers, clients, websockets, sendfile,
            # proxies, connectors, run_app and the test utilities on it.
            select=tuple(
                f"tests/test_{m}.py"
                for m in (
                    "client_functional",
                    "web_functional",
                    "client_ws_functional",
                    "web_websocket_functional",
                    "web_sendfile_functional",
                    "proxy_functional",
                    "connector",
                    "client_proto",
                    "base_protocol",
                    "streams",
                    "loop",
                    "resolver",
                    "run_app",
                    "web_runner",
                    "web_server",
                    "test_utils",
                    "pytest_plugin",
                )
            ),
            # Its addopts want pytest-xdist and pytest-cov.
            options=("-o", "addopts=", "-m", "not dev_mode and not autobahn and not internal"),
        ),
        Suite(
            name="tornado",
            dist="tornado",
            version="6.6.1",
            sha256="28e6311402af59c8b02e3fa0f5e7d8eb465b25081381803b127d97e6a4395d5a",
            # tornado.test.runtests' modules, collected by pytest.
            select=("tornado/test",),
            plugins=("tornado_runtests",),
        ),
        Suite(
            name="redis",
            dist="redis",
            version="8.1.0",
            sha256="6e1a19beef9225c83efd689c7e6b7da2d5215b1f42cd13b7fc3714d0a09c7b25",
            # redis.asyncio's tests against one redis-server. Left out, each
            # needing servers of its own: cluster, sentinel, the Redis Stack
            # modules (bloom, json, search, timeseries, vector sets), Entra
            # ID credentials, multi-database, scenario and observability
            # (OpenTelemetry) tests; and test_commands, a thousand commands'
            # replies through one client (the protocol's behaviour, not the
            # loop's: 40 s of CI per loop). Its tests/ is a package, so pytest
            # puts the sdist first on sys.path: the library under test is
            # the sdist's copy of the pinned version, pure Python as installed.
            select=tuple(
                f"tests/test_asyncio/test_{m}.py"
                for m in (
                    "client",
                    "command_parser",
                    "command_policies",
                    "connect",
                    "connection",
                    "connection_pool",
                    "cwe_404",
                    "encoding",
                    "hash",
                    "himport_integration",
                    "keyspace_notifications",
                    "lock",
                    "monitor",
                    "pipeline",
                    "pubsub",
                    "retry",
                    "scripting",
                    "sentinel_managed_connection",
                    "ssl",
                    "usage_counter",
                    "utils",
                )
            ),
            # Its addopts (-s) would interleave its output with pytest's.
            options=("-o", "addopts="),
            redis_url_option="--redis-url",
            pytest_asyncio=True,
        ),
        Suite(
            name="httpx",
            dist="httpx",
            version="0.28.1",
            sha256="75e98c5f16b0f35b567856f597f06ff2270a374470a5c2392242528e3e3e42fc",
            select=("tests", "-k", "not trio"),
        ),
    )
}
