"""GraphQL over HTTP: request parsing, content negotiation, CSRF prevention, status codes.

The endpoint drives graphql-core directly with strawberry's schema, so that parsing and
validation are cached per document and every error leaving the gateway carries a code:
the gateway's own errors keep theirs, anything unexpected is masked as
INTERNAL_SERVER_ERROR with the request id (the detail goes to the log only).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import orjson
from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    GraphQLSchema,
    NoSchemaIntrospectionCustomRule,
    OperationType,
    execute,
    get_operation_ast,
    specified_rules,
    validate,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.bounded import BoundedCache, memoize
from gateway.context import Context, MakeContext
from gateway.credentials import request_credentials
from gateway.errors import (
    STOPPED_CODE,
    BadRequest,
    OperationTooComplex,
    PersistedQueryNotFound,
    Unauthenticated,
)
from gateway.fastpath import FastPlan, compile_plan
from gateway.graphiql import GraphiQLPage
from gateway.graphql_errors import (
    coded,
    format_error,
    internal_error,
    ordered_warnings,
    render_warnings,
)
from gateway.limits import OperationLimits, check_limits, parse_document, too_complex
from gateway.media import GRAPHQL_RESPONSE_JSON, JSON, Accepted, accepted
from gateway.observability.record import RequestRecord, scope_request_id
from gateway.observability.telemetry import Telemetry
from gateway.persisted_queries import PersistedQueries
from gateway.request_body import RequestBodyRefusal, read_body, refused_headers

log = logging.getLogger("gateway.request")


# What a document's parse, validation and plan cost in memory, per character of its text,
# at most: measured at 230-250 bytes for documents dense with tokens (one alias or field
# name after another), about 1 for one long comment. Each cache holds at most 512
# documents and 32 MiB by this estimate; a document estimated above 4 MiB (16 KiB of
# text) is prepared afresh each time rather than kept.
DOCUMENT_BYTES_PER_CHARACTER = 256
DOCUMENT_CACHE_ENTRIES = 512
DOCUMENT_CACHE_BYTES = 32 * 1024 * 1024
DOCUMENT_CACHE_ITEM_BYTES = 4 * 1024 * 1024
# A prepared document is kept this long after its last use: a burst of distinct
# documents (an attacker's cache stuffing) is freed within it once the burst ends,
# instead of staying resident until newer documents push it out, and a document in use
# is never prepared again (bench/instructions.py under valgrind, whose clock runs some
# fifty times slower, counted the re-preparations as 4% of every cache miss).
DOCUMENT_CACHE_SECONDS = 30.0

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
    ) -> Awaitable[Response]: ...


# GraphQLParams, Wanted, Outcome and AnswerVerdict are made for every request and never
# changed after.
# They are not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__, about 1,200 instructions a field against under 400 (callgrind),
# some 15,000 a request for these and the answer cache's verdict.
@dataclass(slots=True)
class GraphQLParams:
    """The parameters of one GraphQL request, from a query string or a JSON body."""

    query: str | None  # None only with an automatic persisted query's hash
    variables: dict[str, Any] | None
    operation_name: str | None
    extensions: dict[str, Any] | None


@dataclass(slots=True)
class Wanted:
    """What reading the HTTP request found: the document to run, and how to answer."""

    media_type: str
    query: str
    params: GraphQLParams


@dataclass(slots=True)
class Outcome:
    """What one request came to, before it is rendered.

    `body` is a GraphQL response body, or the GraphiQL page's HTML. `codes` are its
    errors' codes (for the log line, the metrics and the cache's verdict); `fetched_at`
    is when the oldest upstream answer it was built from was fetched, if it used any.
    """

    body: dict[str, Any] | str
    media_type: str
    status: int = 200
    codes: list[str] = field(default_factory=list)
    operation: str | None = None
    headers: dict[str, str] | None = None
    fetched_at: float | None = None


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
        schema: GraphQLSchema,
        make_context: MakeContext,
        *,
        graphiql: GraphiQLPage | None,
        telemetry: Telemetry,
        persisted_queries: PersistedQueries | None,
        limits: OperationLimits,
        max_body_bytes: int,
        csrf_prevention: bool,
        get_max_age: int,
        fast_path: bool,
        introspection: bool,
        suggestions: bool,
        event_streams: EventStreamResponder | None,
    ) -> None:
        self._schema = schema
        self._event_streams = event_streams
        self._make_context = make_context
        self._graphiql = graphiql
        self._telemetry = telemetry
        self._max_body_bytes = max_body_bytes
        self._csrf_prevention = csrf_prevention
        self._persisted = persisted_queries
        self._get_max_age = get_max_age
        self._limits = limits
        self._rules = (
            specified_rules
            if introspection
            else (*specified_rules, NoSchemaIntrospectionCustomRule)
        )
        self._hide_suggestions = not suggestions
        self._documents: BoundedCache[Any, Any] = _document_cache()
        self._parse = memoize(self._parse_document, self._documents, _document_weight)
        # Keyed by the query text, not the document: hashing a document walks its tree.
        self._validate = memoize(self._validate_query, _document_cache(), _document_weight)
        self._fast_path = fast_path
        self._plan = memoize(self._plan_query, _document_cache(), _document_weight)

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
                # Cut short (the server's shutdown): the shutdown layer answers 503 with
                # this code and request id, and the log line must say what was answered.
                record.status, record.error_codes = 503, [STOPPED_CODE]
                raise
            if isinstance(outcome, Streamed):
                # Without a verdict, so never kept; it says itself not to be (`no-cache`).
                record.operation, record.status = outcome.operation, outcome.response.status_code
                outcome.response.headers["x-request-id"] = request_id
                return outcome.response
            record.operation, record.error_codes = outcome.operation, outcome.codes
            if "UNAUTHENTICATED" in outcome.codes:
                # The upstream refused the credentials: the name is still unchecked.
                record.operation_checked = False
            record.status = outcome.status
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
            body = {"errors": [{"message": exc.message, "extensions": exc.extensions}]}
            return Outcome(body, JSON, exc.status, [exc.code], headers=exc.headers)

    # -- read: from HTTP to the document to run --

    async def _read(self, request: Request, accept: Accepted) -> Wanted | Outcome | Streamed:
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
            response = await streams.respond(
                request,
                query=params.query,
                variables=params.variables,
                operation_name=params.operation_name,
                extensions=params.extensions,
            )
            return Streamed(response, params.operation_name)
        try:
            query = (
                params.query
                if self._persisted is None
                else self._persisted.resolve(params.query, params.extensions)
            )
        except PersistedQueryNotFound as exc:
            # 200 whatever the media type: Apollo Client's persisted-query link turns
            # APQ off for good on a 400, instead of resending with the document.
            body = {"errors": [{"message": exc.message, "extensions": exc.extensions}]}
            return Outcome(body, media_type, codes=[exc.code])
        if query is None:
            raise BadRequest("The request must carry a GraphQL document in `query`.")
        return Wanted(media_type, query, params)

    def _subscribes(self, params: GraphQLParams) -> bool:
        """Whether `params` name a subscription (a document that does not parse does not)."""
        if params.query is None:
            return False
        document = self._parse(params.query)
        if isinstance(document, GraphQLError):
            return False
        operation = get_operation_ast(document, params.operation_name)
        if operation is None or operation.operation is not OperationType.SUBSCRIPTION:
            return False
        # The live operations parse what they serve themselves: this parse is not kept.
        self._forget(params.query)
        return True

    # -- execute: parse, validate, run --

    async def _execute(
        self, request: Request, wanted: Wanted, request_id: str, record: RequestRecord
    ) -> Outcome:
        media_type, query, params = wanted.media_type, wanted.query, wanted.params
        document = self._parse(query)
        if isinstance(document, GraphQLError):
            return _result(
                media_type, [coded(document, "GRAPHQL_PARSE_FAILED")], None, request_error=True
            )
        operation = get_operation_ast(document, params.operation_name)
        name = _name(operation)
        if (
            request.method == "GET"
            and operation is not None
            and operation.operation is not OperationType.QUERY
        ):
            self._forget(query)
            raise BadRequest(
                "Only queries may be sent with GET; use POST.",
                status=405,
                headers={"allow": "POST"},
            )
        if operation is not None and operation.operation is OperationType.SUBSCRIPTION:
            self._forget(query)
            raise BadRequest(
                "Subscriptions are served over WebSocket (the graphql-transport-ws "
                "subprotocol) or Server-Sent Events (`Accept: text/event-stream`).",
            )
        # The document parsed above is handed on: past the document cache's item bound
        # nothing is kept, and each step parsing the text again cost a parse each.
        validation_errors = self._validate(query, document=document)
        if validation_errors:
            self._forget(query)
            return _result(media_type, list(validation_errors), name, request_error=True)
        # Only now may the operation's name take a metrics slot (see `Metrics`).
        record.operation_checked = _has_credentials(request)
        context = self._make_context(request, request_id)
        # The line reads what the operation's tally holds when the request ends.
        record.upstream = context.tally
        plan = (
            self._plan(query, params.operation_name, document=document) if self._fast_path else None
        )
        if plan is not None:
            try:
                data = await plan.run(context, params.variables)
            except OperationTooComplex as refusal:
                # The compiled path counts every page before it builds any: an operation
                # over GATEWAY_MAX_CALLS_PER_OPERATION is refused as a whole, as the
                # document check refuses, and nothing large is built or sent.
                error = too_complex(refusal.message, **refusal.extra)
                return _result(media_type, [coded(error, refusal.code)], name, request_error=True)
            except Exception:
                # As the executor masks a resolver's failure: coded, with the request
                # id, the detail in the log only (never a bare 500).
                log.exception("unexpected error in the fast path (request id %s)", request_id)
                return _result(media_type, [internal_error(request_id)], name)
            if data is not None:
                return self._executed(context, media_type, name, data, [])
        result = execute(
            self._schema,
            document,
            context_value=context,
            variable_values=params.variables,
            operation_name=params.operation_name,
            hide_suggestions=self._hide_suggestions,
        )
        if not isinstance(result, ExecutionResult):
            result = await result
        return self._executed(context, media_type, name, result.data, result.errors or [])

    def _executed(
        self,
        context: Context,
        media_type: str,
        operation: str | None,
        data: dict[str, Any] | None,
        raised: Sequence[GraphQLError],
    ) -> Outcome:
        """The outcome of an operation that ran, on either path."""
        errors = _by_root_field([format_error(e, context.request_id) for e in raised], data)
        # No data at all means the variables could not be coerced: a request error.
        request_error = data is None and bool(raised) and all(e.path is None for e in raised)
        if request_error:
            for error in errors:
                error.setdefault("extensions", {}).setdefault("code", "BAD_USER_INPUT")
        warnings = [] if request_error else self._warnings(context, data, context.request_id)
        return _result(
            media_type,
            errors,
            operation,
            data,
            request_error,
            warnings=warnings,
            fetched_at=context.calls.oldest_fetch,
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
        return _params(raw)

    def _plan_query(
        self, query: str, operation_name: str | None, *, document: DocumentNode
    ) -> FastPlan | None:
        return compile_plan(self._schema, document, get_operation_ast(document, operation_name))

    def _warnings(
        self, context: Context, data: dict[str, Any] | None, request_id: str
    ) -> list[dict[str, Any]]:
        """The response's `extensions.warnings`, each logged and counted once, here."""
        if not context.warnings:
            return []
        found = ordered_warnings(context.warnings, data)
        self._telemetry.upstream_warnings(found, request_id)
        return render_warnings(found, answer="response")

    def _validate_query(self, query: str, *, document: DocumentNode) -> tuple[dict[str, Any], ...]:
        # Kept rendered: a GraphQLError holds its nodes, and through their locations
        # every token of the document, so a kept verdict would keep the whole parse.
        errors = self._validate_document(document)
        return tuple(coded(error, "GRAPHQL_VALIDATION_FAILED") for error in errors)

    def _forget(self, query: str) -> None:
        """Drop the kept parse of `query`, a document this endpoint will not run.

        A refused document keeps only its verdict, which is small. Its parse is some 80
        to 250 bytes of small objects per character of text: distinct refused documents
        (an attacker's cache stuffing) would hold up to the cache's 32 MiB of them for
        its lifetime, interleaved with whatever else is allocated meanwhile, so that
        the allocator's arenas stay resident long after the parses are freed (measured
        with bench/hostile.py: +30 MB of RSS a minute after the attack).
        """
        self._documents.pop((query,))

    def _parse_document(self, query: str) -> DocumentNode | GraphQLError:
        return parse_document(query, self._limits)

    def _validate_document(self, document: DocumentNode) -> list[GraphQLError]:
        # Limits are checked with validation, so their verdict is cached with the document.
        errors = validate(
            self._schema, document, self._rules, hide_suggestions=self._hide_suggestions
        )
        return errors or check_limits(document, self._limits)


def _document_cache() -> BoundedCache[Any, Any]:
    return BoundedCache(
        max_entries=DOCUMENT_CACHE_ENTRIES,
        max_bytes=DOCUMENT_CACHE_BYTES,
        max_item_bytes=DOCUMENT_CACHE_ITEM_BYTES,
        lifetime=DOCUMENT_CACHE_SECONDS,
    )


def _document_weight(query: str, *_: Any, **__: Any) -> int:
    return len(query) * DOCUMENT_BYTES_PER_CHARACTER


def _by_root_field(
    errors: list[dict[str, Any]], data: dict[str, Any] | None
) -> list[dict[str, Any]]:
    # Root fields resolve concurrently, so their errors arrive in whatever order their
    # upstream answers did; list them in the order of the fields they belong to, so the
    # same request always gets the same bytes. (Within one field the order is stable.)
    if len(errors) < 2:
        return errors  # nothing to order, as in most answers
    order = {key: index for index, key in enumerate(data or ())}
    return sorted(errors, key=lambda error: order.get(str((error.get("path") or ("",))[0]), -1))


def _params(raw: dict[str, Any]) -> GraphQLParams:
    query = raw.get("query")
    extensions = raw.get("extensions")
    persisted = isinstance(extensions, dict) and "persistedQuery" in extensions
    if not (query is None and persisted) and (not isinstance(query, str) or not query.strip()):
        raise BadRequest("The request must carry a GraphQL document in `query`.")
    operation_name = raw.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        raise BadRequest("`operationName` must be a string.")
    variables = raw.get("variables")
    if variables is not None and not isinstance(variables, dict):
        raise BadRequest("`variables` must be a JSON object.")
    if extensions is not None and not isinstance(extensions, dict):
        raise BadRequest("`extensions` must be a JSON object.")
    return GraphQLParams(query, variables, operation_name or None, extensions)


def _json_param(value: str | None, name: str) -> Any:
    if value is None or value == "":
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        raise BadRequest(f"`{name}` must be JSON.") from None


async def _read_body(request: Request, limit: int) -> bytes:
    body = await read_body(request.scope, request.receive, limit)
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


def _has_credentials(request: Request) -> bool:
    try:
        request_credentials(request.scope)
    except Unauthenticated:
        return False
    return True


def _request_id(request: Request) -> str:
    return scope_request_id(request.scope)


def _name(operation: Any) -> str | None:
    return operation.name.value if operation is not None and operation.name else None


def _result(
    media_type: str,
    errors: list[dict[str, Any]],
    operation: str | None,
    data: dict[str, Any] | None = None,
    request_error: bool = False,
    *,
    warnings: list[dict[str, Any]] | None = None,
    fetched_at: float | None = None,
) -> Outcome:
    body: dict[str, Any] = {}
    if errors:
        body["errors"] = errors
    if not request_error:
        body["data"] = data
    # Tolerated upstream oddities: beside the data, never in `errors`, so that clients
    # which treat any error as a failure still get the page (the README's "Warnings:
    # upstream data the gateway tolerates"). They do not make an answer uncacheable.
    if warnings:
        body["extensions"] = {"warnings": warnings}
    # application/json answers 200 to every well-formed request (legacy clients read
    # the body); the newer media type lets the status say that nothing was executed.
    status = 400 if request_error and media_type == GRAPHQL_RESPONSE_JSON else 200
    codes = [str(e.get("extensions", {}).get("code")) for e in errors]
    return Outcome(body, media_type, status, codes, operation, fetched_at=fetched_at)
