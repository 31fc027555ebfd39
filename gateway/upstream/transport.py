"""An httpx transport over aiohttp's connection pool, and the one pool the app shares.

The upstream client is written against httpx's transport interface (requests, responses,
timeouts, limits; `httpx.MockTransport` in tests; the app wraps it to count and trace
each attempt), but on this workload httpx's own transport (httpcore, h11, anyio) costs
about three times the CPU per upstream request of aiohttp's C-accelerated one. The query
string is passed through exactly as built (aiohttp would otherwise re-normalise it),
and aiohttp's exceptions become httpx's, so the upstream client maps one family.

The body is bounded by its size after decoding. aiohttp decodes gzip and deflate in pieces
of at most its read buffer, pausing the socket while the reader catches up, so counting
what it hands over and stopping at the bound never holds more than the bound: a
1 MB gzip body that would inflate to 1 GiB costs at most the bound. Only the encodings
offered in `Accept-Encoding` are taken; any other (br, zstd, stacked ones) is refused
before a byte of the body is read. The body is handed on as a stream, read (and taken from
the process-wide body budget) by the upstream client; a response whose body was not read
to its end closes its connection, which is never returned to the pool.

Interim (1xx) answers before the final one are bounded too (`MAX_INTERIM_RESPONSES`).
aiohttp reads any number of them and has no setting for it: its response loops over
them, and while its queue holds parsed ones it never yields, so a million `103 Early
Hints` (~60 MB, no body at all) stalled the event loop for seconds. Each connection's
protocol is therefore an `_InterimBounded`, which fails the answer past the bound.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from yarl import URL

# Fixed rather than aiohttp's default, which grows with the optional decoders that happen
# to be installed (brotli, zstd): what the gateway accepts must not depend on that.
ACCEPT_ENCODING = "gzip, deflate"
_DECODED = frozenset({"gzip", "deflate"})
_IDENTITY = frozenset({"", "identity"})
# Headers that describe the encoded body; the body handed on is decoded.
_ENCODED_BODY_HEADERS = frozenset({b"content-encoding", b"content-length"})
_ENCODING_HEADER = frozenset({b"content-encoding"})


# Interim answers accepted before the final one: RFC 9110 gives a client no bound, but
# a real server sends one or two (100 Continue, 103 Early Hints); each is a header block
# of its own, within aiohttp's line and header bounds, so this bounds their bytes too.
MAX_INTERIM_RESPONSES = 16


class TooManyInterimResponses(HttpProcessingError):
    """More than MAX_INTERIM_RESPONSES 1xx answers before the final one."""


class _InterimBounded(ResponseHandler):
    """aiohttp's connection protocol, failing an answer past MAX_INTERIM_RESPONSES
    interim answers, then closing its connection (the rest is not worth parsing)."""

    _interim = 0

    def feed_data(self, data: tuple[Any, Any], size: int = 0) -> None:
        if self._interim > MAX_INTERIM_RESPONSES:
            return  # refused: nothing after it is an answer (the queue's end raises)
        message = data[0]
        if 100 <= message.code < 200 and message.code != 101:
            self._interim += 1
            if self._interim > MAX_INTERIM_RESPONSES:
                self.set_exception(TooManyInterimResponses())
                if self.transport is not None:
                    self.transport.close()
                return
        else:
            self._interim = 0
        super().feed_data(data, size)


class BodyRefused(httpx.TransportError):
    """The upstream's body is larger than the bound after decoding, or in an encoding the
    gateway did not offer. Its connection is closed, not reused."""


def create_transport(*, max_connections: int, max_body_bytes: int) -> AiohttpTransport:
    """The one shared upstream connection pool; the app's lifespan owns (and closes) it."""
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=30,
    )
    return AiohttpTransport(limits, max_body_bytes=max_body_bytes)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests through one aiohttp session, made on first use."""

    def __init__(self, limits: httpx.Limits, *, max_body_bytes: int) -> None:
        self._limits = limits
        self._max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None

    def _session_in_loop(self) -> aiohttp.ClientSession:
        # aiohttp binds a session to the running loop, so it is made at the first request.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                keepalive_timeout=self._limits.keepalive_expiry or 30,
            )
            # aiohttp has no setting for this: the protocol factory is the one seam.
            bounded: Callable[[], ResponseHandler] = functools.partial(
                _InterimBounded, loop=connector._loop
            )
            connector._factory = bounded  # type: ignore[assignment]
            # One session serves every caller: no cookie may carry over between them.
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """The upstream's answer once its headers are in; its body is a stream the caller
        reads (and must close), so that the caller's body budget bounds what is read."""
        timeout = request.extensions.get("timeout", {})
        session = self._session_in_loop()
        body = await request.aread()
        with _httpx_errors():
            response = await session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=[*request.headers.multi_items(), ("accept-encoding", ACCEPT_ENCODING)],
                data=body or None,
                allow_redirects=False,
                auto_decompress=True,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                    connect=timeout.get("pool"),
                ),
            )
        try:
            encoded = _refuse_unreadable(response, self._max_body_bytes)
        except BaseException:
            # Unread bytes would be the start of the next answer on this connection.
            response.close()
            raise
        # A stream rather than `content=`: httpx then skips re-deriving headers from the
        # body, a third of the cost of an upstream request's httpx objects. The length
        # of an unencoded body is kept: it is the decoded length, which the reader may
        # take from its budget before the first byte.
        dropped = _ENCODED_BODY_HEADERS if encoded else _ENCODING_HEADER
        return httpx.Response(
            response.status,
            headers=[
                (name, value) for name, value in response.raw_headers if name.lower() not in dropped
            ],
            stream=_AiohttpBody(response, self._max_body_bytes),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _refuse_unreadable(response: aiohttp.ClientResponse, limit: int) -> bool:
    """Refuse a body before its first byte if its encoding was not offered or its declared
    size is past the bound; True if it is encoded (and decoded on the way)."""
    encodings = [
        token.strip().lower()
        for value in response.headers.getall("content-encoding", ())
        for token in value.split(",")
    ]
    encodings = [token for token in encodings if token not in _IDENTITY]
    if len(encodings) > 1 or (encodings and encodings[0] not in _DECODED):
        raise BodyRefused("The upstream answered in a content encoding that was not offered.")
    # Encoded or not, a body declared larger than the bound is not worth reading.
    if response.content_length is not None and response.content_length > limit:
        raise BodyRefused(f"The upstream's answer is larger than {limit} bytes.")
    return bool(encodings)


class _AiohttpBody(httpx.AsyncByteStream):
    """An upstream body as aiohttp decodes it, refused past the bound; read once.

    Closing it before its end closes the connection, which is never returned to the pool.
    """

    def __init__(self, response: aiohttp.ClientResponse, limit: int) -> None:
        self._response = response
        self._limit = limit
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._response.content.iter_any().__aiter__()
        size = 0
        while True:
            with _httpx_errors():
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
            size += len(chunk)
            if size > self._limit:
                # Not kept by the refusal's traceback, which outlives this frame.
                del chunk
                raise BodyRefused(f"The upstream's answer is larger than {self._limit} bytes.")
            yield chunk
        self._complete = True

    async def aclose(self) -> None:
        if self._complete:
            self._response.release()
        else:
            # Unread bytes would be the start of the next answer on this connection.
            self._response.close()


@contextmanager
def _httpx_errors() -> Iterator[None]:
    # Most specific first: aiohttp's connect timeout is also a ServerTimeoutError.
    try:
        yield
    except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
        # A body aiohttp cannot decode (corrupt, or an encoding it has no decoder for)
        # is the upstream's fault and the same on every try; anything else broke on the way.
        if _caused_by(exc, ContentEncodingError):
            raise BodyRefused("The upstream's body could not be decoded.") from exc
        if isinstance(exc, aiohttp.ClientPayloadError):
            raise httpx.RemoteProtocolError(str(exc) or "server disconnected") from exc
        if _caused_by(exc, HttpProcessingError):
            # The status line or a header could not be parsed (LineTooLong past 8190
            # bytes, BadStatusLine, InvalidHeader): the same answer would come again, so
            # it is refused like a bad body, not retried.
            raise BodyRefused(
                "The upstream's answer is not HTTP this gateway can read "
                f"({_parse_error_name(exc)})."
            ) from exc
        raise httpx.RemoteProtocolError(str(exc)) from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc)) from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise httpx.ReadTimeout(str(exc) or "timed out") from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc)) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx.RemoteProtocolError(str(exc) or "server disconnected") from exc
    except (aiohttp.ClientOSError, aiohttp.ClientConnectionError) as exc:
        raise httpx.ReadError(str(exc)) from exc
    except aiohttp.ClientError as exc:
        raise httpx.TransportError(str(exc)) from exc


def _parse_error_name(exc: BaseException) -> str:
    # The most specific parse error of the chain (LineTooLong rather than the generic
    # HttpProcessingError aiohttp wraps it in); its message holds header bytes, so
    # only its class is named.
    seen: BaseException | None = exc
    name = "HttpProcessingError"
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, HttpProcessingError):
            name = type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    return name


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is a few links long; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
