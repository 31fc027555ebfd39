"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


async def healthz(request: Request) -> JSONResponse:
    """Alive: the process answers HTTP."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready: start-up has finished and the upstream client is open; cache state beside."""
    client = getattr(request.state, "catapult", None)
    if client is None:
        return _json({"status": "starting"}, 503)
    body: dict[str, Any] = {"status": "ready", "upstream": client.base_url}
    upstream = getattr(request.state, "upstream", None)
    if upstream is not None:
        # Reported, not judged: a cache outage slows the gateway but it still serves.
        body.update(await upstream.check())
    return _json(body, 200)


def _json(body: dict[str, Any], status: int) -> Response:
    # orjson writes a non-finite number as null where Starlette's JSONResponse raises
    # (a 500): a probe's answer must not depend on what a gauge holds.
    return Response(orjson.dumps(body, default=str), status, media_type="application/json")
