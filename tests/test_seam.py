"""The Rust<->Python seam declared in `oxloop._seam`: the real objects the
Rust cores are given have every member the Protocols name, with arities that
take the arguments Rust passes; and the Rust sources reach, by string, no
underscore-named Python member the Protocols leave out (nor do the Protocols
keep a name the Rust code no longer uses). A rename on either side fails here."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import socket
from pathlib import Path

import pytest
from oxloop import _seam
from oxloop._oxloop import Engine, TransportTable
from oxloop._pipes import ReadPipeTransport, WritePipeTransport
from oxloop._transport import SocketTransport

SRC = Path(__file__).resolve().parent.parent / "src"

# Underscore-named string literals in src/ that name no Python member of an
# object Rust is given, each with why.
RUST_OWN = {
    "_wait_done": "SockOp's own method (src/transport/sock.rs), looked up on itself "
    "as the done callback of its wait's future",
}

# The Rust cores run on oxloop's loops only (asyncio's loop is no reference here).
oxloop_flavours = pytest.mark.parametrize("flavour", ["oxloop", "oxloop-select"], indirect=True)


def members(proto: type) -> set[str]:
    """The names a Protocol declares, its bases' included."""
    names: set[str] = set()
    for cls in proto.__mro__:
        if cls is object or cls.__module__ == "typing":  # Protocol, Generic
            continue
        names |= set(vars(cls)) | set(inspect.get_annotations(cls))
    # What typing.Protocol itself puts in a Protocol's namespace.
    return {
        n
        for n in names
        if not n.startswith(("__", "_abc_")) and n not in ("_is_protocol", "_is_runtime_protocol")
    }


def arities(proto: type) -> dict[str, int]:
    """For each method a Protocol declares: how many positional arguments Rust passes."""
    result = {}
    for name in members(proto):
        func = inspect.getattr_static(proto, name, None)
        if inspect.isfunction(func):
            params = list(inspect.signature(func).parameters.values())[1:]  # self
            result[name] = sum(
                p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params
            )
    return result


def assert_satisfies(obj: object, proto: type) -> None:
    missing = sorted(n for n in members(proto) if not hasattr(obj, n))
    assert not missing, f"{type(obj).__qualname__} lacks {missing} of {proto.__name__}"
    assert isinstance(obj, proto)
    for name, nargs in arities(proto).items():
        method = getattr(obj, name)
        try:
            signature = inspect.signature(method)
        except ValueError:
            # Only the engine's raw C methods (src/engine/fastcall.rs) have none.
            assert name in vars(Engine), f"{type(obj).__qualname__}.{name} has no signature"
            continue
        try:
            signature.bind(*range(nargs))
        except TypeError as exc:
            pytest.fail(
                f"{type(obj).__qualname__}.{name}{signature} cannot take {nargs} arguments: {exc}"
            )


@pytest.mark.parametrize("proto", _seam.PROTOCOLS, ids=lambda p: p.__name__)
def test_each_protocol_declares_members_plain_objects_lack(proto):
    assert members(proto)
    assert not isinstance(object(), proto)


@oxloop_flavours
def test_the_loop_has_what_the_engine_calls(loop):
    assert_satisfies(loop, _seam.LoopSeam)
    # src/transport/sock.rs asks the table natively.
    assert type(loop._transports) is TransportTable
    assert loop._task_factory is None


class Closing(asyncio.Protocol):
    def __init__(self):
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc):
        self.lost.set_result(exc)


@oxloop_flavours
def test_stream_core_owners_have_what_the_core_calls(loop):
    async def main():
        a, b = socket.socketpair()
        r, w = os.pipe()
        sock_t, sock_p = await loop.create_connection(Closing, sock=a)
        read_t, read_p = await loop.connect_read_pipe(Closing, os.fdopen(r, "rb", 0))
        write_t, write_p = await loop.connect_write_pipe(Closing, os.fdopen(w, "wb", 0))
        try:
            assert type(sock_t) is SocketTransport
            assert type(read_t) is ReadPipeTransport
            assert type(write_t) is WritePipeTransport
            assert_satisfies(sock_t, _seam.SocketStreamCoreOwner)
            assert_satisfies(read_t, _seam.ReadingStreamCoreOwner)
            assert_satisfies(write_t, _seam.WritingStreamCoreOwner)
        finally:
            for transport in (sock_t, read_t, write_t):
                transport.close()
            await asyncio.gather(sock_p.lost, read_p.lost, write_p.lost)
            b.close()

    loop.run_until_complete(asyncio.wait_for(main(), 10))


@oxloop_flavours
def test_asyncio_has_the_private_state_oxloop_reads(loop):
    async def main():
        a, b = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=a)
        try:
            protocol = writer.transport.get_protocol()
            assert type(reader) is asyncio.StreamReader
            assert type(protocol) is asyncio.StreamReaderProtocol
            assert_satisfies(reader, _seam.StreamReaderState)
            assert type(reader._buffer) is bytearray
            assert_satisfies(protocol, _seam.StreamReaderProtocolState)
            assert protocol._stream_reader_wr() is reader
            assert_satisfies(loop.create_future(), _seam.FutureState)
        finally:
            writer.close()
            await writer.wait_closed()
            b.close()

    loop.run_until_complete(asyncio.wait_for(main(), 10))
    handle = loop.call_soon(print)
    timer = loop.call_later(60, print)
    assert type(handle) is asyncio.Handle
    assert_satisfies(handle, _seam.HandleState)
    assert_satisfies(timer, _seam.TimerHandleState)
    # What Python code hands the loop (src/engine/handle.rs reads it too).
    assert_satisfies(asyncio.TimerHandle(0.0, print, (), loop), _seam.TimerHandleState)
    handle.cancel()
    timer.cancel()
    # src/engine/handle.rs works on these at their slots' offsets.
    for proto, cls in (
        (_seam.HandleState, asyncio.Handle),
        (_seam.TimerHandleState, asyncio.TimerHandle),
    ):
        for name in members(proto):
            assert type(inspect.getattr_static(cls, name)).__name__ == "member_descriptor", name


# -- the Rust sources ------------------------------------------------------

UNDERSCORE_NAME = re.compile(r'"(_[A-Za-z][A-Za-z0-9_]*)"')
ANY_NAME = re.compile(r'"([A-Za-z_][A-Za-z0-9_]*)"')


def rust_sources() -> dict[str, str]:
    """Each src/**/*.rs file's text, by path, without its comment lines."""
    files = sorted(SRC.rglob("*.rs"))
    assert files, f"no Rust sources under {SRC}"
    return {
        str(path.relative_to(SRC.parent)): "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("//")
        )
        for path in files
    }


def literals(pattern: re.Pattern[str]) -> dict[str, set[str]]:
    """The string literals of the Rust sources matching `pattern`, with the files they are in."""
    found: dict[str, set[str]] = {}
    for path, text in rust_sources().items():
        for name in pattern.findall(text):
            found.setdefault(name, set()).add(path)
    return found


def declared() -> set[str]:
    return set().union(*map(members, _seam.PROTOCOLS))


def test_every_underscore_name_rust_reaches_is_declared_in_the_seam():
    undeclared = {
        name: sorted(paths)
        for name, paths in literals(UNDERSCORE_NAME).items()
        if name not in declared() and name not in RUST_OWN
    }
    assert not undeclared, (
        f"the Rust code reaches {undeclared} by name: declare each in python/oxloop/_seam.py"
    )


def test_every_name_the_seam_declares_is_still_reached_by_rust():
    used = literals(ANY_NAME)
    stale = sorted(name for name in declared() if name not in used)
    assert not stale, f"no Rust code names {stale} any more: drop them from python/oxloop/_seam.py"


def test_rust_own_names_are_defined_in_rust():
    text = "\n".join(rust_sources().values())
    for name in RUST_OWN:
        assert re.search(rf"\bfn {name}\(", text), f"{name} is no Rust method any more"


def test_the_rust_files_the_seam_names_exist():
    text = Path(_seam.__file__).read_text() + Path(__file__).read_text()
    named = set(re.findall(r"\bsrc/[\w/]+\.rs\b", text))
    assert named
    gone = sorted(path for path in named if not (SRC.parent / path).is_file())
    assert not gone, f"oxloop._seam or this test names Rust files that are gone: {gone}"
