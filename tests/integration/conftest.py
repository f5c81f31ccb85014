"""Real services for the integration tests, started on 127.0.0.1 with free
ports in temporary folders and stopped afterwards: redis-server and
PostgreSQL (Debian's packages; `scripts/install-services` installs them)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def find_binary(name: str, patterns: tuple[str, ...] = ()) -> str:
    path = shutil.which(name) or next(
        (p for pattern in patterns for p in sorted(glob.glob(pattern))), None
    )
    if path is None:
        raise RuntimeError(f"{name} is not installed: run scripts/install-services")
    return path


@contextlib.contextmanager
def serving(cmd: list[str], port: int):
    """Runs a service until the block ends, once its port accepts connections."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def redis_port():
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [find_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", tmp]  # fmt: skip
        with serving(cmd, port):
            yield port


@pytest.fixture(scope="session")
def postgres_port():
    bindir = os.path.dirname(find_binary("initdb", ("/usr/lib/postgresql/*/bin/initdb",)))
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="oxloop-pg-")
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(tmp, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(tmp, "data")
    subprocess.run(
        [*as_user, f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    cmd = [*as_user, f"{bindir}/postgres", "-D", data, "-p", str(port), "-k", tmp,
           "-h", "127.0.0.1", "-c", "fsync=off"]  # fmt: skip
    try:
        with serving(cmd, port):
            yield port
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
