"""The Catapult v1 REST client: HTTP, retries and the translation of upstream failures.

This is the only module that talks HTTP to the upstream and the one boundary where
httpx exceptions and upstream statuses become `GatewayError`s. It knows REST and
nothing of GraphQL.

Every number read from an upstream answer is parsed here (or, for a call record's
fields, in `calls.py`) by a parse that cannot raise, and held to a range:

    status                  100..599, else UPSTREAM_BAD_RESPONSE
    X-RateLimit-Reset       epoch ms (or s), Retry-After delta seconds or HTTP date
                            (RFC 9110 10.2.3): retryAfter clamped to 1..3600 s; a value
                            that cannot be read counts as 1 s
    Link page / size        up to 9 digits, then the list query's own bounds (next_page.py)
    call record numbers     callbackTimeout, chargeableDuration: 32-bit (GraphQL Int);
                            timestamps: years 1..9999; outside: null plus a warning (calls.py)
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from functools import lru_cache
from types import TracebackType
from typing import Any

import httpx
import orjson
import weblinking

from gateway import __version__
from gateway.body_budget import RETRY_AFTER as BODY_BUDGET_RETRY_AFTER
from gateway.body_budget import BodyBudget, BodyLease, NoBodyBudget
from gateway.calls import cut_in_place, slim_body
from gateway.credentials import Credentials
from gateway.errors import (
    BadUserInput,
    Forbidden,
    GatewayError,
    NotFound,
    RateLimited,
    Unauthenticated,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    printable,
)
from gateway.upstream.routes import ANCHORED, UpstreamRequest
from gateway.upstream.tally import UpstreamTally
from gateway.upstream.transport import BodyRefused

RETRYABLE_STATUSES = frozenset({502, 503, 504})
# The wait after the n-th failed attempt: random in 0..min(MAX_BACKOFF, BACKOFF * 2^(n-1))
# ("full jitter"), so that callers retrying together spread out.
BACKOFF = 0.05
MAX_BACKOFF = 1.0
# What `extensions.retryAfter` may say: a client is never told to wait for nothing, nor
# for longer than an hour, whatever the upstream's headers claim.
MIN_RETRY_AFTER = 1
MAX_RETRY_AFTER = 3600
# The upstream's error code for a call id it does not know (404), unlike an unknown user.
CALL_NOT_FOUND = "call-not-found"
# Longer header values are not read (a date is under 40 characters, a number under 20).
_MAX_NUMBER_HEADER = 64

log = logging.getLogger("gateway.upstream")


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """A successful upstream answer: the decoded JSON body and its `Link` relations."""

    body: Any
    links: Mapping[str, str]
    # Wall-clock time of the upstream answer, kept through caches: whatever is built from
    # this answer may be reused only until fetched_at + TTL.
    fetched_at: float = field(default_factory=time.time, compare=False)
    # List entries past the request's `limit`, dropped unread (an oversized-page warning).
    excess: int = 0


class CatapultClient:
    """Makes upstream requests with the caller's credentials, retrying idempotent GETs.

    Requests go straight to an httpx transport, without an `httpx.AsyncClient` in
    between: the client's layers (auth flows, redirects, a cookie jar shared by every
    caller, URL merging) are all things this client must not do, and they cost more CPU
    than the transport itself.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        base_url: str,
        retries: int,
        upstream_timeout: float,
        body_budget: BodyBudget,
        connect_timeout: float,
        on_retry: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._body_budget = body_budget
        self._base_url = base_url.rstrip("/")
        self._retries = retries
        self._upstream_timeout = upstream_timeout
        self._connect_timeout = connect_timeout
        self._on_retry = on_retry
        parts = httpx.URL(self._base_url)
        # Scheme, host and port only: what an operator needs to find the upstream.
        self._origin = f"{parts.scheme}://{parts.netloc.decode('ascii')}"
        # Parsing a URL is a tenth of an upstream request's CPU in httpx; the same pages
        # are asked for again and again (polling, paging back and forth), and a URL is
        # immutable, so each request's is made once (bounded, least recently used out).
        self._url = lru_cache(maxsize=4096)(self._parse_url)

    def _parse_url(self, request: UpstreamRequest) -> httpx.URL:
        return httpx.URL(self._base_url + request.target)

    @property
    def base_url(self) -> str:
        """The upstream base URL, without a trailing slash."""
        return self._base_url

    async def get_call(
        self,
        credentials: Credentials,
        request: UpstreamRequest,
        *,
        deadline: float,
        tally: UpstreamTally,
    ) -> UpstreamAnswer | None:
        """GET one call (`request` from `routes.get_call`, a JSON object), or None when the
        upstream has none; a page of calls needs no such mapping and is a plain `fetch`."""
        try:
            return await self.fetch(credentials, request, deadline=deadline, tally=tally)
        except NotFound as exc:
            # An unknown call is an expected outcome (null); an unknown user is an error.
            if exc.extra.get("upstreamCode") == CALL_NOT_FOUND:
                return None
            raise

    async def fetch(
        self,
        credentials: Credentials,
        request: UpstreamRequest,
        *,
        deadline: float,
        tally: UpstreamTally,
    ) -> UpstreamAnswer:
        """GET `request`; raises a `GatewayError` for every failure, after retries.

        An attempt is retried when its failure says another may help (see `_Attempt`),
        at most `retries` times, and only when the wait before it ends within `deadline`.
        Each attempt handed to the transport counts one in the asking operation's `tally`.
        """
        tries = 1
        while True:
            attempt = _Attempt(self._origin)
            try:
                return await self._attempt(credentials, request, deadline, attempt, tally)
            except GatewayError:
                wait = _backoff(tries)
                if (
                    not attempt.retryable
                    or tries > self._retries
                    or time.monotonic() + wait >= deadline
                ):
                    raise
            self._on_retry()
            await asyncio.sleep(wait)
            tries += 1

    async def _attempt(
        self,
        credentials: Credentials,
        request: UpstreamRequest,
        deadline: float,
        attempt: _Attempt,
        tally: UpstreamTally,
    ) -> UpstreamAnswer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout("The upstream did not answer within the request's deadline.")
        attempt.timeout = timeout = min(self._upstream_timeout, remaining)
        with attempt, self._body_budget.lease() as lease:
            # The transport's timeouts bound each socket operation; this bounds the whole
            # answer, so a slowly dripping upstream cannot outlast the deadline.
            async with asyncio.timeout(timeout) as timer:
                response = await self._send(credentials, request, timeout, tally)
                try:
                    content = await _read_body(response, _Budgeted(lease, timer, deadline))
                finally:
                    await response.aclose()
            # The body counts against the process-wide budget until it has been parsed.
            return _answer(
                response.status_code, response.headers, content, self._url(request), request
            )

    async def _send(
        self,
        credentials: Credentials,
        request: UpstreamRequest,
        seconds: float,
        tally: UpstreamTally,
    ) -> httpx.Response:
        # The caller bounds the whole exchange; connecting has a shorter bound of its own,
        # so that a silent host is retried within the deadline.
        connect = min(seconds, self._connect_timeout)
        url = self._url(request)
        outgoing = httpx.Request(
            "GET",
            url,
            # With the (empty) body given as a stream, httpx adds no headers of its own,
            # which is most of what building a request costs; Host is the one it would.
            stream=_NO_BODY,
            headers=[
                (b"Host", url.netloc),
                (b"accept", b"application/json"),
                (b"user-agent", _USER_AGENT),
                (b"authorization", credentials.authorization.encode("latin-1")),
            ],
            # Reading, writing and waiting for a connection are bounded by the attempt's
            # own timeout (the caller's asyncio.timeout), which always ends first: timers
            # of their own would only cost a reschedule for every chunk read.
            extensions={"timeout": {"connect": connect, "read": None, "write": None, "pool": None}},
        )
        # Counted as it is handed on, as the transport's metric counts it: an attempt
        # that fails to connect was still sent, one the deadline kept home was not.
        tally.request_sent()
        return await self._transport.handle_async_request(outgoing)


class _Budgeted:
    """An attempt's body lease, and the attempt's timer, which stops while the lease waits
    for budget: that wait is not the upstream being slow. The request's deadline bounds it."""

    __slots__ = ("deadline", "lease", "timer")

    def __init__(self, lease: BodyLease, timer: asyncio.Timeout, deadline: float) -> None:
        self.lease = lease
        self.timer = timer
        self.deadline = deadline

    async def take(self, size: int) -> None:
        if self.lease.take_now(size):
            return
        due = self.timer.when()
        self.timer.reschedule(None)
        loop = asyncio.get_running_loop()
        began = loop.time()
        last = began + (self.deadline - time.monotonic())
        try:
            async with asyncio.timeout_at(last):
                await self.lease.take(size)
        except TimeoutError:
            raise NoBodyBudget("the request's deadline passed waiting for body budget") from None
        if due is not None:
            # The attempt's own time resumes where it stopped, never past the deadline.
            self.timer.reschedule(min(due + loop.time() - began, last))


async def _read_body(response: httpx.Response, budget: _Budgeted) -> bytes:
    """The whole body, each chunk taken from the body budget before it is kept."""
    chunks: list[bytes] = []
    size = taken = 0
    try:
        declared = _declared_length(response.headers)
        if declared is not None:
            # A body of known size is taken whole before its first byte: a lease then
            # holds all of its body or none, and such leases never wait for each other.
            taken = declared
            await budget.take(taken)
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > taken:
                await budget.take(size - taken)
                taken = size
            chunks.append(chunk)
    except BaseException:
        # The exception's traceback holds this frame, and asyncio's exceptions are
        # often in reference cycles, freed only by a full garbage collection (rare in
        # this process, see app.tune_garbage_collector): without this, every refused
        # body would stay in memory until then, up to the bound each.
        chunks.clear()
        raise
    return b"".join(chunks)


def _declared_length(headers: httpx.Headers) -> int | None:
    # Only an unencoded body's length is its decoded length (the transport drops the
    # length of one it decodes).
    if "content-encoding" in headers:
        return None
    text = headers.get("content-length", "")
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text)


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")
_BYTES = re.compile(
    r"""(?<![A-Za-z0-9_])(?:b|bytearray\()(?:'(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?)"""
)


def scrubbed(message: str) -> str:
    """An exception message fit for a log: each URL as scheme://host:port, no bytes.

    Paths and queries name the user and the filters; byte strings are header or body
    bytes. A URL that cannot be parsed is replaced whole.
    """
    message = _BYTES.sub("<bytes>", message)
    return _URL.sub(_origin_of, message)


def _origin_of(match: re.Match[str]) -> str:
    try:
        url = httpx.URL(match.group(0))
        port = f":{url.port}" if url.port is not None else ""
        return f"{url.scheme}://{url.host}{port}"
    except Exception:  # any URL text, however odd, ends as a placeholder
        return "<url>"


_USER_AGENT = f"catapult-gateway/{__version__}".encode()
_NO_BODY = httpx.ByteStream(b"")


class _Attempt:
    """One try at an upstream request: the one place its failures become `GatewayError`s.

    Like httpx's `map_httpcore_exceptions`, a context manager around the attempt that
    raises the gateway's error from whatever the transport raised, and besides marks
    whether another try may help (`retryable`): the GET is idempotent, so a connection
    that could not be made, or broke before the answer was complete (often a stale
    keep-alive one), is worth another, as is a 502, 503 or 504 (a proxy in front of the
    upstream failing). A slow answer is not (the deadline would pass), nor an answer that
    was refused or read (the same one would come again).
    """

    __slots__ = ("origin", "retryable", "timeout")

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.timeout = 0.0
        self.retryable = False

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        if isinstance(exc, GatewayError):
            # An error answer (`_answer`), already translated.
            self.retryable = exc.extra.get("upstreamStatus") in RETRYABLE_STATUSES
            return
        if isinstance(exc, TimeoutError):
            raise UpstreamTimeout(
                f"The upstream did not answer within {self.timeout:.1f} s."
            ) from exc
        if isinstance(exc, NoBodyBudget):
            # Not UPSTREAM_TIMEOUT even when the deadline passed waiting: the upstream was
            # not what was slow, the gateway was busy with other large answers.
            raise RateLimited(
                "The gateway is reading too many large upstream answers at once; retry shortly.",
                retry_after=BODY_BUDGET_RETRY_AFTER,
            ) from exc
        if isinstance(exc, BodyRefused):
            raise UpstreamBadResponse(str(exc)) from exc
        if isinstance(exc, httpx.DecodingError):
            raise UpstreamBadResponse("The upstream's body could not be decoded.") from exc
        if isinstance(exc, httpx.TransportError):
            # The error codes say only that the upstream could not be reached; operators
            # need why (refused, DNS, TLS, reset), once per attempt, retries included.
            _log_failed_attempt(self.origin, exc)
            if isinstance(exc, httpx.ConnectTimeout):
                self.retryable = True
                raise UpstreamUnavailable("Could not connect to the upstream in time.") from exc
            if isinstance(exc, httpx.TimeoutException):
                raise UpstreamTimeout(
                    f"The upstream did not answer within {self.timeout:.1f} s."
                ) from exc
            self.retryable = isinstance(
                exc, httpx.ConnectError | httpx.RemoteProtocolError | httpx.ReadError
            )
            raise UpstreamUnavailable("Could not reach the upstream.") from exc
        return


def _backoff(tries: int) -> float:
    return random.uniform(0, min(MAX_BACKOFF, BACKOFF * 2 ** (tries - 1)))  # noqa: S311 - not a secret


def _log_failed_attempt(origin: str, exc: httpx.TransportError) -> None:
    # The transport's own exception (aiohttp's) names the cause best; the chain's end
    # is the operating system's (ConnectionRefusedError, gaierror, SSLError). Its
    # message is scrubbed: aiohttp puts the request URL in it (the user id and the
    # filters: phone numbers) and sometimes raw header bytes; only scheme, host and
    # port of a URL are kept, and no byte string.
    cause: BaseException = exc.__cause__ or exc
    root = cause
    while root.__cause__ is not None:
        root = root.__cause__
    log.warning(
        "upstream attempt failed: %s: %s",
        type(cause).__name__,
        printable(scrubbed(str(cause)[:2000])[:500]) or "(no message)",
        extra={
            "upstream": origin,
            "cause": type(cause).__name__,
            "root_cause": type(root).__name__,
        },
    )


def _answer(
    status: int,
    headers: httpx.Headers,
    content: bytes,
    url: httpx.URL,
    request: UpstreamRequest,
) -> UpstreamAnswer:
    shape = request.shape
    if status == 200:
        try:
            body = read_json(content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamBadResponse(
                "The upstream answered with a body that is not JSON."
            ) from exc
        # Entries past what was asked are dropped before any per-entry pass: a 10 MB
        # `[0,0,...]` of five million entries must not be slimmed entry by entry.
        excess = 0 if request.limit is None else cut_in_place(body, request.limit)
        # Only what the gateway reads is kept (see calls.slim_body).
        body = slim_body(body)
        if shape == "array" and not isinstance(body, list):
            raise UpstreamBadResponse("The upstream answered a call list that is not a JSON array.")
        if shape == "object" and not isinstance(body, dict):
            raise UpstreamBadResponse("The upstream answered a call that is not a JSON object.")
        links = parse_link_header(headers.get_list("link"), base=str(url))
        return UpstreamAnswer(body=body, links=links, excess=excess)
    raise error_for_status(status, headers, content)


def error_for_status(status: int, headers: Mapping[str, str], content: bytes) -> GatewayError:
    """Translate an upstream error answer; the upstream's `message` is kept, its details not.

    Details hold the caller's remote address and request path, which must not leak into
    errors or logs, so only `message`, `category` and `code` are read.
    """
    if not 100 <= status <= 599:
        return UpstreamBadResponse("The upstream answered with a status HTTP does not have.")
    message, upstream_code = _error_body(content)
    extra: dict[str, Any] = {"upstreamStatus": status}
    if upstream_code:
        extra["upstreamCode"] = upstream_code
    if status == 401:
        return Unauthenticated(message or "The upstream refused these credentials.", **extra)
    if status == 403:
        return Forbidden(message or "These credentials may not do this.", **extra)
    if status == 404:
        return NotFound(message or "The upstream has no such resource.", **extra)
    if status == 429:
        retry_after = retry_after_seconds(headers)
        return RateLimited(
            message or f"The upstream's rate limit was reached; retry in {retry_after} s.",
            retry_after=retry_after,
            **extra,
        )
    if status == 400:
        return BadUserInput(message or "The upstream refused the request's parameters.", **extra)
    if status >= 500:
        return UpstreamError(message or f"The upstream failed with status {status}.", **extra)
    return UpstreamError(message or f"The upstream answered with status {status}.", **extra)


def read_json(content: bytes) -> Any:
    """An upstream body as JSON; a UTF-8 byte order mark before it is skipped.

    RFC 8259 lets a parser ignore the mark, and fetch-based clients do; orjson refuses it.
    orjson also refuses a whole body for one number out of a double's range (`1e400`, a
    5000-digit integer), which is valid JSON: such a body is read again by the standard
    library, with every such number as an `UNREADABLE_NUMBER`-marked object, so the
    record-level tolerance serves that field as null with a warning and the rest of the
    page as sent. Raises `orjson.JSONDecodeError` for a body that is not JSON.
    """
    if content.startswith(_BOM):
        content = content[3:]
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        if not str(exc).startswith("number"):
            raise
        return _read_json_tolerantly(content, exc)


_BOM = b"\xef\xbb\xbf"
UNREADABLE_NUMBER = "unreadableNumber"
# Past 18 digits an integer is read as a float, as orjson does past 64 bits (and int()
# of a long digit string is slow, then refused past 4300 digits).
_MAX_INT_DIGITS = 18


def _unreadable(text: str) -> dict[str, str]:
    # An object: whatever field the number stood in, the parser finds it odd (a string
    # could pass for a URL), and it survives the cache's JSON round trip (inf would not).
    return {UNREADABLE_NUMBER: text[:40]}


def _tolerant_float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _unreadable(text)


def _tolerant_int(text: str) -> Any:
    digits = len(text) - text.startswith("-")
    return int(text) if digits <= _MAX_INT_DIGITS else _tolerant_float(text)


def _refuse_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _read_json_tolerantly(content: bytes, refusal: orjson.JSONDecodeError) -> Any:
    try:
        body = json.loads(
            content.decode("utf-8"),
            parse_float=_tolerant_float,
            parse_int=_tolerant_int,
            parse_constant=_refuse_constant,
        )
        # What orjson refuses besides numbers (lone surrogates) must not reach the cache.
        orjson.dumps(body)
    except (ValueError, RecursionError, TypeError):
        raise refusal from None
    return body


def _error_body(content: bytes) -> tuple[str | None, str | None]:
    try:
        body = read_json(content)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    message = body.get("message")
    code = body.get("code")
    return (
        printable(message[:500]) if isinstance(message, str) and message else None,
        printable(code[:100]) if isinstance(code, str) and code else None,
    )


def retry_after_seconds(headers: Mapping[str, str], *, now: float | None = None) -> int:
    """Seconds to wait, from `X-RateLimit-Reset` (epoch ms, as Catapult sends) or `Retry-After`.

    Always within MIN_RETRY_AFTER..MAX_RETRY_AFTER: a far-future reset (a 40-digit
    number) is an hour, one in the past a second, and a value that cannot be read a second.
    """
    now = time.time() if now is None else now
    reset = _number_header(headers, "x-ratelimit-reset")
    if reset is not None:
        # The docs call it a UNIX timestamp, but every sample is in milliseconds;
        # a value small enough to be seconds is read as seconds.
        reset_at = reset / 1000 if reset > 10**11 else reset
        return _clamp_wait(reset_at - now)
    retry_after = _number_header(headers, "retry-after")
    if retry_after is not None:
        return _clamp_wait(retry_after)
    text = headers.get("retry-after", "").strip()
    if text and len(text) <= _MAX_NUMBER_HEADER:
        at = _http_date(text)
        if at is not None:
            return _clamp_wait(at - now)
    return MIN_RETRY_AFTER


def _number_header(headers: Mapping[str, str], name: str) -> float | None:
    """A header of ASCII digits as a number; past 18 digits it is only "very large"."""
    text = headers.get(name, "").strip()
    if not (text.isascii() and text.isdigit()):
        return None
    # int() of a long digit string costs quadratic time (and refuses 4300+ digits);
    # nothing longer than 18 digits is a time anyone will wait for.
    return float(text) if len(text) <= 18 else math.inf


def _clamp_wait(seconds: float) -> int:
    if seconds != seconds:  # NaN
        return MIN_RETRY_AFTER
    if seconds >= MAX_RETRY_AFTER:
        return MAX_RETRY_AFTER
    return max(MIN_RETRY_AFTER, math.ceil(seconds))


def _http_date(text: str) -> float | None:
    """An HTTP date (IMF-fixdate or an obsolete form) as epoch seconds, or None."""
    try:
        parsed = email.utils.parsedate_to_datetime(text)
        if parsed.tzinfo is None:
            # `-0000` (or the obsolete forms): HTTP dates are always UTC.
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (TypeError, ValueError, OverflowError, OSError, IndexError):
        return None


def parse_link_header(values: str | list[str], *, base: str) -> dict[str, str]:
    """The `Link` relations of an answer: relation type -> target, resolved against `base`.

    `values` are the header's field values (one per `Link` header line). weblinking reads
    them as RFC 8288 says (quoted parameters holding commas or semicolons, several
    relation types in one `rel`, any case, optional whitespace, unreadable links skipped
    without hiding the others) and resolves each target against the request URL as
    RFC 3986 section 5 says, since the upstream may send a relative one. The first link
    of each relation type wins.

    A link with an `anchor` naming another resource is that resource's link, not this
    answer's (RFC 8288 section 3.2): it never wins, and if it is all there is, its target
    is kept behind the `ANCHORED` mark so that the reader can report it, not follow it.
    Total: no header text makes this raise. Only the lines within `MAX_LINK_BYTES` are
    read (see there).
    """
    links: dict[str, str] = {}
    anchored: dict[str, str] = {}
    try:
        parsed = list(weblinking.parse(_within_bound(values)))
    except Exception:  # an unreadable header is no links, not a failure
        return links
    for link in parsed:
        try:
            resolved = link.resolve(base)
            target = resolved.uri
            anchor = resolved.anchor
            relations = [relation.lower() for relation in link.rels]
        except Exception:  # noqa: S112 - one unreadable link does not hide the others
            continue
        into = links if anchor is None or anchor == base else anchored
        for relation in relations:
            into.setdefault(relation, target)
    for relation, target in anchored.items():
        links.setdefault(relation, ANCHORED + target)
    return links


# The most bytes of `Link` header lines read, first line first; a line that would pass
# it and every line after it are ignored. A real answer's header holds four links in well
# under 2 KB; aiohttp lets through 128 lines of 8 KB, and parsing and resolving 900 KB
# of links (12,000) took the event loop 2 s per answer.
MAX_LINK_BYTES = 16 * 1024


def _within_bound(values: str | list[str]) -> list[str]:
    kept: list[str] = []
    total = 0
    for value in [values] if isinstance(values, str) else values:
        total += len(value)
        if total > MAX_LINK_BYTES:
            break
        kept.append(value)
    return kept
