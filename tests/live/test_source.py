"""A poll is the `calls` query's upstream request, through the same cache and pacing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from gateway.calls import ListQuery
from gateway.credentials import Credentials
from gateway.live.source import page_source
from gateway.upstream.client import UpstreamAnswer
from gateway.upstream.tally import UpstreamTally
from tests.fakes import FakeUpstream
from tests.live.helpers import (
    CALLS_PATH,
    SUBSCRIPTION,
    call,
    init_payload,
    initialised,
    live_app,
    websocket,
)


def test_a_calls_query_within_the_ttl_shares_the_polls_answer(fake_upstream: FakeUpstream) -> None:
    fake_upstream.answer(CALLS_PATH, [call("c-1")])

    async def body() -> None:
        async with (
            live_app(fake_upstream.url, live_interval=5, cache_ttl=5) as app,
            websocket(app) as ws,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
            ) as client,
        ):
            await initialised(ws)
            await ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION}})
            assert (await ws.receive_json())["type"] == "next"
            response = await client.post(
                "/graphql", json={"query": "{ calls(size: 3) { id } }"}, headers=init_payload()
            )
            assert response.json() == {"data": {"calls": [{"id": "c-1"}]}}
            metrics = (await client.get("/metrics")).text
            assert "gateway_live_subscriptions 1.0" in metrics
            assert "gateway_live_pollers 1.0" in metrics
            assert 'gateway_live_polls_total{outcome="changed"} 1.0' in metrics
            assert "gateway_live_updates_sent_total 1.0" in metrics

    asyncio.run(body())
    (request,) = fake_upstream.requests
    assert request.query == "page=0&size=3&sortOrder=desc"


class RecordingListCalls:
    """`CatapultService.list_calls` as a poll calls it: records each call's options."""

    def __init__(self) -> None:
        self.options: list[dict[str, Any]] = []

    async def __call__(
        self,
        credentials: Credentials,
        query: ListQuery,
        *,
        deadline: float,
        refresh: bool,
        tally: UpstreamTally,
    ) -> UpstreamAnswer:
        self.options.append({"deadline": deadline, "refresh": refresh, "tally": tally})
        tally.request_sent()
        return UpstreamAnswer([call("c-1")], {}, fetched_at=1.0)


def test_each_poll_counts_into_a_tally_of_its_own_that_no_request_reads() -> None:
    # A poll is no request's: what it sends is counted in the metrics only, never into
    # the line of the request that happened to start the poller.
    list_calls = RecordingListCalls()
    poll = page_source(list_calls, timeout=7)
    credentials = Credentials(authorization="Basic dDpz", user_id="u-1")

    async def two_polls() -> None:
        await poll(credentials, ListQuery(), True)
        await poll(credentials, ListQuery(), False)

    before = time.monotonic()
    asyncio.run(two_polls())

    first, second = list_calls.options
    assert first["tally"] is not second["tally"]
    assert first["tally"].requests == second["tally"].requests == 1
    assert [options["refresh"] for options in list_calls.options] == [True, False]
    assert all(
        before + 7 <= options["deadline"] <= time.monotonic() + 7 for options in list_calls.options
    )
