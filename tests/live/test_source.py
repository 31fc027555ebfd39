"""A poll is the `calls` query's upstream request, through the same cache and pacing."""

from __future__ import annotations

import asyncio

import httpx

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
