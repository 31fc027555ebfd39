"""The gateway in this process: httpx.ASGITransport with the app's lifespan running.

For tests where the network between caller and gateway is not the point (most of them:
starting uvicorn on a loopback port costs a thread, a socket and ~0.2 s per gateway).
ASGITransport hands the app the exact header list it was given (repeats, any bytes),
which a real HTTP client would not always send.

`in_process` is for async tests; `serve_in_process` gives sync tests an httpx transport
into an app whose lifespan runs on an event loop in a thread of its own, so the same
`httpx.Client` code works against either kind of gateway.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp

from gateway.app import create_app
from gateway.config import load_settings

HANG_GUARD = 10.0
CALLS_QUERY = "{ calls(size: 5) { id } }"
BASE_URL = "http://gateway.test"
# How long a sync request or the lifespan may take before the test fails instead of
# hanging: generous, the machine's CPU is shared (not a timing assertion).
_SYNC_GUARD = 120.0


def gateway_environ(upstream_url: str, settings: Mapping[str, Any]) -> dict[str, str]:
    """The environment a gateway reads: the upstream and `settings` as GATEWAY_* values."""
    return {
        "GATEWAY_UPSTREAM_URL": upstream_url,
        **{f"GATEWAY_{k.upper()}": str(v) for k, v in settings.items()},
    }


@asynccontextmanager
async def in_process(upstream_url: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway in front of `upstream_url`; keyword arguments are settings (pacing off)."""
    settings.setdefault("upstream_rate", 0)
    app = create_app(load_settings(gateway_environ(upstream_url, settings)))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://gateway.test"
        ) as client,
    ):
        yield client


class _LoopTransport(httpx.BaseTransport):
    """A sync transport that hands each request to an ASGITransport on another thread's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: httpx.ASGITransport) -> None:
        self._loop = loop
        self._transport = transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # Read here: after `read()` the request's stream is a ByteStream, which the
        # ASGITransport can read asynchronously too.
        request.read()

        async def send() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            response = await self._transport.handle_async_request(request)
            try:
                return response.status_code, response.headers.raw, await response.aread()
            finally:
                await response.aclose()

        future = asyncio.run_coroutine_threadsafe(send(), self._loop)
        status, headers, content = future.result(timeout=_SYNC_GUARD)
        return httpx.Response(status, headers=headers, content=content, request=request)


@contextmanager
def serve_in_process(app: ASGIApp) -> Iterator[httpx.BaseTransport]:
    """Runs `app`'s lifespan on an event loop in a thread; yields a sync transport into it.

    Every request runs on that one loop, as under a server, so whatever the lifespan
    made (the upstream client, Redis connections) is used from the loop it belongs to.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="in-process-gateway", daemon=True)
    thread.start()
    ready: Future[_LoopTransport] = Future()
    stop = asyncio.Event()

    async def hold() -> None:
        # One task enters and leaves the lifespan: asgi-lifespan's task group needs that.
        try:
            async with LifespanManager(
                app, startup_timeout=_SYNC_GUARD, shutdown_timeout=_SYNC_GUARD
            ) as manager:
                ready.set_result(_LoopTransport(loop, httpx.ASGITransport(app=manager.app)))
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    held = asyncio.run_coroutine_threadsafe(hold(), loop)
    try:
        yield ready.result(timeout=_SYNC_GUARD)
    finally:
        loop.call_soon_threadsafe(stop.set)
        try:
            held.result(timeout=_SYNC_GUARD)
            asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(
                timeout=_SYNC_GUARD
            )
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_SYNC_GUARD)
            loop.close()


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


async def healthz_within_a_second_while(client: httpx.AsyncClient, work: Any) -> Any:
    """Run `work` while asking `/healthz` every 50 ms; each must answer within 1 s."""
    task = asyncio.ensure_future(work)
    slowest = 0.0
    loop = asyncio.get_running_loop()
    while not task.done():
        # Timed from before the pause: a loop blocked by the work delays the wake-up.
        began = loop.time()
        await asyncio.sleep(0.05)
        async with asyncio.timeout(5):
            assert (await client.get("/healthz")).status_code == 200
        slowest = max(slowest, loop.time() - began)
    assert slowest < 1.0, f"/healthz took {slowest:.2f} s"
    return await task


def error_codes(response: httpx.Response) -> list[str]:
    return [error["extensions"]["code"] for error in response.json().get("errors", [])]
