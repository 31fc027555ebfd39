"""GraphQL over HTTP: request parsing, content negotiation, CSRF prevention, status codes.

    GraphQLEndpoint.handle(request)
      read     method, Accept, CSRF prevention, the query string or JSON body -> the
               params, and the document they name (`GraphQLExecution.document`: a
               persisted query's hash resolved)
      stream   a request that asks for an event stream: answered by the `EventStreams`
               handed in at construction (`gateway/live/sse.py`) -> `Streamed`
      execute  `GraphQLExecution.run`: parse, validate, plan, execute (it knows no HTTP)
      render   the status for the media type, cache headers, the answer cache's verdict

Each request is observed once, here (`Telemetry.request`: its log line, metrics and
span); the endpoint alone fills in its record, a query it hands to the event streams
too, from the `Answer` they return with their stream (`gateway.live.operations` ran it,
with the request id the answer echoes): one request, one line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import orjson
from graphql import OperationType
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.cache_control import wants_fresh
from gateway.context import MakeContext
from gateway.credentials import CredentialsVerdict
from gateway.errors import BadRequest
from gateway.execution import Answer, GraphQLExecution, GraphQLParams, read_params
from gateway.graphiql import GraphiQLPage
from gateway.graphql_errors import refusal_body
from gateway.media import GRAPHQL_RESPONSE_JSON, JSON, Accepted, accepted
from gateway.observability.record import RequestRecord
from gateway.observability.telemetry import Telemetry
from gateway.request_body import RequestBodyRefusal, refused_headers
from gateway.request_facts import request_facts

# Apollo's CSRF prevention: a request a browser could send without a CORS preflight is
# refused unless one of these headers (which force a preflight) is present.
PREFLIGHT_HEADERS = ("x-apollo-operation-name", "apollo-require-preflight", "x-catapult-user-id")
_SIMPLE_CONTENT_TYPES = frozenset(
    {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"}
)


class EventStreamResponder(Protocol):
    """Answers a request that asked for an event stream (`gateway.live.sse.EventStreams`)."""

    def respond(
        self,
        request: Request,
        *,
        query: str | None,
        variables: dict[str, Any] | None,
        operation_name: str | None,
        extensions: dict[str, Any] | None,
    ) -> Awaitable[tuple[Response, Answer | None]]: ...

    # The stream, and what its query came to (None for a subscription's): the endpoint
    # records it in the request's one line.


# Wanted, Outcome and AnswerVerdict are made for every request and never changed after.
# They are not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__, about 1,200 instructions a field against under 400 (callgrind),
# some 15,000 a request for these, the params, the result and the answer cache's verdict.
@dataclass(slots=True)
class Wanted:
    """What reading the HTTP request found: the document to run, and how to answer."""

    media_type: str
    params: GraphQLParams


@dataclass(slots=True)
class Outcome:
    """What one request came to, before it is rendered.

    `body` is a GraphQL response body, or the GraphiQL page's HTML. `codes` are its
    errors' codes (for the log line, the metrics and the cache's verdict); `fetched_at`
    is when the oldest upstream answer it was built from was fetched, if it used any;
    `checked`, whether the operation's name may take a metrics slot.
    """

    body: dict[str, Any] | str
    media_type: str
    status: int = 200
    codes: list[str] = field(default_factory=list)
    operation: str | None = None
    headers: dict[str, str] | None = None
    fetched_at: float | None = None
    checked: bool = False


@dataclass(slots=True)
class AnswerVerdict:
    """The endpoint's word on the answer it sends, the only thing the answer cache
    (`middleware/answer_cache.py`) acts on.

    It travels back with the answer, on its `http.response.start` message under `KEY`
    (servers ignore keys they do not know): whether the answer may be kept at all
    (`cacheable`: a 200 without errors; warnings are fine), when the oldest upstream data
    it was built from was fetched (wall-clock seconds; None when it used none), so that
    an entry expires with its data, and the operation's name, so that a hit is counted
    under the same name. An answer without a verdict is never kept.
    """

    KEY: ClassVar[str] = "gateway.answer_verdict"
    cacheable: bool
    operation: str | None
    fetched_at: float | None


@dataclass(frozen=True, slots=True)
class Streamed:
    """An event stream the responder answers instead of one answer (graphql-sse)."""

    response: Response
    operation: str | None
    answer: Answer | None


class GraphQLResponse(Response):
    """The endpoint's answer, carrying its verdict for the answer cache on its start message.

    The verdict travels with the answer itself, so the cache in front reads what the
    endpoint decided, never state written into the scope or a guess from the bytes.
    """

    verdict: AnswerVerdict

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": self.raw_headers,
                AnswerVerdict.KEY: self.verdict,
            }
        )
        await send({"type": "http.response.body", "body": self.body})


class GraphQLEndpoint:
    """The `/graphql` route: read the HTTP request, execute the operation, render the answer."""

    def __init__(
        self,
        execution: GraphQLExecution,
        make_context: MakeContext,
        *,
        graphiql: GraphiQLPage | None,
        telemetry: Telemetry,
        max_body_bytes: int,
        csrf_prevention: bool,
        get_max_age: int,
        event_streams: EventStreamResponder | None,
    ) -> None:
        self._execution = execution
        self._make_context = make_context
        self._event_streams = event_streams
        self._graphiql = graphiql
        self._telemetry = telemetry
        self._max_body_bytes = max_body_bytes
        self._csrf_prevention = csrf_prevention
        self._get_max_age = get_max_age

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # An ASGI app rather than a request function, so that every method reaches it
        # and the 405s carry a GraphQL-shaped body.
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        """Answer one HTTP request to the endpoint (any method)."""
        request_id = _request_id(request)
        with self._telemetry.request(request, request_id) as record:
            try:
                outcome = await self._outcome(request, request_id, record)
            except asyncio.CancelledError:
                record.stopped()
                raise
            if isinstance(outcome, Streamed):
                # Without a verdict, so never kept; it says itself not to be (`no-cache`).
                # The status is the stream's, what the client was answered.
                response, answer = outcome.response, outcome.answer
                if answer is None:
                    record.answered(outcome.operation, response.status_code, [])
                else:
                    record.answered(
                        answer.operation or outcome.operation,
                        response.status_code,
                        answer.codes,
                        checked=answer.checked,
                        upstream=answer.tally,
                    )
                response.headers["x-request-id"] = request_id
                return response
            record.answered(
                outcome.operation, outcome.status, outcome.codes, checked=outcome.checked
            )
        return self._render(request, outcome, request_id)

    async def _outcome(
        self, request: Request, request_id: str, record: RequestRecord
    ) -> Outcome | Streamed:
        # One reading of Accept for every choice below (GraphiQL, a stream, the JSON type).
        accept = accepted(request.headers.getlist("accept"))
        if (
            request.method == "GET"
            and self._graphiql is not None
            and accept.prefers_page
            and "query" not in request.query_params
        ):
            return Outcome(self._graphiql.html, "text/html")
        try:
            wanted = await self._read(request, accept)
            if isinstance(wanted, Outcome | Streamed):
                return wanted
            return await self._execute(request, wanted, request_id, record)
        except BadRequest as exc:
            return Outcome(refusal_body(exc), JSON, exc.status, [exc.code], headers=exc.headers)

    # -- read: from HTTP to the document to run --

    async def _read(self, request: Request, accept: Accepted) -> Wanted | Streamed:
        """The GraphQL request in `request`; raises `BadRequest` for a malformed one."""
        if request.method not in ("GET", "POST"):
            raise BadRequest("Use GET or POST.", status=405, headers={"allow": "GET, POST"})
        # graphql-sse: the same request checks, then an event stream instead of one answer
        # (see `gateway.media` for when a client that lists both gets which).
        streams = self._event_streams if accept.event_stream else None
        preferred = streams is not None and accept.prefers_event_stream
        media_type = JSON if preferred else _answer_type(accept)
        if self._csrf_prevention and not _preflighted(request):
            raise BadRequest(
                "This request has been blocked as a potential Cross-Site Request Forgery. "
                "Send it with `Content-Type: application/json`, or add a non-empty "
                "`Apollo-Require-Preflight` header.",
            )
        params = await self._read_params(request)
        if streams is not None and (preferred or self._subscribes(params)):
            response, answer = await streams.respond(
                request,
                query=params.query,
                variables=params.variables,
                operation_name=params.operation_name,
                extensions=params.extensions,
            )
            return Streamed(response, params.operation_name, answer)
        return Wanted(media_type, params)

    def _subscribes(self, params: GraphQLParams) -> bool:
        """Whether `params` name a subscription (a document that does not parse does not)."""
        if params.query is None:
            return False
        # Parsed once for both: the live operations find this parse in the same cache.
        kind = self._execution.operation_type(params.query, params.operation_name)
        return kind is OperationType.SUBSCRIPTION

    # -- execute: parse, validate, run (in `GraphQLExecution`) --

    async def _execute(
        self, request: Request, wanted: Wanted, request_id: str, record: RequestRecord
    ) -> Outcome:
        media_type, params = wanted.media_type, wanted.params
        # One verdict on the credentials for the context and the record alike.
        asked = self._execution.ask(
            params,
            self._make_context,
            request_id,
            _credentials(request),
            refresh=wants_fresh(request.headers),
        )
        if isinstance(asked, Answer):
            # An unknown persisted query: 200 whatever the media type (see `Answer`).
            return Outcome(asked.body, media_type, asked.status, asked.codes)
        query = asked.query
        if request.method == "GET" and self._execution.operation_type(
            query, params.operation_name
        ) not in (None, OperationType.QUERY):
            self._execution.forget(query)
            raise BadRequest(
                "Only queries may be sent with GET; use POST.",
                status=405,
                headers={"allow": "POST"},
            )
        # The request's line reads what the operation's tally holds when the request ends
        # (cut short or failing too).
        record.upstream = asked.context.tally
        answer = await self._execution.answer(asked)
        # application/json answers 200 to every well-formed request (legacy clients read
        # the body); the newer media type lets the status say that nothing was executed.
        status = 400 if answer.request_error and media_type == GRAPHQL_RESPONSE_JSON else 200
        return Outcome(
            answer.body,
            media_type,
            status,
            answer.codes,
            answer.operation,
            fetched_at=answer.fetched_at,
            checked=answer.checked,
        )

    # -- render: the outcome as an HTTP answer --

    def _render(self, request: Request, outcome: Outcome, request_id: str) -> GraphQLResponse:
        body = outcome.body if isinstance(outcome.body, str) else orjson.dumps(outcome.body)
        response = GraphQLResponse(
            body, outcome.status, outcome.headers, media_type=outcome.media_type
        )
        response.headers["x-request-id"] = request_id
        if request.method == "GET":
            _cache_headers(response, outcome.codes, self._get_max_age)
        # A full answer without errors may be kept (warnings do not count).
        cacheable = outcome.status == 200 and not outcome.codes
        response.verdict = AnswerVerdict(cacheable, outcome.operation, outcome.fetched_at)
        return response

    async def _read_params(self, request: Request) -> GraphQLParams:
        if request.method == "GET":
            query = request.query_params
            raw: dict[str, Any] = {
                "query": query.get("query"),
                "operationName": query.get("operationName"),
                "variables": _json_param(query.get("variables"), "variables"),
                "extensions": _json_param(query.get("extensions"), "extensions"),
            }
        else:
            content_type = request.headers.get("content-type", "")
            if content_type.split(";")[0].strip().lower() != JSON:
                raise BadRequest(
                    "Send GraphQL requests as `Content-Type: application/json`.", status=415
                )
            body = await _read_body(request, self._max_body_bytes)
            try:
                raw = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise BadRequest("The request body is not valid JSON.") from None
            if not isinstance(raw, dict):
                raise BadRequest(
                    "The request body must be a JSON object (batched requests are not supported).",
                )
        return read_params(raw)


def _json_param(value: str | None, name: str) -> Any:
    if value is None or value == "":
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        raise BadRequest(f"`{name}` must be JSON.") from None


async def _read_body(request: Request, limit: int) -> bytes:
    body = await request_facts(request.scope).read_body(request.scope, request.receive, limit)
    if isinstance(body, RequestBodyRefusal):
        raise BadRequest(body.message, status=body.status, headers=refused_headers(body))
    return body


def _answer_type(accept: Accepted) -> str:
    if accept.answer is None:
        raise BadRequest(
            f"This endpoint answers `{GRAPHQL_RESPONSE_JSON}` or `{JSON}`.", status=406
        )
    return accept.answer


def _cache_headers(response: Response, codes: list[str], max_age: int) -> None:
    # GET answers may be kept by the browser, never by a shared cache: they depend on
    # the caller's credentials and on Accept (one URL serves GraphiQL and JSON).
    response.headers["vary"] = "Accept, Authorization, X-Catapult-User-Id"
    if response.media_type == "text/html":
        return
    cacheable = response.status_code == 200 and not codes
    response.headers["cache-control"] = f"private, max-age={max_age}" if cacheable else "no-store"


def _preflighted(request: Request) -> bool:
    if any(request.headers.get(name, "").strip() for name in PREFLIGHT_HEADERS):
        return True
    content_type = request.headers.get("content-type")
    if content_type is None:
        # A GET without a content type is a simple request.
        return False
    return content_type.split(";")[0].strip().lower() not in _SIMPLE_CONTENT_TYPES


def _credentials(request: Request) -> CredentialsVerdict:
    return request_facts(request.scope).credentials


def _request_id(request: Request) -> str:
    return request_facts(request.scope).request_id
