"""A short-lived cache of whole GraphQL answers, in front of the endpoint.

A frontend that polls sends the same bytes again and again. When the same caller (the
same Authorization and user id) sends the same request within the cache TTL, the answer
is the bytes the gateway gave last time: no parsing, no execution, no upstream request.

Keys are a keyed BLAKE2b hash of everything the answer depends on: the credential
headers, the media type asked for, and the exact request (body or query string), so one
caller's answer is never another's and no secret is kept in a key. Only successful
answers without errors are kept, and never beyond the TTL of the oldest upstream answer
they were built from. `Cache-Control: no-cache` skips the lookup (and refreshes the entry).
The store is this process's memory, bounded, least recently used first out.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.endpoint import request_id_from

log = logging.getLogger("gateway.request")

# The key in the ASGI scope under which the endpoint's loader reports when each upstream
# answer it used was fetched (wall-clock seconds), so an entry expires with its data.
FETCHED_AT = "gateway.fetched_at"

_KEY_HEADERS = (b"authorization", b"x-catapult-user-id", b"accept", b"content-type")


@dataclass(frozen=True, slots=True)
class _Entry:
    body: bytes
    content_type: bytes
    expires: float


class ResponseCache:
    """ASGI wrapper serving repeated identical requests of one caller from memory."""

    def __init__(
        self, app: ASGIApp, *, ttl: float, max_entries: int = 1024, max_body_bytes: int = 1 << 20
    ) -> None:
        self.app = app
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_body_bytes = max_body_bytes
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.hits = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "POST") or self.ttl <= 0:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        body = b""
        if scope["method"] == "POST":
            body, complete = await _read(receive, self.max_body_bytes)
            if not complete:
                # Too large to be a cacheable request: the endpoint answers 413.
                await self.app(scope, _replay(body, receive, more=True), send)
                return
        key = self._key_for(scope, headers, body)
        no_cache = b"no-cache" in headers.get(b"cache-control", b"").lower()
        if not no_cache:
            entry = self._entries.get(key)
            if entry is not None and entry.expires > time.time():
                self._entries.move_to_end(key)
                self.hits += 1
                request_id = request_id_from(headers.get(b"x-request-id", b"").decode("latin-1"))
                await _send_cached(entry, request_id, send)
                log.info(
                    "graphql request",
                    extra={
                        "request_id": request_id,
                        "method": scope["method"],
                        "status": 200,
                        "cache": "response-hit",
                    },
                )
                return
        await self._fill(key, scope, body, receive, send)

    def _key_for(self, scope: Scope, headers: dict[bytes, bytes], body: bytes) -> bytes:
        digest = hashlib.blake2b(key=self._key, digest_size=32)
        for name in _KEY_HEADERS:
            digest.update(headers.get(name, b"") + b"\0")
        digest.update(scope["method"].encode() + b"\0" + scope["query_string"] + b"\0" + body)
        return digest.digest()

    async def _fill(
        self, key: bytes, scope: Scope, body: bytes, receive: Receive, send: Send
    ) -> None:
        fetched_at: list[float] = []
        started = time.time()
        status = 0
        content_type = b""
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = message["status"]
                content_type = dict(message.get("headers", ())).get(b"content-type", b"")
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        await self.app({**scope, FETCHED_AT: fetched_at}, _replay(body, receive), capture)
        answer = b"".join(chunks)
        # An answer with errors is never kept: errors are never cached.
        if status == 200 and b'"errors"' not in answer:
            expires = min(fetched_at, default=started) + self.ttl
            self._entries[key] = _Entry(answer, content_type, expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


async def _read(receive: Receive, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            return b"".join(chunks), False
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, receive: Receive, *, more: bool = False) -> Receive:
    """A `receive` that first hands out the body already read, then the real stream."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay


async def _send_cached(entry: _Entry, request_id: str, send: Send) -> None:
    headers = [
        (b"content-type", entry.content_type),
        (b"content-length", str(len(entry.body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": entry.body})
