"""Live transports under the real server: uvicorn with the guarded protocol, over loopback.

The in-process tests check the protocols; these check what only a real socket shows: the
server's read deadlines and connection counts across a WebSocket upgrade, and how the
transports end when the server shuts down.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.app import create_app
from gateway.config import load_settings
from gateway.server import ConnectionLimits, GatewayConfig
from tests.fakes import FakeUpstream
from tests.live.helpers import CALLS_PATH, SUBSCRIPTION, WAIT, call, init_payload, settings_environ
from tests.servers import serve

PROTOCOL = "graphql-transport-ws"


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/graphql"


async def init(ws: Any) -> None:
    await ws.send(orjson.dumps({"type": "connection_init", "payload": init_payload()}).decode())
    assert orjson.loads(await ws.recv()) == {"type": "connection_ack"}


def test_a_socket_outlives_the_http_read_deadlines(fake_upstream: FakeUpstream) -> None:
    fake_upstream.answer(CALLS_PATH, [call("c-1")])
    limits = ConnectionLimits(header_timeout=0.3, body_timeout=0.3, keepalive_timeout=0.3)
    app = create_app(load_settings(settings_environ(fake_upstream.url)))

    async def body(url: str) -> None:
        async with connect(ws_url(url), subprotocols=[PROTOCOL]) as ws:  # type: ignore[list-item]
            await init(ws)
            await asyncio.sleep(1.0)
            await ws.send(orjson.dumps({"type": "ping"}).decode())
            async with asyncio.timeout(WAIT):
                assert orjson.loads(await ws.recv()) == {"type": "pong"}

    with serve(app, limits=limits) as url:
        asyncio.run(body(url))


def test_closed_sockets_give_their_connection_back(fake_upstream: FakeUpstream) -> None:
    limits = ConnectionLimits(max_connections=60, max_connections_per_client=3)
    app = create_app(load_settings(settings_environ(fake_upstream.url)))

    async def body(url: str) -> None:
        for _ in range(6):
            async with connect(ws_url(url), subprotocols=[PROTOCOL]) as ws:  # type: ignore[list-item]
                await init(ws)
        # The client's three slots are free again: HTTP still gets in.
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(3):
                assert (await client.get("/healthz")).status_code == 200

    with serve(app, limits=limits) as url:
        asyncio.run(body(url))


def test_a_foreign_origin_gets_403_from_the_real_server(fake_upstream: FakeUpstream) -> None:
    app = create_app(load_settings(settings_environ(fake_upstream.url)))

    async def body(url: str) -> None:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                ws_url(url),
                subprotocols=[PROTOCOL],  # type: ignore[list-item]
                origin="https://evil.example",  # type: ignore[arg-type]
            ):
                pass
        assert refused.value.response.status_code == 403

    with serve(app) as url:
        asyncio.run(body(url))


async def closed_code(ws: Any) -> int | None:
    """The close code the server sends, after whatever messages come first."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as closed:
        return None if closed.rcvd is None else closed.rcvd.code


@contextmanager
def stoppable(app: Any, shutdown_timeout: int) -> Iterator[tuple[str, uvicorn.Server]]:
    """Like `serve`, but the test decides when the server starts shutting down."""
    config = GatewayConfig(
        app,
        limits=ConnectionLimits(),
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=shutdown_timeout,
    )
    server = uvicorn.Server(config)
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def test_shutdown_ends_sockets_and_streams_cleanly_and_in_time(fake_upstream: FakeUpstream) -> None:
    fake_upstream.answer(CALLS_PATH, [call("c-1")])
    # A shutdown timeout far longer than the test waits: the transports end on their own.
    app = create_app(load_settings(settings_environ(fake_upstream.url, shutdown_timeout=30)))
    subscribe = orjson.dumps({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION}})

    async def body(url: str, server: uvicorn.Server) -> None:
        async with (
            connect(ws_url(url), subprotocols=[PROTOCOL]) as ws,  # type: ignore[list-item]
            httpx.AsyncClient(base_url=url, timeout=WAIT) as client,
            client.stream(
                "POST",
                "/graphql",
                json={"query": SUBSCRIPTION},
                headers={"accept": "text/event-stream", **init_payload()},
            ) as stream,
        ):
            await init(ws)
            await ws.send(subscribe.decode())
            assert orjson.loads(await ws.recv())["type"] == "next"
            chunks = stream.aiter_bytes()
            seen = b""
            while b"event: next" not in seen:
                seen += await anext(chunks)
            started = time.monotonic()
            server.should_exit = True
            async with asyncio.timeout(WAIT):
                code = await closed_code(ws)
            assert code == 1012
            # The stream ends with its last chunk (no reset), and without `complete`: the
            # client should reconnect, not take the subscription as finished.
            async with asyncio.timeout(WAIT):
                rest = b"".join([chunk async for chunk in chunks])
            assert b"event: complete" not in rest
            assert time.monotonic() - started < WAIT

    with stoppable(app, shutdown_timeout=30) as (url, server):
        asyncio.run(body(url, server))
