"""The upstream service: cache, single flight, pacing and the entity view around the client,
driven through a recording fake upstream (`httpx.MockTransport`) and recording metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.calls import ListQuery
from gateway.credentials import Credentials
from gateway.errors import GatewayError, NotFound, RateLimited, UpstreamBadResponse
from gateway.upstream.client import UpstreamAnswer
from gateway.upstream.pacing import MonotonicClock
from gateway.upstream.routes import call_path, calls_path
from gateway.upstream.service import CatapultService, create_upstream
from gateway.upstream.tally import UpstreamTally
from tests.fakes import upstream_client

CREDENTIALS = Credentials(authorization="Basic dDpz", user_id="u-1")
OTHER_ACCOUNT = Credentials(authorization="Basic dDI6czI=", user_id="u-1")
QUERY = ListQuery(size=2)
CALLS = [{"id": "c-1", "state": "completed"}, {"id": "c-2", "state": "active"}]


class RecordingMetrics:
    """`UpstreamMetrics` that keeps every report."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, Any]] = []

    def cache_result(self, result: str) -> None:
        self.reports.append(("cache", result))

    def singleflight_share(self) -> None:
        self.reports.append(("share", None))

    def pacing_wait(self, seconds: float) -> None:
        self.reports.append(("wait", seconds))

    def pacing_refusal(self) -> None:
        self.reports.append(("refusal", None))


class RecordingUpstream:
    """Answers each path from a table (404 `resource-not-found` otherwise); records paths."""

    def __init__(self, answers: dict[str, httpx.Response]) -> None:
        self.answers = answers
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return self.answers.get(request.url.path) or httpx.Response(
            404, json={"code": "resource-not-found", "message": "no"}
        )


def service(
    upstream: RecordingUpstream, metrics: RecordingMetrics, *, ttl: float = 30, rate: float = 0
) -> CatapultService:
    return create_upstream(
        upstream_client(httpx.MockTransport(upstream)),
        metrics,
        cache_url="memory://",
        cache_key=b"a test cache key",
        cache_ttl=ttl,
        cache_max_entries=100,
        cache_max_bytes=1 << 20,
        cache_timeout=1,
        rate=rate,
        queue_timeout=0,
        pacing_file=None,
        clock=MonotonicClock(),
    )


def deadline() -> float:
    return time.monotonic() + 5


def run(main: Callable[[CatapultService], Any], upstream: RecordingUpstream, **options: Any) -> Any:
    async def go() -> Any:
        built = service(upstream, options.pop("metrics", RecordingMetrics()), **options)
        try:
            return await main(built)
        finally:
            await built.close()

    return asyncio.run(go())


LIST = {calls_path("u-1"): httpx.Response(200, json=CALLS)}


def test_a_service_is_built_without_a_loop_and_open_from_its_opening_to_its_closing() -> None:
    upstream = RecordingUpstream(LIST)
    built = service(upstream, RecordingMetrics())  # no event loop runs here

    async def main() -> list[bool]:
        seen = [built.is_open]
        await built.open()
        seen.append(built.is_open)
        await built.list_calls(CREDENTIALS, QUERY, deadline=deadline(), tally=UpstreamTally())
        await built.close()
        return [*seen, built.is_open]

    assert asyncio.run(main()) == [False, True, False]
    assert upstream.paths == [calls_path("u-1")]


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        pytest.param(httpx.Response(200, json=CALLS[0]), "c-1", id="found"),
        pytest.param(
            httpx.Response(404, json={"code": "call-not-found", "message": "no"}),
            None,
            id="unknown-call-is-none",
        ),
        pytest.param(
            httpx.Response(404, json={"code": "user-not-found", "message": "no"}),
            "NOT_FOUND",
            id="unknown-user-is-an-error",
        ),
    ],
)
def test_get_call_answers_a_call_none_or_an_error(answer: httpx.Response, outcome: Any) -> None:
    upstream = RecordingUpstream({call_path("u-1", "c-1"): answer})

    async def main(built: CatapultService) -> Any:
        try:
            found = await built.get_call(
                CREDENTIALS, "c-1", deadline=deadline(), tally=UpstreamTally()
            )
        except NotFound as exc:
            return exc.code
        return None if found is None else found.body["id"]

    assert run(main, upstream) == outcome


@pytest.mark.parametrize(
    ("answer", "requests"),
    [
        pytest.param(httpx.Response(200, json=CALLS[0]), 1, id="a-call-is-kept"),
        pytest.param(
            httpx.Response(404, json={"code": "call-not-found", "message": "no"}),
            2,
            id="an-unknown-call-is-not-kept",
        ),
    ],
)
def test_only_answers_are_cached_never_an_absence(answer: httpx.Response, requests: int) -> None:
    upstream = RecordingUpstream({call_path("u-1", "c-1"): answer})

    async def main(built: CatapultService) -> None:
        for _ in range(2):
            await built.get_call(CREDENTIALS, "c-1", deadline=deadline(), tally=UpstreamTally())

    run(main, upstream)

    assert upstream.paths == [call_path("u-1", "c-1")] * requests


@pytest.mark.parametrize(
    ("ttl", "refresh", "requests", "lookups"),
    [
        pytest.param(30, False, 1, [("cache", "miss"), ("cache", "hit")], id="hit-within-ttl"),
        pytest.param(30, True, 2, [("cache", "miss")], id="refresh-skips-the-read"),
        pytest.param(0, False, 2, [], id="ttl-0-reuses-nothing"),
    ],
)
def test_a_list_is_reused_within_the_ttl_unless_refreshed(
    ttl: float, refresh: bool, requests: int, lookups: list[tuple[str, Any]]
) -> None:
    upstream = RecordingUpstream(LIST)
    metrics = RecordingMetrics()

    async def main(built: CatapultService) -> list[UpstreamAnswer]:
        first = await built.list_calls(
            CREDENTIALS, QUERY, deadline=deadline(), tally=UpstreamTally()
        )
        again = await built.list_calls(
            CREDENTIALS, QUERY, deadline=deadline(), tally=UpstreamTally(), refresh=refresh
        )
        return [first, again]

    first, again = run(main, upstream, ttl=ttl, metrics=metrics)

    assert first.body == again.body == CALLS
    assert upstream.paths == [calls_path("u-1")] * requests
    assert metrics.reports == lookups


def test_concurrent_identical_lists_share_one_request() -> None:
    upstream = RecordingUpstream(LIST)
    metrics = RecordingMetrics()

    async def main(built: CatapultService) -> None:
        await asyncio.gather(
            *(
                built.list_calls(CREDENTIALS, QUERY, deadline=deadline(), tally=UpstreamTally())
                for _ in range(5)
            )
        )

    run(main, upstream, metrics=metrics)

    assert upstream.paths == [calls_path("u-1")]
    assert metrics.reports.count(("share", None)) == 4


def test_a_shared_load_counts_its_request_in_the_starters_tally_only() -> None:
    # Each caller's tally counts its own look-up; the one upstream request (and its
    # retries) counts in the tally of the caller whose load it is, so that the log lines
    # add up to what the upstream received. A later caller hits.
    upstream = RecordingUpstream(LIST)
    tallies = [UpstreamTally() for _ in range(4)]

    async def main(built: CatapultService) -> None:
        await asyncio.gather(
            *(
                built.list_calls(CREDENTIALS, QUERY, deadline=deadline(), tally=tally)
                for tally in tallies[:3]
            )
        )
        await built.list_calls(CREDENTIALS, QUERY, deadline=deadline(), tally=tallies[3])

    run(main, upstream)

    assert upstream.paths == [calls_path("u-1")]
    counted = [(tally.cache, tally.requests) for tally in tallies]
    assert counted == [({"miss": 1}, 1), ({"miss": 1}, 0), ({"miss": 1}, 0), ({"hit": 1}, 0)]


def test_a_gate_that_refuses_keeps_the_request_home() -> None:
    upstream = RecordingUpstream(LIST)

    def refuse() -> None:
        raise GatewayError("vetoed")

    async def main(built: CatapultService) -> None:
        await built.list_calls(
            CREDENTIALS, QUERY, deadline=deadline(), tally=UpstreamTally(), gate=refuse
        )

    with pytest.raises(GatewayError, match="vetoed"):
        run(main, upstream)
    assert upstream.paths == []


@pytest.mark.parametrize(
    ("asker", "known"),
    [
        pytest.param(CREDENTIALS, ["c-1", "c-2"], id="same-credentials-recall"),
        pytest.param(OTHER_ACCOUNT, [], id="other-credentials-recall-nothing"),
    ],
)
def test_listed_calls_are_remembered_for_their_credentials_only(
    asker: Credentials, known: list[str]
) -> None:
    upstream = RecordingUpstream(LIST)

    async def main(built: CatapultService) -> list[str]:
        await built.list_calls(CREDENTIALS, QUERY, deadline=deadline(), tally=UpstreamTally())
        return sorted(await built.recall_calls(asker, ["c-1", "c-2", "c-3"]))

    assert run(main, upstream) == known


def test_pacing_refuses_a_second_request_of_one_account_beyond_the_queue_bound() -> None:
    upstream = RecordingUpstream({**LIST, calls_path("u-2"): httpx.Response(200, json=[])})
    metrics = RecordingMetrics()
    second_page = ListQuery(page=1, size=2)

    async def main(built: CatapultService) -> str:
        await built.list_calls(CREDENTIALS, QUERY, deadline=deadline(), tally=UpstreamTally())
        try:
            await built.list_calls(
                CREDENTIALS, second_page, deadline=deadline(), tally=UpstreamTally()
            )
        except RateLimited as exc:
            return exc.code
        return "served"

    assert run(main, upstream, rate=1, metrics=metrics) == "RATE_LIMITED"
    assert upstream.paths == [calls_path("u-1")]
    assert ("refusal", None) in metrics.reports


def test_an_identity_key_tells_secrets_apart_and_shows_none_of_the_credentials() -> None:
    owner = Credentials(authorization="Basic dG9rZW46c2VjcmV0", user_id="u-1", token="token")
    wrong = Credentials(authorization="Basic dG9rZW46d3Jvbmc=", user_id="u-1", token="token")
    other_user = Credentials(authorization=owner.authorization, user_id="u-2", token="token")

    async def main(built: CatapultService) -> list[str]:
        return [built.identity_key(c) for c in (owner, wrong, other_user, owner)]

    keys = run(main, RecordingUpstream({}))
    assert keys[0] == keys[3]
    assert len(set(keys)) == 3
    assert not any(part in key for key in keys for part in ("token", "dG9r", "u-1", "u-2"))


@pytest.mark.parametrize(
    ("link", "outcome"),
    [
        pytest.param(None, None, id="no-link"),
        pytest.param("/v1/users/u-1/calls/?page=1&size=2", 1, id="relative-to-the-request"),
        pytest.param("http://upstream/v1/users/u-1/calls/?page=3&size=2", 3, id="absolute"),
        pytest.param("http://elsewhere/v1/users/u-1/calls/?page=1", "refused", id="other-host"),
        pytest.param("http://upstream/v1/users/u-2/calls/?page=1", "refused", id="other-user"),
    ],
)
def test_a_pages_next_link_is_read_against_the_clients_base_and_the_callers_calls(
    link: str | None, outcome: int | str | None
) -> None:
    headers = {} if link is None else {"Link": f'<{link}>; rel="next"'}
    upstream = RecordingUpstream({calls_path("u-1"): httpx.Response(200, json=[], headers=headers)})

    async def main(built: CatapultService) -> int | str | None:
        answer = await built.list_calls(
            CREDENTIALS, QUERY, deadline=deadline(), tally=UpstreamTally()
        )
        try:
            following = built.next_page(CREDENTIALS, QUERY, answer)
        except UpstreamBadResponse:
            return "refused"
        return None if following is None else following.page

    assert run(main, upstream) == outcome
