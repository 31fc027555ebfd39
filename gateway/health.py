"""Liveness and readiness."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse


async def healthz(request: Request) -> JSONResponse:
    """Alive: the process answers HTTP."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Ready: start-up has finished and the upstream client is open; cache state beside."""
    client = getattr(request.state, "catapult", None)
    if client is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    body = {"status": "ready", "upstream": client.base_url}
    upstream = getattr(request.state, "upstream", None)
    if upstream is not None:
        # Reported, not judged: a cache outage slows the gateway but it still serves.
        body.update(await upstream.check())
    return JSONResponse(body)
