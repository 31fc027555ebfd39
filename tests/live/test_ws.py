"""The graphql-transport-ws subprotocol on /graphql, in process.

The messages and close codes follow graphql-ws's PROTOCOL.md; the real clients (graphql-ws,
Apollo's GraphQLWsLink, GraphiQL) are exercised against a live gateway elsewhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tests.fakes import FakeUpstream
from tests.live.helpers import (
    CALLS_PATH,
    DEMO,
    SUBSCRIPTION,
    Denied,
    call,
    init_payload,
    initialised,
    live_app,
    websocket,
)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_subscription_sends_the_page_then_what_changed(fake_upstream: FakeUpstream) -> None:
    fake_upstream.answer(CALLS_PATH, [call("c-1", "started"), call("c-2")])

    async def body() -> None:
        async with live_app(fake_upstream.url) as app, websocket(app) as ws:
            assert ws.subprotocol == "graphql-transport-ws"
            await initialised(ws)
            await ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION}})
            first = await ws.receive_json()
            assert (first["id"], first["type"]) == ("1", "next")
            update = first["payload"]["data"]["callsUpdated"]
            assert [c["id"] for c in update["calls"]] == ["c-1", "c-2"]
            assert update["changed"] == ["c-1", "c-2"]
            assert update["removed"] == []
            assert update["at"].endswith("Z")

            fake_upstream.answer(CALLS_PATH, [call("c-1", "active"), call("c-3")])
            second = (await ws.receive_json())["payload"]["data"]["callsUpdated"]
            assert second["changed"] == ["c-1", "c-3"]
            assert second["removed"] == ["c-2"]
            assert [c["state"] for c in second["calls"]] == ["ACTIVE", "ACTIVE"]

            await ws.send_json({"id": "1", "type": "complete"})
            fake_upstream.answer(CALLS_PATH, [call("c-4")])
            # Nothing more for the completed operation.
            assert await ws.nothing_for(0.3)

    run(body)


def test_a_query_is_one_next_then_complete(fake_upstream: FakeUpstream) -> None:
    fake_upstream.answer(CALLS_PATH, [call("c-1")])

    async def body() -> None:
        async with live_app(fake_upstream.url) as app, websocket(app) as ws:
            await initialised(ws)
            query = {"query": "{ calls { id } }"}
            await ws.send_json({"id": "q", "type": "subscribe", "payload": query})
            assert await ws.receive_json() == {
                "id": "q",
                "type": "next",
                "payload": {"data": {"calls": [{"id": "c-1"}]}},
            }
            assert await ws.receive_json() == {"id": "q", "type": "complete"}

    run(body)


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("subscription { callsUpdated { nope } }", "GRAPHQL_VALIDATION_FAILED"),
        ("subscription {", "GRAPHQL_PARSE_FAILED"),
        ("{ nope }", "GRAPHQL_VALIDATION_FAILED"),
    ],
    ids=["subscription-invalid", "parse-error", "query-invalid"],
)
def test_errors_before_execution_are_an_error_message(
    fake_upstream: FakeUpstream, query: str, code: str
) -> None:
    async def body() -> None:
        async with live_app(fake_upstream.url) as app, websocket(app) as ws:
            await initialised(ws)
            await ws.send_json({"id": "e", "type": "subscribe", "payload": {"query": query}})
            message = await ws.receive_json()
            assert (message["type"], message["id"]) == ("error", "e")
            assert [e["extensions"]["code"] for e in message["payload"]] == [code]

    run(body)
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    ("arguments", "argument"),
    [("size: 0", "size"), ('filter: {from: "nope"}', "filter.from")],
    ids=["size", "filter"],
)
def test_arguments_are_checked_as_calls_checks_them(
    fake_upstream: FakeUpstream, arguments: str, argument: str
) -> None:
    query = f"subscription {{ callsUpdated({arguments}) {{ changed }} }}"

    async def body() -> None:
        async with live_app(fake_upstream.url) as app, websocket(app) as ws:
            await initialised(ws)
            await ws.send_json({"id": "a", "type": "subscribe", "payload": {"query": query}})
            message = await ws.receive_json()
            assert message["type"] == "next"
            (error,) = message["payload"]["errors"]
            assert error["extensions"] == {"code": "BAD_USER_INPUT", "argument": argument}
            assert await ws.receive_json() == {"id": "a", "type": "complete"}

    run(body)
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"Authorization": "Basic nope", "X-Catapult-User-Id": DEMO.user_id},
        {"authorization": 5, "X-Catapult-User-Id": DEMO.user_id},
    ],
    ids=["none", "malformed", "not-a-string"],
)
def test_bad_credentials_answer_unauthenticated_and_keep_the_socket(
    fake_upstream: FakeUpstream, payload: dict[str, Any]
) -> None:
    async def body() -> None:
        async with live_app(fake_upstream.url) as app, websocket(app) as ws:
            await initialised(ws, payload)
            await ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION}})
            message = await ws.receive_json()
            assert message["type"] == "next"
            codes = [e["extensions"]["code"] for e in message["payload"]["errors"]]
            assert codes == ["UNAUTHENTICATED"]
            assert await ws.receive_json() == {"id": "1", "type": "complete"}
            await ws.send_json({"type": "ping", "payload": {"still": "open"}})
            assert await ws.receive_json() == {"type": "pong", "payload": {"still": "open"}}

    run(body)
    assert fake_upstream.requests == []


@pytest.mark.parametrize("second_name", ["authorization", "Authorization"], ids=["case", "same"])
def test_a_credential_named_twice_in_the_payload_is_refused(
    fake_upstream: FakeUpstream, second_name: str
) -> None:
    fake_upstream.answer(CALLS_PATH, [call("c-1")])
    authorization = json.dumps(init_payload()["Authorization"])
    # Only raw JSON can name the very same field twice.
    init = (
        f'{{"type":"connection_init","payload":{{"Authorization":{authorization},'
        f'"{second_name}":{authorization},"X-Catapult-User-Id":"{DEMO.user_id}"}}}}'
    )

    async def body() -> None:
        async with live_app(fake_upstream.url) as app, websocket(app) as ws:
            await ws.send_text(init)
            assert await ws.receive_json() == {"type": "connection_ack"}
            query = {"query": "{ calls { id } }"}
            await ws.send_json({"id": "1", "type": "subscribe", "payload": query})
            message = await ws.receive_json()
            codes = [e["extensions"]["code"] for e in message["payload"]["errors"]]
            assert codes == ["UNAUTHENTICATED"]

    run(body)
    assert fake_upstream.requests == []


def test_credentials_of_the_upgrade_request_count_without_a_payload(
    fake_upstream: FakeUpstream,
) -> None:
    fake_upstream.answer(CALLS_PATH, [call("c-1")])

    async def body() -> None:
        async with live_app(fake_upstream.url) as app, websocket(app, headers=init_payload()) as ws:
            await initialised(ws, {})
            query = {"query": "{ calls { id } }"}
            await ws.send_json({"id": "q", "type": "subscribe", "payload": query})
            assert (await ws.receive_json())["payload"] == {"data": {"calls": [{"id": "c-1"}]}}

    run(body)


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        ([{"id": "1", "type": "subscribe", "payload": {"query": "{ calls { id } }"}}], 4401),
        ([{"type": "connection_init"}, {"type": "connection_init"}], 4429),
        ([{"type": "connection_init"}, {"type": "bogus"}], 4400),
        ([{"type": "connection_init"}, {"type": "next", "id": "1", "payload": {}}], 4400),
        ([{"type": "connection_init"}, {"type": "subscribe", "id": "", "payload": {}}], 4400),
        ([{"type": "connection_init"}, {"type": "subscribe", "id": "1", "payload": {}}], 4400),
        ([{"type": "connection_init", "payload": "x"}], 4400),
        ([["not", "an", "object"]], 4400),
    ],
    ids=["subscribe-before-ack", "init-twice", "unknown-type", "server-type", "empty-id",
         "no-query", "payload-not-object", "not-an-object"],
)  # fmt: skip
def test_protocol_violations_close_with_their_code(
    fake_upstream: FakeUpstream, messages: list[Any], code: int
) -> None:
    async def body() -> None:
        async with live_app(fake_upstream.url) as app, websocket(app) as ws:
            for message in messages:
                await ws.send_json(message)
            assert (await ws.closed())[0] == code

    run(body)


# A ping is the smallest message with a payload of any size.
def _ping(filler: str) -> str:
    return json.dumps({"type": "ping", "payload": {"x": filler}}, ensure_ascii=False)


LIMIT = 2048
_UNDER = _ping("a" * (LIMIT - len(_ping(""))))


@pytest.mark.parametrize(
    ("message", "closed"),
    [
        (_UNDER, False),
        (_ping("a" * (LIMIT + 1 - len(_ping("")))), True),
        # Fewer characters than the bound, more bytes: the bound is in bytes.
        (_ping("\u20ac" * (LIMIT // 3 + 1)), True),
    ],
    ids=["at-the-bound", "one-byte-over", "multibyte-over"],
)
def test_a_message_over_the_body_bound_closes_with_1009(
    fake_upstream: FakeUpstream, message: str, closed: bool
) -> None:
    # In process: no server bounds the frames here, the gateway alone does.
    assert len(_UNDER.encode()) == LIMIT

    async def body() -> None:
        async with live_app(fake_upstream.url, max_body_bytes=LIMIT) as app, websocket(app) as ws:
            await initialised(ws)
            await ws.send_text(message)
            if closed:
                assert await ws.closed() == (1009, "Message too big")
            else:
                assert (await ws.receive_json())["type"] == "pong"

    run(body)


def test_a_running_id_used_again_closes_with_4409(fake_upstream: FakeUpstream) -> None:
    fake_upstream.answer(CALLS_PATH, [call("c-1")])

    async def body() -> None:
        async with live_app(fake_upstream.url) as app, websocket(app) as ws:
            await initialised(ws)
            subscribe = {"id": "same", "type": "subscribe", "payload": {"query": SUBSCRIPTION}}
            await ws.send_json(subscribe)
            assert (await ws.receive_json())["type"] == "next"
            await ws.send_json(subscribe)
            assert await ws.closed() == (4409, "Subscriber for same already exists")

    run(body)


def test_no_connection_init_closes_with_4408(fake_upstream: FakeUpstream) -> None:
    async def body() -> None:
        async with live_app(fake_upstream.url, live_init_timeout=0.2) as app, websocket(app) as ws:
            assert await ws.closed() == (4408, "Connection initialisation timeout")

    run(body)


def test_another_subprotocol_closes_with_4406(fake_upstream: FakeUpstream) -> None:
    async def body() -> None:
        async with (
            live_app(fake_upstream.url) as app,
            websocket(app, subprotocols=["graphql-ws"]) as ws,
        ):
            assert ws.subprotocol is None
            assert await ws.closed() == (4406, "Subprotocol not acceptable")

    run(body)


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://evil.example", False),
        ("http://gateway.test.evil.example", False),
        ("http://gateway.test", True),
        ("http://GATEWAY.test:80", True),
        ("https://app.example.com", True),
        (None, True),
    ],
    ids=["foreign", "suffix", "same-origin", "same-origin-spelled", "listed", "no-origin"],
)
def test_a_foreign_origin_is_refused_before_the_handshake(
    fake_upstream: FakeUpstream, origin: str | None, allowed: bool
) -> None:
    headers = {} if origin is None else {"origin": origin}

    async def body() -> None:
        async with live_app(fake_upstream.url, cors_origins="https://app.example.com") as app:
            if allowed:
                async with websocket(app, headers=headers) as ws:
                    await initialised(ws)
                return
            with pytest.raises(Denied):
                async with websocket(app, headers=headers):
                    pass

    run(body)


def test_operations_per_connection_are_bounded(fake_upstream: FakeUpstream) -> None:
    fake_upstream.answer(CALLS_PATH, [call("c-1")])

    async def body() -> None:
        async with (
            live_app(fake_upstream.url, live_max_per_connection=2) as app,
            websocket(app) as ws,
        ):
            await initialised(ws)
            for operation_id in ("1", "2", "3"):
                await ws.send_json(
                    {"id": operation_id, "type": "subscribe", "payload": {"query": SUBSCRIPTION}}
                )
            messages = [await ws.receive_json() for _ in range(3)]
            refused = [m for m in messages if m["type"] == "error"]
            assert [m["id"] for m in refused] == ["3"]
            extensions = refused[0]["payload"][0]["extensions"]
            assert extensions["code"] == "RATE_LIMITED"
            assert extensions["limit"] == "GATEWAY_LIVE_MAX_PER_CONNECTION"
            # Room again once one completes.
            await ws.send_json({"id": "1", "type": "complete"})
            await ws.send_json({"id": "4", "type": "subscribe", "payload": {"query": SUBSCRIPTION}})
            assert (await ws.receive_json())["id"] == "4"

    run(body)
