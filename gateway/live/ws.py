"""GraphQL over WebSocket: the `graphql-transport-ws` subprotocol of the graphql-ws library.

The messages and close codes are those of graphql-ws's PROTOCOL.md, as its own server
sends them (Apollo Client's `GraphQLWsLink`, urql and GraphiQL use its client):

    client                          server
    connection_init {payload}   ->  connection_ack       (4429 if sent twice; 4408 if it
                                                          does not come within the timeout)
    ping {payload}              ->  pong {payload}
    subscribe {id, payload}     ->  next* then complete  (4401 before the ack; 4409 when
                                    or error              the id is already running)
    complete {id}               ->  (the operation stops, nothing more is sent for it)
    anything else               ->  close 4400
    a message over the bound    ->  close 1009 (RFC 6455 "message too big": graphql-ws
                                    defines no code of its own for it; its server leaves
                                    the bound to the `ws` library, which closes with 1009)

A subprotocol other than `graphql-transport-ws` is accepted and closed with 4406, as the
reference server does. A browser's `Origin` not in `GATEWAY_CORS_ORIGINS` (nor the
gateway's own) is refused before the handshake completes: a WebSocket is not subject to
CORS, so without this check any site a visitor opens could use the visitor's
connection (cross-site WebSocket hijacking).

Credentials: browsers cannot set headers on a WebSocket, so `connection_init`'s payload
may carry `Authorization` and `X-Catapult-User-Id` (names in any case); when it carries
neither, the upgrade request's headers count. Either way they are read by the one reader
of credentials, with the same rules (a field given twice is refused). Bad or missing
credentials do not close the socket: each operation answers UNAUTHENTICATED, coded, as
over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from gateway.credentials import credential_fields, raw_credential_headers
from gateway.errors import RateLimited
from gateway.graphql_errors import refusal
from gateway.live.operations import LiveRequest, Operations, Refused, Single, Stream

log = logging.getLogger("gateway.live")

SUBPROTOCOL = "graphql-transport-ws"
# Close codes (graphql-ws `CloseCode`).
BAD_REQUEST = 4400
UNAUTHORIZED = 4401
SUBPROTOCOL_NOT_ACCEPTABLE = 4406
INIT_TIMEOUT = 4408
SUBSCRIBER_EXISTS = 4409
TOO_MANY_INITS = 4429
INTERNAL_ERROR = 4500
# RFC 6455's, for a message larger than the endpoint will read.
MESSAGE_TOO_BIG = 1009
# An RFC 6455 close reason is at most 123 bytes.
_MAX_REASON = 123


class GraphQLWebSocket:
    """The ASGI WebSocket app on `/graphql`."""

    def __init__(
        self,
        operations: Operations,
        *,
        allowed_origins: Iterable[str],
        init_timeout: float,
        max_operations: int,
        max_message_bytes: int,
    ) -> None:
        self._operations = operations
        self._allowed_origins = frozenset(allowed_origins)
        self._init_timeout = init_timeout
        self._max_operations = max_operations
        # The server may bound frames too (uvicorn's `ws_max_size`, which the CLI sets to
        # the same value), but the gateway cannot count on the server it runs under.
        self._max_message_bytes = max_message_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        if not origin_allowed(scope, self._allowed_origins):
            # Before accepting: the handshake is answered 403 and no socket exists.
            await websocket.close(code=1008)
            return
        if SUBPROTOCOL not in scope.get("subprotocols", ()):
            await websocket.accept()
            await websocket.close(SUBPROTOCOL_NOT_ACCEPTABLE, "Subprotocol not acceptable")
            return
        await websocket.accept(subprotocol=SUBPROTOCOL)
        await _Connection(websocket, self).serve()


class _Close(Exception):
    """Ends the connection with a close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Connection:
    """One socket: its credentials, its operations by id."""

    def __init__(self, websocket: WebSocket, server: GraphQLWebSocket) -> None:
        self._ws = websocket
        self._server = server
        self._acknowledged = False
        self._credentials: list[tuple[bytes, bytes]] = raw_credential_headers(
            websocket.scope.get("headers") or ()
        )
        self._running: dict[str, asyncio.Task[None]] = {}
        self._send_lock = asyncio.Lock()

    async def serve(self) -> None:
        try:
            await self._serve()
        except _Close as close:
            await self._close(close.code, close.reason)
        except WebSocketDisconnect:
            pass
        finally:
            tasks = list(self._running.values())
            self._running.clear()
            for task in tasks:
                task.cancel()
            # Each task's cancellation closes its stream, which leaves its poller.
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self) -> None:
        try:
            async with asyncio.timeout(self._server._init_timeout):
                while not self._acknowledged:
                    await self._handle(await self._receive())
        except TimeoutError:
            raise _Close(INIT_TIMEOUT, "Connection initialisation timeout") from None
        while True:
            await self._handle(await self._receive())
            # Messages already buffered are received without a pause, and each subscribe
            # starts a task: a flood of them would queue all their starts ahead of every
            # other connection's work. Yielding here lets the others in between.
            await asyncio.sleep(0)

    async def _receive(self) -> str:
        message = await self._ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        if text is None:
            raise _Close(BAD_REQUEST, "Invalid message received")
        # A character is one to four bytes in UTF-8: encode only when the count of
        # characters cannot settle it.
        limit = self._server._max_message_bytes
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
            raise _Close(MESSAGE_TOO_BIG, "Message too big")
        return str(text)

    async def _handle(self, text: str) -> None:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise _Close(BAD_REQUEST, "Invalid message received") from None
        kind = _message_type(message)
        if kind == "connection_init":
            await self._init(text)
        elif kind == "ping":
            pong: dict[str, Any] = {"type": "pong"}
            if message.get("payload") is not None:
                pong["payload"] = message["payload"]
            await self._send(pong)
        elif kind == "pong":
            pass
        elif kind == "subscribe":
            await self._subscribe(message)
        elif kind == "complete":
            task = self._running.pop(message["id"], None)
            if task is not None:
                task.cancel()
        else:
            # Valid types that only a server sends (connection_ack, next, error).
            raise _Close(BAD_REQUEST, f"Invalid message received: a client does not send {kind}")

    async def _init(self, text: str) -> None:
        if self._acknowledged:
            raise _Close(TOO_MANY_INITS, "Too many initialisation requests")
        # Read again keeping every field in order: a JSON object may name a field twice,
        # and the credentials' reader must see both to refuse them.
        payload = json.loads(text, object_pairs_hook=_Fields).get("payload")
        if isinstance(payload, _Fields):
            fields = credential_fields(payload.pairs)
            if fields:
                self._credentials = fields
        self._acknowledged = True
        await self._send({"type": "connection_ack"})

    async def _subscribe(self, message: dict[str, Any]) -> None:
        if not self._acknowledged:
            raise _Close(UNAUTHORIZED, "Unauthorized")
        operation_id: str = message["id"]
        if operation_id in self._running:
            raise _Close(SUBSCRIBER_EXISTS, f"Subscriber for {operation_id} already exists"[
                :_MAX_REASON])  # fmt: skip
        if len(self._running) >= self._server._max_operations:
            limit = self._server._max_operations
            error = RateLimited(
                f"This connection already runs {limit} operations; complete one first.",
                retry_after=1,
                limit="GATEWAY_LIVE_MAX_PER_CONNECTION",
            )
            await self._send(
                {
                    "id": operation_id,
                    "type": "error",
                    "payload": [refusal(error)],
                }
            )
            return
        payload = message["payload"]
        request = LiveRequest(
            query=payload["query"],
            variables=payload.get("variables"),
            operation_name=payload.get("operationName"),
            extensions=payload.get("extensions"),
            credential_headers=self._credentials,
        )
        task = asyncio.get_running_loop().create_task(self._operate(operation_id, request))
        self._running[operation_id] = task

    async def _operate(self, operation_id: str, request: LiveRequest) -> None:
        try:
            # Each operation is a request of its own, with its own id and line.
            outcome = await self._server._operations.run(request, self._ws.scope, own_line=True)
            if isinstance(outcome, Refused):
                await self._send({"id": operation_id, "type": "error", "payload": outcome.errors})
                return
            if isinstance(outcome, Single):
                await self._send({"id": operation_id, "type": "next", "payload": outcome.payload})
            elif isinstance(outcome, Stream):
                prefix = b'{"id":' + orjson.dumps(operation_id) + b',"type":"next","payload":'
                try:
                    async for payload in outcome:
                        # The payload is serialized once for every subscriber of the same
                        # request (see gateway.live.operations): only the frame is ours.
                        await self._send_text(prefix + payload + b"}")
                finally:
                    await outcome.aclose()
            await self._send({"id": operation_id, "type": "complete"})
        except asyncio.CancelledError:
            raise
        except (WebSocketDisconnect, WebSocketDisconnected):
            # Gone while sending; or the connection's own receive saw the disconnect (the
            # client's close, or the server's 1012 at shutdown) before this operation was
            # cancelled, and Starlette refuses any further send: not a failure either way.
            pass
        except Exception:
            log.exception("a WebSocket operation failed")
            await self._close(INTERNAL_ERROR, "Internal server error")
        finally:
            if self._running.get(operation_id) is asyncio.current_task():
                del self._running[operation_id]

    async def _send(self, message: dict[str, Any]) -> None:
        await self._send_text(orjson.dumps(message))

    async def _send_text(self, message: bytes) -> None:
        # A text frame: graphql-ws's client parses text only (a browser hands it a binary
        # frame as a Blob).
        async with self._send_lock:
            await self._ws.send_text(message.decode())

    async def _close(self, code: int, reason: str) -> None:
        # Already closed by the client, or the transport is gone: nothing left to tell.
        with contextlib.suppress(RuntimeError, OSError):
            await self._ws.close(code, reason.encode()[:_MAX_REASON].decode(errors="ignore"))


class _Fields(dict[str, Any]):
    """A JSON object that also remembers its fields in order, repeats included."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


def _message_type(message: Any) -> str:
    """The type of a valid message (graphql-ws `validateMessage`), else close 4400."""
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise _Close(BAD_REQUEST, "Invalid message received")
    kind: str = message["type"]
    payload = message.get("payload")
    if kind in ("connection_init", "connection_ack", "ping", "pong"):
        if payload is not None and not isinstance(payload, dict):
            raise _Close(BAD_REQUEST, f'Invalid message received: "{kind}" payload')
        return kind
    if kind not in ("subscribe", "next", "error", "complete"):
        raise _Close(BAD_REQUEST, "Invalid message received: unknown type")
    operation_id = message.get("id")
    if not isinstance(operation_id, str) or not operation_id:
        raise _Close(BAD_REQUEST, f'Invalid message received: "{kind}" needs an id')
    if kind == "subscribe" and not (
        isinstance(payload, dict)
        and isinstance(payload.get("query"), str)
        and isinstance(payload.get("variables") or {}, dict)
        and isinstance(payload.get("operationName") or "", str)
        and isinstance(payload.get("extensions") or {}, dict)
    ):
        raise _Close(BAD_REQUEST, 'Invalid message received: "subscribe" payload')
    return kind


def origin_allowed(scope: Scope, allowed: frozenset[str]) -> bool:
    """Whether the handshake's `Origin` may open a socket: none, the gateway's own, or listed.

    Browsers always send `Origin` on a WebSocket handshake; other clients usually do not,
    and cannot be hijacked.
    """
    headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or ())
    origins = [value for name, value in headers if name.lower() == b"origin"]
    if not origins:
        return True
    if len(origins) > 1:
        return False
    scheme, _, host = origins[0].decode("latin-1").strip().lower().partition("://")
    origin = serialised_origin(scheme, host)
    if origin in allowed:
        return True
    hosts = [value for name, value in headers if name.lower() == b"host"]
    if len(hosts) != 1:
        return False
    scheme = "https" if scope.get("scheme") in ("wss", "https") else "http"
    return origin == serialised_origin(scheme, hosts[0].decode("latin-1").strip().lower())


def serialised_origin(scheme: str, host: str) -> str:
    """`scheme://host[:port]` as browsers send an origin (RFC 6454): no default port."""
    default = ":443" if scheme == "https" else ":80"
    if host.endswith(default):
        host = host[: -len(default)]
    return f"{scheme}://{host}"
