"""The one reader of a request body: bounded, decoded, read at most once per request.

Both layers that need the body (the answer cache, to key on it, and the endpoint, to
parse it) call `read_body`; the first call reads and the outcome is kept in the ASGI
scope, so the second gets the same bytes, or the same refusal, without reading again.

- A declared `Content-Length` above the limit is refused (413) before a byte is read:
  the client may be waiting for `100 Continue`, or sending 100 MB.
- `Content-Encoding: gzip` (or `x-gzip`) and `deflate` are decoded as they arrive; the
  limit applies to the decoded bytes, so a small bomb is refused (413) after inflating
  at most the limit. Other encodings are refused (415).
- A client that goes away, or whose body is cut off by the server's body deadline,
  ends the read with 408 (the answer is not delivered: the connection is gone).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import ClassVar

from starlette.types import Receive, Scope

SCOPE_KEY = "gateway.request_body"


@dataclass(frozen=True, slots=True)
class BodyRefused:
    """Why a request body is not accepted: an HTTP status, a message, close or not."""

    status: int
    message: str
    # Whether the rest of the request may still be on its way (the connection cannot
    # be reused then, so the answer asks for it to be closed).
    unread: bool = False


@dataclass(frozen=True, slots=True)
class _Decoder:
    """Decodes one content coding incrementally, never producing more than asked for."""

    WBITS: ClassVar[dict[str, int]] = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}
    inflater: zlib._Decompress

    @classmethod
    def for_coding(cls, coding: str) -> _Decoder | None:
        if coding == "deflate":
            # RFC 9110's deflate is the zlib format (RFC 1950).
            return cls(zlib.decompressobj(zlib.MAX_WBITS))
        return cls(zlib.decompressobj(cls.WBITS[coding]))


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes | BodyRefused:
    """The request's decoded body, at most `limit` bytes, or why it is refused."""
    kept = scope.get(SCOPE_KEY)
    if isinstance(kept, bytes | BodyRefused):
        return kept
    outcome = await _read(scope, receive, limit)
    scope[SCOPE_KEY] = outcome
    return outcome


async def _read(scope: Scope, receive: Receive, limit: int) -> bytes | BodyRefused:
    headers = _headers(scope)
    too_large = BodyRefused(413, f"The request body is larger than {limit} bytes.", unread=True)
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        return too_large
    codings = [c.strip().lower() for c in headers.get(b"content-encoding", b"").split(b",")]
    codings = [c for c in codings if c and c != b"identity"]
    if len(codings) > 1 or (codings and codings[0].decode("latin-1") not in _CODINGS):
        return BodyRefused(
            415, "Send the request body unencoded, or encoded with gzip or deflate.", unread=True
        )
    decoder = _Decoder.for_coding(codings[0].decode()) if codings else None
    if decoder is None:
        return await _read_plain(receive, limit, too_large)
    return await _read_decoded(receive, limit, too_large, decoder)


_CODINGS = frozenset({"gzip", "x-gzip", "deflate"})
_GONE = BodyRefused(408, "The request body did not arrive.")


async def _read_plain(receive: Receive, limit: int, too_large: BodyRefused) -> bytes | BodyRefused:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return _GONE
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _read_decoded(
    receive: Receive, limit: int, too_large: BodyRefused, decoder: _Decoder
) -> bytes | BodyRefused:
    inflater = decoder.inflater
    chunks: list[bytes] = []
    size = 0
    received = 0
    bad = BodyRefused(400, "The request body is not valid for its Content-Encoding.", unread=True)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return _GONE
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            # The encoded body alone is over the limit; the decoded one would be too.
            return too_large
        try:
            # Never inflate more than one byte past the limit, whatever the input holds.
            decoded = inflater.decompress(chunk, limit - size + 1)
            while decoded:
                size += len(decoded)
                if size > limit:
                    return too_large
                chunks.append(decoded)
                if not inflater.unconsumed_tail:
                    break
                decoded = inflater.decompress(inflater.unconsumed_tail, limit - size + 1)
        except zlib.error:
            return bad
        if not message.get("more_body", False):
            if not inflater.eof:
                return bad
            return b"".join(chunks)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    # The server refuses nothing about repeated headers here; the first of each counts,
    # as with the endpoint's own header reads (starlette's `Headers.get`).
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        found.setdefault(name.lower(), value)
    return found


def refused_headers(refusal: BodyRefused) -> dict[str, str]:
    """Headers for the answer to a refused body: close if part of it may be unread."""
    return {"connection": "close"} if refusal.unread else {}
