"""One GraphQL request arriving over WebSocket or SSE, whatever its operation type.

    Operations.run(request)
      query or mutation   the HTTP endpoint answers it, as an in-process POST with the
                          connection's credential headers: the same parsing, limits,
                          persisted queries, fast path, warnings, logs and metrics as
                          over HTTP -> `Single` (or `Refused` when it did not validate)
      subscription        parsed, validated and limited here as the endpoint does, then
                          graphql-core's subscription pipeline with a context whose `live`
                          watches pages through the hub -> `Stream` of serialized results

A subscription's update is executed once per distinct request, not once per subscriber:
every subscriber of a poller that last received the same page receives the same `Update`,
and the first of them to read it executes its selection and keeps the serialized result
in `Update.renders` under the request (document, operation, variables); the others with
the same request send those bytes. With 1,000 calls on a page an execution takes over a
second, so executing per subscriber delayed every update by the number of subscribers.
A result with errors is not shared: its errors carry the subscriber's own request id.
A client can still make every subscription distinct (an alias each): `Renders` executes
one at a time in a worker thread, so the event loop stays responsive, and bounds the
distinct requests one account holds (`GATEWAY_LIVE_MAX_DOCUMENTS_PER_ACCOUNT`).

Each transport turns these into its own messages: graphql-transport-ws `next`, `error` and
`complete`, graphql-sse `next` and `complete` events.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterable, Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import orjson
from graphql import (
    ASTValidationRule,
    DocumentNode,
    ExecutionResult,
    Executor,
    GraphQLError,
    GraphQLSchema,
    OperationType,
    create_source_event_stream,
    execute_subscription_event,
    get_operation_ast,
    map_async_iterable,
    validate,
)
from graphql.execution.executor_throwing_on_incremental import ExecutorThrowingOnIncremental
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Scope

from gateway.context import Context, MakeContext, UpstreamWarning
from gateway.credentials import request_credentials
from gateway.errors import GatewayError
from gateway.graphql_errors import coded, format_error, ordered_warnings, render_warnings
from gateway.limits import OperationLimits, check_limits, parse_document
from gateway.live.hub import LiveCalls, LiveHub
from gateway.live.renders import Renders
from gateway.observability.record import scope_request_id
from gateway.schema.subscription import CallsUpdate

log = logging.getLogger("gateway.live")


class WarningsReport(Protocol):
    """`Telemetry.upstream_warnings`: each warning counted, each kind logged once."""

    def __call__(self, warnings: Sequence[UpstreamWarning], request_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class LiveRequest:
    """A GraphQL request as a transport received it, with the caller's credential headers."""

    query: str | None
    variables: dict[str, Any] | None
    operation_name: str | None
    extensions: dict[str, Any] | None
    # Raw header pairs as `credentials.request_credentials` reads them.
    credential_headers: Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Single:
    """The one result of a query or mutation."""

    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Refused:
    """Errors before execution (parsing, validation, limits): no result at all."""

    errors: list[dict[str, Any]]


class Stream:
    """A subscription's results, each a serialized execution result (JSON bytes); `aclose`
    ends it (and leaves its poller)."""

    def __init__(
        self,
        events: AsyncIterable[Any],
        executor: Executor[Context],
        request: Hashable,
        context: Context,
        request_id: str,
        report_warnings: WarningsReport,
        renders: Renders,
        release: Callable[[], None],
    ) -> None:
        self._executor = executor
        self._renders = renders
        self._release = release
        self._report_warnings = report_warnings
        self._request = request
        self._context = context
        self._request_id = request_id
        # graphql-core's own mapping of events to results (as `subscribe` does): a step
        # cancelled (a client gone while its stream waits) closes the events, so the
        # subscriber leaves its poller even where the canceller cannot await `aclose`.
        self._results = map_async_iterable(_Releasing(events, release), self._render)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._results)

    async def aclose(self) -> None:
        # Released here too: graphql-core's mapping closes nothing it never started.
        self._release()
        await self._results.aclose()

    async def _render(self, event: Any) -> bytes:
        renders: dict[Hashable, bytes] | None = (
            event.update.renders if isinstance(event, CallsUpdate) else None
        )
        if renders is not None and (shared := renders.get(self._request)) is not None:
            return shared
        async with self._renders.turn():
            # Again, in turn: the other subscribers of this request queued with this one,
            # and the render made while they waited is theirs (else each renders again).
            if renders is not None and (shared := renders.get(self._request)) is not None:
                return shared
            # What graphql-core's `subscribe` does for every event
            # ("ExecuteSubscriptionEvent"). In a worker thread: a page of 1,000 calls takes
            # a large part of a second to execute, and the event loop must go on meanwhile.
            # The selection's resolvers read the page the update already holds; none awaits.
            per_event = self._executor.build_per_event_executor(event)
            executed = await asyncio.to_thread(execute_subscription_event, per_event)
            result = executed if isinstance(executed, ExecutionResult) else await executed
            payload = orjson.dumps(
                _payload(result, self._context, self._request_id, self._report_warnings)
            )
            if renders is not None and not result.errors:
                renders.setdefault(self._request, payload)
        return payload


OperationOutcome = Single | Refused | Stream


class Operations:
    """Runs the requests of the WebSocket and SSE transports."""

    def __init__(
        self,
        schema: GraphQLSchema,
        endpoint: ASGIApp,
        make_context: MakeContext,
        *,
        report_warnings: WarningsReport,
        limits: OperationLimits,
        rules: Sequence[type[ASTValidationRule]],
        hide_suggestions: bool,
        renders: Renders,
    ) -> None:
        self._renders = renders
        self._schema = schema
        self._endpoint = endpoint
        self._make_context = make_context
        self._report_warnings = report_warnings
        self._limits = limits
        self._rules = rules
        self._hide_suggestions = hide_suggestions

    async def run(self, request: LiveRequest, scope: Scope) -> OperationOutcome:
        """Run `request` for the connection `scope` (its state, client and server)."""
        document = None if request.query is None else parse_document(request.query, self._limits)
        if isinstance(document, DocumentNode):
            operation = get_operation_ast(document, request.operation_name)
            if operation is not None and operation.operation is OperationType.SUBSCRIPTION:
                return await self._subscribe(document, request, scope)
        # Queries, mutations, and whatever does not parse or name an operation: the
        # endpoint answers those exactly as it would over HTTP.
        return await self._single(request, scope)

    async def _single(self, request: LiveRequest, scope: Scope) -> OperationOutcome:
        body = orjson.dumps(
            {
                key: value
                for key, value in (
                    ("query", request.query),
                    ("variables", request.variables),
                    ("operationName", request.operation_name),
                    ("extensions", request.extensions),
                )
                if value is not None
            }
        )
        status, answer = await _post(self._endpoint, _http_scope(scope, request), body)
        try:
            payload = orjson.loads(answer)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            log.error("the endpoint answered a live request with status %d and no JSON", status)
            return Refused([{"message": "Internal server error.", "extensions": {
                "code": "INTERNAL_SERVER_ERROR"}}])  # fmt: skip
        if "data" not in payload:
            # A request error (parsing, validation, a persisted query unknown): nothing ran.
            return Refused(list(payload.get("errors") or ()))
        return Single(payload)

    async def _subscribe(
        self, document: DocumentNode, request: LiveRequest, scope: Scope
    ) -> OperationOutcome:
        errors = validate(
            self._schema, document, self._rules, hide_suggestions=self._hide_suggestions
        ) or check_limits(document, self._limits)
        if errors:
            return Refused([coded(error, "GRAPHQL_VALIDATION_FAILED") for error in errors])
        http_scope = _http_scope(scope, request)
        request_id = scope_request_id(http_scope)
        # A context of its own, with its own upstream tally (see `ContextFactory`): no line
        # reads it, as a subscription has none, and its updates come from pollers, each
        # poll counted in a tally of its own (source.py), never into this request's.
        context = self._make_context(Request(http_scope), request_id)
        # The hub comes from the lifespan's state, as the context's upstream does: it is
        # opened when the app starts, after this was built.
        hub: LiveHub = Request(http_scope).state.live
        context.live = LiveCalls(hub, partial(request_credentials, http_scope))
        # graphql-core's `subscribe`, composed by hand (as its documentation suggests) so
        # that `Stream` decides how each event is executed.
        executor = ExecutorThrowingOnIncremental.build(
            self._schema,
            document,
            context_value=context,
            raw_variable_values=request.variables,
            operation_name=request.operation_name,
            hide_suggestions=self._hide_suggestions,
        )
        if isinstance(executor, list):
            # Variables that do not fit the operation: nothing ran.
            return Refused([format_error(error, request_id) for error in executor])
        key = _request_key(request)
        try:
            credentials = request_credentials(http_scope)
        except GatewayError:
            # The stream refuses them, as a query's resolver would: nothing to hold.
            release: Callable[[], None] = _nothing
        else:
            try:
                release = self._renders.hold(credentials, key)
            except GatewayError as error:
                refused = GraphQLError(error.message, original_error=error)
                return Refused([format_error(refused, request_id)])
        try:
            created = create_source_event_stream(executor)
            events = await created if inspect.isawaitable(created) else created
        except BaseException:
            release()
            raise
        if isinstance(events, ExecutionResult):
            release()
            # The stream never started (a bad argument, no credentials, no room): one
            # result with the coded error, as graphql-ws sends it, then complete.
            if events.data is None and events.errors and all(e.path is None for e in events.errors):
                return Refused([format_error(error, request_id) for error in events.errors])
            return Single(_payload(events, context, request_id, self._report_warnings))
        return Stream(
            events,
            executor,
            key,
            context,
            request_id,
            self._report_warnings,
            self._renders,
            release,
        )


class _Releasing:
    """A subscription's events that give back its room in `Renders` when they are closed
    (by `Stream.aclose` or a cancelled step), or end."""

    def __init__(self, events: AsyncIterable[Any], release: Callable[[], None]) -> None:
        self._events = aiter(events)
        self._release = release

    def __aiter__(self) -> _Releasing:
        return self

    async def __anext__(self) -> Any:
        try:
            return await anext(self._events)
        except (StopAsyncIteration, Exception):
            self._release()
            raise

    async def aclose(self) -> None:
        self._release()
        close = getattr(self._events, "aclose", None)
        if close is not None:
            await close()


def _nothing() -> None:
    pass


def _request_key(request: LiveRequest) -> Hashable:
    """What makes two subscribers' results the same for the same update: the document,
    the operation chosen and the variables (credentials are the poller's own)."""
    variables = orjson.dumps(request.variables, option=orjson.OPT_SORT_KEYS)
    return (request.query, request.operation_name, variables)


def _payload(
    result: ExecutionResult, context: Context, request_id: str, report: WarningsReport
) -> dict[str, Any]:
    payload: dict[str, Any] = {"data": result.data}
    if result.errors:
        payload["errors"] = [format_error(error, request_id) for error in result.errors]
    # One update's warnings: the context outlives it (graphql-core executes every event
    # with the same context), so they are taken out as they are reported. Counted and
    # logged as a response's are, once per execution (subscribers sent the same bytes
    # share it).
    warnings, context.warnings[:] = list(context.warnings), []
    if warnings:
        found = ordered_warnings(warnings, result.data)
        report(found, request_id)
        payload["extensions"] = {"warnings": render_warnings(found, answer="update")}
    return payload


def _http_scope(scope: Scope, request: LiveRequest) -> Scope:
    """An HTTP POST scope for `request` on the connection `scope` came from."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https" if scope.get("scheme") in ("https", "wss") else "http",
        "path": scope.get("path", "/graphql"),
        "raw_path": scope.get("raw_path", b"/graphql"),
        "root_path": scope.get("root_path", ""),
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"accept", b"application/json"),
            *request.credential_headers,
            *_passed_on(scope),
        ],
        "client": scope.get("client"),
        "server": scope.get("server"),
        # The lifespan's state: the upstream client, cache and pacing of this process.
        "state": scope.get("state", {}),
        "extensions": {},
    }


# What the connection's request said that matters to each operation on it: skipping the
# cache, the trace it belongs to, the client's name. An event stream's request id too (one
# request, one id); a socket's is not, as all its operations would share it.
_PASSED_ON = frozenset(
    {
        b"cache-control",
        b"traceparent",
        b"tracestate",
        b"baggage",
        b"apollographql-client-name",
        b"apollographql-client-version",
    }
)


def _passed_on(scope: Scope) -> list[tuple[bytes, bytes]]:
    names = _PASSED_ON | {b"x-request-id"} if scope.get("type") == "http" else _PASSED_ON
    return [(name, value) for name, value in scope.get("headers") or () if name.lower() in names]


async def _post(app: ASGIApp, scope: Scope, body: bytes) -> tuple[int, bytes]:
    """Send `body` to the ASGI `app` as one request; its status and whole answer."""
    status = 500
    chunks: list[bytes] = []
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)
