"""A faithful, deterministic fake of the Catapult v1 call API, plus test controls.

API (as the real service, see docs/upstream.md):
    GET /v1/users/{userId}/calls[/]                           list, paginated, `Link` header
    GET /v1/users/{userId}/calls/{callId}                     one call
    GET /v1/users/{userId}/calls/{callId}/events              its events
    GET /v1/users/{userId}/calls/{callId}/events/{eventId}    one event

Deliberate oddities, each as a source shows the real API (Bandwidth's v1 documentation,
list-calls page and docs/upstream.md, which gathers the docs and the v1 SDKs); clients
must cope:
    - Timestamps mix three ISO 8601 forms: `...47.587Z`, `...20Z` and an hour-only offset
      `...47-02` (docs/upstream.md "Requests and answers", from the documented examples).
    - `state` can be `error`, beyond the five documented states (Bandwidth's C# SDK's
      CallState enum; docs/upstream.md).
    - `callbackHttpMethod` comes as `GET`/`POST` and as `get`/`post` (docs/upstream.md).
    - Absent fields are omitted, never null; `callbackUrl` can be `""` (list-calls page
      examples); `sipHeaders` is a map, only present when there are headers.
    - `events` is in every call although the property table leaves it out (list-calls page).
    - `Link` entries are separated by `,` with and without a space, and use
      `rel="previous"`, not `prev` (docs/upstream.md "Pagination links").
    - Both `/calls` and `/calls/` answer: the docs show the slash, the SDKs send none.
    - Event `time`: an ISO string (`2013-02-08T13:15:47.587Z`) in the events list, as the
      documented list examples write instants, but epoch milliseconds as a number
      (`1419032854964`) from the get-one-event endpoint (docs/upstream.md, "Requests and
      answers").
    - Ids are `c-` / `ce-` and 23 lower-case letters and digits, like the documented ones.
    - 429 carries `X-RateLimit-Reset` in epoch milliseconds, no `Retry-After` and no
      `message` (docs/upstream.md "Rate limit").

Live (`SandboxOptions.live_interval` > 0; `catapult-gateway sandbox` and `serve --sandbox`
do so by default): on top of the seeded history, calls start, are answered and end every
few seconds, as live.py describes; the seeded history itself never changes.

Controls (for tests and benchmarks, never recorded; `create_sandbox_app(controls=True)`,
which the standalone `catapult-gateway sandbox` uses; `serve --sandbox` mounts the sandbox
without them, so the demo has no unauthenticated routes that change it or list requests):
    GET|DELETE /__sandbox/requests    recorded API requests, Authorization values redacted
    GET /__sandbox/stats              {"requests": N}
    GET|PUT|DELETE /__sandbox/faults  injected latency, failures, garbage, drops, rate limit
    POST /__sandbox/reset             clear requests, faults and rate-limit clocks
Always:
    GET /__health
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import random
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from urllib.parse import quote, urlencode

import anyio
import orjson
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.sandbox.data import (
    ACCOUNTS,
    Account,
    History,
    StoredCall,
    UserHistory,
    call_events,
    format_instant,
    generate_history,
)
from gateway.sandbox.live import LiveWorld

__all__ = ["SandboxOptions", "create_sandbox_app"]

_FILTERS = ("bridgeId", "conferenceId", "from", "to")
_UNPAGINATED_FILTERS = frozenset({"bridgeId", "conferenceId"})
_MAX_SIZE = 1000
_MAX_RECORDED = 20_000
_PAGE_CACHE_BYTES = 64 * 1024 * 1024
_CALL_TIMEOUTS = (30, 45, 60, 90)

# (category, code, message) for injected failures, after the documented categories.
_FAILURES: Mapping[int, tuple[str, str, str]] = {
    400: ("bad-request", "bad-request", "The request could not be processed"),
    401: ("authentication", "authentication-failed", "Authentication failed"),
    403: ("forbidden", "forbidden", "Access to this resource is forbidden"),
    404: ("not-found", "resource-not-found", "The resource could not be found"),
    409: ("conflict", "conflict", "The request conflicts with the resource state"),
    500: ("backend", "internal-server-error", "An internal server error occurred"),
    502: ("backend", "bad-gateway", "An upstream service answered badly"),
    503: ("unavailable", "service-unavailable", "The service is temporarily unavailable"),
    504: ("unavailable", "gateway-timeout", "An upstream service timed out"),
}


@dataclass(frozen=True)
class SandboxOptions:
    """How the sandbox behaves from start-up; faults can change some of it at runtime."""

    latency_ms: float = 0
    rate_limit: bool = False
    rate_limit_interval_ms: int = 1000
    seed: int = 20130208
    calls_per_user: int = 2500
    # Seconds between the live sandbox's steps (see live.py); 0 keeps the history still,
    # as tests that compare answers need it.
    live_interval: float = 0
    accounts: tuple[Account, ...] = ACCOUNTS


@dataclass(frozen=True)
class _Faults:
    latency_ms: float = 0
    latency_spike_ms: float = 0
    latency_spike_rate: float = 0
    fail_status: int | None = None
    fail_rate: float = 1.0
    fail_count: int | None = None
    garbage_rate: float = 0
    drop_rate: float = 0
    rate_limit: bool | None = None
    rate_limit_interval_ms: int | None = None


_RATES = frozenset({"latency_spike_rate", "fail_rate", "garbage_rate", "drop_rate"})
_DURATIONS = frozenset({"latency_ms", "latency_spike_ms"})


def _parse_faults(raw: object) -> _Faults:
    if not isinstance(raw, dict):
        raise ValueError("the faults body must be a JSON object")
    known = {f.name for f in fields(_Faults)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown fault keys: {', '.join(unknown)}")
    for key, value in raw.items():
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if key in _RATES and not (is_number and 0 <= value <= 1):
            raise ValueError(f"{key} must be a number from 0 to 1")
        if key in _DURATIONS and not (is_number and value >= 0):
            raise ValueError(f"{key} must be a non-negative number")
        if key == "fail_status" and not (is_int and 400 <= value <= 599):
            raise ValueError("fail_status must be an integer from 400 to 599")
        if key == "fail_count" and not (is_int and value >= 1):
            raise ValueError("fail_count must be a positive integer")
        if key == "rate_limit_interval_ms" and not (is_int and value >= 0):
            raise ValueError("rate_limit_interval_ms must be a non-negative integer")
        if key == "rate_limit" and not isinstance(value, bool):
            raise ValueError("rate_limit must be a boolean")
    return _Faults(**raw)


def _json(data: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, media_type="application/json", headers=headers
    )


def _details(request: Request, *extra: tuple[str, str]) -> list[dict[str, str]]:
    client = request.client
    request_path = request.url.path.removeprefix("/v1/").strip("/")
    pairs = [
        ("requestMethod", request.method),
        ("remoteAddress", client.host if client else ""),
        ("requestPath", request_path),
        *extra,
    ]
    return [{"name": name, "value": value} for name, value in pairs]


def _error(
    request: Request,
    status: int,
    category: str,
    code: str,
    message: str,
    *extra: tuple[str, str],
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = {
        "category": category,
        "code": code,
        "message": message,
        "details": _details(request, *extra),
    }
    return _json(body, status, headers)


def _rate_limited(request: Request, reset_ms: int) -> Response:
    # The documented 429 has no `message` and no Retry-After: only the reset instant in ms.
    body = {
        "category": "too-many-requests",
        "code": "rate-limit-reached",
        "details": _details(request, ("rateLimitResetTime", str(reset_ms))),
    }
    return _json(body, 429, {"X-RateLimit-Reset": str(reset_ms)})


class _DroppedResponse(Response):
    """Promises a body, sends part of it and stops: uvicorn then closes the connection."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"65536")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'[{"id": "c-', "more_body": True})


REDACTED = "[redacted]"


def _redacted(authorization: str) -> str:
    """An Authorization value with its credentials replaced: `Basic [redacted]`."""
    scheme, space, _ = authorization.partition(" ")
    # A scheme is a short token (RFC 9110); anything else may itself be the secret.
    if space and scheme.isascii() and scheme.isalpha() and len(scheme) <= 16:
        return f"{scheme} {REDACTED}"
    return REDACTED


def _int_param(params: QueryParams, name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    return int(value.strip())


_Handler = Callable[[Request, Account, UserHistory], Response]
_Endpoint = Callable[[Request], Awaitable[Response]]


class _Sandbox:
    """All mutable sandbox state, owned by one app instance."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.history = generate_history(options.seed, options.calls_per_user, options.accounts)
        self.live = (
            LiveWorld(self.history, interval=options.live_interval)
            if options.live_interval > 0
            else None
        )
        self.accounts = {account.token: account for account in options.accounts}
        self.requests: deque[dict[str, object]] = deque(maxlen=_MAX_RECORDED)
        self.request_count = 0
        self.faults = _Faults()
        self.fail_remaining: int | None = None
        self.rng = random.Random(options.seed)
        self.garbage_turn = 0
        self.next_allowed_ms: dict[str, float] = {}
        self.pages: OrderedDict[tuple[object, ...], tuple[bytes, str]] = OrderedDict()
        self.page_bytes = 0
        # The first step draws the last hour of live calls: at start-up, not in a request.
        self._current()

    # -- the API guard: recording, latency, faults, auth, rate limit, user access --

    def api(self, handler: _Handler) -> _Endpoint:
        async def endpoint(request: Request) -> Response:
            entry = self._record(request)
            response = await self._answer(request, handler)
            entry["status"] = response.status_code
            return response

        return endpoint

    def _record(self, request: Request) -> dict[str, object]:
        scope = request.scope
        raw_path = scope.get("raw_path")
        authorization = request.headers.get("authorization")
        account = self._authenticate(request)
        headers = dict(request.headers)
        if authorization is not None:
            authorization = headers["authorization"] = _redacted(authorization)
        entry: dict[str, object] = {
            "method": request.method,
            "path": raw_path.decode("latin-1") if raw_path else scope["path"],
            "query": scope["query_string"].decode("latin-1"),
            # Credentials never leave the sandbox, even to whoever reads the recording:
            # the scheme, and the user whose token and secret they were (None if none).
            "authorization": authorization,
            "account": account.user_id if account else None,
            "headers": headers,
            "status": None,
        }
        self.requests.append(entry)
        self.request_count += 1
        return entry

    async def _answer(self, request: Request, handler: _Handler) -> Response:
        await self._delay()
        faulted = self._fault_response(request)
        if faulted is not None:
            return faulted
        account = self._authenticate(request)
        if account is None:
            return _error(
                request,
                401,
                "authentication",
                "authentication-failed",
                "Authentication failed: invalid or missing credentials",
                headers={"WWW-Authenticate": 'Basic realm="catapult"'},
            )
        limited = self._rate_limit(request, account)
        if limited is not None:
            return limited
        user_id = request.path_params.get("user_id", account.user_id)
        history = self._current().users.get(user_id)
        if history is None:
            return _error(
                request,
                404,
                "not-found",
                "user-not-found",
                f"The user {user_id} could not be found",
                ("userId", user_id),
            )
        if user_id != account.user_id:
            return _error(
                request,
                401,
                "authentication",
                "user-access-denied",
                f"User {account.user_id} does not have permission to access user {user_id}",
                ("userId", user_id),
            )
        return handler(request, account, history)

    def _current(self) -> History:
        if self.live is None:
            return self.history
        current = self.live.history_at(time.time() * 1000)
        if current is not self.history:
            # A new tick: every rendered page may show calls that have changed since.
            self.history = current
            self.pages.clear()
            self.page_bytes = 0
        return current

    def _roll(self, rate: float) -> bool:
        # Only draw when a rate is set, so enabling one fault does not shift another's sequence.
        return rate > 0 and (rate >= 1 or self.rng.random() < rate)

    async def _delay(self) -> None:
        faults = self.faults
        delay_ms = self.options.latency_ms + faults.latency_ms
        if self._roll(faults.latency_spike_rate):
            delay_ms += faults.latency_spike_ms
        if delay_ms > 0:
            await anyio.sleep(delay_ms / 1000)

    def _fault_response(self, request: Request) -> Response | None:
        faults = self.faults
        if faults.fail_status is not None and self._roll(faults.fail_rate):
            status = faults.fail_status
            if self.fail_remaining is not None:
                self.fail_remaining -= 1
                if self.fail_remaining <= 0:
                    self.faults = replace(faults, fail_status=None, fail_count=None)
                    self.fail_remaining = None
            if status == 429:
                return _rate_limited(request, math.ceil(time.time() * 1000) + 1000)
            category, code, message = _FAILURES.get(
                status, _FAILURES[500] if status >= 500 else _FAILURES[400]
            )
            return _error(request, status, category, code, message)
        if self._roll(faults.drop_rate):
            return _DroppedResponse()
        if self._roll(faults.garbage_rate):
            self.garbage_turn += 1
            if self.garbage_turn % 2:
                return Response(b"<html>oops", media_type="text/html")
            return _json({"not": "a list"})
        return None

    def _authenticate(self, request: Request) -> Account | None:
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        token, colon, secret = decoded.partition(":")
        account = self.accounts.get(token)
        if not colon or account is None:
            return None
        if not hmac.compare_digest(secret.encode(), account.secret.encode()):
            return None
        return account

    def _rate_limit(self, request: Request, account: Account) -> Response | None:
        faults, options = self.faults, self.options
        enabled = options.rate_limit if faults.rate_limit is None else faults.rate_limit
        if not enabled:
            return None
        interval = faults.rate_limit_interval_ms
        if interval is None:
            interval = options.rate_limit_interval_ms
        now_ms = time.time() * 1000
        allowed_ms = self.next_allowed_ms.get(account.token, 0.0)
        if now_ms < allowed_ms:
            # Refused requests leave the clock alone, as the real limiter does.
            return _rate_limited(request, math.ceil(allowed_ms))
        self.next_allowed_ms[account.token] = now_ms + interval
        return None

    # -- API handlers --

    def list_calls(self, request: Request, account: Account, history: UserHistory) -> Response:
        params = request.query_params
        try:
            page = _int_param(params, "page", 0)
            size = _int_param(params, "size", 25)
        except ValueError:
            return self._invalid(request, "page and size must be integers")
        if not 1 <= size <= _MAX_SIZE:
            return self._invalid(request, f"size must be between 1 and {_MAX_SIZE}")
        if page < 0:
            return self._invalid(request, "page must not be negative")
        order = params.get("sortOrder", "desc").lower()
        if order not in ("asc", "desc"):
            return self._invalid(request, "sortOrder must be asc or desc")
        filters = tuple((name, params[name]) for name in _FILTERS if params.get(name))
        url = request.url
        location = f"{url.scheme}://{url.netloc}{url.path}"
        key = (location, filters, page, size, order)
        cached = self.pages.get(key)
        if cached is None:
            base = _base_url(request)
            cached = _render_page(history, base, location, filters, page, size, order)
            self._remember(key, cached)
        else:
            self.pages.move_to_end(key)
        body, link = cached
        return Response(body, media_type="application/json", headers={"Link": link})

    def _remember(self, key: tuple[object, ...], page: tuple[bytes, str]) -> None:
        self.pages[key] = page
        self.page_bytes += len(page[0])
        while self.page_bytes > _PAGE_CACHE_BYTES and len(self.pages) > 1:
            _, (old, _) = self.pages.popitem(last=False)
            self.page_bytes -= len(old)

    def _invalid(self, request: Request, message: str) -> Response:
        return _error(request, 400, "validation-error", "invalid-parameter", message)

    def _find_call(self, request: Request, history: UserHistory) -> StoredCall | Response:
        call_id = request.path_params["call_id"]
        call = history.by_id.get(call_id)
        if call is None:
            return _error(
                request,
                404,
                "not-found",
                "call-not-found",
                f"The call {call_id} could not be found",
                ("callId", call_id),
            )
        return call

    def get_call(self, request: Request, account: Account, history: UserHistory) -> Response:
        call = self._find_call(request, history)
        if isinstance(call, Response):
            return call
        base = _base_url(request)
        own = f"{base}/v1/users/{call.user_id}/calls/{call.id}"
        body = {
            **_absolute(call, base),
            "callTimeout": _CALL_TIMEOUTS[zlib.crc32(call.id.encode()) % len(_CALL_TIMEOUTS)],
            "recordings": f"{own}/recordings",
            "transcriptions": f"{own}/transcriptions",
        }
        return _json(body)

    def get_events(self, request: Request, account: Account, history: UserHistory) -> Response:
        call = self._find_call(request, history)
        if isinstance(call, Response):
            return call
        events = call_events(call, self.options.seed)
        # The list writes instants as the documented list examples do.
        return _json([{**event, "time": format_instant(_ms(event["time"]))} for event in events])

    def get_event(self, request: Request, account: Account, history: UserHistory) -> Response:
        call = self._find_call(request, history)
        if isinstance(call, Response):
            return call
        event_id = request.path_params["event_id"]
        for event in call_events(call, self.options.seed):
            if event["id"] == event_id:
                # One event keeps `time` as epoch milliseconds, as docs/upstream.md records it.
                return _json(event)
        return _error(
            request,
            404,
            "not-found",
            "resource-not-found",
            f"The call event {event_id} could not be found",
            ("callId", call.id),
            ("eventId", event_id),
        )

    def unknown(self, request: Request, account: Account, history: UserHistory) -> Response:
        return _error(request, 404, "not-found", "resource-not-found", "Resource not found")

    # -- controls --

    async def get_requests(self, request: Request) -> Response:
        return _json(list(self.requests))

    async def clear_requests(self, request: Request) -> Response:
        self.requests.clear()
        return Response(status_code=204)

    async def stats(self, request: Request) -> Response:
        return _json({"requests": self.request_count})

    async def get_faults(self, request: Request) -> Response:
        return _json({**asdict(self.faults), "fail_remaining": self.fail_remaining})

    async def put_faults(self, request: Request) -> Response:
        try:
            faults = _parse_faults(orjson.loads(await request.body()))
        except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
            body = {"category": "validation-error", "code": "invalid-faults", "message": str(exc)}
            return _json(body, 400)
        self._set_faults(faults)
        return await self.get_faults(request)

    async def clear_faults(self, request: Request) -> Response:
        self._set_faults(_Faults())
        return Response(status_code=204)

    async def reset(self, request: Request) -> Response:
        self.requests.clear()
        self.request_count = 0
        self.next_allowed_ms.clear()
        self.garbage_turn = 0
        self._set_faults(_Faults())
        return Response(status_code=204)

    def _set_faults(self, faults: _Faults) -> None:
        self.faults = faults
        self.fail_remaining = faults.fail_count
        # Reseeding makes every fault setting replay the same sequence of outcomes.
        self.rng = random.Random(self.options.seed)


def _absolute(call: StoredCall, base: str) -> dict[str, object]:
    return {**call.fields, "events": f"{base}{call.fields['events']}"}


def _render_page(
    history: UserHistory,
    base: str,
    location: str,
    filters: tuple[tuple[str, str], ...],
    page: int,
    size: int,
    order: str,
) -> tuple[bytes, str]:
    calls: Sequence[StoredCall] = history.asc if order == "asc" else history.desc
    if filters:
        calls = [c for c in calls if all(c.fields.get(name) == v for name, v in filters)]
    paginated = not any(name in _UNPAGINATED_FILTERS for name, _ in filters)
    chosen = calls[page * size : (page + 1) * size] if paginated else calls
    body = orjson.dumps([_absolute(call, base) for call in chosen])

    def link(target: int, rel: str) -> str:
        query = urlencode(
            [*filters, ("page", target), ("size", size), ("sortOrder", order)], quote_via=quote
        )
        return f'<{location}?{query}>; rel="{rel}"'

    entries = [link(0, "first")]
    if paginated and page > 0:
        entries.append(link(page - 1, "previous"))
    if paginated and (page + 1) * size < len(calls):
        entries.append(link(page + 1, "next"))
    # docs/upstream.md: entries come with and without a space after the comma; serve both.
    header = entries[0]
    for index, entry in enumerate(entries[1:]):
        header += (", " if index % 2 == 0 else ",") + entry
    return body, header


def create_sandbox_app(
    options: SandboxOptions | None = None, *, controls: bool = True
) -> Starlette:
    """Build the sandbox: fresh seeded data and empty recordings, faults and clocks.

    `controls=False` leaves out the `/__sandbox/*` routes: anyone who reaches them can
    read the recorded requests and inject faults, so only the standalone sandbox (for
    tests and benchmarks) has them, never the demo that `serve --sandbox` publishes.
    """
    sandbox = _Sandbox(options or SandboxOptions())
    list_calls = sandbox.api(sandbox.list_calls)
    any_method = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    routes = [
        Route("/v1/users/{user_id}/calls", list_calls, methods=["GET"]),
        Route("/v1/users/{user_id}/calls/", list_calls, methods=["GET"]),
        Route(
            "/v1/users/{user_id}/calls/{call_id}", sandbox.api(sandbox.get_call), methods=["GET"]
        ),
        Route(
            "/v1/users/{user_id}/calls/{call_id}/events",
            sandbox.api(sandbox.get_events),
            methods=["GET"],
        ),
        Route(
            "/v1/users/{user_id}/calls/{call_id}/events/{event_id}",
            sandbox.api(sandbox.get_event),
            methods=["GET"],
        ),
        Route("/v1/{rest:path}", sandbox.api(sandbox.unknown), methods=any_method),
        Route("/__health", _health, methods=["GET"]),
    ]
    if controls:
        routes += [
            Route("/__sandbox/requests", sandbox.get_requests, methods=["GET"]),
            Route("/__sandbox/requests", sandbox.clear_requests, methods=["DELETE"]),
            Route("/__sandbox/stats", sandbox.stats, methods=["GET"]),
            Route("/__sandbox/faults", sandbox.get_faults, methods=["GET"]),
            Route("/__sandbox/faults", sandbox.put_faults, methods=["PUT"]),
            Route("/__sandbox/faults", sandbox.clear_faults, methods=["DELETE"]),
            Route("/__sandbox/reset", sandbox.reset, methods=["POST"]),
        ]
    return Starlette(routes=routes)


def _ms(value: object) -> int:
    assert isinstance(value, int)
    return value


async def _health(request: Request) -> Response:
    return _json({"status": "ok"})


def _base_url(request: Request) -> str:
    # Not request.base_url: under a Mount (serve --sandbox mounts the sandbox at
    # /sandbox) that is the outer app's root, and the URLs the sandbox hands out must
    # point back into the sandbox.
    url = request.url
    return f"{url.scheme}://{url.netloc}{request.scope.get('root_path', '')}".rstrip("/")
