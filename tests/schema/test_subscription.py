"""The `Subscription` root: `callsUpdated`'s arguments, its updates and its errors, run by
graphql-core against a fake live stream (no transport, no hub).

Over the transports (WebSocket, SSE) end to end: tests/live/test_ws.py and test_sse.py.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from graphql import ExecutionResult, Executor, create_source_event_stream, parse, subscribe

from gateway.calls import ListQuery
from gateway.context import UpstreamWarning
from gateway.errors import UpstreamUnavailable
from gateway.live.hub import Page, Update
from gateway.schema import build_schema, graphql_core_schema
from tests.fakes import upstream_call

SCHEMA = graphql_core_schema(build_schema())
WATCH = """subscription ($filter: CallFilter, $size: Int, $sort: SortOrder) {
  callsUpdated(filter: $filter, size: $size, sortOrder: $sort) { calls { id } changed removed at }
}"""
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class Stream:
    """A live stream that yields `events` and then waits; records whether it was closed."""

    def __init__(self, events: list[Any]) -> None:
        self._events = list(events)
        self.closed = False

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        if self._events:
            return self._events.pop(0)
        await asyncio.Event().wait()  # the next poll never comes
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class FakeLive:
    """`context.live`: hands out `stream` and records the queries watched."""

    stream: Stream
    watched: list[ListQuery] = field(default_factory=list)

    def watch(self, query: ListQuery) -> Stream:
        self.watched.append(query)
        return self.stream


@dataclass
class FakeContext:
    """What the subscription reads of a context: the live view and the warnings list."""

    live: FakeLive | None
    warnings: list[UpstreamWarning] = field(default_factory=list)


def update(body: list[Any], changed: tuple[str, ...] = (), removed: tuple[str, ...] = ()) -> Update:
    return Update(Page(body, AT.timestamp()), changed, removed)


async def results(
    context: FakeContext, count: int, **variables: Any
) -> ExecutionResult | list[ExecutionResult]:
    """The first `count` results of the subscription, or the result that refused it."""
    subscribed = subscribe(SCHEMA, parse(WATCH), context_value=context, variable_values=variables)
    if inspect.isawaitable(subscribed):
        subscribed = await subscribed
    if isinstance(subscribed, ExecutionResult):
        return subscribed
    assert isinstance(subscribed, AsyncIterator)
    try:
        return [await anext(subscribed) for _ in range(count)]
    finally:
        await subscribed.aclose()  # type: ignore[attr-defined]


def run(context: FakeContext, count: int, **variables: Any) -> Any:
    return asyncio.run(results(context, count, **variables))


def test_the_arguments_become_the_watched_list_query() -> None:
    live = FakeLive(Stream([update([])]))

    run(FakeContext(live), 1, filter={"from": "+19195550100"}, size=7, sort="ASC")

    assert live.watched == [ListQuery(from_="+19195550100", page=0, size=7, sort_order="asc")]


def test_each_update_is_the_page_and_what_changed() -> None:
    stream = Stream(
        [
            update([upstream_call("c-1"), upstream_call("c-2")], changed=("c-1", "c-2")),
            update([upstream_call("c-2")], removed=("c-1",)),
        ]
    )

    first, second = run(FakeContext(FakeLive(stream)), 2)

    assert first.errors is None
    assert second.errors is None
    assert first.data == {
        "callsUpdated": {
            "calls": [{"id": "c-1"}, {"id": "c-2"}],
            "changed": ["c-1", "c-2"],
            "removed": [],
            "at": "2026-01-02T03:04:05.000Z",
        }
    }
    assert second.data["callsUpdated"]["calls"] == [{"id": "c-2"}]
    assert second.data["callsUpdated"]["removed"] == ["c-1"]
    assert stream.closed  # leaving the subscription leaves the poller


def test_a_record_that_cannot_be_a_call_is_left_out_with_a_warning() -> None:
    context = FakeContext(FakeLive(Stream([update([upstream_call("c-1"), 5])])))

    [result] = run(context, 1)

    assert result.data["callsUpdated"]["calls"] == [{"id": "c-1"}]
    assert [(w.kind, w.path) for w in context.warnings] == [("left_out", ("callsUpdated", "calls"))]


def test_an_error_event_is_an_update_with_a_coded_error_and_the_stream_goes_on() -> None:
    stream = Stream([UpstreamUnavailable("The upstream is down."), update([upstream_call("c-1")])])

    failed, recovered = run(FakeContext(FakeLive(stream)), 2)

    assert failed.data is None
    assert [error.extensions["code"] for error in failed.errors] == ["UPSTREAM_UNAVAILABLE"]
    assert recovered.data["callsUpdated"]["calls"] == [{"id": "c-1"}]


def test_without_a_live_transport_the_subscription_is_refused_before_it_starts() -> None:
    refused = run(FakeContext(live=None), 1)

    assert isinstance(refused, ExecutionResult)
    [error] = refused.errors or []
    assert "WebSocket" in error.message
    assert "text/event-stream" in error.message


@pytest.mark.parametrize("size", [0, 1001], ids=repr)
def test_a_bad_argument_is_refused_before_anything_is_watched(size: int) -> None:
    live = FakeLive(Stream([]))

    refused = run(FakeContext(live), 1, size=size)

    assert isinstance(refused, ExecutionResult)
    assert [(error.extensions or {})["code"] for error in refused.errors or []] == [
        "BAD_USER_INPUT"
    ]
    assert live.watched == []


def test_closing_before_the_first_update_still_closes_the_stream() -> None:
    # A generator closed before its first step never runs its `finally`: the subscriber
    # would stay counted. The transports close the source stream itself.
    stream = Stream([])
    executor = Executor.build(SCHEMA, parse(WATCH), context_value=FakeContext(FakeLive(stream)))
    assert isinstance(executor, Executor)

    async def close_at_once() -> None:
        created = create_source_event_stream(executor)
        events = await created if inspect.isawaitable(created) else created
        assert not isinstance(events, ExecutionResult)
        await events.aclose()  # type: ignore[attr-defined]

    asyncio.run(close_at_once())

    assert stream.closed
