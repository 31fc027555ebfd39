"""RequestFacts: one request's id, credentials verdict and body, made once, under one key."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from starlette.types import Message

from gateway.credentials import Credentials
from gateway.errors import Unauthenticated
from gateway.request_body import RequestBodyRefusal
from gateway.request_facts import RequestFacts, request_facts

AUTHORIZATION = (b"authorization", b"Basic " + base64.b64encode(b"t-demo:s-secret"))
USER = (b"x-catapult-user-id", b"u-demo")
CALLER = Credentials(authorization=AUTHORIZATION[1].decode(), user_id="u-demo", token="t-demo")


def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "headers": list(headers)}


@pytest.mark.parametrize(
    ("headers", "request_id", "verdict"),
    [
        pytest.param([AUTHORIZATION, USER], None, CALLER, id="caller-without-an-id"),
        pytest.param(
            [(b"x-request-id", b"abc-1"), AUTHORIZATION, USER], "abc-1", CALLER, id="caller-id"
        ),
        pytest.param([USER], None, "Send your Catapult API token", id="no-authorization"),
        pytest.param(
            [AUTHORIZATION, USER, (b"X-Catapult-User-Id", b"u-other")],
            None,
            "once each",
            id="a-credential-header-twice",
        ),
        pytest.param(
            [(b"x-request-id", b"has space"), AUTHORIZATION, USER], None, CALLER, id="insane-id"
        ),
        pytest.param([], None, "Send your Catapult API token", id="no-headers"),
    ],
)
def test_the_facts_are_made_from_the_headers_on_the_first_ask(
    headers: list[tuple[bytes, bytes]], request_id: str | None, verdict: Credentials | str
) -> None:
    facts = request_facts(scope(*headers))

    if request_id is None:
        assert facts.request_id != "has space"
        assert len(facts.request_id) == 32  # a new one
    else:
        assert facts.request_id == request_id
    if isinstance(verdict, Credentials):
        assert facts.credentials == verdict
    else:
        assert isinstance(facts.credentials, Unauthenticated)
        assert verdict in facts.credentials.message
    assert facts.body is None


def test_every_layer_gets_the_first_facts_even_from_a_copy_of_the_scope() -> None:
    # One verdict for every layer: a later reader gets the first even if the header list
    # changed in between, and a layer's copy of the scope shares the holder.
    request = scope(AUTHORIZATION, USER)
    first = request_facts(request)
    request["headers"] = [(b"authorization", b"Basic dC1vOnMtbw=="), (USER[0], b"u-other")]

    assert request_facts(request) is first
    assert request_facts(dict(request)) is first
    assert first.credentials == CALLER


def test_a_scope_with_something_else_under_the_key_gets_facts_of_its_own() -> None:
    request = scope(AUTHORIZATION, USER)
    request["gateway.request_facts"] = "not facts"

    assert isinstance(request_facts(request), RequestFacts)


def test_the_facts_repr_shows_neither_the_secret_nor_the_body() -> None:
    facts = request_facts(scope(AUTHORIZATION, USER))
    facts.body = b'{"query": "{ calls { id } }"}'

    shown = repr(facts)

    assert facts.request_id in shown
    assert "u-demo" in shown
    for secret in (AUTHORIZATION[1].decode(), "t-demo", "s-secret", "calls"):
        assert secret not in shown


class RecordingReceive:
    """An ASGI `receive` that records each message it hands out."""

    def __init__(self, *messages: Message) -> None:
        self.messages = list(messages)
        self.handed: list[Message] = []

    async def __call__(self) -> Message:
        message = self.messages.pop(0) if self.messages else {"type": "http.disconnect"}
        self.handed.append(message)
        return message


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        pytest.param(
            [
                {"type": "http.request", "body": b'{"query":', "more_body": True},
                {"type": "http.request", "body": b' "{ a }"}'},
            ],
            b'{"query": "{ a }"}',
            id="body-in-two-parts",
        ),
        pytest.param(
            [{"type": "http.request", "body": b"x" * 33}],
            RequestBodyRefusal(413, "The request body is larger than 32 bytes.", unread=True),
            id="refusal",
        ),
        pytest.param(
            [{"type": "http.disconnect"}],
            RequestBodyRefusal(408, "The request body did not arrive."),
            id="client-gone",
        ),
    ],
)
def test_the_body_is_read_once_whichever_layer_asks(
    messages: list[Message], expected: bytes | RequestBodyRefusal
) -> None:
    request = scope(AUTHORIZATION, USER)
    receive = RecordingReceive(*messages)

    async def two_layers() -> list[bytes | RequestBodyRefusal]:
        # The answer cache asks first, the endpoint (through a copy of the scope) second.
        first = await request_facts(request).read_body(request, receive, 32)
        copy = dict(request)
        return [first, await request_facts(copy).read_body(copy, receive, 32)]

    first, second = asyncio.run(two_layers())

    assert first == second == expected
    assert second is first
    assert receive.handed == messages  # nothing read twice
