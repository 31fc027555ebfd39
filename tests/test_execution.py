"""`GraphQLExecution`: parse -> validate (+limits) -> plan -> execute, for every transport.

In process, over the gateway's own schema: the recording fakes are the upstream service
behind each request's loader (what was asked, and how often), the context factory (which
requests got as far as a context) and the warnings report.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import pytest
from graphql import ExecutionResult, OperationType

from gateway.calls import ListQuery
from gateway.context import Context, UpstreamWarning
from gateway.credentials import Credentials, CredentialsVerdict, caller, credentials_verdict
from gateway.errors import BadRequest, PersistedQueryNotFound
from gateway.execution import GraphQLExecution, GraphQLParams, OperationResult, read_params
from gateway.limits import OperationLimits
from gateway.loaders import OperationLoader
from gateway.pagination import CursorCodec
from gateway.persisted_queries import PersistedQueries
from gateway.sandbox import ACCOUNTS, credential_headers
from gateway.schema import build_schema, graphql_core_schema
from gateway.upstream.client import UpstreamAnswer
from gateway.upstream.entities import KnownCall
from gateway.upstream.tally import UpstreamTally
from tests.fakes import upstream_call

DEMO = ACCOUNTS[0]
FETCHED_AT = 1_700_000_000.0
QUERY = "query Latest { calls(size: 2) { id state } }"
SCHEMA = graphql_core_schema(build_schema())


class RecordingService:
    """The upstream service behind each request's loader: answers every list with
    `records`, and records what it was asked."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self.asked: list[tuple[str, ListQuery]] = []

    async def list_calls(
        self, credentials: Credentials, query: ListQuery, *, tally: UpstreamTally, **options: Any
    ) -> UpstreamAnswer:
        self.asked.append((credentials.user_id, query))
        tally.request_sent()  # as the client counts each HTTP attempt
        return UpstreamAnswer(self.records, {}, fetched_at=FETCHED_AT)

    async def get_call(self, *args: Any, **options: Any) -> UpstreamAnswer | None:
        raise AssertionError("these tests list calls only")

    async def recall_calls(self, *args: Any) -> dict[str, KnownCall]:
        raise AssertionError("these tests list calls only")

    def next_page(self, *args: Any) -> None:
        return None  # the canned page links to no other


class RecordingContexts:
    """`ContextFactory`'s part: one Context per request, each request id recorded."""

    def __init__(self, service: RecordingService) -> None:
        self.service = service
        self.made: list[str] = []

    def __call__(
        self, request_id: str, credentials: CredentialsVerdict, *, refresh: bool
    ) -> Context:
        self.made.append(request_id)
        tally = UpstreamTally()
        loader = OperationLoader(
            self.service,
            partial(caller, credentials),
            tally=tally,
            deadline=time.monotonic() + 5,
            refresh=False,
            max_requests=10,
            max_calls=5000,
        )
        return Context(request_id, loader, CursorCodec(b"a test cursor key"), 10, tally)


class RecordingWarnings:
    """`Telemetry.upstream_warnings`, recording each report."""

    def __init__(self) -> None:
        self.reports: list[tuple[list[UpstreamWarning], str]] = []

    def __call__(self, warnings: Sequence[UpstreamWarning], request_id: str) -> None:
        self.reports.append((list(warnings), request_id))


class Harness:
    def __init__(
        self, *, fast_path: bool = True, persisted: PersistedQueries | None = None
    ) -> None:
        self.service = RecordingService([upstream_call("c-1"), upstream_call("c-2")])
        self.contexts = RecordingContexts(self.service)
        self.warnings = RecordingWarnings()
        self.execution = GraphQLExecution(
            SCHEMA,
            report_warnings=self.warnings,
            persisted_queries=persisted,
            limits=OperationLimits(max_root_fields=2),
            fast_path=fast_path,
            introspection=True,
            suggestions=True,
        )

    def run(
        self, query: str, variables: dict[str, Any] | None = None, request_id: str = "r-1"
    ) -> OperationResult:
        headers = [(k.lower().encode(), v.encode()) for k, v in credential_headers(DEMO).items()]
        params = GraphQLParams(query, variables, None, None)
        # As the endpoint does: the context made for the request's verdict, then run.
        self.context = self.contexts(request_id, credentials_verdict(headers), refresh=False)
        return asyncio.run(self.execution.run(self.context, query, params))


# -- one cache for every caller ----------------------------------------------------------


def test_a_document_is_parsed_once_for_every_caller() -> None:
    harness = Harness()
    execution = harness.execution

    parsed = execution.parse(QUERY)
    assert execution.operation_type(QUERY, None) is OperationType.QUERY
    assert harness.run(QUERY).codes == []

    # The endpoint's look at the type, the live operations' parse and the run all read
    # the one kept parse.
    assert execution.parse(QUERY) is parsed
    execution.forget(QUERY)
    assert execution.parse(QUERY) is not parsed


# (query, code, whether what `parse` keeps is kept): a parse error is small and kept.
REFUSED = [
    pytest.param("{ calls(size: 2) { id ", "GRAPHQL_PARSE_FAILED", True, id="does-not-parse"),
    pytest.param("{ calls(size: 2) { nope } }", "GRAPHQL_VALIDATION_FAILED", False, id="invalid"),
    pytest.param(
        "{ a: calls { id } b: calls { id } c: calls { id } }",
        "OPERATION_TOO_COMPLEX",
        False,
        id="over-a-limit",
    ),
]


@pytest.mark.parametrize(("query", "code", "kept"), REFUSED)
def test_a_refused_document_runs_nothing_and_keeps_no_parse(
    query: str, code: str, kept: bool
) -> None:
    harness = Harness()
    parsed = harness.execution.parse(query)

    result = harness.run(query)

    assert (result.codes, result.request_error, result.valid) == ([code], True, False)
    assert "data" not in result.body
    assert result.body["errors"][0]["extensions"]["code"] == code
    # Nothing ran, so nothing reached the upstream (nor counted in the tally).
    assert (harness.service.asked, harness.context.tally.requests) == ([], 0)
    # A verdict is kept, a parse is not (cache stuffing): the next parse is a new one.
    assert (harness.execution.parse(query) is parsed) is kept
    assert harness.run(query).body == result.body


def test_a_subscription_is_refused_and_its_parse_let_go() -> None:
    harness = Harness()
    query = "subscription { callsUpdated { calls { id } } }"
    parsed = harness.execution.parse(query)

    with pytest.raises(BadRequest) as refused:
        harness.run(query)

    assert "WebSocket" in refused.value.message
    assert harness.execution.parse(query) is not parsed
    assert harness.service.asked == []


# -- running: either path, one result ---------------------------------------------------


@pytest.mark.parametrize("fast_path", [True, False], ids=["compiled-path", "standard-path"])
def test_a_query_runs_once_upstream_with_its_name_and_oldest_fetch(fast_path: bool) -> None:
    harness = Harness(fast_path=fast_path)

    result = harness.run(QUERY, request_id="r-7")

    assert result.body == {
        "data": {
            "calls": [{"id": "c-1", "state": "COMPLETED"}, {"id": "c-2", "state": "COMPLETED"}]
        }
    }
    assert (result.codes, result.operation, result.request_error, result.valid) == (
        [],
        "Latest",
        False,
        True,
    )
    assert result.fetched_at == FETCHED_AT
    assert harness.contexts.made == ["r-7"]
    # What the caller's record reads: the tally of the context it made.
    assert harness.context.tally.requests == 1
    assert [(user, query.size) for user, query in harness.service.asked] == [(DEMO.user_id, 2)]


def test_variables_that_do_not_fit_are_a_request_error_of_a_valid_document() -> None:
    harness = Harness()

    result = harness.run("query($n: Int!) { calls(size: $n) { id } }", {"n": "two"})

    assert (result.codes, result.request_error, result.valid) == (["BAD_USER_INPUT"], True, True)
    assert "data" not in result.body
    assert harness.service.asked == []


def test_an_answers_warnings_are_reported_once_and_shown_beside_the_data() -> None:
    harness = Harness()
    harness.service.records = [upstream_call("c-1", state="teleporting")]

    result = harness.run("{ calls(size: 1) { id state } }", request_id="r-9")

    assert result.body["data"] == {"calls": [{"id": "c-1", "state": "UNKNOWN"}]}
    [shown] = result.body["extensions"]["warnings"]
    assert (shown["path"], shown["code"]) == (["calls", 0, "state"], "UPSTREAM_BAD_RESPONSE")
    # Warnings are no errors: the answer stays cacheable.
    assert result.codes == []
    [(reported, request_id)] = harness.warnings.reports
    assert ([w.kind for w in reported], request_id) == (["unknown_value"], "r-9")


def test_a_subscriptions_update_reports_its_warnings_once() -> None:
    # The context outlives the update: what was reported for one is not reported again.
    harness = Harness()
    context = harness.contexts("r-3", credentials_verdict([]), refresh=False)
    context.warnings.append(
        UpstreamWarning("odd", ("callsUpdated", "calls", 0), "c-1", "unknown_value")
    )
    result = ExecutionResult({"callsUpdated": {"calls": [{"id": "c-1"}]}})

    first = harness.execution.update(result, context, "r-3")
    second = harness.execution.update(result, context, "r-3")

    assert [w["message"] for w in first["extensions"]["warnings"]] == ["odd"]
    assert "extensions" not in second
    assert [request_id for _, request_id in harness.warnings.reports] == ["r-3"]


# -- the document a request names ----------------------------------------------------------

DIGEST = hashlib.sha256(QUERY.encode()).hexdigest()
PERSISTED = {"persistedQuery": {"version": 1, "sha256Hash": DIGEST}}


def test_a_persisted_query_is_found_by_its_hash_once_registered() -> None:
    execution = Harness(persisted=PersistedQueries()).execution
    by_hash = GraphQLParams(None, None, None, PERSISTED)

    with pytest.raises(PersistedQueryNotFound):
        execution.document(by_hash)
    assert execution.document(GraphQLParams(QUERY, None, None, PERSISTED)) == QUERY
    assert execution.document(by_hash) == QUERY


def test_without_persisted_queries_the_document_is_the_query() -> None:
    execution = Harness(persisted=None).execution

    assert execution.document(GraphQLParams(QUERY, None, None, PERSISTED)) == QUERY


MALFORMED = [
    pytest.param({}, "document in `query`", id="no-query"),
    pytest.param({"query": "  "}, "document in `query`", id="blank-query"),
    pytest.param({"query": "{ a }", "operationName": 1}, "`operationName`", id="name-not-str"),
    pytest.param({"query": "{ a }", "variables": []}, "`variables`", id="variables-not-object"),
    pytest.param({"query": "{ a }", "extensions": "x"}, "`extensions`", id="extensions-not-object"),
]


@pytest.mark.parametrize(("raw", "says"), MALFORMED)
def test_malformed_params_are_a_bad_request(raw: dict[str, Any], says: str) -> None:
    with pytest.raises(BadRequest) as refused:
        read_params(raw)

    assert says in refused.value.message
    assert refused.value.status == 400


def test_params_read_an_empty_operation_name_as_none_and_a_hash_without_a_query() -> None:
    assert read_params({"query": "{ a }", "operationName": ""}) == GraphQLParams(
        "{ a }", None, None, None
    )
    assert read_params({"extensions": PERSISTED}) == GraphQLParams(None, None, None, PERSISTED)


CALLER = Credentials("Basic dTpw", "u")


@pytest.mark.parametrize(
    ("valid", "codes", "credentials", "checked"),
    [
        pytest.param(True, [], CALLER, True, id="answered"),
        pytest.param(True, ["NOT_FOUND"], CALLER, True, id="field-error"),
        pytest.param(False, ["GRAPHQL_VALIDATION_FAILED"], CALLER, False, id="invalid"),
        pytest.param(True, [], credentials_verdict([]), False, id="no-credentials"),
        pytest.param(True, ["UNAUTHENTICATED"], CALLER, False, id="upstream-refused-them"),
    ],
)
def test_only_a_valid_operation_with_accepted_credentials_is_checked(
    valid: bool, codes: list[str], credentials: CredentialsVerdict, checked: bool
) -> None:
    # The one decision the endpoint and the live operations both record.
    result = OperationResult({}, codes, "Latest", request_error=not valid, valid=valid)

    assert result.checked(credentials) is checked
