"""The gateway in this process: httpx.ASGITransport with the app's lifespan running.

For tests where the network between caller and gateway is not the point. ASGITransport
hands the app the exact header list it was given (repeats, any bytes), which a real HTTP
client would not always send.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from gateway.app import create_app
from gateway.config import load_settings

HANG_GUARD = 10.0
CALLS_QUERY = "{ calls(size: 5) { id } }"


@asynccontextmanager
async def in_process(upstream_url: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway in front of `upstream_url`; keyword arguments are settings (pacing off)."""
    settings.setdefault("upstream_rate", 0)
    environ = {
        "GATEWAY_UPSTREAM_URL": upstream_url,
        **{f"GATEWAY_{k.upper()}": str(v) for k, v in settings.items()},
    }
    app = create_app(load_settings(environ))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://gateway.test"
        ) as client,
    ):
        yield client


def post_graphql(
    client: httpx.AsyncClient, headers: list[tuple[bytes, bytes]], query: str = CALLS_QUERY
) -> Any:
    """POST `query` with exactly these raw headers (plus the JSON content type)."""
    return client.post(
        "/graphql",
        json={"query": query},
        headers=[(b"content-type", b"application/json"), *headers],
    )


async def assert_healthy(client: httpx.AsyncClient) -> None:
    """The gateway still answers `/healthz` (a hang guard, not a timing assertion: the
    test machine's CPU is shared, so durations are not asserted)."""
    async with asyncio.timeout(HANG_GUARD):
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def error_codes(response: httpx.Response) -> list[str]:
    return [error["extensions"]["code"] for error in response.json().get("errors", [])]
