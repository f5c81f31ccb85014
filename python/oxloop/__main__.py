"""`python -m oxloop SCRIPT [ARGS...]` or `python -m oxloop -m MODULE [ARGS...]`:
run an unmodified asyncio program with oxloop as its event loop.
`python -m oxloop bench`: a quick benchmark of oxloop against asyncio (and uvloop)."""

from __future__ import annotations

import os
import runpy
import sys

from ._policy import install

USAGE = (
    "usage: python -m oxloop [OPTIONS] SCRIPT [ARGS...]"
    " | python -m oxloop [OPTIONS] -m MODULE [ARGS...] | python -m oxloop bench [--help]\n"
    "  --health               record loop health figures; print them at exit (and on SIGUSR1)\n"
    "  --health-report FILE   record them, sampled each second, into an HTML report at exit"
)


def watch_health(summary: bool, report: str | None) -> None:
    """Turns health figures on for every loop made from now on. With
    `summary`, prints them to stderr when the program ends and when SIGUSR1
    arrives; with `report`, samples them each second and writes the HTML
    report to that path when the program ends. Neither runs in a forked
    child, and child processes are not watched."""
    import atexit
    import signal

    from . import _health

    pid = os.getpid()

    def at_exit(func, *args):
        atexit.register(lambda: os.getpid() == pid and func(*args))

    _health.watch()
    if summary:
        at_exit(_health.report, sys.stderr)
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, lambda *_: _health.report(sys.stderr))
    if report is not None:
        from ._report import Recorder

        at_exit(Recorder().write, os.path.abspath(report))


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv == ["-m"]:
        print(USAGE, file=sys.stderr if not argv or argv == ["-m"] else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "bench":
        from ._bench import main as bench

        return bench(argv[1:])
    summary, report = False, None
    while argv and argv[0].startswith("--health"):
        option, _, value = argv[0].partition("=")
        if option == "--health" and not value:
            summary, argv = True, argv[1:]
        elif option == "--health-report" and (value or len(argv) > 1):
            report, argv = (value, argv[1:]) if value else (argv[1], argv[2:])
        else:
            break
    if not argv or argv[0].startswith("--health"):
        print(USAGE, file=sys.stderr)
        return 2
    if summary or report is not None:
        watch_health(summary, report)
    install()
    if argv[0] == "-m":
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
