"""GraphQL over Server-Sent Events: the graphql-sse protocol's distinct connections mode.

A request to `/graphql` whose `Accept` asks for `text/event-stream` (POST, or GET for what
the CSRF rules allow; the endpoint checks both as for any request) is answered with an
event stream, one operation per stream:

    event: next        data: <an execution result>      once per result
    event: complete    data:                            after the last one
    :                                                   a comment every keep-alive period

Errors found before execution (parsing, validation, limits) are a `next` event too, as the
protocol requires: a browser's EventSource would only see a failed connection in a 400.
The stream ends without `complete` when the server shuts down, so clients reconnect
(graphql-sse's client retries) rather than take the subscription as finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Scope

from gateway.credentials import raw_credential_headers
from gateway.draining import draining
from gateway.execution import Answer
from gateway.live.operations import LiveRequest, Operations, Refused, Single, Stream
from gateway.media import EVENT_STREAM

KEEPALIVE = b":\n\n"
COMPLETE = b"event: complete\ndata:\n\n"


class EventStreams:
    """Answers GraphQL requests with event streams."""

    def __init__(self, operations: Operations, *, keepalive: float) -> None:
        self._operations = operations
        self._keepalive = keepalive

    async def respond(
        self,
        request: Request,
        *,
        query: str | None,
        variables: dict[str, Any] | None,
        operation_name: str | None,
        extensions: dict[str, Any] | None,
    ) -> tuple[Response, Answer | None]:
        """The event stream answering `request`, and what its query or mutation came to
        (None for a subscription's), which the endpoint records: one HTTP request, one
        log line."""
        live = LiveRequest(
            query=query,
            variables=variables,
            operation_name=operation_name,
            extensions=extensions,
            credential_headers=raw_credential_headers(request.scope.get("headers") or ()),
        )
        outcome = await self._operations.run(live, request.scope, own_line=False)
        answer = outcome.answer if isinstance(outcome, Single | Refused) else None
        response = StreamingResponse(
            self._events(outcome, request.scope),
            media_type=EVENT_STREAM,
            headers={
                "cache-control": "no-cache",
                # Proxies that buffer (nginx) would hold the events back.
                "x-accel-buffering": "no",
            },
        )
        return response, answer

    async def _events(
        self, outcome: Single | Refused | Stream, scope: Scope
    ) -> AsyncIterator[bytes]:
        # Some browsers (Firefox, Safari) only report the stream open after a first chunk.
        yield KEEPALIVE
        if isinstance(outcome, Refused):
            yield _next({"errors": outcome.errors})
        elif isinstance(outcome, Single):
            yield _next(outcome.payload)
        else:
            async for chunk in self._stream(outcome, scope):
                if chunk is None:
                    # The server is shutting down: end without `complete`, so that the
                    # client reconnects (to another replica) instead of finishing.
                    return
                yield chunk
        yield COMPLETE

    async def _stream(self, stream: Stream, scope: Scope) -> AsyncIterator[bytes | None]:
        # Set when the server starts shutting down (`gateway.draining`): the stream ends
        # then rather than being cut off at the shutdown timeout.
        stopping = draining(scope)
        stop = None if stopping is None else asyncio.ensure_future(stopping.wait())
        pending: asyncio.Future[bytes] | None = None
        try:
            while True:
                if pending is None:
                    # Kept across keep-alive periods: cancelling a step of graphql-core's
                    # stream would end the stream.
                    pending = asyncio.ensure_future(stream.__anext__())
                waiting: set[asyncio.Future[Any]] = {pending} if stop is None else {pending, stop}
                done, _ = await asyncio.wait(
                    waiting, timeout=self._keepalive, return_when=asyncio.FIRST_COMPLETED
                )
                if stop is not None and stop in done:
                    yield None
                    return
                if pending not in done:
                    yield KEEPALIVE
                    continue
                try:
                    payload = pending.result()
                except StopAsyncIteration:
                    return
                finally:
                    pending = None
                # Serialized once for every subscriber of the same request.
                yield _event(payload)
        finally:
            left = [future for future in (pending, stop) if future is not None]
            for future in left:
                future.cancel()
            # The step must have stopped before the stream can be closed.
            await asyncio.gather(*left, return_exceptions=True)
            await stream.aclose()


def _next(payload: dict[str, Any]) -> bytes:
    return _event(orjson.dumps(payload))


def _event(data: bytes) -> bytes:
    # orjson never writes a line break (it escapes them in strings): one `data` line.
    return b"event: next\ndata: " + data + b"\n\n"
