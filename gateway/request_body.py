"""The one reader of a request body: bounded, decoded.

Both layers that need the body (the answer cache, to key on it, and the endpoint, to
parse it) ask the request's facts (`RequestFacts.read_body`), which call `read_body` the
first time and keep the outcome, so the second gets the same bytes, or the same refusal,
without reading again.

- A declared `Content-Length` above the limit is refused (413) before a byte is read:
  the client may be waiting for `100 Continue`, or sending 100 MB.
- `Content-Encoding: gzip` (or `x-gzip`, any number of members) and `deflate` (zlib or
  raw) are decoded as they arrive, and bytes after the end are refused (400); the
  limit applies to the decoded bytes, so a small bomb is refused (413) after inflating
  at most the limit. Other encodings are refused (415).
- A client that goes away, or whose body is cut off by the server's body deadline,
  ends the read with 408 (the answer is not delivered: the connection is gone).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from starlette.types import Receive, Scope


@dataclass(frozen=True, slots=True)
class RequestBodyRefusal:
    """Why a request body is not accepted: an HTTP status, a message, close or not."""

    status: int
    message: str
    # Whether the rest of the request may still be on its way (the connection cannot
    # be reused then, so the answer asks for it to be closed).
    unread: bool = False


class _Decoder:
    """Decodes one content coding incrementally, never producing more than asked for.

    gzip is a series of members (RFC 1952 section 2.2): each member ends, the next
    begins, and anything after the last that is not a member is refused. deflate is
    accepted zlib-wrapped (RFC 1950, what RFC 9110 names) or raw (RFC 1951, what some
    clients send), told apart by the zlib header's check bits, as browsers do; nothing
    may follow its end.
    """

    def __init__(self, coding: str) -> None:
        self._gzip = coding != "deflate"
        self._inflater: zlib._Decompress | None = None
        # Input not yet given to an inflater (deflate's first byte alone).
        self._pending = b""
        self._ended = False

    @property
    def finished(self) -> bool:
        """Whether the input so far is a whole body: its last stream ended, nothing after."""
        return self._ended and self._inflater is None and not self._pending

    def feed(self, data: bytes, room: int) -> list[bytes]:
        """Decoded pieces of `data`, at most `room + 1` bytes in all; `zlib.error` if invalid."""
        pieces: list[bytes] = []
        produced = 0
        data, self._pending = self._pending + data, b""
        while data:
            if self._inflater is None:
                if self._ended and not self._gzip:
                    raise zlib.error("data after the end of the deflate stream")
                if not self._gzip and len(data) < 2:
                    self._pending = data
                    break
                self._inflater = zlib.decompressobj(self._wbits(data))
            inflater = self._inflater
            piece = inflater.decompress(data, room - produced + 1)
            if piece:
                pieces.append(piece)
                produced += len(piece)
                if produced > room:
                    break
            if inflater.eof:
                # Whatever follows must be another gzip member (its header is checked
                # by the next inflater) or, for deflate, nothing at all.
                self._inflater, self._ended = None, True
                data = inflater.unused_data
            else:
                data = inflater.unconsumed_tail
        return pieces

    def _wbits(self, start: bytes) -> int:
        if self._gzip:
            return 16 + zlib.MAX_WBITS
        cmf, flg = start[0], start[1]
        zlib_wrapped = cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0
        return zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes | RequestBodyRefusal:
    """The request's decoded body, at most `limit` bytes, or why it is refused."""
    headers = _headers(scope)
    too_large = RequestBodyRefusal(
        413, f"The request body is larger than {limit} bytes.", unread=True
    )
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        return too_large
    codings = [c.strip().lower() for c in headers.get(b"content-encoding", b"").split(b",")]
    codings = [c for c in codings if c and c != b"identity"]
    if len(codings) > 1 or (codings and codings[0].decode("latin-1") not in _CODINGS):
        return RequestBodyRefusal(
            415, "Send the request body unencoded, or encoded with gzip or deflate.", unread=True
        )
    decoder = _Decoder(codings[0].decode()) if codings else None
    return await _read(receive, limit, too_large, decoder)


_CODINGS = frozenset({"gzip", "x-gzip", "deflate"})
_GONE = RequestBodyRefusal(408, "The request body did not arrive.")
_UNDECODABLE = RequestBodyRefusal(
    400, "The request body is not valid for its Content-Encoding.", unread=True
)


async def _read(
    receive: Receive, limit: int, too_large: RequestBodyRefusal, decoder: _Decoder | None
) -> bytes | RequestBodyRefusal:
    """The body as it arrives, decoded by `decoder` (None: sent unencoded)."""
    chunks: list[bytes] = []
    size = 0  # decoded
    received = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return _GONE
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            # The encoded body alone is over the limit; the decoded one would be too.
            return too_large
        if decoder is None:
            chunks.append(chunk)
        else:
            try:
                # Never inflate more than one byte past the limit, whatever the input holds.
                for decoded in decoder.feed(chunk, limit - size):
                    size += len(decoded)
                    if size > limit:
                        return too_large
                    chunks.append(decoded)
            except zlib.error:
                return _UNDECODABLE
        if not message.get("more_body", False):
            if decoder is not None and not decoder.finished:
                return _UNDECODABLE
            return b"".join(chunks)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    # The server refuses nothing about repeated headers here; the first of each counts,
    # as with the endpoint's own header reads (starlette's `Headers.get`).
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        found.setdefault(name.lower(), value)
    return found


def refused_headers(refusal: RequestBodyRefusal) -> dict[str, str]:
    """Headers for the answer to a refused body: close if part of it may be unread."""
    return {"connection": "close"} if refusal.unread else {}
