"""The cache: credential scoping, TTL, errors, no-cache, the LRU bound, single flight, replicas
sharing one Redis (the guarded Redis connection itself: test_redis.py)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.calls import ListQuery
from gateway.credentials import Credentials
from gateway.errors import UpstreamError
from gateway.observability.metrics import Metrics
from gateway.observability.telemetry import Telemetry
from gateway.sandbox import credential_headers
from gateway.upstream.cache import MemoryStore, SingleFlightCache
from gateway.upstream.client import CatapultClient, UpstreamAnswer
from gateway.upstream.pacing import MonotonicClock
from gateway.upstream.routes import calls_path, list_params
from gateway.upstream.service import AnswerCodec, create_upstream
from gateway.upstream.tally import UpstreamTally
from tests.conftest import (
    DEMO,
    SECOND,
    Gateway,
    GatewayFactory,
    Sandbox,
    examples,
)
from tests.fakes import FakeUpstream, upstream_client
from tests.servers import gateway_process


def ignore(*_: object) -> None:
    """A metrics hook these tests do not observe."""


LIST = "{ calls(size: 2) { id from } }"
_unique = itertools.count()


def fresh(query: str) -> str:
    """The same operation in new bytes. The whole-answer cache (gateway/middleware/
    answer_cache.py) answers a repeated identical request before any upstream request is
    considered; new bytes get past it, so what these tests see is the upstream cache's doing."""
    return f"{query} # {next(_unique)}"


def ready(gateway: Gateway) -> dict[str, Any]:
    response = gateway.http.get("/readyz")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def ids(response: httpx.Response) -> list[str]:
    body = response.json()
    assert "errors" not in body, body
    return [call["id"] for call in body["data"]["calls"]]


def codes(response: httpx.Response) -> list[str]:
    return [error["extensions"]["code"] for error in response.json().get("errors", [])]


def basic(token: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{token}:{secret}".encode()).decode()


# -- keys and values never hold credentials --


def test_a_stored_answer_holds_the_body_and_links_only() -> None:
    answer = UpstreamAnswer(body=[{"id": "c-1"}], links={"next": "http://x/next"})
    data = AnswerCodec().encode(answer)

    assert AnswerCodec().decode(data) == answer
    assert b"Basic" not in data


# -- cross-credential isolation --


def test_the_same_query_under_two_accounts_is_fetched_for_each(
    gateway: Gateway, sandbox: Sandbox
) -> None:
    demo = ids(gateway.query(fresh(LIST)))
    second = ids(gateway.query(fresh(LIST), headers=credential_headers(SECOND)))
    again = ids(gateway.query(fresh(LIST)))

    assert demo == again
    assert set(demo).isdisjoint(second)
    assert [r["account"] for r in sandbox.requests()] == [DEMO.user_id, SECOND.user_id]


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(credential_headers(SECOND)["Authorization"], id="another-account"),
        pytest.param(basic(DEMO.token, "not-the-secret"), id="right-token-wrong-secret"),
    ],
)
def test_a_caller_naming_another_users_id_never_gets_their_cached_answer(
    gateway: Gateway, sandbox: Sandbox, authorization: str
) -> None:
    ids(gateway.query(fresh(LIST)))

    intruder = gateway.query(
        LIST, headers={"Authorization": authorization, "X-Catapult-User-Id": DEMO.user_id}
    )

    assert codes(intruder) == ["UNAUTHENTICATED"]
    assert intruder.json()["data"] is None
    assert [r["status"] for r in sandbox.requests()] == [200, 401]


def _echo_client() -> tuple[CatapultClient, httpx.MockTransport, list[httpx.Request]]:
    """A client whose upstream answers with who asked and what: a recording fake."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        # In a call record's fields: the client keeps only those (calls.slim_body).
        body = {"callbackUrl": request.headers["authorization"], "events": str(request.url)}
        return httpx.Response(200, json=[body])

    transport = httpx.MockTransport(answer)
    return upstream_client(transport), transport, seen


_tokens = st.sampled_from(["t-a", "t-b", "t-c"])
_secrets = st.sampled_from(["s-1", "s-2"])
_users = st.sampled_from(["u-a", "u-b"])
_queries = st.builds(
    ListQuery,
    from_=st.sampled_from([None, "+19195551212"]),
    page=st.sampled_from([0, 1]),
    size=st.sampled_from([1, 25]),
)
_asks = st.lists(st.tuples(_tokens, _secrets, _users, _queries), min_size=1, max_size=25)


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(asks=_asks, cache_key=st.sampled_from([None, "a shared cache key"]))
def test_property_every_answer_is_the_one_fetched_with_the_callers_own_credentials(
    asks: list[tuple[str, str, str, ListQuery]], cache_key: str | None
) -> None:
    async def run() -> None:
        client, http, seen = _echo_client()
        upstream = create_upstream(
            client,
            Telemetry(Metrics(multiprocess_dir=None), None),
            cache_url="memory://",
            cache_key=cache_key.encode() if cache_key else None,
            cache_ttl=30,
            cache_max_entries=1000,
            cache_max_bytes=1 << 20,
            cache_timeout=1,
            rate=0,
            queue_timeout=2,
            pacing_file=None,
            clock=MonotonicClock(),
        )

        # Sequentially (hits after misses) and all at once (single flight) alike.
        async def ask(token: str, secret: str, user: str, query: ListQuery) -> None:
            credentials = Credentials(authorization=basic(token, secret), user_id=user)
            answer = await upstream.list_calls(
                credentials, query, deadline=time.monotonic() + 5, tally=UpstreamTally()
            )
            [record] = answer.body
            assert record["callbackUrl"] == credentials.authorization
            target = urlsplit(record["events"])
            assert target.path == calls_path(user)
            assert tuple(parse_qsl(target.query)) == list_params(query)

        for each in asks:
            await ask(*each)
        await asyncio.gather(*(ask(*each) for each in reversed(asks)))
        distinct = {(t, s, u, q) for t, s, u, q in asks}
        assert len(seen) == len(distinct)
        await upstream.close()
        await http.aclose()

    asyncio.run(run())


# -- TTL, errors, no-cache, TTL 0 --


def test_a_hit_within_the_ttl_and_a_miss_after_it(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    gateway = gateway_factory(cache_ttl=0.5)

    first = ids(gateway.query(fresh(LIST)))
    assert ids(gateway.query(fresh(LIST))) == first
    assert len(sandbox.requests()) == 1
    time.sleep(0.6)
    assert ids(gateway.query(fresh(LIST))) == first
    assert len(sandbox.requests()) == 2
    assert ready(gateway)["cache"]["hits"] == 1


@pytest.mark.parametrize(("status", "code"), [(500, "UPSTREAM_ERROR"), (404, "NOT_FOUND")])
def test_errors_are_never_cached(
    gateway: Gateway, sandbox: Sandbox, status: int, code: str
) -> None:
    sandbox.faults(fail_status=status, fail_count=1)

    assert codes(gateway.query(fresh(LIST))) == [code]
    assert ids(gateway.query(fresh(LIST)))
    assert [r["status"] for r in sandbox.requests()] == [status, 200]


def test_no_cache_skips_the_read_and_refreshes_the_entry(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    # The upstream's answer changes between requests, so what each one gets back tells a
    # read from a fetch, and a refreshed entry from one left as it was.
    path = f"/v1/users/{DEMO.user_id}/calls/"
    gateway = gateway_factory(upstream_url=fake_upstream.url, cache_ttl=30)
    fake_upstream.answer(path, [{"id": "c-before", "from": "+19195550100", "to": "+1919555"}])
    assert ids(gateway.query(fresh(LIST))) == ["c-before"]
    fake_upstream.answer(path, [{"id": "c-after", "from": "+19195550100", "to": "+1919555"}])

    no_cache = {"Cache-Control": "no-cache"} | credential_headers(DEMO)
    assert ids(gateway.query(fresh(LIST), headers=no_cache)) == ["c-after"]
    assert ids(gateway.query(fresh(LIST))) == ["c-after"]
    assert len(fake_upstream.requests) == 2


def test_refresh_replaces_the_entry_that_later_reads_get() -> None:
    async def run() -> None:
        cache = SingleFlightCache(MemoryStore(10), AnswerCodec(), on_lookup=ignore, on_share=ignore)
        loads = iter(range(1, 10))

        async def load() -> UpstreamAnswer:
            return UpstreamAnswer(body=next(loads), links={})

        assert (await cache.get_or_load("k", load, 60, tally=UpstreamTally())).body == 1
        assert (await cache.get_or_load("k", load, 60, tally=UpstreamTally())).body == 1
        assert (
            await cache.get_or_load("k", load, 60, refresh=True, tally=UpstreamTally())
        ).body == 2
        assert (await cache.get_or_load("k", load, 60, tally=UpstreamTally())).body == 2

    asyncio.run(run())


# -- the LRU bound --


def test_the_memory_store_keeps_the_most_recently_used_within_its_bound() -> None:
    async def run() -> None:
        store = MemoryStore(10)
        for n in range(100):
            await store.set(f"k{n}", b"v", 60)
            if n >= 1:
                assert await store.get("k0") == b"v"  # used all along: never evicted
            assert len(store) <= 10
        assert await store.get("k99") == b"v"
        assert await store.get("k89") is None
        assert store.state()["evictions"] == 90

    asyncio.run(run())


def test_the_lru_bound_holds_under_ten_times_more_keys(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    gateway = gateway_factory(cache_max_entries=5)
    for page in range(50):
        assert codes(gateway.query(fresh(f"{{ calls(page: {page}, size: 1) {{ id }} }}"))) == []

    cache = ready(gateway)["cache"]
    assert (cache["entries"], cache["maxEntries"], cache["evictions"]) == (5, 5, 45)
    gateway.query(fresh("{ calls(page: 49, size: 1) { id } }"))
    assert len(sandbox.requests()) == 50
    gateway.query(fresh("{ calls(page: 0, size: 1) { id } }"))
    assert len(sandbox.requests()) == 51


# -- single flight --


@pytest.mark.parametrize(
    ("ttl", "upstream_requests"),
    [
        pytest.param(5, 1, id="cache-on"),
        # TTL 0: no upstream answer is reused across client requests, shared or not.
        pytest.param(0, 50, id="cache-off"),
    ],
)
def test_fifty_concurrent_identical_queries_make_one_upstream_request(
    gateway_factory: GatewayFactory, sandbox: Sandbox, ttl: int, upstream_requests: int
) -> None:
    gateway = gateway_factory(cache_ttl=ttl)
    sandbox.faults(latency_ms=400)

    responses = gateway.burst(LIST, 50)

    assert {tuple(ids(r)) for r in responses} == {tuple(ids(responses[0]))}
    assert len(sandbox.requests()) == upstream_requests


def test_a_shared_failure_reaches_every_waiter_and_is_not_cached(
    gateway: Gateway, sandbox: Sandbox
) -> None:
    sandbox.faults(latency_ms=400, fail_status=500, fail_count=1)

    responses = gateway.burst(LIST, 20)

    assert [codes(r) for r in responses] == [["UPSTREAM_ERROR"]] * 20
    assert len(sandbox.requests()) == 1
    assert ids(gateway.query(fresh(LIST)))
    assert len(sandbox.requests()) == 2


def test_a_cancelled_waiter_does_not_cancel_the_shared_load() -> None:
    async def run() -> None:
        cache = SingleFlightCache(MemoryStore(10), AnswerCodec(), on_lookup=ignore, on_share=ignore)
        release = asyncio.Event()
        calls = 0

        async def load() -> UpstreamAnswer:
            nonlocal calls
            calls += 1
            await release.wait()
            return UpstreamAnswer(body="x", links={})

        first = asyncio.create_task(cache.get_or_load("k", load, 60, tally=UpstreamTally()))
        second = asyncio.create_task(cache.get_or_load("k", load, 60, tally=UpstreamTally()))
        await asyncio.sleep(0)
        first.cancel()
        release.set()
        assert (await second).body == "x"
        assert calls == 1

    asyncio.run(run())


def test_a_failed_load_raises_in_every_waiter() -> None:
    async def run() -> None:
        cache = SingleFlightCache(MemoryStore(10), AnswerCodec(), on_lookup=ignore, on_share=ignore)

        async def load() -> UpstreamAnswer:
            await asyncio.sleep(0.01)
            raise UpstreamError("boom")

        results = await asyncio.gather(
            *(cache.get_or_load("k", load, 60, tally=UpstreamTally()) for _ in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, UpstreamError) for r in results)
        assert cache.state()["entries"] == 0

    asyncio.run(run())


# -- Redis --


@contextmanager
def replica(sandbox: Sandbox, **settings: str) -> Iterator[str]:
    """A gateway process in front of the sandbox; yields its URL once it is ready."""
    env = {
        "GATEWAY_UPSTREAM_URL": sandbox.url,
        "GATEWAY_UPSTREAM_RATE": "0",
        "GATEWAY_LOG_LEVEL": "warning",
        **{f"GATEWAY_{k.upper()}": v for k, v in settings.items()},
    }
    with gateway_process(env=env) as (_, url):
        yield url


def test_two_gateway_processes_share_one_redis(sandbox: Sandbox, redis_url: str) -> None:
    shared = {"cache_url": redis_url, "cache_key": "a key the replicas share"}
    headers = credential_headers(DEMO)
    with replica(sandbox, **shared) as first, replica(sandbox, **shared) as second:
        answer = httpx.post(f"{first}/graphql", json={"query": LIST}, headers=headers)
        assert len(sandbox.requests()) == 1

        again = httpx.post(f"{second}/graphql", json={"query": LIST}, headers=headers)

        assert ids(again) == ids(answer)
        assert len(sandbox.requests()) == 1
        other = httpx.post(
            f"{second}/graphql", json={"query": LIST}, headers=credential_headers(SECOND)
        )
        assert set(ids(other)).isdisjoint(ids(answer))
        assert len(sandbox.requests()) == 2


def test_without_a_shared_key_replicas_do_not_share_and_a_warning_says_so(
    gateway_factory: GatewayFactory, sandbox: Sandbox, redis_url: str, caplog: Any
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.cache"):
        first = gateway_factory(cache_url=redis_url)
        second = gateway_factory(cache_url=redis_url)

    ids(first.query(LIST))
    ids(second.query(LIST))

    assert len(sandbox.requests()) == 2
    warnings = [r for r in caplog.records if "GATEWAY_CACHE_KEY is unset" in r.getMessage()]
    assert len(warnings) == 2


ONE_CALL = {"id": "c-1", "direction": "in", "from": "+19195550100", "to": "+19195550101"}


@pytest.mark.parametrize(
    ("path", "bad", "good", "query"),
    [
        pytest.param(
            "/v1/users/u-demo/calls/",
            {"calls": []},
            [],
            "{ calls { id } }",
            id="list-object-not-array",
        ),
        pytest.param(
            "/v1/users/u-demo/calls/",
            "calls",
            [],
            "{ calls { id } }",
            id="list-string-not-array",
        ),
        pytest.param(
            "/v1/users/u-demo/calls/c-1",
            ["c-1"],
            ONE_CALL,
            '{ call(id: "c-1") { id } }',
            id="one-call-array-not-object",
        ),
        pytest.param(
            "/v1/users/u-demo/calls/c-1",
            None,
            ONE_CALL,
            '{ call(id: "c-1") { id } }',
            id="one-call-null-not-object",
        ),
    ],
)
def test_an_answer_of_the_wrong_shape_is_never_cached(
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
    path: str,
    bad: Any,
    good: Any,
    query: str,
) -> None:
    # A list of non-objects is not an error (each entry is left out with a warning), so
    # only the shapes that fail the whole answer are here.
    fake_upstream.answer(path, bad)
    gateway = gateway_factory(upstream_url=fake_upstream.url, cache_ttl=60)

    assert codes(gateway.query(query)) == ["UPSTREAM_BAD_RESPONSE"]
    fake_upstream.answer(path, good)
    second = gateway.query(query).json()

    assert "errors" not in second, second
    assert len(fake_upstream.requests) == 2
