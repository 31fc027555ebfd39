"""Replicas on one Redis share one poller per key: a lease, pub/sub, a takeover."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from random import Random
from typing import Any

import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.calls import ListQuery
from gateway.credentials import Credentials
from gateway.errors import GatewayError, RateLimited, Unauthenticated, UpstreamError
from gateway.live.hub import LiveHub, Page
from gateway.live.metrics import LiveMetrics
from gateway.live.sharing import RedisSharing, decode_event, encode_event
from tests.conftest import RedisServer
from tests.fakes import FakeUpstream
from tests.live.helpers import (
    CALLS_PATH,
    DEMO,
    SUBSCRIPTION,
    InProcessSocket,
    call,
    initialised,
    live_app,
    websocket,
)
from tests.servers import free_port

INTERVAL = 0.2
DEMO_CREDENTIALS = Credentials(authorization="Basic YTpi", user_id="u-demo", token="a")
KEY = "a-shared-cache-key-of-32-characters-at-least"


@asynccontextmanager
async def replica(upstream: str, redis_url: str) -> AsyncIterator[InProcessSocket]:
    """One gateway on the shared Redis, with one socket subscribed to the first page."""
    async with AsyncExitStack() as stack:
        app = await stack.enter_async_context(
            live_app(
                upstream,
                cache_url=redis_url,
                cache_key=KEY,
                live_interval=INTERVAL,
                # Polls are what is counted here, not what the cache saves.
                cache_ttl=0,
            )
        )
        ws = await stack.enter_async_context(websocket(app))
        await initialised(ws)
        await ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION}})
        yield ws


async def changed(ws: InProcessSocket) -> list[str]:
    message = await ws.receive_json()
    assert message["type"] == "next", message
    ids: list[str] = message["payload"]["data"]["callsUpdated"]["changed"]
    return ids


@pytest.mark.serial  # polls counted over 10 s of one-second intervals
def test_two_replicas_poll_once_and_both_deliver(
    fake_upstream: FakeUpstream, redis_session: RedisServer
) -> None:
    redis_session.flush()
    fake_upstream.answer(CALLS_PATH, [call("c-1")])

    async def body() -> None:
        async with (
            replica(fake_upstream.url, redis_session.url) as first,
            replica(fake_upstream.url, redis_session.url) as second,
        ):
            assert await changed(first) == ["c-1"]
            assert await changed(second) == ["c-1"]
            before = len(fake_upstream.requests)
            await asyncio.sleep(INTERVAL * 10)
            polls = len(fake_upstream.requests) - before
            # One poller for both: about ten polls, never two replicas' worth (twenty).
            assert 3 <= polls <= 13, polls
            fake_upstream.answer(CALLS_PATH, [call("c-2"), call("c-1")])
            assert await changed(first) == ["c-2"]
            assert await changed(second) == ["c-2"]

    asyncio.run(body())


@pytest.mark.serial  # the take-over within 10 s
def test_another_replica_takes_over_when_the_leader_stops(
    fake_upstream: FakeUpstream, redis_session: RedisServer
) -> None:
    redis_session.flush()
    fake_upstream.answer(CALLS_PATH, [call("c-1")])

    async def body() -> None:
        async with AsyncExitStack() as leader_stack:
            # The first replica to watch the page leads it.
            leader = await leader_stack.enter_async_context(
                replica(fake_upstream.url, redis_session.url)
            )
            assert await changed(leader) == ["c-1"]
            async with replica(fake_upstream.url, redis_session.url) as stays:
                assert await changed(stays) == ["c-1"]
                polls = len(fake_upstream.requests)
                await leader_stack.aclose()
                fake_upstream.answer(CALLS_PATH, [call("c-3")])
                # The lease was given back: the other replica polls now.
                async with asyncio.timeout(10):
                    assert await changed(stays) == ["c-3"]
                assert len(fake_upstream.requests) > polls

    asyncio.run(body())


def test_no_credential_in_a_redis_key_or_channel(
    fake_upstream: FakeUpstream, redis_session: RedisServer
) -> None:
    redis_session.flush()
    fake_upstream.answer(CALLS_PATH, [call("c-1")])
    basic = base64.b64encode(f"{DEMO.token}:{DEMO.secret}".encode()).decode()
    found: dict[str, Any] = {}

    async def body() -> None:
        async with replica(fake_upstream.url, redis_session.url) as ws:
            await changed(ws)
            with redis_session.client() as client:
                found["keys"] = [key.decode() for key in client.keys("*")]
                found["channels"] = [c.decode() for c in client.pubsub_channels()]

    asyncio.run(body())
    live = [name for name in found["keys"] + found["channels"] if name.startswith("gateway:live")]
    assert live, found
    for name in live:
        for secret in (DEMO.token, DEMO.secret, basic, DEMO.user_id):
            assert secret not in name


@pytest.mark.parametrize(
    "event",
    [
        Page([call("c-1")], 1_700_000_000.5),
        UpstreamError("The upstream failed.", upstreamStatus=502),
        Unauthenticated("The upstream refused these credentials."),
        RateLimited("Slow down.", retry_after=3, upstreamStatus=429),
    ],
    ids=["page", "upstream-error", "unauthenticated", "rate-limited"],
)
def test_events_cross_redis_unchanged(event: Any) -> None:
    origin, decoded = decode_event(encode_event(event, "me"))
    assert origin == "me"
    assert type(decoded) is type(event)
    if isinstance(event, Page):
        assert isinstance(decoded, Page)
        assert (decoded.body, decoded.fetched_at) == (event.body, event.fetched_at)
    else:
        assert isinstance(decoded, GatewayError)
        assert (decoded.message, decoded.extensions) == (event.message, event.extensions)


@pytest.mark.parametrize(
    "data", [b"not json", b"[]", b'{"origin": "x"}', b'{"origin": "x", "error": 5}'], ids=str
)
def test_anything_else_on_the_channel_is_not_an_event(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a live event"):
        decode_event(data)


@pytest.mark.serial  # the take-over within a tenth of a second of the lapse
def test_a_lease_left_by_a_dead_replica_lapses_and_is_taken_over(
    redis_session: RedisServer,
) -> None:
    redis_session.flush()
    key = "k" * 64
    # As if another replica took the lease and died without giving it back.
    with redis_session.client() as client:
        client.set(f"gateway:live:lease:{key}", "dead", px=600)
    polled: list[float] = []

    async def poll() -> None:
        polled.append(time.monotonic())
        await asyncio.sleep(3600)

    async def body() -> None:
        sharing = RedisSharing(redis.asyncio.Redis.from_url(redis_session.url), interval=0.2)
        started = time.monotonic()
        task = asyncio.ensure_future(sharing.run(key, poll, lambda event: None))
        try:
            async with asyncio.timeout(10):
                while not polled:  # noqa: ASYNC110 (poll is the seam being observed)
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await sharing.close()
        # Not while the dead replica's lease held, but within a renewal period after.
        assert 0.5 <= polled[0] - started <= 0.6 + sharing.lease_seconds

    asyncio.run(body())
    with redis_session.client() as client:
        # Given back when it stopped.
        assert client.get(f"gateway:live:lease:{key}") is None


def test_without_redis_a_replica_polls_on_its_own() -> None:
    polled = asyncio.Event()

    async def poll() -> None:
        polled.set()
        await asyncio.sleep(3600)

    async def body() -> None:
        client = redis.asyncio.Redis(
            port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 1)
        )
        sharing = RedisSharing(client, interval=0.2)
        task = asyncio.ensure_future(sharing.run("k" * 64, poll, lambda event: None))
        try:
            # Two connect timeouts at most (a try and its retry), then it polls.
            async with asyncio.timeout(3):
                await polled.wait()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await sharing.close()

    asyncio.run(body())


@pytest.mark.parametrize(
    ("kept_polling", "sent_at_once"),
    [
        # The leader polls on, the page unchanged (nothing published): still current.
        pytest.param(True, True, id="polled-on-unchanged"),
        # Its poller stopped: the page stored then is no longer current.
        pytest.param(False, False, id="nobody-polls-it"),
    ],
)
def test_a_late_joiner_is_sent_the_stored_page_only_while_it_is_current(
    redis_session: RedisServer, kept_polling: bool, sent_at_once: bool
) -> None:
    # Before: the stored page was kept two leases (6 s here, 20 s at the default
    # interval), after its poller had stopped too, and sent as the first update; and it
    # lapsed while the leader still polled an unchanged page.
    redis_session.flush()
    key = "late" * 16
    interval = 0.2

    async def never() -> None:
        await asyncio.Event().wait()

    async def body() -> list[Any]:
        leader = RedisSharing(redis.asyncio.Redis.from_url(redis_session.url), interval=interval)
        late = RedisSharing(redis.asyncio.Redis.from_url(redis_session.url), interval=interval)
        received: list[Any] = []
        try:
            await leader.publish(key, Page([call("c-1")], time.time()))
            waited = 2 * leader.fresh_seconds
            while waited > 0:
                if kept_polling:
                    await leader.remember(key, Page([call("c-1")], time.time()))
                await asyncio.sleep(interval)
                waited -= interval
            task = asyncio.ensure_future(late.run(key, never, received.append))
            await asyncio.sleep(0.3)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            await leader.close()
            await late.close()
        return received

    received = asyncio.run(body())
    assert [event.body for event in received] == ([[call("c-1")]] if sent_at_once else [])


def app_like_client(redis_url: str) -> redis.asyncio.Redis:
    # As `gateway.app` builds it: the socket timeout makes redis-py write through
    # `asyncio.wait_for`, where Python 3.11 can swallow a cancellation.
    return redis.asyncio.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)


async def never() -> None:
    await asyncio.Event().wait()


@pytest.mark.serial  # cancellations landing at random points of a real Redis round trip
def test_pollers_stopped_in_quick_churn_leave_no_task_and_no_lease(redis_url: str) -> None:
    # Before: a cancellation that arrived as redis-py's write completed was swallowed; that
    # poller went on leading, polling and renewing its lease for ever, `stop` never
    # returned, and another replica could never take the key over.
    source = CountingSource()
    random = Random(16)

    async def body() -> list[Any]:
        sharing = RedisSharing(app_like_client(redis_url), interval=0.2)
        hub = LiveHub(
            source,
            lambda credentials, query: f"churn-{query.size}",
            lambda credentials: "someone",
            interval=0.2,
            max_per_account=1000,
            metrics=LiveMetrics(CollectorRegistry()),
            sharing=sharing,
        )
        before = asyncio.all_tasks()
        try:
            for cycle in range(300):
                subscriber = hub.subscribe(DEMO_CREDENTIALS, ListQuery(size=1 + cycle % 7))
                # Stopped at any point of its start: listening, asking, leading.
                await asyncio.sleep(random.random() * 0.01)
                async with asyncio.timeout(5):
                    await subscriber.aclose()
            assert hub.poller_count == 0
            left = asyncio.all_tasks() - before - {asyncio.current_task()}
            # The shared pub/sub reader is the only task that may stay until `close`.
            names = {getattr(task.get_coro(), "__qualname__", None) for task in left}
            assert names <= {"RedisSharing._read"}, names
            polls = source.count
            await asyncio.sleep(1.0)
            assert source.count == polls
            async with redis.asyncio.Redis.from_url(redis_url) as client:
                leases = list(await client.keys("gateway:live:lease:*"))
                # And a churned key still reaches a new follower here: no run stopped
                # mid-subscribe left a receiver or an unsubscribed channel behind.
                await client.set("gateway:live:lease:churn-1", "other", px=10_000)
            received: list[Any] = []
            follower = asyncio.ensure_future(sharing.run("churn-1", never, received.append))
            leader = RedisSharing(redis.asyncio.Redis.from_url(redis_url), interval=0.2)
            try:
                await asyncio.sleep(0.3)
                await leader.publish("churn-1", Page([call("c-9")], time.time()))
                async with asyncio.timeout(5):
                    while not received:  # noqa: ASYNC110 (the receiver is the seam observed)
                        await asyncio.sleep(0.05)
            finally:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
                await leader.close()
            return leases
        finally:
            await hub.close()
            await sharing.close()

    # Each stopped poller gave its lease back (none is left to lapse, or to be renewed).
    assert asyncio.run(body()) == []


class CountingSource:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, credentials: Credentials, query: ListQuery, fresh: bool) -> Page:
        self.count += 1
        return Page([call("c-1")], time.time())


def test_a_stopping_run_leaves_its_successor_on_the_same_key_listening(redis_url: str) -> None:
    # Before: receivers were kept by channel; the stopping run's `_unlisten` removed the
    # successor's receiver and unsubscribed the channel, so the successor (a new poller
    # of the key, on a replica that follows) never received the leader's events again.
    key = "succ" * 16

    async def started(task: asyncio.Future[None]) -> None:
        await asyncio.sleep(0.3)
        assert not task.done()

    async def body() -> list[Any]:
        leader = RedisSharing(redis.asyncio.Redis.from_url(redis_url), interval=0.2)
        follower = RedisSharing(redis.asyncio.Redis.from_url(redis_url), interval=0.2)
        received: list[Any] = []
        # Another replica holds the lease: both runs below follow.
        async with redis.asyncio.Redis.from_url(redis_url) as client:
            await client.set(f"gateway:live:lease:{key}", "other", px=10_000)
        old = asyncio.ensure_future(follower.run(key, never, lambda event: None))
        new = asyncio.ensure_future(follower.run(key, never, received.append))
        try:
            await started(old)
            await started(new)
            old.cancel()
            await asyncio.gather(old, return_exceptions=True)
            await leader.publish(key, Page([call("c-2")], time.time()))
            async with asyncio.timeout(5):
                while not received:  # noqa: ASYNC110 (the receiver is the seam observed)
                    await asyncio.sleep(0.05)
        finally:
            for task in (old, new):
                task.cancel()
            await asyncio.gather(old, new, return_exceptions=True)
            await leader.close()
            await follower.close()
        return received

    assert [event.body for event in asyncio.run(body())] == [[call("c-2")]]
