"""Conformance: CPython's own test.test_asyncio, run on oxloop.

    python -m tests.cpython.runner [--modules a,b] [--json FILE] [--flavour proactor]

Each module runs in its own process (`child.py`) with a per-test timeout and a
per-module budget; a test that hangs or crashes its process is recorded and the
module goes on from the next test. Every failure must be listed, with its
reason, in `known_failures.txt`; any other failure makes the run fail.

Modules left out test asyncio's private classes, not the loop API:
  test_base_events      BaseEventLoop's internals (its _run_once, _scheduled, mocks of them)
  test_selector_events  BaseSelectorEventLoop and its Python transports
  test_proactor_events  the Windows proactor's Python transports
  test_windows_events, test_windows_utils   Windows only
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXCLUDED = {
    "test_base_events",
    "test_selector_events",
    "test_proactor_events",
    "test_windows_events",
    "test_windows_utils",
}
PER_TEST_TIMEOUT = 30.0
#: Which oxloop loop the tests get (`--flavour`): "selector" (epoll and the
#: user-selector backend) or "proactor" (`ProactorEventLoop`, io_uring).
FLAVOUR = "selector"
MODULE_BUDGET = 240.0


def all_modules() -> list[str]:
    import test.test_asyncio as pkg

    names = sorted(
        p.stem for p in Path(pkg.__file__).parent.glob("test_*.py") if p.stem not in EXCLUDED
    )
    return names


def version_tag() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def load_known(path: Path) -> list[tuple[str, set[str] | None, str]]:
    """Entries `<test id or glob> | <versions, or *> | <reason>`."""
    known = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 3 or not parts[2]:
            raise SystemExit(f"{path}:{n}: expected '<id> | <versions|*> | <reason>'")
        versions = None if parts[1] == "*" else set(parts[1].split(","))
        known.append((parts[0], versions, parts[2]))
    return known


def known_reason(test_id: str, known) -> str | None:
    tag = version_tag()
    for pattern, versions, reason in known:
        if (versions is None or tag in versions) and fnmatch.fnmatchcase(test_id, pattern):
            return reason
    return None


def run_module(module: str) -> dict[str, dict]:
    """Run one module to the end, restarting after hangs; id -> record."""
    results: dict[str, dict] = {}
    deadline = time.monotonic() + MODULE_BUDGET
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    with tempfile.TemporaryDirectory() as tmp:
        out, skip = Path(tmp, "out.jsonl"), Path(tmp, "skip.txt")
        while True:
            skip.write_text("\n".join(results))
            remaining = deadline - time.monotonic()
            cmd = [
                sys.executable,
                "-m",
                "tests.cpython.child",
                module,
                "--out",
                str(out),
                "--skip",
                str(skip),
                "--timeout",
                str(PER_TEST_TIMEOUT),
                "--flavour",
                FLAVOUR,
            ]
            try:
                proc = subprocess.run(
                    cmd,
                    cwd=tmp,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    timeout=max(remaining, 1),
                )
                output, timed_out = proc.stdout.decode(errors="replace"), False
            except subprocess.TimeoutExpired as e:
                output, timed_out = (e.stdout or b"").decode(errors="replace"), True
            started, done = None, False
            for line in out.read_text().splitlines() if out.exists() else []:
                rec = json.loads(line)
                if "start" in rec:
                    started = rec["start"]
                elif "done" in rec:
                    done = True
                else:
                    results[rec["id"]] = rec
                    started = None
            out.unlink(missing_ok=True)
            if done:
                return results
            if started is not None:
                why = "module budget exhausted" if timed_out else "hung or crashed the process"
                results[started] = {
                    "id": started,
                    "outcome": "fail",
                    "detail": f"{why}\n{output[-3000:]}",
                }
            elif not timed_out:
                results[f"{module}.<import>"] = {
                    "id": f"{module}.<import>",
                    "outcome": "fail",
                    "detail": output[-3000:],
                }
                return results
            if timed_out or time.monotonic() >= deadline:
                return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", help="comma-separated subset (default: all applicable)")
    parser.add_argument("--known", default=str(HERE / "known_failures.txt"))
    parser.add_argument("--json", help="write every test's outcome here")
    parser.add_argument("--verbose", action="store_true", help="print failure details")
    parser.add_argument("--flavour", choices=("selector", "proactor"), default="selector")
    opts = parser.parse_args()
    global FLAVOUR
    FLAVOUR = opts.flavour

    if FLAVOUR == "proactor":
        from oxloop._loop import uring_unavailable

        why = uring_unavailable()
        if why:
            print(f"conformance {version_tag()} (proactor): not run, {why}")
            return 0
    known = load_known(Path(opts.known))
    modules = opts.modules.split(",") if opts.modules else all_modules()
    print(f"CPython {sys.version.split()[0]}: test.test_asyncio on oxloop ({FLAVOUR} flavour)")
    print(f"{'module':<26}{'pass':>6}{'fail':>6}{'skip':>6}{'known':>7}{'new':>5}{'secs':>7}")
    totals = dict(passed=0, failed=0, skipped=0, known=0, new=0)
    new_failures, fixed, everything = [], [], {}
    for module in modules:
        t0 = time.monotonic()
        results = run_module(module)
        everything.update(results)
        row = dict(passed=0, failed=0, skipped=0, known=0, new=0)
        for test_id, rec in sorted(results.items()):
            reason = known_reason(test_id, known)
            if rec["outcome"] == "pass":
                row["passed"] += 1
                if reason and "*" not in test_id and any(p == test_id for p, _, _ in known):
                    fixed.append(test_id)
            elif rec["outcome"] == "skip":
                row["skipped"] += 1
            else:
                row["failed"] += 1
                if reason:
                    row["known"] += 1
                else:
                    row["new"] += 1
                    new_failures.append(rec)
        for k in totals:
            totals[k] += row[k]
        print(
            f"{module:<26}{row['passed']:>6}{row['failed']:>6}{row['skipped']:>6}"
            f"{row['known']:>7}{row['new']:>5}{time.monotonic() - t0:>7.1f}",
            flush=True,
        )
    print(
        f"{'total':<26}{totals['passed']:>6}{totals['failed']:>6}{totals['skipped']:>6}"
        f"{totals['known']:>7}{totals['new']:>5}"
    )
    if opts.json:
        Path(opts.json).write_text(json.dumps(everything, indent=1))
    for test_id in fixed:
        print(f"now passing, remove from known failures: {test_id}")
    for rec in new_failures:
        print(f"\nNEW FAILURE: {rec['id']}")
        if opts.verbose:
            print(rec.get("detail", ""))
    print(
        f"conformance {version_tag()} ({FLAVOUR}): {totals['passed']} passed, "
        f"{totals['failed']} failed ({totals['known']} known), {totals['skipped']} skipped"
    )
    return 1 if new_failures else 0


if __name__ == "__main__":
    sys.exit(main())
