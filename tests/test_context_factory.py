"""ContextFactory: each request's Context, its loader's deadline, and its refreshing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.requests import Request
from starlette.types import Message

from gateway.calls import ListQuery
from gateway.context import Context
from gateway.context_factory import ContextFactory
from gateway.credentials import Credentials, CredentialsVerdict
from gateway.errors import Unauthenticated
from gateway.observability.metrics import Metrics
from gateway.observability.telemetry import Telemetry
from gateway.pagination import CursorCodec
from gateway.sandbox import ACCOUNTS, credential_headers
from gateway.upstream.client import UpstreamAnswer
from gateway.upstream.entities import KnownCall
from gateway.upstream.tally import UpstreamTally
from tests.fakes import in_process_endpoint

REQUEST_TIMEOUT = 20.0
FETCHED_AT = 1_700_000_000.0
# The verdict the endpoint read from the request's facts and hands to the factory.
CALLER = Credentials(authorization="Basic dC1jOnMtYw==", user_id="u-caller", token="t-c")


@dataclass(frozen=True)
class Fetched:
    what: str
    deadline: float
    refresh: bool
    tally: UpstreamTally
    user_id: str


@dataclass
class RecordingUpstream:
    """The lifespan's upstream service, recording what each request's loader asks of it."""

    fetched: list[Fetched] = field(default_factory=list)
    recalled: list[list[str]] = field(default_factory=list)

    async def list_calls(
        self,
        credentials: Credentials,
        query: ListQuery,
        *,
        deadline: float,
        refresh: bool,
        gate: Callable[[], None],
        tally: UpstreamTally,
    ) -> UpstreamAnswer:
        self.fetched.append(Fetched("list", deadline, refresh, tally, credentials.user_id))
        return UpstreamAnswer(body=[], links={}, fetched_at=FETCHED_AT)

    async def get_call(
        self,
        credentials: Credentials,
        call_id: str,
        *,
        deadline: float,
        refresh: bool,
        gate: Callable[[], None],
        tally: UpstreamTally,
    ) -> UpstreamAnswer | None:
        self.fetched.append(Fetched(call_id, deadline, refresh, tally, credentials.user_id))
        return UpstreamAnswer(body={"id": call_id}, links={}, fetched_at=FETCHED_AT)

    async def recall_calls(
        self, credentials: Credentials, call_ids: Sequence[str]
    ) -> dict[str, KnownCall]:
        self.recalled.append(list(call_ids))
        return {}

    def next_page(self, *args: Any) -> None:
        return None  # the canned page links to no other


def make_context(
    upstream: RecordingUpstream,
    credentials: CredentialsVerdict = CALLER,
    *,
    refresh: bool = False,
) -> Context:
    factory = ContextFactory(
        upstream,
        cursors=CursorCodec(b"a test cursor key"),
        request_timeout=REQUEST_TIMEOUT,
        max_upstream_requests=10,
        max_calls_per_operation=5000,
        max_entities=1000,
    )
    return factory("r-1", credentials, refresh=refresh)


@pytest.mark.parametrize(
    "fresh", [pytest.param(False, id="cached"), pytest.param(True, id="fresh")]
)
def test_refresh_refreshes_the_upstream_cache_and_skips_the_entity_view(fresh: bool) -> None:
    # `refresh` is the caller's reading of `no-cache` (tests/test_cache_control.py).
    upstream = RecordingUpstream()
    context = make_context(upstream, refresh=fresh)

    async def ask() -> None:
        await context.calls.list_calls(ListQuery())
        await context.calls.get_call("c-1")

    asyncio.run(ask())

    assert [fetched.refresh for fetched in upstream.fetched] == [fresh, fresh]
    assert upstream.recalled == ([] if fresh else [["c-1"]])


def test_the_deadline_is_the_request_timeout_from_when_the_context_is_made() -> None:
    upstream = RecordingUpstream()
    before = time.monotonic()
    context = make_context(upstream)
    after = time.monotonic()

    asyncio.run(context.calls.list_calls(ListQuery()))

    (fetched,) = upstream.fetched
    assert before + REQUEST_TIMEOUT <= fetched.deadline <= after + REQUEST_TIMEOUT


def test_the_context_holds_when_the_upstream_answers_it_used_were_fetched() -> None:
    upstream = RecordingUpstream()
    context = make_context(upstream)
    assert context.calls.oldest_fetch is None

    asyncio.run(context.calls.list_calls(ListQuery()))

    # What the endpoint's verdict says about how old the answer's data is.
    assert context.calls.oldest_fetch == FETCHED_AT
    assert context.request_id == "r-1"


def test_each_context_has_a_tally_of_its_own_that_every_ask_carries() -> None:
    # The operation's upstream tally, read by the endpoint for the request's line: made
    # with the context and handed down with each ask, never found on the way.
    upstream = RecordingUpstream()
    first, second = make_context(upstream), make_context(upstream)

    async def ask() -> None:
        await first.calls.list_calls(ListQuery())
        await first.calls.get_call("c-1")
        await second.calls.list_calls(ListQuery(size=3))

    asyncio.run(ask())

    assert first.tally is not second.tally
    assert [fetched.tally for fetched in upstream.fetched] == [
        first.tally,
        first.tally,
        second.tally,
    ]


def test_the_loader_acts_for_the_verdict_it_was_given_not_the_requests_headers() -> None:
    # The request's headers name the sandbox's first account; the verdict, read once by the
    # endpoint, is the one every upstream request is made for.
    upstream = RecordingUpstream()
    context = make_context(upstream)

    async def ask() -> None:
        await context.calls.list_calls(ListQuery())
        await context.calls.get_call("c-1")

    asyncio.run(ask())

    assert [fetched.user_id for fetched in upstream.fetched] == ["u-caller", "u-caller"]


def test_a_refused_verdict_refuses_every_upstream_request_before_it_is_made() -> None:
    upstream = RecordingUpstream()
    context = make_context(upstream, Unauthenticated("Send your Catapult API token."))

    with pytest.raises(Unauthenticated, match="Send your Catapult API token"):
        asyncio.run(context.calls.list_calls(ListQuery()))

    assert upstream.fetched == []


class RecordingScope(dict[str, Any]):
    """An ASGI scope that records each read of the gateway's own keys (`gateway.*`): where
    a layer looks up what the request's facts say."""

    def __init__(self, scope: dict[str, Any]) -> None:
        super().__init__(scope)
        self.reads: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        self._record(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self._record(key)
        return super().__getitem__(key)

    def _record(self, key: str) -> None:
        if key.startswith("gateway."):
            self.reads.append(key)


def run_through_the_endpoint(query: str) -> tuple[RecordingScope, RecordingUpstream]:
    """One POST of `query` to an endpoint with the app's ContextFactory, in process."""
    upstream = RecordingUpstream()
    telemetry = Telemetry(Metrics(multiprocess_dir=None), None)
    endpoint = in_process_endpoint(upstream, telemetry)
    headers = {
        **credential_headers(ACCOUNTS[0]),
        "content-type": "application/json",
        "accept": "application/json",
    }
    scope = RecordingScope(
        {
            "type": "http",
            "method": "POST",
            "path": "/graphql",
            "query_string": b"",
            "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        }
    )
    body = json.dumps({"query": query}).encode()

    async def receive() -> Message:
        return {"type": "http.request", "body": body}

    response = asyncio.run(endpoint.handle(Request(scope, receive)))
    assert response.status_code == 200, response.body
    return scope, upstream


def test_the_credentials_are_read_once_per_request_not_once_per_upstream_request() -> None:
    # The endpoint reads the verdict and hands it to the factory: the loader never goes
    # back to the request for it, however many upstream requests the operation makes.
    one, asked_once = run_through_the_endpoint("{ calls { id } }")
    three, asked_thrice = run_through_the_endpoint(
        "{ a: calls(page: 0) { id } b: calls(page: 1) { id } c: calls(page: 2) { id } }"
    )

    assert (len(asked_once.fetched), len(asked_thrice.fetched)) == (1, 3)
    assert three.reads == one.reads
