"""Upstream libraries' own test suites, on asyncio's loop and on oxloop.

    python -m tests.upstream [SUITE ...]      (all of `suites.SUITES` by default)

Each suite's tests come from the library's sdist (downloaded once into
build/upstream/, checked against its pinned sha256). The suite runs twice
with pytest: on asyncio's loop, the reference, and with oxloop as asyncio's
default loop (`oxloop_under_test`); a suite that talks to a redis-server
gets one of its own for both (tests/services.py). A test counts when it
passes on asyncio's loop; it must pass on oxloop too unless
`known_failures.txt` lists it with its reason. A test failing only on oxloop
is run once more before it counts as a failure (the reference run gets no
such second chance either way).

Prints `SUITE <name> passed N of M` per suite and `TOTAL passed N of M`;
exits 1 on a failure not listed, or when a run does not finish in budget.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.services import redis_server

from .suites import SUITES, Suite

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE = ROOT / "build" / "upstream"
PER_TEST_TIMEOUT = 60


def fetched(request: urllib.request.Request | str, attempts: int = 3) -> bytes:
    """The body at `request`, tried again after a network error."""
    for attempt in range(attempts - 1):
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                return r.read()
        except OSError:
            time.sleep(2**attempt)
    with urllib.request.urlopen(request, timeout=120) as r:
        return r.read()


def sources(suite: Suite) -> Path:
    """The unpacked sdist of `suite`, downloaded and checked if not cached."""
    top = CACHE / f"{suite.dist}-{suite.version}"
    if top.is_dir():
        return top
    CACHE.mkdir(parents=True, exist_ok=True)
    # PyPI's simple index (PEP 691), the API package mirrors serve too.
    index = urllib.request.Request(
        f"https://pypi.org/simple/{suite.dist}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    files = json.loads(fetched(index))["files"]
    want = f"{suite.dist}-{suite.version}.tar.gz".lower().replace("-", "_")
    (sdist,) = [f for f in files if f["filename"].lower().replace("-", "_") == want]
    data = fetched(sdist["url"])
    digest = hashlib.sha256(data).hexdigest()
    if digest != suite.sha256:
        raise RuntimeError(f"{sdist['filename']}: sha256 {digest}, pinned {suite.sha256}")
    # Unpacked aside and renamed: an interrupted run leaves no half a tree.
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        archive = Path(tmp) / sdist["filename"]
        archive.write_bytes(data)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        (Path(tmp) / top.name).rename(top)
    return top


def load_known(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Entries `<suite> | <test id or glob> | <reason>`, by suite."""
    known: dict[str, list[tuple[str, str]]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"{path.name}:{n}: want <suite> | <test id> | <reason>")
        known.setdefault(parts[0], []).append((parts[1], parts[2]))
    return known


def node_id(top: Path, classname: str, name: str) -> str:
    """The pytest node id of a JUnit test case: its dotted `classname` is a
    module path (a file under `top`) followed by class names."""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        file = "/".join(parts[:cut]) + ".py"
        if (top / file).is_file():
            return "::".join([file, *parts[cut:], name])
    return "::".join([*parts, name])


def outcomes(junit: Path, top: Path) -> dict[str, str]:
    """pytest node id -> passed, failed or skipped, from a JUnit XML report."""
    results: dict[str, str] = {}
    for case in ET.parse(junit).iter("testcase"):
        node = node_id(top, case.get("classname", ""), case.get("name", ""))
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            results[node] = "failed"
        elif "skipped" in tags:
            results.setdefault(node, "skipped")
        else:
            results.setdefault(node, "passed")
    return results


def run(
    suite: Suite,
    top: Path,
    on_oxloop: bool,
    nodes: list[str] | None = None,
    redis_port: int | None = None,
):
    """Runs the suite (or only `nodes`) on one loop, against the
    redis-server on `redis_port` if it needs one: its outcomes, and whether
    it finished within the budget."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        args = [
            sys.executable,
            # Not the sdist's folder on sys.path: the installed library (with
            # its compiled parts) is the one under test.
            "-P",
            "-m",
            "pytest",
            *(nodes or suite.select),
            *suite.options,
            f"--rootdir={top}",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            f"--timeout={PER_TEST_TIMEOUT}",
        ]
        if not suite.pytest_asyncio:
            args += ["-p", "no:asyncio"]
        if suite.redis_url_option:
            args.append(f"{suite.redis_url_option}=redis://127.0.0.1:{redis_port}/0")
        for plugin in (*suite.plugins, *(["oxloop_under_test"] if on_oxloop else [])):
            args += ["-p", plugin]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.run(
                args,
                cwd=top,
                env=env,
                capture_output=True,
                text=True,
                timeout=suite.budget,
            )
        except subprocess.TimeoutExpired as timeout:
            output = [timeout.stdout, timeout.stderr]
            proc = None
        else:
            output = [proc.stdout, proc.stderr]
        kind = ("oxloop" if on_oxloop else "asyncio") + ("-again" if nodes else "")
        log = CACHE / f"{suite.name}-{kind}.log"
        log.write_text("".join(o.decode() if isinstance(o, bytes) else o or "" for o in output))
        if proc is None:
            return {}, False
        if nodes is None:
            if proc.returncode not in (0, 1):
                raise RuntimeError(f"pytest exited with {proc.returncode} (see {log})")
            made = re.search(r"^OXLOOP LOOPS (\d+)$", proc.stdout, re.MULTILINE)
            if on_oxloop and not (made and int(made[1]) > 0):
                raise RuntimeError(f"no test ran on an oxloop loop (see {log})")
        if not junit.exists():
            raise RuntimeError(f"pytest wrote no report (see {log})")
        return outcomes(junit, top), True


def check(suite: Suite, known: list[tuple[str, str]]) -> tuple[int, int, list[str]]:
    """Runs one suite on both loops: (passed on oxloop, passed on asyncio, problems)."""
    top = sources(suite)
    with redis_server() if suite.redis_url_option else contextlib.nullcontext() as port:
        reference, finished = run(suite, top, on_oxloop=False, redis_port=port)
        problems = [] if finished else [f"asyncio's run exceeded {suite.budget:.0f} s"]
        on_oxloop, finished = run(suite, top, on_oxloop=True, redis_port=port)
        if not finished:
            problems.append(f"oxloop's run exceeded {suite.budget:.0f} s")
        counted = sorted(n for n, o in reference.items() if o == "passed")
        if finished and not counted:
            problems.append("no test passed on asyncio's loop")
        failing = [n for n in counted if on_oxloop.get(n) != "passed"]
        if failing and finished:
            again, _ = run(suite, top, on_oxloop=True, nodes=failing, redis_port=port)
        flaky = [n for n in failing if again.get(n) == "passed"]
        for n in flaky:
            print(f"  {suite.name}: passed when run again: {n}")
        failing = [n for n in failing if n not in flaky]

    def matches(node: str, pattern: str) -> bool:
        # A parametrized id's brackets would be a character class to fnmatch.
        return node == pattern or fnmatch.fnmatchcase(node, pattern)

    problems += [
        f"fails on oxloop only: {n}"
        for n in failing
        if not any(matches(n, pattern) for pattern, _ in known)
    ]
    for pattern, _ in known:
        if not any(matches(n, pattern) for n in failing):
            print(f"  {suite.name}: listed but passing now (remove it): {pattern}")
    only_asyncio = sum(1 for o in reference.values() if o == "failed")
    print(
        f"SUITE {suite.name} passed {len(counted) - len(failing)} of {len(counted)}"
        f" ({only_asyncio} failing on asyncio's loop too are not counted)",
        flush=True,
    )
    return len(counted) - len(failing), len(counted), problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.upstream", description=__doc__)
    parser.add_argument("suites", nargs="*", choices=[[], *SUITES], metavar="SUITE")
    names = parser.parse_args(argv).suites or list(SUITES)
    known = load_known(HERE / "known_failures.txt")
    passed = total = 0
    problems = []
    for name in names:
        try:
            n, m, found = check(SUITES[name], known.get(name, []))
        except (RuntimeError, OSError) as exc:
            print(f"SUITE {name} did not run: {exc}", flush=True)
            n, m, found = 0, 0, [f"did not run: {exc}"]
        passed, total = passed + n, total + m
        problems += [f"{name}: {p}" for p in found]
    print(f"TOTAL passed {passed} of {total}")
    for p in problems:
        print(f"  {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
