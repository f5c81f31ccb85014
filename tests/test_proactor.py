"""`oxloop.ProactorEventLoop` where io_uring cannot be had: an `OSError`
saying why and that the selector loop works, never a crash. The behaviour
tests run on the proactor flavour through conftest's `oxloop-uring`."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest
from oxloop import _oxloop

linux_native = pytest.mark.skipif(
    sys.platform != "linux" or _oxloop.PORTABLE,
    reason="io_uring is Linux's, and the portable build has no io_uring backend",
)

#: A child that denies `io_uring_setup` with the given errno by a seccomp
#: filter (as Docker's default profile does) before it imports oxloop.
CHILD = textwrap.dedent(
    """
    import ctypes, platform, struct, sys

    NR_IO_URING_SETUP = 425  # the same on every 64-bit Linux architecture
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4

    def insn(code, jt, jf, k):
        return struct.pack("HBBI", code, jt, jf, k)

    program = b"".join([
        insn(0x20, 0, 0, 0),                          # A = syscall number
        insn(0x15, 0, 1, NR_IO_URING_SETUP),          # if A == setup
        insn(0x06, 0, 0, 0x00050000 | int(sys.argv[1])),  # return errno
        insn(0x06, 0, 0, 0x7FFF0000),                 # else allow
    ])
    filt = ctypes.create_string_buffer(program)
    fprog = struct.pack("HxxxxxxP", len(program) // 8, ctypes.addressof(filt))
    fprog = ctypes.create_string_buffer(fprog)
    assert platform.machine() in ("x86_64", "aarch64"), platform.machine()
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) == 0, ctypes.get_errno()

    import asyncio, oxloop

    try:
        oxloop.ProactorEventLoop()
    except OSError as e:
        print(type(e).__name__, e.errno)
        print(e.strerror)
    else:
        print("no error")
    async def main():
        return 42
    loop = oxloop.new_event_loop()
    print(loop.run_until_complete(main()))
    loop.close()
    """
)


@linux_native
@pytest.mark.parametrize(
    ("denied", "kind", "why"),
    [
        (errno.EPERM, "PermissionError", "seccomp filter"),
        (errno.ENOSYS, "OSError", "seccomp filter"),
    ],
)
def test_denied_io_uring_is_an_oserror_naming_why(denied, kind, why):
    if denied == errno.EPERM and _sysctl_disables_io_uring():
        why = "io_uring_disabled"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(denied)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    first, message, result = child.stdout.splitlines()
    assert first == f"{kind} {denied}"
    assert message.startswith("io_uring is not available: ")
    assert why in message
    assert "the selector loop (oxloop.new_event_loop()) works here" in message
    assert result == "42"


def _sysctl_disables_io_uring() -> bool:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return f.read().strip() != "0"
    except OSError:
        return False


@linux_native
def test_closing_the_loop_lets_go_of_its_ring():
    import oxloop

    before = _rings()
    try:
        loop = oxloop.ProactorEventLoop()
    except OSError as e:
        pytest.skip(f"io_uring cannot be had here: {e}")
    assert type(loop).__module__ == "oxloop"
    (ring,) = _rings() - before
    loop.close()
    assert ring not in _rings()


@pytest.mark.skipif(not _oxloop.PORTABLE, reason="the portable build's answer")
def test_the_portable_build_says_io_uring_is_linux_s():
    import oxloop

    with pytest.raises(OSError, match="io_uring is not available: it is Linux's") as e:
        oxloop.ProactorEventLoop()
    assert e.value.errno == errno.ENOSYS


def _rings() -> set[int]:
    """The process's open io_uring fds."""
    rings = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[io_uring]":
                rings.add(int(name))
        except OSError:
            continue
    return rings
