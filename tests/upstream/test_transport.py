"""The aiohttp-backed httpx transport: exact URLs, no shared cookies, httpx's errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.upstream.transport import AiohttpTransport
from tests.servers import free_port, serve

LIMITS = httpx.Limits(max_connections=4, keepalive_expiry=5)


async def echo(request: Request) -> Response:
    response = JSONResponse(
        {
            "raw_query": request.scope["query_string"].decode(),
            "cookie": request.headers.get("cookie"),
            "authorization": request.headers.get("authorization"),
        }
    )
    response.set_cookie("session", "first-callers-session")
    return response


async def slow(request: Request) -> Response:
    await asyncio.sleep(2)
    return Response(b"late")


class Drop:
    """Promises a body, sends part of it and stops: the connection breaks mid-answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"100")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app = Starlette(routes=[Route("/echo", echo), Route("/slow", slow), Route("/drop", Drop())])
    with serve(app) as url:
        yield url


def send(url: str, **extensions: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = AiohttpTransport(LIMITS, max_body_bytes=1 << 20)
        try:
            request = httpx.Request(
                "GET", url, headers={"Authorization": "Basic dDpz"}, extensions=extensions
            )
            response = await transport.handle_async_request(request)
            # As the client does: a transport answers with a stream, closed even when
            # reading it failed (the connection is then not reused).
            try:
                await response.aread()
            finally:
                await response.aclose()
            return response
        finally:
            await transport.aclose()

    return asyncio.run(go())


def test_the_query_string_reaches_the_server_byte_for_byte(server: str) -> None:
    query = "from=sip%3Aalice%40example.com&to=%2B19195551212&x=a%2Fb%3Fc"

    response = send(f"{server}/echo?{query}")

    assert response.status_code == 200
    assert response.json()["raw_query"] == query
    assert response.json()["authorization"] == "Basic dDpz"


def test_no_cookie_is_carried_from_one_request_to_the_next(server: str) -> None:
    async def twice() -> list[httpx.Response]:
        transport = AiohttpTransport(LIMITS, max_body_bytes=1 << 20)
        try:
            answers = []
            for _ in range(2):
                request = httpx.Request("GET", f"{server}/echo")
                answers.append(await transport.handle_async_request(request))
                await answers[-1].aread()
            return answers
        finally:
            await transport.aclose()

    first, second = asyncio.run(twice())

    assert "session=" in first.headers["set-cookie"]
    assert second.json()["cookie"] is None


@pytest.mark.parametrize(
    ("path", "extensions", "error"),
    [
        pytest.param("/slow", {"timeout": {"read": 0.2}}, httpx.ReadTimeout, id="read-timeout"),
        pytest.param("/drop", {}, httpx.RemoteProtocolError, id="dropped-mid-body"),
    ],
)
def test_failures_become_httpx_errors(
    server: str, path: str, extensions: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        send(f"{server}{path}", **extensions)


def test_a_refused_connection_is_a_connect_error() -> None:
    with pytest.raises(httpx.ConnectError):
        send(f"http://127.0.0.1:{free_port()}/echo")
