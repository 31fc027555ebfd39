"""The one reader of a request body: each encoding it decodes, each refusal.

That it is read once per request, whichever layer asks, is tests/test_request_facts.py's.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from typing import Any

import pytest
from starlette.types import Message

from gateway.request_body import RequestBodyRefusal, read_body, refused_headers

BODY = b'{"query": "{ calls { id } }"}'
LIMIT = 1000


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


def read(
    chunks: list[bytes], *headers: tuple[bytes, bytes], limit: int = LIMIT, gone: bool = False
) -> tuple[bytes | RequestBodyRefusal, int]:
    """What `read_body` makes of `chunks` sent one message each, and how many it read."""
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    if gone:
        messages[-1]["more_body"] = True
        messages.append({"type": "http.disconnect"})
    received = 0

    async def receive() -> Message:
        nonlocal received
        received += 1
        return messages[received - 1]

    scope: dict[str, Any] = {"type": "http", "headers": list(headers)}
    return asyncio.run(read_body(scope, receive, limit)), received


READ = [
    pytest.param([BODY], (), id="plain"),
    pytest.param([BODY[:5], BODY[5:]], (), id="plain-in-two-messages"),
    pytest.param([b""], (), id="empty"),
    pytest.param([gzip.compress(BODY)], ((b"content-encoding", b"gzip"),), id="gzip"),
    pytest.param([gzip.compress(BODY)], ((b"Content-Encoding", b"X-GZIP"),), id="x-gzip"),
    pytest.param(
        [gzip.compress(BODY[:9]) + gzip.compress(BODY[9:])],
        ((b"content-encoding", b"gzip"),),
        id="gzip-two-members",
    ),
    pytest.param([zlib.compress(BODY)], ((b"content-encoding", b"deflate"),), id="zlib-deflate"),
    pytest.param([raw_deflate(BODY)], ((b"content-encoding", b"deflate"),), id="raw-deflate"),
    pytest.param([BODY], ((b"content-encoding", b"identity"),), id="identity"),
]


@pytest.mark.parametrize(("chunks", "headers"), READ)
def test_bodies_are_read_and_decoded(
    chunks: list[bytes], headers: tuple[tuple[bytes, bytes], ...]
) -> None:
    body, _ = read(chunks, *headers)

    expected = b"" if chunks == [b""] else BODY
    assert body == expected


GZIP = (b"content-encoding", b"gzip")
REFUSED = [
    pytest.param(
        [BODY], ((b"content-length", b"1001"),), 413, True, id="declared-length-over-the-limit"
    ),
    pytest.param([b"x" * 600, b"x" * 600], (), 413, True, id="plain-over-the-limit"),
    pytest.param(
        [gzip.compress(b"x" * 100_000)], (GZIP,), 413, True, id="gzip-bomb-over-the-limit"
    ),
    pytest.param([gzip.compress(BODY) + b"junk"], (GZIP,), 400, True, id="bytes-after-gzip"),
    pytest.param([gzip.compress(BODY)[:-4]], (GZIP,), 400, True, id="gzip-cut-short"),
    pytest.param([BODY], (GZIP,), 400, True, id="not-gzip-at-all"),
    pytest.param(
        [zlib.compress(BODY) + b"x"],
        ((b"content-encoding", b"deflate"),),
        400,
        True,
        id="bytes-after-deflate",
    ),
    pytest.param([BODY], ((b"content-encoding", b"br"),), 415, True, id="brotli"),
    pytest.param([BODY], ((b"content-encoding", b"gzip, gzip"),), 415, True, id="two-codings"),
]


@pytest.mark.parametrize(("chunks", "headers", "status", "close"), REFUSED)
def test_bodies_are_refused_with_a_status(
    chunks: list[bytes], headers: tuple[tuple[bytes, bytes], ...], status: int, close: bool
) -> None:
    refusal, _ = read(chunks, *headers)

    assert isinstance(refusal, RequestBodyRefusal)
    assert refusal.status == status
    assert refusal.message
    assert (refused_headers(refusal) == {"connection": "close"}) is close


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    _, received = read([BODY], (b"content-length", b"5000"))

    assert received == 0


def test_a_client_that_goes_away_gets_408() -> None:
    refusal, _ = read([BODY[:5]], gone=True)

    assert refusal == RequestBodyRefusal(408, "The request body did not arrive.")
