"""The answer cache: whole answers reused for one caller within the TTL, and only then."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from gateway.endpoint import AnswerVerdict
from gateway.middleware.answer_cache import AnswerCacheMiddleware
from gateway.observability.metrics import Metrics
from gateway.observability.telemetry import Telemetry
from gateway.sandbox import credential_headers
from tests.conftest import DEMO, SECOND, GatewayFactory, Sandbox
from tests.fakes import FakeUpstream

QUERY = "query Latest { calls(size: 2) { id state } }"


def upstream_count(sandbox: Sandbox) -> int:
    return len(sandbox.requests())


def test_the_same_request_within_the_ttl_is_answered_without_the_upstream(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    gateway = gateway_factory(cache_ttl=30)

    first = gateway.query(QUERY, headers={"X-Request-Id": "first"})
    second = gateway.query(QUERY, headers={"X-Request-Id": "second"})

    assert first.content == second.content
    assert second.headers["x-request-id"] == "second"
    assert second.headers["content-type"] == first.headers["content-type"]
    assert upstream_count(sandbox) == 1


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(credential_headers(SECOND), id="another-account"),
        pytest.param(
            {**credential_headers(SECOND), "X-Catapult-User-Id": DEMO.user_id},
            id="another-account-naming-the-first-user",
        ),
        pytest.param({"X-Catapult-User-Id": DEMO.user_id}, id="no-credentials"),
        pytest.param(
            {**credential_headers(DEMO), "Accept": "application/graphql-response+json"},
            id="another-media-type",
        ),
    ],
)
def test_an_answer_is_never_reused_for_a_different_caller_or_request(
    gateway_factory: GatewayFactory, sandbox: Sandbox, other: dict[str, str]
) -> None:
    gateway = gateway_factory(cache_ttl=30, headers={})
    mine = gateway.query(QUERY, headers=credential_headers(DEMO))

    theirs = gateway.query(QUERY, headers=other)

    assert (theirs.content, theirs.headers["content-type"]) != (
        mine.content,
        mine.headers["content-type"],
    )
    # Every other caller with credentials has its own request reach the upstream (the one
    # without credentials is refused before any). The same caller asking for another
    # media type gets the upstream answer from the upstream cache (gateway/upstream/cache.py).
    same_caller = other.get("Authorization") == credential_headers(DEMO)["Authorization"]
    expected = 1 if "Authorization" not in other or same_caller else 2
    assert upstream_count(sandbox) == expected


def test_answers_with_errors_are_never_kept(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    gateway = gateway_factory(cache_ttl=30)
    sandbox.faults(fail_status=500, fail_count=1)

    failed = gateway.query(QUERY)
    recovered = gateway.query(QUERY)

    assert failed.json()["errors"][0]["extensions"]["code"] == "UPSTREAM_ERROR"
    assert "errors" not in recovered.json()
    assert upstream_count(sandbox) == 2


def one_call(call_id: str) -> list[dict[str, str]]:
    """A list answer holding one call with this id."""
    return [{"id": call_id, "from": "+19195550100", "to": "+19195550101"}]


def test_no_cache_skips_the_lookup_and_refreshes_the_entry(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    # The upstream's answer changes between requests, so what each one gets back tells a
    # lookup from a fetch, and a refreshed entry from one left as it was.
    path = f"/v1/users/{DEMO.user_id}/calls/"
    gateway = gateway_factory(upstream_url=fake_upstream.url, cache_ttl=30)
    query = "{ calls { id } }"
    fake_upstream.answer(path, one_call("c-before"))
    gateway.query(query)
    fake_upstream.answer(path, one_call("c-after"))

    no_cache = {**credential_headers(DEMO), "Cache-Control": "no-cache"}
    skipped = gateway.query(query, headers=no_cache)
    later = gateway.query(query)

    assert skipped.json()["data"]["calls"] == [{"id": "c-after"}]
    assert later.content == skipped.content
    assert len(fake_upstream.requests) == 2


def test_an_entry_expires_with_the_ttl(gateway_factory: GatewayFactory, sandbox: Sandbox) -> None:
    gateway = gateway_factory(cache_ttl=0.5)
    gateway.query(QUERY)

    time.sleep(0.6)
    gateway.query(QUERY)

    assert upstream_count(sandbox) == 2


def test_the_ttl_off_turns_the_answer_cache_off(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    # The same bytes twice: with either cache on (whole answers or upstream answers), the
    # second request would not reach the upstream.
    gateway = gateway_factory(cache_ttl=0)

    gateway.query(QUERY)
    gateway.query(QUERY)

    assert upstream_count(sandbox) == 2


def test_a_get_hit_keeps_its_cache_headers_counted_from_now(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    gateway = gateway_factory(cache_ttl=30)
    params = {"query": QUERY}
    headers = {**credential_headers(DEMO), "Apollo-Require-Preflight": "1"}

    first = gateway.http.get("/graphql", params=params, headers=headers)
    time.sleep(1.1)
    second = gateway.http.get("/graphql", params=params, headers=headers)

    assert upstream_count(sandbox) == 1
    assert first.headers["vary"] == second.headers["vary"]
    first_age = int(first.headers["cache-control"].rsplit("max-age=", 1)[1])
    second_age = int(second.headers["cache-control"].rsplit("max-age=", 1)[1])
    assert second_age < first_age


def test_the_endpoint_decides_what_is_kept_not_the_bytes(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    # A call whose data holds the word "errors" is an answer without errors.
    path = f"/v1/users/{DEMO.user_id}/calls/"
    record = {"id": "c-1", "direction": "in", "from": "+19195550100", "to": "+19195550101",
              "state": "completed", "sipHeaders": {"X-Tag": "errors"}}  # fmt: skip
    fake_upstream.answer(path, [record])
    gateway = gateway_factory(upstream_url=fake_upstream.url, cache_ttl=30)
    query = "{ calls { id sipHeaders { name value } } }"

    first = gateway.query(query)
    second = gateway.query(query)

    assert b'"errors"' in first.content
    assert second.content == first.content
    # Served whole from the answer cache, not rebuilt from the upstream cache.
    assert "gateway_response_cache_hits_total 1.0" in gateway.http.get("/metrics").text


TTL = 30.0


@dataclass
class Answering:
    """An endpoint stand-in that answers 200 with `verdict` on its start message."""

    verdict: AnswerVerdict | None
    status: int = 200
    calls: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append(scope["path"])
        start = {"type": "http.response.start", "status": self.status, "headers": []}
        if self.verdict is not None:
            start[AnswerVerdict.KEY] = self.verdict
        await send(start)
        await send({"type": "http.response.body", "body": b'{"data":{"errors":1}}'})


async def ask_twice(endpoint: Answering) -> None:
    cache = AnswerCacheMiddleware(
        endpoint,
        path="/graphql",
        ttl=TTL,
        telemetry=Telemetry(Metrics(multiprocess_dir=None), None),
        max_body_bytes=1024,
        max_entries=10,
        max_bytes=64 * 1024,
        max_answer_bytes=1024,
    )
    transport = httpx.ASGITransport(app=cache)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        for _ in range(2):
            await client.post("/graphql", json={"query": "{ a }"}, headers=credential_headers(DEMO))


@pytest.mark.parametrize(
    ("cacheable", "age", "status", "kept"),
    [
        pytest.param(True, None, 200, True, id="cacheable-no-upstream-data"),
        pytest.param(True, 1.0, 200, True, id="cacheable-fresh-data"),
        pytest.param(None, None, 200, False, id="no-verdict"),
        pytest.param(False, None, 200, False, id="not-cacheable"),
        pytest.param(True, None, 500, False, id="cacheable-but-not-a-200"),
        pytest.param(True, TTL + 1, 200, False, id="data-older-than-ttl"),
    ],
)
def test_only_the_endpoints_verdict_decides_what_is_kept_and_for_how_long(
    cacheable: bool | None, age: float | None, status: int, kept: bool
) -> None:
    # `age`: how long before the request its upstream data was fetched (None: it used none).
    fetched_at = None if age is None else time.time() - age
    verdict = None if cacheable is None else AnswerVerdict(cacheable, "Q", fetched_at)
    endpoint = Answering(verdict, status)

    asyncio.run(ask_twice(endpoint))

    # The body says "errors" every time: the bytes are never what decides.
    assert len(endpoint.calls) == (1 if kept else 2)
