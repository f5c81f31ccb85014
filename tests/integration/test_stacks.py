"""Real asyncio software on oxloop, against asyncio's own loop as the
reference: aiohttp, uvicorn + httpx, websockets, redis-py with a real
redis-server, asyncpg with a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os

import pytest

pytestmark = pytest.mark.parametrize("flavour", ["oxloop", "asyncio"], indirect=True)


def assert_loop(flavour: str) -> None:
    module = type(asyncio.get_running_loop()).__module__
    assert module.startswith("oxloop") == (flavour == "oxloop")


def test_aiohttp_server_and_client(loop, flavour):
    import aiohttp
    from aiohttp import WSMsgType, web

    async def hello(request):
        return web.Response(text="hello")

    async def upload(request):
        body = await request.read()
        return web.json_response({"size": len(body)})

    async def stream(request):
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(100):
            await response.write(b"chunk %d\n" % i)
        await response.write_eof()
        return response

    async def ws(request):
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for msg in socket:
            if msg.type == WSMsgType.TEXT:
                await socket.send_str("echo " + msg.data)
        return socket

    async def main():
        assert_loop(flavour)
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.add_routes(
            [
                web.get("/", hello),
                web.post("/upload", upload),
                web.get("/stream", stream),
                web.get("/ws", ws),
            ]
        )
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/") as r:
                assert (r.status, await r.text()) == (200, "hello")
            payload = os.urandom(1024 * 1024)
            async with session.post(base + "/upload", data=payload) as r:
                assert (await r.json())["size"] == len(payload)
            async with session.get(base + "/stream") as r:
                lines = [line async for line in r.content]
                assert lines[0] == b"chunk 0\n" and len(lines) == 100
            async with session.ws_connect(base + "/ws") as socket:
                for i in range(10):
                    await socket.send_str(f"m{i}")
                    assert (await socket.receive_str()) == f"echo m{i}"
        await runner.cleanup()

    loop.run_until_complete(main())


async def asgi_app(scope, receive, send):
    if scope["type"] == "http":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"got %d" % len(body)})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            await send({"type": "websocket.send", "text": "echo " + message["text"]})


def test_uvicorn_with_httpx_and_websocket_upgrade(loop, flavour):
    import httpx
    import uvicorn
    import websockets

    async def main():
        assert_loop(flavour)
        config = uvicorn.Config(
            asgi_app,
            host="127.0.0.1",
            port=0,
            loop="none",
            lifespan="off",
            log_level="warning",
            ws="auto",
        )
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient() as client:
            for _ in range(20):
                r = await client.get(f"http://127.0.0.1:{port}/")
                assert r.text == "got 0"
            r = await client.post(f"http://127.0.0.1:{port}/", content=b"x" * 100_000)
            assert r.text == "got 100000"
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            for i in range(10):
                await ws.send(f"hi {i}")
                assert await ws.recv() == f"echo hi {i}"
        server.should_exit = True
        await task

    loop.run_until_complete(main())


LOOP_APP = """
import asyncio


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = type(asyncio.get_running_loop()).__module__.encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


def test_uvicorn_command_line_takes_the_loop_factory(flavour, tmp_path):
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    (tmp_path / "loop_app.py").write_text(LOOP_APP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = {"oxloop": "oxloop:new_event_loop", "asyncio": "asyncio"}[flavour]
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "loop_app:app", "--loop", loop, "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with direct.open(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.terminate()
                    _, err = server.communicate(timeout=10)
                    raise AssertionError(err.decode()) from None
                time.sleep(0.05)
    finally:
        server.terminate()
        server.wait(10)
    assert body.startswith("oxloop") == (flavour == "oxloop")


def test_websockets_library(loop, flavour):
    import websockets

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        assert_loop(flavour)
        async with websockets.serve(echo, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            async with websockets.connect(f"ws://127.0.0.1:{port}") as ws:
                for size in (1, 1000, 1_000_000):
                    message = os.urandom(size)
                    await ws.send(message)
                    assert await ws.recv() == message

    loop.run_until_complete(main())


def test_redis_commands_pipelines_and_pubsub(loop, flavour, redis_port):
    import redis.asyncio as redis

    async def main():
        assert_loop(flavour)
        client = redis.Redis(host="127.0.0.1", port=redis_port)
        key = f"oxloop-{flavour}"
        await client.set(key, b"value")
        assert await client.get(key) == b"value"
        async with client.pipeline(transaction=True) as pipe:
            for _ in range(100):
                pipe.incr(key + ":n")
            results = await pipe.execute()
        assert results[-1] - results[0] == 99
        pubsub = client.pubsub()
        await pubsub.subscribe(key + ":chan")
        assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
        await client.publish(key + ":chan", b"news")
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message["data"] == b"news"
        await pubsub.aclose()
        await client.delete(key, key + ":n")
        await client.aclose()

    loop.run_until_complete(main())


def test_asyncpg_copy_and_transactions(loop, flavour, postgres_port):
    import asyncpg

    async def main():
        assert_loop(flavour)
        conn = await asyncpg.connect(host="127.0.0.1", port=postgres_port, user="postgres")
        table = f"items_{flavour}"
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text)")
        rows = [(i, f"name {i}") for i in range(10_000)]
        await conn.copy_records_to_table(table, records=rows)
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 10_000
        async with conn.transaction():
            await conn.execute(f"DELETE FROM {table} WHERE id < 5000")
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute(f"DELETE FROM {table}")
                raise RuntimeError("roll back")
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 5_000
        rows = await conn.fetch(f"SELECT id, name FROM {table} WHERE id = $1", 7777)
        assert [tuple(r) for r in rows] == [(7777, "name 7777")]
        await conn.execute(f"DROP TABLE {table}")
        await conn.close()

    loop.run_until_complete(main())
