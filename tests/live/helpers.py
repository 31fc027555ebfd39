"""Shared pieces of the live tests: a gateway in this process, call records, a socket.

`InProcessSocket` speaks ASGI's WebSocket messages to the app directly (no network, no
test client thread): the network is not what these tests check.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import orjson
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp, Message

from gateway.app import create_app
from gateway.config import load_settings
from gateway.credentials import Credentials
from gateway.sandbox import ACCOUNTS, credential_headers
from tests.servers import serve

DEMO, SECOND = ACCOUNTS[0], ACCOUNTS[1]
CALLS_PATH = f"/v1/users/{DEMO.user_id}/calls/"
SUBSCRIPTION = "subscription { callsUpdated(size: 3) { calls { id state } changed removed at } }"
# Long enough for a loaded machine, short enough that a hang fails the test quickly.
WAIT = 10.0


def call(call_id: str, state: str = "active") -> dict[str, Any]:
    """One upstream call record."""
    return {
        "id": call_id,
        "direction": "out",
        "from": "+19195551212",
        "to": "+19195551313",
        "state": state,
        "startTime": "2024-05-01T10:00:00.000Z",
    }


def settings_environ(upstream_url: str, **settings: Any) -> dict[str, str]:
    settings.setdefault("upstream_rate", 0)
    settings.setdefault("live_interval", 0.05)
    return {
        "GATEWAY_UPSTREAM_URL": upstream_url,
        **{f"GATEWAY_{k.upper()}": str(v) for k, v in settings.items()},
    }


@asynccontextmanager
async def live_app(upstream_url: str, **settings: Any) -> AsyncIterator[ASGIApp]:
    """The gateway in this process, lifespan running, polling every 50 ms by default."""
    app = create_app(load_settings(settings_environ(upstream_url, **settings)))
    async with LifespanManager(app) as manager:
        yield manager.app


@contextmanager
def live_server(upstream_url: str, **settings: Any) -> Iterator[str]:
    """The gateway under uvicorn on a loopback port (streams need a real server: httpx's
    ASGI transport reads a whole answer before it returns); yields its base URL."""
    with serve(create_app(load_settings(settings_environ(upstream_url, **settings)))) as url:
        yield url


def init_payload(account: Any = DEMO) -> dict[str, str]:
    """The `connection_init` payload carrying an account's credentials."""
    return credential_headers(account)


class Closed(Exception):
    """The server closed the socket (after the handshake)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed {code} {reason}")
        self.code = code
        self.reason = reason


class Denied(Exception):
    """The server refused the handshake (an HTTP 403)."""


class InProcessSocket:
    """A WebSocket client of an ASGI app, in the same event loop."""

    def __init__(self, app: ASGIApp, to_app: asyncio.Queue[Message]) -> None:
        self._app = app
        self._to_app = to_app
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self.subprotocol: str | None = None

    async def send_text(self, text: str) -> None:
        await self._to_app.put({"type": "websocket.receive", "text": text})

    async def send_json(self, message: Any) -> None:
        await self.send_text(orjson.dumps(message).decode())

    async def receive_json(self, wait: float = WAIT) -> Any:
        async with asyncio.timeout(wait):
            message = await self._from_app.get()
        if message["type"] == "websocket.close":
            raise Closed(message.get("code", 1000), message.get("reason") or "")
        return orjson.loads(message.get("text") or message.get("bytes") or b"")

    async def closed(self, wait: float = WAIT) -> tuple[int, str]:
        """The close code and reason the server sends next (after any other messages)."""
        while True:
            try:
                await self.receive_json(wait)
            except Closed as close:
                return close.code, close.reason

    async def nothing_for(self, seconds: float) -> bool:
        """True if the server sends nothing for `seconds`."""
        try:
            async with asyncio.timeout(seconds):
                await self._from_app.get()
        except TimeoutError:
            return True
        return False


@asynccontextmanager
async def websocket(
    app: ASGIApp,
    *,
    subprotocols: Sequence[str] = ("graphql-transport-ws",),
    headers: dict[str, str] | None = None,
) -> AsyncIterator[InProcessSocket]:
    """Open a socket to /graphql; raises `Denied` if the handshake is refused."""
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    socket = InProcessSocket(app, to_app)
    raw_headers = [(b"host", b"gateway.test")] + [
        (name.lower().encode(), value.encode()) for name, value in (headers or {}).items()
    ]
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "root_path": "",
        "query_string": b"",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("gateway.test", 80),
        "subprotocols": list(subprotocols),
    }
    await to_app.put({"type": "websocket.connect"})
    task = asyncio.ensure_future(app(scope, to_app.get, socket._from_app.put))
    try:
        async with asyncio.timeout(WAIT):
            first = await socket._from_app.get()
        if first["type"] == "websocket.close":
            raise Denied(first)
        assert first["type"] == "websocket.accept", first
        socket.subprotocol = first.get("subprotocol")
        yield socket
    finally:
        await to_app.put({"type": "websocket.disconnect", "code": 1000})
        try:
            async with asyncio.timeout(WAIT):
                await task
        finally:
            task.cancel()


async def initialised(socket: InProcessSocket, payload: dict[str, Any] | None = None) -> None:
    await socket.send_json(
        {"type": "connection_init", "payload": init_payload() if payload is None else payload}
    )
    assert await socket.receive_json() == {"type": "connection_ack"}


def identity_of(credentials: Credentials) -> str:
    """The hub's count key: the whole credentials, as the service's keyed hash covers them."""
    return f"{credentials.authorization}|{credentials.user_id}"
