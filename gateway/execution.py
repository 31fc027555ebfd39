"""GraphQL execution for every transport: parse -> validate (+limits) -> plan -> execute.

    GraphQLExecution.run(context, query, params)          queries, mutations
      parse        cached per document text (a parse error is an answer too)
      validate     graphql-core's rules and the gateway's limits, cached with the document
      plan         the compiled path for calls-only operations, cached per operation
      execute      the plan, or graphql-core over the schema when there is none
      -> OperationResult: the response body, its errors' codes, its warnings (reported
         here, once), when its oldest upstream data was fetched

The HTTP endpoint (`gateway/endpoint.py`) and the live operations of WebSocket and SSE
(`gateway/live/operations.py`) both run their operations here, with one cache of
documents, verdicts and plans: what an operation means does not depend on how it came.
Subscriptions are parsed and validated here too, and their executor built here; the
live operations drive it. As Apollo Server's request pipeline, this knows no transport:
the caller makes the operation's context (`MakeContext`) and observes it in its own
record (the context's upstream tally); what answers, and with which status, is the
caller's.

graphql-core is driven directly, with strawberry's schema, so that every error leaving
the gateway carries a code: the gateway's own errors keep theirs, anything unexpected is
masked as INTERNAL_SERVER_ERROR with the request id (the detail goes to the log only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from graphql import (
    DocumentNode,
    ExecutionResult,
    Executor,
    GraphQLError,
    GraphQLSchema,
    NoSchemaIntrospectionCustomRule,
    OperationType,
    execute,
    get_operation_ast,
    specified_rules,
    validate,
)
from graphql.execution.executor_throwing_on_incremental import ExecutorThrowingOnIncremental

from gateway.bounded import BoundedCache, memoize
from gateway.context import Context, MakeContext, UpstreamWarning
from gateway.credentials import Credentials, CredentialsVerdict
from gateway.errors import BadRequest, OperationTooComplex, PersistedQueryNotFound
from gateway.fastpath import FastPlan, compile_plan
from gateway.graphql_errors import (
    coded,
    format_error,
    internal_error,
    ordered_warnings,
    refusal_body,
    render_warnings,
)
from gateway.limits import OperationLimits, check_limits, parse_document, too_complex
from gateway.persisted_queries import PersistedQueries
from gateway.upstream.tally import UpstreamTally

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


# The refusal of params that name no document to run (neither a query nor a known hash).
NO_DOCUMENT = "The request must carry a GraphQL document in `query`."


class WarningsReport(Protocol):
    """`Telemetry.upstream_warnings`: each warning counted, each kind logged once."""

    def __call__(self, warnings: Sequence[UpstreamWarning], request_id: str) -> None: ...


# GraphQLParams and OperationResult are made for every request and never changed after.
# They are not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__, about 1,200 instructions a field against under 400 (callgrind).
@dataclass(slots=True)
class GraphQLParams:
    """The parameters of one GraphQL request: from a query string, a JSON body, or a
    live transport's message (the same object in graphql-ws and graphql-sse)."""

    query: str | None  # None only with an automatic persisted query's hash
    variables: dict[str, Any] | None
    operation_name: str | None
    extensions: dict[str, Any] | None


def read_params(raw: dict[str, Any]) -> GraphQLParams:
    """The parameters in a request's JSON object; `BadRequest` for malformed ones."""
    query = raw.get("query")
    extensions = raw.get("extensions")
    persisted = isinstance(extensions, dict) and "persistedQuery" in extensions
    if not (query is None and persisted) and (not isinstance(query, str) or not query.strip()):
        raise BadRequest(NO_DOCUMENT)
    operation_name = raw.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        raise BadRequest("`operationName` must be a string.")
    variables = raw.get("variables")
    if variables is not None and not isinstance(variables, dict):
        raise BadRequest("`variables` must be a JSON object.")
    if extensions is not None and not isinstance(extensions, dict):
        raise BadRequest("`extensions` must be a JSON object.")
    return GraphQLParams(query, variables, operation_name or None, extensions)


@dataclass(slots=True)
class OperationResult:
    """What running one query or mutation came to.

    `body` is the GraphQL response body. `request_error`: nothing was executed (the
    document did not parse or validate, the variables did not fit, the operation was
    refused as too complex), so the body has no `data`. `valid`: the document parsed and
    validated (the operation's name may then take a metrics slot). `codes` are its
    errors' codes; `fetched_at` is when the oldest upstream answer it was built from was
    fetched, if it used any.
    """

    body: dict[str, Any]
    codes: list[str]
    operation: str | None
    request_error: bool
    valid: bool
    fetched_at: float | None = None

    def checked(self, credentials: CredentialsVerdict) -> bool:
        """Whether the operation's name may take a metrics slot (see `Metrics`): the
        document parsed and validated, for usable credentials the upstream did not refuse
        (until it answers, the name is still unchecked). One decision for every transport."""
        return (
            self.valid
            and isinstance(credentials, Credentials)
            and "UNAUTHENTICATED" not in self.codes
        )


@dataclass(slots=True)
class Asked:
    """A request read down to what it runs: the document, its params, and the context it
    runs with, made for the caller of the credentials verdict its transport read once.

    The caller's record reads the context's tally before it awaits `answer`: the line of
    an operation cut short still says what it sent until then."""

    query: str
    params: GraphQLParams
    context: Context
    credentials: CredentialsVerdict


@dataclass(slots=True)
class Answer:
    """What one request's query or mutation came to, before a transport renders it.

    `status` is the refusal's when nothing was read far enough to run (an unknown
    persisted query is a 200: Apollo Client's persisted-query link turns APQ off for good
    on a 400), else 200; the HTTP endpoint may still answer a `request_error` 400.
    `checked`: the operation's name may take a metrics slot. `tally` is the operation's
    upstream tally (None when none ran). Each caller fills its own record from this.
    """

    body: dict[str, Any]
    codes: list[str]
    operation: str | None
    status: int
    request_error: bool
    checked: bool
    tally: UpstreamTally | None
    fetched_at: float | None = None


def refused(exc: BadRequest | PersistedQueryNotFound) -> Answer:
    """The answer to a request refused before anything ran."""
    status = exc.status if isinstance(exc, BadRequest) else 200
    return Answer(refusal_body(exc), [exc.code], None, status, True, False, None)


class GraphQLExecution:
    """Parses, validates and runs GraphQL operations, with their caches, for every transport."""

    def __init__(
        self,
        schema: GraphQLSchema,
        *,
        report_warnings: WarningsReport,
        persisted_queries: PersistedQueries | None,
        limits: OperationLimits,
        fast_path: bool,
        introspection: bool,
        suggestions: bool,
    ) -> None:
        self._schema = schema
        self._report_warnings = report_warnings
        self._persisted = persisted_queries
        self._limits = limits
        self._rules = (
            specified_rules
            if introspection
            else (*specified_rules, NoSchemaIntrospectionCustomRule)
        )
        self._hide_suggestions = not suggestions
        self._documents: BoundedCache[Any, Any] = _document_cache()
        self._parse: Callable[[str], DocumentNode | GraphQLError] = memoize(
            self._parse_document, self._documents, _document_weight
        )
        # Keyed by the query text, not the document: hashing a document walks its tree.
        self._validate: Callable[..., tuple[dict[str, Any], ...]] = memoize(
            self._validate_query, _document_cache(), _document_weight
        )
        self._fast_path = fast_path
        self._plan = memoize(self._plan_query, _document_cache(), _document_weight)

    def document(self, params: GraphQLParams) -> str | None:
        """The document `params` ask to run: their `query`, or the persisted query their
        hash names (None when they carry neither).

        Raises `PersistedQueryNotFound` for a hash not known yet, `BadRequest` for a bad
        persisted-query extension."""
        if self._persisted is None:
            return params.query
        return self._persisted.resolve(params.query, params.extensions)

    def ask(
        self,
        params: GraphQLParams,
        make_context: MakeContext,
        request_id: str,
        credentials: CredentialsVerdict,
        *,
        refresh: bool,
    ) -> Asked | Answer:
        """What `params` ask to run, with a context made for `credentials`: the one path
        from a request's params to its operation, for every transport. An `Answer` when
        their persisted query is not known yet; raises `BadRequest` for params that name
        no document (or a bad persisted-query extension)."""
        try:
            query = self.document(params)
        except PersistedQueryNotFound as exc:
            return refused(exc)
        if query is None:
            raise BadRequest(NO_DOCUMENT)
        context = make_context(request_id, credentials, refresh=refresh)
        return Asked(query, params, context, credentials)

    async def answer(self, asked: Asked) -> Answer:
        """Run what `asked` holds (see `run`): its answer, with the operation's tally."""
        context = asked.context
        result = await self.run(context, asked.query, asked.params)
        return Answer(
            result.body,
            result.codes,
            result.operation,
            200,
            result.request_error,
            result.checked(asked.credentials),
            context.tally,
            result.fetched_at,
        )

    def parse(self, query: str) -> DocumentNode | GraphQLError:
        """`query` parsed (kept while it is used), or the parse error."""
        return self._parse(query)

    def operation_type(self, query: str, operation_name: str | None) -> OperationType | None:
        """The type of the operation `query` and `operation_name` name; None when the
        document does not parse or names no such operation."""
        document = self._parse(query)
        if isinstance(document, GraphQLError):
            return None
        operation = get_operation_ast(document, operation_name)
        return None if operation is None else operation.operation

    def validate(self, query: str, document: DocumentNode) -> tuple[dict[str, Any], ...]:
        """The errors of `document` (parsed from `query`) against the schema's rules and
        the limits, coded GRAPHQL_VALIDATION_FAILED or OPERATION_TOO_COMPLEX (none when
        it may run); kept with the document. A caller that will not run a refused
        document lets go of its parse with `forget`."""
        # The document is handed on: past the document cache's item bound nothing is
        # kept, and parsing the text again cost a parse each time.
        return self._validate(query, document=document)

    def forget(self, query: str) -> None:
        """Drop the kept parse of `query`, a document that will not run.

        A refused document keeps only its verdict, which is small. Its parse is some 80
        to 250 bytes of small objects per character of text: distinct refused documents
        (an attacker's cache stuffing) would hold up to the cache's 32 MiB of them for
        its lifetime, interleaved with whatever else is allocated meanwhile, so that
        the allocator's arenas stay resident long after the parses are freed (measured
        with bench/hostile.py: +30 MB of RSS a minute after the attack).
        """
        self._documents.pop((query,))

    async def run(self, context: Context, query: str, params: GraphQLParams) -> OperationResult:
        """Run the query or mutation `query` (the document `params` asked for) with
        `context`, made by the caller for the request's caller (the credentials verdict
        it read once) and observed by it (the context's tally). Raises `BadRequest` for a
        subscription: those are the live transports'.
        """
        document = self._parse(query)
        if isinstance(document, GraphQLError):
            return _result([coded(document, "GRAPHQL_PARSE_FAILED")], None, request_error=True)
        operation = get_operation_ast(document, params.operation_name)
        name = operation.name.value if operation is not None and operation.name else None
        if operation is not None and operation.operation is OperationType.SUBSCRIPTION:
            self.forget(query)
            raise BadRequest(
                "Subscriptions are served over WebSocket (the graphql-transport-ws "
                "subprotocol) or Server-Sent Events (`Accept: text/event-stream`).",
            )
        validation_errors = self._validate(query, document=document)
        if validation_errors:
            self.forget(query)
            return _result(list(validation_errors), name, request_error=True)
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
                return _result([coded(error, refusal.code)], name, request_error=True, valid=True)
            except Exception:
                # As the executor masks a resolver's failure: coded, with the request
                # id, the detail in the log only (never a bare 500).
                log.exception(
                    "unexpected error in the fast path (request id %s)", context.request_id
                )
                return _result([internal_error(context.request_id)], name, valid=True)
            if data is not None:
                return self._executed(context, name, data, [])
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
        return self._executed(context, name, result.data, result.errors or [])

    def subscription(
        self,
        document: DocumentNode,
        context: Context,
        variables: dict[str, Any] | None,
        operation_name: str | None,
    ) -> Executor[Context] | list[GraphQLError]:
        """graphql-core's executor of the (validated) subscription `document`, or the
        errors of variables that do not fit it (nothing ran)."""
        return ExecutorThrowingOnIncremental.build(
            self._schema,
            document,
            context_value=context,
            raw_variable_values=variables,
            operation_name=operation_name,
            hide_suggestions=self._hide_suggestions,
        )

    def update(self, result: ExecutionResult, context: Context, request_id: str) -> dict[str, Any]:
        """One result of a subscription as its subscriber sees it; its warnings reported."""
        payload: dict[str, Any] = {"data": result.data}
        if result.errors:
            payload["errors"] = [format_error(error, request_id) for error in result.errors]
        # One update's warnings: the context outlives it (graphql-core executes every
        # event with the same context), so they are taken out as they are reported.
        # Counted and logged as a response's are, once per execution (subscribers sent
        # the same bytes share it).
        warnings, context.warnings[:] = list(context.warnings), []
        if warnings:
            found = ordered_warnings(warnings, result.data)
            self._report_warnings(found, request_id)
            payload["extensions"] = {"warnings": render_warnings(found, answer="update")}
        return payload

    def _executed(
        self,
        context: Context,
        operation: str | None,
        data: dict[str, Any] | None,
        raised: Sequence[GraphQLError],
    ) -> OperationResult:
        """The result of an operation that ran, on either path."""
        errors = _by_root_field([format_error(e, context.request_id) for e in raised], data)
        # No data at all means the variables could not be coerced: a request error.
        request_error = data is None and bool(raised) and all(e.path is None for e in raised)
        if request_error:
            for error in errors:
                error.setdefault("extensions", {}).setdefault("code", "BAD_USER_INPUT")
        warnings = [] if request_error else self._warnings(context, data)
        return _result(
            errors,
            operation,
            data,
            request_error,
            valid=True,
            warnings=warnings,
            fetched_at=context.calls.oldest_fetch,
        )

    def _warnings(self, context: Context, data: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The response's `extensions.warnings`, each logged and counted once, here."""
        if not context.warnings:
            return []
        found = ordered_warnings(context.warnings, data)
        self._report_warnings(found, context.request_id)
        return render_warnings(found, answer="response")

    def _plan_query(
        self, query: str, operation_name: str | None, *, document: DocumentNode
    ) -> FastPlan | None:
        return compile_plan(self._schema, document, get_operation_ast(document, operation_name))

    def _validate_query(self, query: str, *, document: DocumentNode) -> tuple[dict[str, Any], ...]:
        # Kept rendered: a GraphQLError holds its nodes, and through their locations
        # every token of the document, so a kept verdict would keep the whole parse.
        errors = self._validate_document(document)
        return tuple(coded(error, "GRAPHQL_VALIDATION_FAILED") for error in errors)

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


def _result(
    errors: list[dict[str, Any]],
    operation: str | None,
    data: dict[str, Any] | None = None,
    request_error: bool = False,
    *,
    valid: bool = False,
    warnings: list[dict[str, Any]] | None = None,
    fetched_at: float | None = None,
) -> OperationResult:
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
    codes = [str(e.get("extensions", {}).get("code")) for e in errors]
    return OperationResult(body, codes, operation, request_error, valid, fetched_at)
