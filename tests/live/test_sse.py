"""GraphQL over Server-Sent Events (graphql-sse, distinct connections mode), in process."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Message

from gateway.observability import telemetry
from gateway.observability.record import RequestRecord
from tests.fakes import FakeUpstream
from tests.live.helpers import (
    CALLS_PATH,
    SUBSCRIPTION,
    WAIT,
    call,
    init_payload,
    live_app,
    live_server,
)

STREAM_HEADERS = {"accept": "text/event-stream", "content-type": "application/json"}


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


@pytest.fixture
def url(fake_upstream: FakeUpstream) -> Iterator[str]:
    """A gateway in front of the fake upstream (tests that want settings start their own)."""
    with live_server(fake_upstream.url) as base:
        yield base


async def events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) pairs as an EventSource reads them; comments as ("", None)."""
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            if block.startswith(":"):
                yield "", None
                continue
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
            data = fields.get("data") or ""
            yield fields["event"], orjson.loads(data) if data else None


async def read(stream: AsyncIterator[tuple[str, Any]]) -> tuple[str, Any]:
    """The next event that is not a comment."""
    async with asyncio.timeout(WAIT):
        async for event, data in stream:
            if event:
                return event, data
    raise AssertionError("the stream ended")


def test_a_subscription_streams_next_events(fake_upstream: FakeUpstream, url: str) -> None:
    fake_upstream.answer(CALLS_PATH, [call("c-1", "started")])

    async def body() -> None:
        async with (
            httpx.AsyncClient(base_url=url, timeout=WAIT) as client,
            client.stream(
                "POST",
                "/graphql",
                json={"query": SUBSCRIPTION},
                headers={**STREAM_HEADERS, **init_payload()},
            ) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            stream = events(response)
            event, data = await read(stream)
            assert event == "next"
            assert data["data"]["callsUpdated"]["changed"] == ["c-1"]
            fake_upstream.answer(CALLS_PATH, [call("c-1", "completed")])
            event, data = await read(stream)
            update = data["data"]["callsUpdated"]
            assert (event, update["changed"], update["calls"][0]["state"]) == (
                "next",
                ["c-1"],
                "COMPLETED",
            )

    run(body)


@pytest.mark.parametrize(
    ("method", "request_kwargs"),
    [
        ("POST", {"json": {"query": "{ calls { id } }"}}),
        ("GET", {"params": {"query": "{ calls { id } }"}}),
    ],
    ids=["post", "get"],
)
def test_a_query_is_one_next_then_complete(
    fake_upstream: FakeUpstream, url: str, method: str, request_kwargs: dict[str, Any]
) -> None:
    fake_upstream.answer(CALLS_PATH, [call("c-1")])
    # GET passes the CSRF rules with a preflight-forcing header (X-Catapult-User-Id is one).
    headers = {"accept": "text/event-stream", **init_payload()}

    async def body() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
            response = await client.request(method, "/graphql", headers=headers, **request_kwargs)
            assert response.status_code == 200
            assert response.headers["cache-control"] == "no-cache"
            found = [(e, d) async for e, d in events(response) if e]
            assert found == [("next", {"data": {"calls": [{"id": "c-1"}]}}), ("complete", None)]

    run(body)


def test_errors_before_execution_are_a_next_event(fake_upstream: FakeUpstream, url: str) -> None:
    async def body() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
            response = await client.post(
                "/graphql",
                json={"query": "subscription { callsUpdated { nope } }"},
                headers={**STREAM_HEADERS, **init_payload()},
            )
            assert response.status_code == 200
            found = [(e, d) async for e, d in events(response) if e]
            assert [e for e, _ in found] == ["next", "complete"]
            codes = [error["extensions"]["code"] for error in found[0][1]["errors"]]
            assert codes == ["GRAPHQL_VALIDATION_FAILED"]

    run(body)
    assert fake_upstream.requests == []


def test_csrf_rules_still_apply(url: str) -> None:
    async def body() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
            response = await client.get(
                "/graphql",
                params={"query": SUBSCRIPTION},
                headers={"accept": "text/event-stream"},
            )
            assert response.status_code == 400
            assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"

    run(body)


def test_a_subscription_over_plain_http_is_refused(fake_upstream: FakeUpstream, url: str) -> None:
    async def body() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
            response = await client.post(
                "/graphql", json={"query": SUBSCRIPTION}, headers=init_payload()
            )
            assert response.status_code == 400
            assert "Subscriptions are served over" in response.json()["errors"][0]["message"]

    run(body)
    assert fake_upstream.requests == []


def test_an_idle_stream_gets_keep_alive_comments(fake_upstream: FakeUpstream) -> None:
    fake_upstream.answer(CALLS_PATH, [call("c-1")])

    async def body(url: str) -> None:
        async with (
            httpx.AsyncClient(base_url=url, timeout=WAIT) as client,
            client.stream(
                "POST",
                "/graphql",
                json={"query": SUBSCRIPTION},
                headers={**STREAM_HEADERS, **init_payload()},
            ) as response,
        ):
            stream = events(response)
            assert (await read(stream))[0] == "next"
            comments = 0
            async with asyncio.timeout(WAIT):
                async for event, _ in stream:
                    assert event == ""
                    comments += 1
                    if comments == 3:
                        break

    with live_server(fake_upstream.url, live_keepalive=0.1) as url:
        asyncio.run(body(url))


# What @urql/core's fetch sends for every operation, queries included.
URQL_ACCEPT = (
    "application/graphql-response+json, application/graphql+json, application/json, "
    "text/event-stream, multipart/mixed"
)


def test_a_client_listing_json_first_gets_json_for_a_query_and_a_stream_for_a_subscription(
    fake_upstream: FakeUpstream, url: str
) -> None:
    # Before, urql's Accept turned every query into an event stream, which urql's
    # history walk gave up on (AbortError).
    fake_upstream.answer(CALLS_PATH, [call("c-1")])
    headers = {"accept": URQL_ACCEPT, **init_payload()}

    async def body() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
            answer = await client.post(
                "/graphql", json={"query": "{ calls { id } }"}, headers=headers
            )
            assert answer.headers["content-type"].startswith("application/graphql-response+json")
            assert answer.json() == {"data": {"calls": [{"id": "c-1"}]}}
            async with client.stream(
                "POST", "/graphql", json={"query": SUBSCRIPTION}, headers=headers
            ) as streamed:
                assert streamed.headers["content-type"].startswith("text/event-stream")
                event, data = await read(events(streamed))
                assert (event, [c["id"] for c in data["data"]["callsUpdated"]["calls"]]) == (
                    "next",
                    ["c-1"],
                )

    run(body)


def test_no_cache_and_the_request_id_reach_the_operation(
    fake_upstream: FakeUpstream, url: str
) -> None:
    fake_upstream.answer(CALLS_PATH, [call("c-1")])
    headers = {
        **STREAM_HEADERS,
        **init_payload(),
        "cache-control": "no-cache",
        "x-request-id": "req-live-1",
    }

    async def body() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
            for _ in range(2):
                response = await client.post(
                    "/graphql", json={"query": "{ calls { id } }"}, headers=headers
                )
                assert response.headers["x-request-id"] == "req-live-1"

    run(body)
    # Both went upstream: neither read the cache.
    assert len(fake_upstream.requests) == 2


async def answered(app: ASGIApp, query: str, *, chunks: int) -> tuple[Message, list[bytes]]:
    """POST `query` asking for an event stream, straight to the app: the answer's start
    message and its first `chunks` body chunks (fewer if it ends), then the client leaves."""
    request = orjson.dumps({"query": query})
    headers = [
        (k.lower().encode(), v.encode()) for k, v in {**STREAM_HEADERS, **init_payload()}.items()
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    gone = asyncio.Event()
    sent: asyncio.Queue[Message] = asyncio.Queue()
    received = False

    async def receive() -> Message:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": request, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await sent.put(message)

    task = asyncio.ensure_future(app(scope, receive, send))
    body: list[bytes] = []
    async with asyncio.timeout(WAIT):
        start = await sent.get()
        while len(body) < chunks:
            message = await sent.get()
            if message.get("body"):
                body.append(message["body"])
            if not message.get("more_body", False):
                break
    gone.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return start, body


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.__dict__ for r in caplog.records if r.getMessage() == "graphql request"]


def test_a_query_over_sse_is_one_request_with_one_line(
    fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    # The endpoint and the live operations each recorded it: a line with the echoed id
    # and no upstream request, and one with an id the client never saw and the counts.
    fake_upstream.answer(CALLS_PATH, [call("c-1")])

    async def body() -> tuple[Message, str]:
        async with live_app(fake_upstream.url) as app:
            with caplog.at_level(logging.INFO, logger="gateway.request"):
                start, _ = await answered(app, "query Latest { calls { id } }", chunks=3)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                metrics = (await client.get("/metrics")).text
        return start, metrics

    start, metrics = asyncio.run(body())

    [line] = request_lines(caplog)
    request_id = dict(start["headers"])[b"x-request-id"].decode()
    fields = ("request_id", "operation", "status", "upstream_requests", "cache")
    assert [line[field] for field in fields] == [request_id, "Latest", 200, 1, {"miss": 1}]
    counted = [
        (sample.labels["operation"], sample.value)
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "gateway_requests_total"
    ]
    assert counted == [("Latest", 1.0)]


class WritersRecord(RequestRecord):
    """A request record that notes which module wrote each of its fields after it was
    made (through the record's own methods: their caller)."""

    writes: list[tuple[str, str]]

    def __setattr__(self, name: str, value: Any) -> None:
        frame = sys._getframe(1)
        while frame.f_globals["__name__"] == RequestRecord.__module__:
            if frame.f_back is None:
                break
            frame = frame.f_back
        if "writes" in self.__dict__:  # made: what follows is a layer's writing
            self.__dict__["writes"].append((name, frame.f_globals["__name__"]))
        super().__setattr__(name, value)


@pytest.mark.parametrize(
    ("query", "codes"),
    [
        pytest.param("query Latest { calls { id } }", [], id="answered"),
        pytest.param(
            "query Latest { calls { nope } }", ["GRAPHQL_VALIDATION_FAILED"], id="refused"
        ),
    ],
)
def test_an_sse_querys_record_is_written_by_the_endpoint_alone(
    fake_upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    query: str,
    codes: list[str],
) -> None:
    # The live operations run the query and hand back what it came to; they never write
    # into the record of the HTTP request the endpoint holds (issue 12).
    made: list[WritersRecord] = []

    def recording(request_id: str, method: str) -> WritersRecord:
        record = WritersRecord(request_id, method)
        record.__dict__["writes"] = []
        made.append(record)
        return record

    monkeypatch.setattr(telemetry, "RequestRecord", recording)
    fake_upstream.answer(CALLS_PATH, [call("c-1")])

    async def body() -> None:
        async with live_app(fake_upstream.url) as app:
            with caplog.at_level(logging.INFO, logger="gateway.request"):
                await answered(app, query, chunks=3)

    asyncio.run(body())

    [record] = made
    assert {writer for _, writer in record.__dict__["writes"]} == {"gateway.endpoint"}
    assert [name for name, _ in record.__dict__["writes"]].count("status") == 1
    assert (record.operation, record.status, record.error_codes) == ("Latest", 200, codes)
    [line] = request_lines(caplog)
    assert (line["operation"], line["error_codes"]) == ("Latest", codes)


def test_a_subscription_over_sse_is_one_request_with_one_line(
    fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    fake_upstream.answer(CALLS_PATH, [call("c-1")])

    async def body() -> tuple[Message, list[bytes]]:
        async with live_app(fake_upstream.url) as app:
            with caplog.at_level(logging.INFO, logger="gateway.request"):
                # The keep-alive, then the first page.
                return await answered(app, SUBSCRIPTION, chunks=2)

    start, chunks = asyncio.run(body())

    assert chunks[-1].startswith(b"event: next")
    [line] = request_lines(caplog)
    request_id = dict(start["headers"])[b"x-request-id"].decode()
    fields = ("request_id", "method", "status", "error_codes")
    assert [line[field] for field in fields] == [request_id, "POST", 200, []]
