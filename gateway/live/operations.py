"""One GraphQL request arriving over WebSocket or SSE, whatever its operation type.

    Operations.run(request)
      query or mutation   `GraphQLExecution.run`, as the HTTP endpoint runs one, with the
                          connection's credential headers: the same parsing, limits,
                          persisted queries, fast path and warnings (the one path,
                          `GraphQLExecution.ask` and `answer`) -> `Single` (or `Refused`
                          when nothing ran), with its `Answer`: the endpoint records an
                          event stream's in the HTTP request's one line; a socket's is
                          recorded here, as a request of its own with an id of its own
      subscription        parsed, validated and limited by `GraphQLExecution` (the same
                          cache), then graphql-core's subscription pipeline with a context
                          whose `live` watches pages through the hub -> `Stream` of
                          serialized results

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
from collections.abc import AsyncIterable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
from graphql import (
    DocumentNode,
    ExecutionResult,
    Executor,
    GraphQLError,
    OperationType,
    create_source_event_stream,
    execute_subscription_event,
    get_operation_ast,
    map_async_iterable,
)
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import Scope

from gateway.cache_control import wants_fresh
from gateway.context import Context, MakeContext
from gateway.credentials import Credentials, CredentialsVerdict, caller
from gateway.errors import BadRequest, GatewayError
from gateway.execution import Answer, GraphQLExecution, read_params, refused
from gateway.graphql_errors import format_error
from gateway.live.hub import LiveCalls, LiveHub
from gateway.live.renders import Renders
from gateway.observability.record import RequestRecord
from gateway.observability.telemetry import Telemetry
from gateway.request_facts import SCOPE_KEY, request_facts
from gateway.schema.subscription import CallsUpdate


@dataclass(frozen=True, slots=True)
class LiveRequest:
    """A GraphQL request as a transport received it, with the caller's credential headers."""

    query: str | None
    variables: dict[str, Any] | None
    operation_name: str | None
    extensions: dict[str, Any] | None
    # Raw header pairs, as `credentials.credentials_verdict` reads them.
    credential_headers: Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Single:
    """The one result of a query or mutation (with its `answer`, for the transport's
    record), or of a subscription that never started."""

    payload: dict[str, Any]
    answer: Answer | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Refused:
    """Errors before execution (parsing, validation, limits): no result at all; a
    query's or mutation's `answer`, for the transport's record."""

    errors: list[dict[str, Any]]
    answer: Answer | None = field(default=None, compare=False)


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
        execution: GraphQLExecution,
        renders: Renders,
        release: Callable[[], None],
    ) -> None:
        self._executor = executor
        self._renders = renders
        self._release = release
        self._execution = execution
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
        # An update's renders, shared by its subscribers (anything else is this one's own).
        renders: dict[Hashable, bytes] = (
            event.update.renders if isinstance(event, CallsUpdate) else {}
        )
        shared = renders.get(self._request)
        if shared is None:
            async with self._renders.turn():
                # Looked for again, in turn: the other subscribers of this request queued
                # with this one, and the render made while they waited is theirs (else
                # each renders again).
                shared = renders.get(self._request)
                if shared is None:
                    return await self._execute(event, renders)
        return shared

    async def _execute(self, event: Any, renders: dict[Hashable, bytes]) -> bytes:
        # What graphql-core's `subscribe` does for every event ("ExecuteSubscriptionEvent").
        # In a worker thread: a page of 1,000 calls takes a large part of a second to
        # execute, and the event loop must go on meanwhile. The selection's resolvers read
        # the page the update already holds; none awaits.
        per_event = self._executor.build_per_event_executor(event)
        executed = await asyncio.to_thread(execute_subscription_event, per_event)
        result = executed if isinstance(executed, ExecutionResult) else await executed
        payload = orjson.dumps(self._execution.update(result, self._context, self._request_id))
        if not result.errors:
            # A result with errors is this subscriber's own: they carry its request id.
            renders.setdefault(self._request, payload)
        return payload


OperationOutcome = Single | Refused | Stream


class Operations:
    """Runs the requests of the WebSocket and SSE transports."""

    def __init__(
        self,
        execution: GraphQLExecution,
        make_context: MakeContext,
        *,
        hub: LiveHub,
        telemetry: Telemetry,
        renders: Renders,
    ) -> None:
        self._execution = execution
        self._make_context = make_context
        self._hub = hub
        self._telemetry = telemetry
        self._renders = renders

    async def run(self, request: LiveRequest, scope: Scope, *, own_line: bool) -> OperationOutcome:
        """Run `request` for the connection `scope` (its headers, client and server).

        `own_line`: the operation is a request of its own (one of a socket's), which a
        query then records itself; else it is its transport's request (an event stream,
        which the endpoint records from the outcome's `answer`).
        """
        document = None if request.query is None else self._execution.parse(request.query)
        if isinstance(document, DocumentNode):
            operation = get_operation_ast(document, request.operation_name)
            if operation is not None and operation.operation is OperationType.SUBSCRIPTION:
                return await self._subscribe(document, request, scope)
        # Queries, mutations, and whatever does not parse or name an operation: run and
        # answered exactly as over HTTP.
        return await self._single(request, scope, own_line)

    async def _single(self, request: LiveRequest, scope: Scope, own_line: bool) -> OperationOutcome:
        http_scope = _http_scope(scope, request)
        http_request = Request(http_scope)
        facts = request_facts(http_scope)
        if own_line:
            # A socket's operation is observed as a request of its own, as the endpoint
            # observes one (its log line, metrics and span), and recorded as it records.
            with self._telemetry.request(http_request, facts.request_id) as record:
                try:
                    answer = await self._answer(
                        http_request, facts.request_id, facts.credentials, request, record
                    )
                except asyncio.CancelledError:
                    record.stopped()
                    raise
                record.answered(
                    answer.operation,
                    answer.status,
                    answer.codes,
                    checked=answer.checked,
                    upstream=answer.tally,
                )
        else:
            answer = await self._answer(
                http_request, facts.request_id, facts.credentials, request, None
            )
        if "data" not in answer.body:
            # A request error (parsing, validation, a persisted query unknown): nothing ran.
            return Refused(list(answer.body.get("errors") or ()), answer)
        return Single(answer.body, answer)

    async def _answer(
        self,
        http_request: Request,
        request_id: str,
        credentials: CredentialsVerdict,
        request: LiveRequest,
        record: RequestRecord | None,
    ) -> Answer:
        """What the endpoint would answer `request` as an `application/json` POST;
        `record`, this operation's own (a socket's), reads its tally as it runs."""
        try:
            params = read_params(
                {
                    "query": request.query,
                    "variables": request.variables,
                    "operationName": request.operation_name,
                    "extensions": request.extensions,
                }
            )
            refresh = wants_fresh(http_request.headers)
            asked = self._execution.ask(
                params, self._make_context, request_id, credentials, refresh=refresh
            )
            if isinstance(asked, Answer):
                return asked
            if record is not None:
                # As the endpoint does: the line reads the tally even of an operation cut short.
                record.upstream = asked.context.tally
            return await self._execution.answer(asked)
        except BadRequest as exc:
            return refused(exc)

    async def _subscribe(
        self, document: DocumentNode, request: LiveRequest, scope: Scope
    ) -> OperationOutcome:
        assert request.query is not None, "a document was parsed from it"
        errors = self._execution.validate(request.query, document)
        if errors:
            # As over HTTP, a refused document keeps no parse (see `forget`).
            self._execution.forget(request.query)
            return Refused(list(errors))
        http_scope = _http_scope(scope, request)
        facts = request_facts(http_scope)
        request_id, credentials = facts.request_id, facts.credentials
        # A context of its own, with its own upstream tally (see `ContextFactory`): no line
        # reads it, as a subscription has none, and its updates come from pollers, each
        # poll counted in a tally of its own (source.py), never into this request's.
        refresh = wants_fresh(Headers(scope=http_scope))
        context = self._make_context(request_id, credentials, refresh=refresh)
        context.live = LiveCalls(self._hub, partial(caller, credentials))
        # graphql-core's `subscribe`, composed by hand (as its documentation suggests) so
        # that `Stream` decides how each event is executed.
        executor = self._execution.subscription(
            document, context, request.variables, request.operation_name
        )
        if isinstance(executor, list):
            # Variables that do not fit the operation: nothing ran.
            return Refused([format_error(error, request_id) for error in executor])
        key = _request_key(request)
        release: Callable[[], None] = _nothing
        if isinstance(credentials, Credentials):
            # Without them the stream refuses, as a query's resolver would: nothing to hold.
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
            return Single(self._execution.update(events, context, request_id))
        return Stream(
            events,
            executor,
            key,
            context,
            request_id,
            self._execution,
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


def _http_scope(scope: Scope, request: LiveRequest) -> Scope:
    """`request` as an HTTP POST on the connection `scope` came from would carry it: for
    its Context (credentials, cache-control) and its record."""
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
        "extensions": {},
        # An event stream's operation is its HTTP request (one request, one id: the one
        # its answer echoes); a socket's operations each have facts of their own.
        **({SCOPE_KEY: request_facts(scope)} if scope.get("type") == "http" else {}),
    }


# What the connection's request said that matters to each operation on it: skipping the
# cache, the trace it belongs to, the client's name. (An event stream's request id comes
# with its facts, shared, see `_http_scope`.)
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
    return [
        (name, value) for name, value in scope.get("headers") or () if name.lower() in _PASSED_ON
    ]
