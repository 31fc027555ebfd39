"""A short-lived cache of whole GraphQL answers, in front of the endpoint.

A frontend that polls sends the same bytes again and again. When the same caller (the
same Authorization and user id) sends the same request within the cache TTL, the answer
is the bytes the gateway gave last time: no parsing, no execution, no upstream request.

Keys are a keyed BLAKE2b hash of everything the answer depends on: the caller's
credentials (the request's one verdict on them, `RequestFacts.credentials`, the same
every later layer gets), every value of the headers that shape the answer, and the exact
request (body or query string), so one caller's answer is never another's and no secret
is kept in a key. A request whose credentials are refused (missing, malformed, or a
credential header sent twice) neither reads nor fills the cache. Only successful
answers without errors (the endpoint says which) are kept, and never beyond the TTL of
the oldest upstream answer they were built from. `Cache-Control: no-cache` skips the
lookup (and refreshes the entry).
The store is this process's memory, bounded by entries and by bytes, least recently used
first out; an answer larger than `max_answer_bytes` is not kept, and expired answers are
freed when they expire, not when next asked for.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass, field

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.bounded import BoundedCache
from gateway.cache_control import wants_fresh
from gateway.credentials import Credentials
from gateway.endpoint import AnswerVerdict
from gateway.errors import Unauthenticated
from gateway.media import wants_event_stream
from gateway.observability.telemetry import Telemetry
from gateway.request_body import RequestBodyRefusal
from gateway.request_facts import request_facts

# Headers made afresh for every answer, never stored with an entry.
_FRESH_HEADERS = frozenset({b"content-length", b"x-request-id"})
_MAX_AGE = re.compile(rb"max-age=\d+")
_HEADERS_ALLOWANCE = 8 * 1024


@dataclass(frozen=True, slots=True)
class _Entry:
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    operation: str | None
    expires: float
    # Where `headers` holds a Cache-Control to age on every hit, if anywhere.
    aged: int | None = field(init=False)
    length: bytes = field(init=False)

    def __post_init__(self) -> None:
        names = [name.lower() for name, _ in self.headers]
        aged = names.index(b"cache-control") if b"cache-control" in names else None
        object.__setattr__(self, "aged", aged)
        object.__setattr__(self, "length", str(len(self.body)).encode())


class AnswerCacheMiddleware:
    """ASGI middleware serving repeated identical requests of one caller from memory."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        path: str,
        ttl: float,
        telemetry: Telemetry,
        max_body_bytes: int,
        max_entries: int,
        max_bytes: int,
        max_answer_bytes: int,
    ) -> None:
        self.app = app
        self.path = path
        self.ttl = ttl
        self.max_body_bytes = max_body_bytes
        self.max_answer_bytes = max_answer_bytes
        self._telemetry = telemetry
        self._key = secrets.token_bytes(32)
        # Expiry is wall-clock time: it follows the upstream answers' fetch times.
        self._entries: BoundedCache[bytes, _Entry] = BoundedCache(
            max_entries=max_entries,
            max_bytes=max_bytes,
            # The answer's headers are charged with it; they are a few hundred bytes.
            max_item_bytes=max_answer_bytes + _HEADERS_ALLOWANCE,
            timer=time.time,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != self.path
            or scope["method"] not in ("GET", "POST")
            or self.ttl <= 0
        ):
            await self.app(scope, receive, send)
            return
        # One `Headers` and one reading of Accept for every question below (the event
        # stream, the key): each `getlist` walks the raw header list again, a measurable
        # share of a hit (bench/instructions.py).
        headers = Headers(scope=scope)
        accept = headers.getlist("accept")
        # An event stream is neither kept nor copied while it lasts.
        if wants_event_stream(accept):
            await self.app(scope, receive, send)
            return
        facts = request_facts(scope)
        credentials = facts.credentials
        if isinstance(credentials, Unauthenticated):
            # Nothing to cache or serve: the endpoint answers UNAUTHENTICATED.
            await self.app(scope, receive, send)
            return
        body = b""
        if scope["method"] == "POST":
            read = await facts.read_body(scope, receive, self.max_body_bytes)
            if isinstance(read, RequestBodyRefusal):
                # Not a cacheable request: the endpoint answers the refusal.
                await self.app(scope, receive, send)
                return
            body = read
        key = self._key_for(scope, credentials, accept, headers.getlist("content-type"), body)
        if not wants_fresh(headers):
            entry = self._entries.get(key)
            if entry is not None:
                await self._answer(entry, scope, facts.request_id, send)
                return
        await self._fill(key, scope, body, receive, send)

    def state(self) -> dict[str, int]:
        """How many answers are kept and the bytes they take."""
        return {"entries": len(self._entries), "bytes": self._entries.size}

    def _key_for(
        self,
        scope: Scope,
        credentials: Credentials,
        accept: list[str],
        content_type: list[str],
        body: bytes,
    ) -> bytes:
        digest = hashlib.blake2b(key=self._key, digest_size=32)
        digest.update(credentials.authorization.encode() + b"\0" + credentials.user_id.encode())
        # Besides the credentials, what the endpoint reads to shape an answer. Every value
        # of a repeated header is part of the key, so no reading of the repeats can tell
        # two keys apart.
        for values in (accept, content_type):
            # Length-prefixed, so that no choice of values can run into the next part.
            digest.update(b"\0%d" % len(values))
            for value in values:
                encoded = value.encode("latin-1")
                digest.update(b"\0%d:" % len(encoded) + encoded)
        digest.update(
            b"\0" + scope["method"].encode() + b"\0" + scope["query_string"] + b"\0" + body
        )
        return digest.digest()

    async def _answer(self, entry: _Entry, scope: Scope, request_id: str, send: Send) -> None:
        with self._telemetry.cached_answer(Request(scope), request_id, entry.operation):
            response_headers = list(entry.headers)
            if entry.aged is not None:
                remaining = max(0, int(entry.expires - time.time()))
                response_headers[entry.aged] = _aged(response_headers[entry.aged], remaining)
            response_headers += [
                (b"content-length", entry.length),
                (b"x-request-id", request_id.encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": response_headers})
            await send({"type": "http.response.body", "body": entry.body})

    async def _fill(
        self, key: bytes, scope: Scope, body: bytes, receive: Receive, send: Send
    ) -> None:
        started = time.time()
        status = 0
        verdict: AnswerVerdict | None = None
        kept: tuple[tuple[bytes, bytes], ...] = ()
        chunks: list[bytes] = []

        size = 0

        async def capture(message: Message) -> None:
            nonlocal status, verdict, kept, size
            if message["type"] == "http.response.start":
                status = message["status"]
                verdict = message.get(AnswerVerdict.KEY)
                kept = tuple(
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() not in _FRESH_HEADERS
                )
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                size += len(chunk)
                # An answer too large to keep is not copied: it only passes through.
                if size <= self.max_answer_bytes:
                    chunks.append(chunk)
                else:
                    chunks.clear()
            await send(message)

        await self.app(scope, receive, capture)
        # The endpoint's verdict, not a guess from the bytes (a call's data or a warning
        # may well contain the word "errors"): an answer with errors is never kept.
        if (
            status != 200
            or size > self.max_answer_bytes
            or not isinstance(verdict, AnswerVerdict)
            or not verdict.cacheable
        ):
            return
        answer = b"".join(chunks)
        chunks.clear()
        fetched_at = started if verdict.fetched_at is None else verdict.fetched_at
        expires = fetched_at + self.ttl
        entry = _Entry(answer, kept, verdict.operation, expires)
        headers_size = sum(len(name) + len(value) for name, value in kept)
        self._entries.set(key, entry, size=len(answer) + headers_size, expires=expires)


def _aged(header: tuple[bytes, bytes], remaining: int) -> tuple[bytes, bytes]:
    # A browser may keep a GET answer for max-age more seconds: count from now, not from
    # when the entry was made, so the answer is never kept past its data's TTL.
    name, value = header
    return name, _MAX_AGE.sub(b"max-age=%d" % remaining, value)
