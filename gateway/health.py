"""Liveness and readiness."""

from __future__ import annotations

from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


async def healthz(request: Request) -> JSONResponse:
    """Alive: the process answers HTTP."""
    return JSONResponse({"status": "ok"})


class UpstreamClient(Protocol):
    """What readiness reports of the upstream client (`CatapultClient`)."""

    @property
    def base_url(self) -> str: ...


class UpstreamCheck(Protocol):
    """What readiness asks of the upstream service (`CatapultService`)."""

    @property
    def is_open(self) -> bool: ...

    async def check(self) -> dict[str, Any]: ...


class Readiness:
    """Ready: start-up has finished (the app's lifespan opened the upstream service);
    cache state beside."""

    def __init__(self, client: UpstreamClient, upstream: UpstreamCheck) -> None:
        self._client = client
        self._upstream = upstream

    async def readyz(self, request: Request) -> Response:
        if not self._upstream.is_open:
            return _json({"status": "starting"}, 503)
        body: dict[str, Any] = {"status": "ready", "upstream": self._client.base_url}
        # Reported, not judged: a cache outage slows the gateway but it still serves.
        body.update(await self._upstream.check())
        return _json(body, 200)


def _json(body: dict[str, Any], status: int) -> Response:
    # orjson writes a non-finite number as null where Starlette's JSONResponse raises
    # (a 500): a probe's answer must not depend on what a gauge holds.
    return Response(orjson.dumps(body, default=str), status, media_type="application/json")
