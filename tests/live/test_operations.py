"""A subscription's updates are executed once per request, however many subscribers share it.

The recording fake is the schema's own `CallsUpdate.calls` resolver, wrapped to count its
runs: each run is one execution of a selection for one update.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import orjson
import pytest
from graphql import GraphQLObjectType, GraphQLSchema
from prometheus_client import CollectorRegistry

from gateway.calls import ListQuery
from gateway.context import UpstreamWarning
from gateway.context_factory import ContextFactory
from gateway.credentials import Credentials
from gateway.execution import GraphQLExecution
from gateway.limits import OperationLimits
from gateway.live.hub import LiveHub, Page
from gateway.live.metrics import LiveMetrics
from gateway.live.operations import LiveRequest, Operations, Refused, Single, Stream
from gateway.live.renders import Renders
from gateway.observability.metrics import Metrics
from gateway.observability.telemetry import Telemetry
from gateway.pagination import CursorCodec
from gateway.sandbox import credential_headers
from gateway.schema import build_schema, graphql_core_schema
from gateway.upstream.client import UpstreamAnswer
from gateway.upstream.entities import KnownCall
from gateway.upstream.tally import UpstreamTally
from tests.live.helpers import DEMO, SUBSCRIPTION, WAIT, call, identity_of

SUBSCRIBERS = 20
# Another selection of the same page: its own execution, its own payload.
OTHER = "subscription { callsUpdated(size: 3) { calls { id } changed } }"


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


class FakeSource:
    """Serves `body` as the page of every poll."""

    def __init__(self, body: list[dict[str, Any]]) -> None:
        self.body = body

    async def __call__(self, credentials: Credentials, query: ListQuery, fresh: bool) -> Page:
        return Page(self.body, 1_700_000_000.0)


def recording_schema() -> tuple[GraphQLSchema, list[object]]:
    """The gateway's schema, with `CallsUpdate.calls` recording the update it ran for."""
    schema = graphql_core_schema(build_schema())
    calls_update = schema.get_type("CallsUpdate")
    assert isinstance(calls_update, GraphQLObjectType)
    field = calls_update.fields["calls"]
    resolve = field.resolve
    assert resolve is not None
    runs: list[object] = []

    def recording(root: Any, info: Any, **args: Any) -> Any:
        runs.append(root.update)
        return resolve(root, info, **args)

    field.resolve = recording
    return schema, runs


class RecordingWarnings:
    """`Telemetry.upstream_warnings`, recording what each execution reported."""

    def __init__(self) -> None:
        self.reports: list[tuple[list[UpstreamWarning], str]] = []

    def __call__(self, warnings: Sequence[UpstreamWarning], request_id: str) -> None:
        self.reports.append((list(warnings), request_id))


class RecordingService:
    """The upstream service a query's loader asks: one page of `body`, each ask recorded."""

    def __init__(self, body: list[dict[str, Any]]) -> None:
        self.body = body
        self.asked: list[ListQuery] = []

    async def list_calls(
        self, credentials: Credentials, query: ListQuery, *, tally: UpstreamTally, **options: Any
    ) -> UpstreamAnswer:
        self.asked.append(query)
        tally.request_sent()  # as the client counts each HTTP attempt
        return UpstreamAnswer(self.body, {})

    async def get_call(self, *args: Any, **options: Any) -> UpstreamAnswer | None:
        raise AssertionError("these tests list calls only")

    async def recall_calls(self, *args: Any) -> dict[str, KnownCall]:
        raise AssertionError("these tests list calls only")

    def next_page(self, *args: Any) -> None:
        return None  # its pages link to no other


def operations_for(
    schema: GraphQLSchema,
    warnings: RecordingWarnings | None = None,
    renders: Renders | None = None,
    telemetry: Telemetry | None = None,
    *,
    hub: LiveHub | None = None,
    upstream: RecordingService | None = None,
) -> Operations:
    """The live operations of an app over `hub` and `upstream` (idle ones by default)."""
    # A subscription's context has a loader too, though its updates come from the hub.
    contexts = ContextFactory(
        RecordingService([]) if upstream is None else upstream,
        cursors=CursorCodec(b"k" * 32),
        request_timeout=10,
        max_upstream_requests=10,
        max_entities=10,
        max_calls_per_operation=5000,
    )

    execution = GraphQLExecution(
        schema,
        report_warnings=RecordingWarnings() if warnings is None else warnings,
        persisted_queries=None,
        limits=OperationLimits(
            max_depth=10,
            max_aliases=10,
            max_tokens=1000,
            max_root_fields=5,
            max_upstream_requests=10,
        ),
        fast_path=True,
        introspection=True,
        suggestions=False,
    )
    return Operations(
        execution,
        contexts,
        hub=hub_over(FakeSource([])) if hub is None else hub,
        telemetry=telemetry or Telemetry(Metrics(multiprocess_dir=None), None),
        renders=Renders(max_documents=100, retry_after=1) if renders is None else renders,
    )


async def subscribe(operations: Operations, query: str) -> Stream:
    """Subscribe on a socket (see `operations_for` for the hub)."""
    headers = [(k.lower().encode(), v.encode()) for k, v in credential_headers(DEMO).items()]
    request = LiveRequest(query, None, None, None, headers)
    scope = {"type": "websocket", "headers": []}
    stream = await operations.run(request, scope, own_line=True)
    assert isinstance(stream, Stream)
    return stream


async def next_of(stream: Stream) -> Any:
    async with asyncio.timeout(WAIT):
        return await anext(stream)


def update_of(payload: Any) -> Any:
    return orjson.loads(payload)["data"]["callsUpdated"]


def hub_over(source: FakeSource) -> LiveHub:
    """A hub polling `source` every 20 ms, alone (no sharing), for one process."""
    return LiveHub(
        source,
        lambda credentials, query: f"{credentials.user_id}|{query}",
        identity_of,
        interval=0.02,
        max_per_account=100,
        metrics=LiveMetrics(CollectorRegistry()),
        sharing=None,
    )


def test_subscribers_of_one_request_cause_one_execution_per_update() -> None:
    async def body() -> None:
        source = FakeSource([call("c-1"), call("c-2", "started")])
        hub = hub_over(source)
        schema, runs = recording_schema()
        operations = operations_for(schema, hub=hub)
        same = [await subscribe(operations, SUBSCRIPTION) for _ in range(SUBSCRIBERS)]
        slow = await subscribe(operations, SUBSCRIPTION)
        other = await subscribe(operations, OTHER)
        try:
            # Read at once, as each subscriber's transport does: the subscribers of one
            # request must share its render even while it is still being made.
            first = await asyncio.gather(*(next_of(stream) for stream in [*same, slow]))
            other_first = await next_of(other)
            # One execution for the twenty-one with the same document, one for the other.
            assert len(runs) == 2
            assert len(set(first)) == 1
            assert update_of(first[0])["changed"] == ["c-1", "c-2"]
            assert update_of(other_first) == {
                "calls": [{"id": "c-1"}, {"id": "c-2"}],
                "changed": ["c-1", "c-2"],
            }

            # A change: read by all but `slow`.
            source.body = [call("c-1"), call("c-2")]
            second = await asyncio.gather(*(next_of(stream) for stream in same))
            await next_of(other)
            assert len(runs) == 4
            assert len(set(second)) == 1
            assert update_of(second[0])["changed"] == ["c-2"]

            # Another: `slow` last received the first page, so its update differs (and is
            # executed for it alone); everyone else shares one again.
            source.body = [call("c-3"), call("c-2")]
            third = await asyncio.gather(*(next_of(stream) for stream in same))
            behind = update_of(await next_of(slow))
            assert len(runs) == 6
            assert len(set(third)) == 1
            assert (update_of(third[0])["changed"], update_of(third[0])["removed"]) == (
                ["c-3"],
                ["c-1"],
            )
            assert (behind["changed"], behind["removed"]) == (["c-3", "c-2"], ["c-1"])
            assert [c["id"] for c in behind["calls"]] == ["c-3", "c-2"]
        finally:
            for stream in [*same, slow, other]:
                await stream.aclose()
            await hub.close()

    run(body)


def test_an_updates_warnings_are_counted_and_capped_as_a_responses() -> None:
    # Before: the live path had its own copy of the cap, and never reported its warnings,
    # so the warnings metric and log missed every one a subscription met.
    async def body() -> None:
        odd = [call(f"c-{n}", "teleporting") for n in range(120)]
        hub = hub_over(FakeSource(odd))
        warnings = RecordingWarnings()
        schema, _ = recording_schema()
        stream = await subscribe(
            operations_for(schema, warnings, hub=hub),
            "subscription { callsUpdated(size: 200) { calls { id state } } }",
        )
        try:
            payload = orjson.loads(await next_of(stream))
        finally:
            await stream.aclose()
        await hub.close()
        shown = payload["extensions"]["warnings"]
        assert len(shown) == 101
        assert shown[-1]["leftOut"] == 20
        assert shown[-1]["message"] == "20 more upstream warnings were left out of this update."
        assert [len(found) for found, _ in warnings.reports] == [120]

    run(body)


def test_an_account_holds_at_most_its_bound_of_distinct_requests() -> None:
    # Before: every alias made one more execution per update, without bound.
    async def body() -> None:
        hub = hub_over(FakeSource([call("c-1")]))
        operations = operations_for(
            recording_schema()[0], renders=Renders(max_documents=2, retry_after=3), hub=hub
        )
        aliased = [
            SUBSCRIPTION.replace("{ callsUpdated", f"{{ a{i}: callsUpdated") for i in range(3)
        ]
        held = [await subscribe(operations, aliased[0]) for _ in range(5)]
        held.append(await subscribe(operations, aliased[1]))
        try:
            headers = [
                (k.lower().encode(), v.encode()) for k, v in credential_headers(DEMO).items()
            ]
            scope = {"type": "websocket", "headers": []}
            refused = await operations.run(
                LiveRequest(aliased[2], None, None, None, headers), scope, own_line=True
            )
            assert isinstance(refused, Refused)
            (error,) = refused.errors
            assert error["extensions"] == {
                "code": "RATE_LIMITED",
                "retryAfter": 3,
                "limit": "GATEWAY_LIVE_MAX_DOCUMENTS_PER_ACCOUNT",
            }
            # Ending the last subscriber of a request gives its room back.
            await held.pop().aclose()
            held.append(await subscribe(operations, aliased[2]))
        finally:
            for stream in held:
                await stream.aclose()
            await hub.close()

    run(body)


# (query, what the caller is sent, the line's operation, status and error codes, and the
# operation's label in the metrics: a refused document's name takes no slot)
QUERIES = [
    pytest.param(
        "query Latest { calls(size: 1) { id } }",
        Single({"data": {"calls": [{"id": "c-1"}]}}),
        ("Latest", 200, [], "Latest"),
        id="answered",
    ),
    pytest.param(
        "query Broken { calls(size: 1) { nope } }",
        "GRAPHQL_VALIDATION_FAILED",
        ("Broken", 200, ["GRAPHQL_VALIDATION_FAILED"], "(unchecked)"),
        id="invalid",
    ),
    pytest.param(
        "   ",
        "BAD_REQUEST",
        (None, 400, ["BAD_REQUEST"], "(anonymous)"),
        id="no-document",
    ),
]


@pytest.mark.parametrize(("query", "sent", "line"), QUERIES)
def test_a_query_runs_here_and_is_observed_as_a_request_of_its_own(
    query: str,
    sent: Single | str,
    line: tuple[str | None, int, list[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Queries over WebSocket and SSE were answered by POSTing them back into the HTTP
    # endpoint, which gave each its log line and metrics: they are run here now, with the
    # same line and metrics, and nothing is sent over HTTP.
    async def body() -> Single | Refused | Stream:
        headers = [(k.lower().encode(), v.encode()) for k, v in credential_headers(DEMO).items()]
        scope = {
            "type": "websocket",
            "headers": [(b"x-request-id", b"ignored-on-a-socket")],
        }
        with caplog.at_level(logging.INFO, logger="gateway.request"):
            return await operations.run(
                LiveRequest(query, None, None, None, headers), scope, own_line=True
            )

    service = RecordingService([call("c-1")])
    metrics = Metrics(multiprocess_dir=None)
    operations = operations_for(
        recording_schema()[0], telemetry=Telemetry(metrics, None), upstream=service
    )

    outcome = asyncio.run(body())

    if isinstance(sent, Single):
        assert outcome == sent
        assert [query.size for query in service.asked] == [1]
    else:
        assert isinstance(outcome, Refused)
        assert [error["extensions"]["code"] for error in outcome.errors] == [sent]
        assert service.asked == []
    [record] = [r.__dict__ for r in caplog.records if r.getMessage() == "graphql request"]
    operation, status, codes, label = line
    fields = ("method", "operation", "status", "error_codes", "upstream_requests")
    assert [record[field] for field in fields] == [
        "POST",
        operation,
        status,
        codes,
        len(service.asked),
    ]
    # A socket's operations are not one request: each has an id of its own.
    assert record["request_id"] != "ignored-on-a-socket"
    requests = metrics.registry.get_sample_value(
        "gateway_requests_total", {"operation": label, "outcome": codes[0] if codes else "OK"}
    )
    assert requests == 1
