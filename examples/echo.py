"""A small asyncio program that knows nothing of oxloop: a TCP echo server
built on the loop's socket API, 50 concurrent clients, timers and a thread.

    python -m oxloop examples/echo.py      # on oxloop
    python examples/echo.py                # on asyncio's own loop
"""

import asyncio
import socket
import time

CLIENTS = 50
ROUNDS = 400


async def serve(loop, listener):
    async def handle(conn):
        with conn:
            while data := await loop.sock_recv(conn, 65536):
                await loop.sock_sendall(conn, data)

    tasks = set()
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        task = asyncio.create_task(handle(conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def client(loop, port, n):
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    with sock:
        for i in range(n):
            msg = f"message {i} ".encode() * 8
            await loop.sock_sendall(sock, msg)
            got = b""
            while len(got) < len(msg):
                got += await loop.sock_recv(sock, 65536)
            assert got == msg
    return n


async def main():
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    server = asyncio.create_task(serve(loop, listener))
    ticks = []
    timer = loop.call_later(0.01, ticks.append, "timer fired")
    start = time.perf_counter()
    done = await asyncio.gather(*(client(loop, port, ROUNDS) for _ in range(CLIENTS)))
    elapsed = time.perf_counter() - start
    in_thread = await loop.run_in_executor(None, lambda: "executor answered")
    server.cancel()
    listener.close()
    timer.cancel()
    kind = type(loop)
    print(f"loop: {kind.__module__}.{kind.__qualname__}")
    print(
        f"{sum(done)} echo round trips by {CLIENTS} clients in {elapsed:.2f}s "
        f"({sum(done) / elapsed:,.0f}/s); {ticks[0] if ticks else 'no timer'}; {in_thread}"
    )


if __name__ == "__main__":
    asyncio.run(main())
