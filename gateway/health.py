"""Liveness and readiness."""

from __future__ import annotations

from typing import Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.opened import Held


async def healthz(request: Request) -> JSONResponse:
    """Alive: the process answers HTTP."""
    return JSONResponse({"status": "ok"})


class UpstreamClient(Protocol):
    """What readiness reports of the upstream client (`CatapultClient`)."""

    @property
    def base_url(self) -> str: ...


class UpstreamCheck(Protocol):
    """What readiness asks of the upstream service (`CatapultService.check`)."""

    async def check(self) -> dict[str, Any]: ...


class Readiness:
    """Ready: start-up has finished and the upstream client is open; cache state beside.

    Built with the client and service the app's lifespan opens at start-up (`Opened`).
    """

    def __init__(self, client: Held[UpstreamClient], upstream: Held[UpstreamCheck]) -> None:
        self._client = client
        self._upstream = upstream

    async def readyz(self, request: Request) -> Response:
        client = self._client.current
        if client is None:
            return _json({"status": "starting"}, 503)
        body: dict[str, Any] = {"status": "ready", "upstream": client.base_url}
        upstream = self._upstream.current
        if upstream is not None:
            # Reported, not judged: a cache outage slows the gateway but it still serves.
            body.update(await upstream.check())
        return _json(body, 200)


def _json(body: dict[str, Any], status: int) -> Response:
    # orjson writes a non-finite number as null where Starlette's JSONResponse raises
    # (a 500): a probe's answer must not depend on what a gauge holds.
    return Response(orjson.dumps(body, default=str), status, media_type="application/json")
