"""Real services for the tests that need them: redis-server and PostgreSQL
(Debian's packages; `scripts/install-services` installs them), each started
on 127.0.0.1 with a free port in a temporary folder and stopped when its
block ends. The integration tests and the upstream suites share them."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Returns once `port` accepts connections; fails if `proc` exits first."""
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
    """The path of the program `name`: on PATH, or the first match of `patterns`."""
    path = shutil.which(name) or next(
        (p for pattern in patterns for p in sorted(glob.glob(pattern))), None
    )
    if path is None:
        raise RuntimeError(f"{name} is not installed: run scripts/install-services")
    return path


@contextlib.contextmanager
def serving(cmd: list[str], port: int) -> Iterator[int]:
    """Runs a service until the block ends, once its port accepts connections."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    """A redis-server that keeps nothing on disk; yields its port."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [find_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", tmp]  # fmt: skip
        with serving(cmd, port):
            yield port


@contextlib.contextmanager
def postgres_server() -> Iterator[int]:
    """A PostgreSQL cluster of its own (user postgres, trust auth); yields its port."""
    bindir = os.path.dirname(find_binary("initdb", ("/usr/lib/postgresql/*/bin/initdb",)))
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="oxloop-pg-")
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(tmp, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(tmp, "data")
    try:
        subprocess.run(
            [*as_user, f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        cmd = [*as_user, f"{bindir}/postgres", "-D", data, "-p", str(port), "-k", tmp,
               "-h", "127.0.0.1", "-c", "fsync=off"]  # fmt: skip
        with serving(cmd, port):
            yield port
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
