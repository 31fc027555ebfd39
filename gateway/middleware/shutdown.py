"""A request cut short by the server's shutdown gets a coded answer, not a bare 500.

On SIGTERM uvicorn lets in-flight requests run for `GATEWAY_SHUTDOWN_TIMEOUT` seconds,
then cancels them; a cancelled application that has not started its answer would get
uvicorn's own plain-text `500 Internal Server Error`, with no code and no request id.
This middleware, outermost, answers such a request `503` with `Retry-After: 1` and a
GraphQL-shaped error (code `INTERNAL_SERVER_ERROR`, the request id, a message saying
the gateway stopped), then lets the connection close.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import STOPPED_CODE
from gateway.request_facts import request_facts

log = logging.getLogger("gateway.shutdown")


class ShutdownMiddleware:
    """Turns the cancellation of an unanswered HTTP request into a coded 503."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Made here, outermost, before any layer copies the scope: every layer then reads
        # these facts, and the endpoint logs the request under the id this layer would
        # answer with.
        request_facts(scope)
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if started or task is None:
                # Half an answer is out: only closing the connection is left (the server
                # does that when the cancellation reaches it).
                raise
            # The cancellation ends here, answered: nothing above this layer is left to
            # cancel, and the answer still has to be written.
            task.uncancel()
            await _answer_stopped(scope, send)


async def _answer_stopped(scope: Scope, send: Send) -> None:
    # The id the endpoint logs this request under, so that the answer and the request's
    # log line agree.
    request_id = request_facts(scope).request_id
    log.warning(
        "request cut short by shutdown",
        extra={"request_id": request_id, "method": scope["method"], "status": 503},
    )
    body = orjson.dumps(
        {
            "errors": [
                {
                    "message": "The gateway stopped before this request finished "
                    f"(request id {request_id}); send it again.",
                    "extensions": {"code": STOPPED_CODE, "requestId": request_id},
                }
            ]
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
                (b"x-request-id", request_id.encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
