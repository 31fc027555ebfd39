"""The hub: one poller per key, shared by its subscribers; bounds; errors; the newest state."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.calls import ListQuery
from gateway.credentials import Credentials
from gateway.errors import (
    Forbidden,
    GatewayError,
    RateLimited,
    Unauthenticated,
    UpstreamTimeout,
)
from gateway.live.hub import LiveHub, Page, Subscriber, Update
from gateway.live.metrics import LiveMetrics
from tests.live.helpers import call, identity_of

ALICE = Credentials(authorization="Basic YTpi", user_id="u-alice", token="a")
BOB = Credentials(authorization="Basic Yjpj", user_id="u-bob", token="b")
FIRST = ListQuery(size=3)
INTERVAL = 0.02
WAIT = 10.0


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


class FakeSource:
    """Serves `pages` (a page body or an error) per user; records every poll."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.polls: list[tuple[str, ListQuery]] = []
        self.fresh: list[bool] = []

    async def __call__(self, credentials: Credentials, query: ListQuery, fresh: bool) -> Page:
        self.polls.append((credentials.user_id, query))
        self.fresh.append(fresh)
        answer = self.answers.get(credentials.user_id, [])
        if isinstance(answer, GatewayError) or answer is ZeroDivisionError:
            raise answer
        return Page(answer, 1_700_000_000.0)


def hub_with(source: FakeSource, **options: Any) -> tuple[LiveHub, LiveMetrics]:
    metrics = LiveMetrics(CollectorRegistry())
    options.setdefault("max_per_account", 100)
    options.setdefault("sharing", None)
    hub = LiveHub(
        source,
        lambda credentials, query: f"{credentials.user_id}|{query}",
        identity_of,
        interval=INTERVAL,
        metrics=metrics,
        **options,
    )
    return hub, metrics


async def next_event(subscriber: Subscriber) -> Update | GatewayError:
    async with asyncio.timeout(WAIT):
        return await subscriber.__anext__()


def gauge(metrics: LiveMetrics, name: str) -> float:
    value = getattr(metrics, name)._value.get()
    assert isinstance(value, float)
    return value


def test_subscribers_of_one_key_share_one_poller_until_the_last_leaves() -> None:
    async def body() -> None:
        source = FakeSource()
        source.answers["u-alice"] = [call("c-1")]
        hub, metrics = hub_with(source)
        subscribers = [hub.subscribe(ALICE, FIRST) for _ in range(50)]
        other = hub.subscribe(ALICE, ListQuery(size=4))
        for subscriber in subscribers:
            update = await next_event(subscriber)
            assert isinstance(update, Update)
            assert update.changed == ("c-1",)
        assert hub.poller_count == 2
        assert (gauge(metrics, "active_subscriptions"), gauge(metrics, "active_pollers")) == (
            51,
            2,
        )
        await asyncio.sleep(INTERVAL * 5)
        polls = len([q for _, q in source.polls if q == FIRST])
        # One poll per interval for all fifty (timers may run late on a busy machine).
        assert 1 <= polls <= 7
        for subscriber in subscribers:
            await subscriber.aclose()
        await other.aclose()
        assert hub.poller_count == 0
        assert gauge(metrics, "active_pollers") == 0
        assert gauge(metrics, "active_subscriptions") == 0
        made = len(source.polls)
        await asyncio.sleep(INTERVAL * 5)
        assert len(source.polls) == made

    run(body)


def test_different_credentials_never_share_a_poller() -> None:
    async def body() -> None:
        source = FakeSource()
        source.answers = {"u-alice": [call("c-a")], "u-bob": [call("c-b")]}
        hub, _ = hub_with(source)
        alice, bob = hub.subscribe(ALICE, FIRST), hub.subscribe(BOB, FIRST)
        first_alice, first_bob = await next_event(alice), await next_event(bob)
        assert isinstance(first_alice, Update)
        assert isinstance(first_bob, Update)
        assert (first_alice.changed, first_bob.changed) == (("c-a",), ("c-b",))
        await alice.aclose()
        await bob.aclose()

    run(body)


def test_a_late_subscriber_gets_the_current_page_at_once_with_every_id() -> None:
    async def body() -> None:
        source = FakeSource()
        source.answers["u-alice"] = [call("c-1"), call("c-2")]
        hub, _ = hub_with(source)
        early = hub.subscribe(ALICE, FIRST)
        await next_event(early)
        late = hub.subscribe(ALICE, FIRST)
        update = await next_event(late)
        assert isinstance(update, Update)
        assert (update.changed, update.removed) == (("c-1", "c-2"), ())
        await early.aclose()
        await late.aclose()

    run(body)


def test_a_slow_consumer_gets_the_newest_state_and_all_that_changed_since() -> None:
    async def body() -> None:
        source = FakeSource()
        source.answers["u-alice"] = [call("c-1"), call("c-2")]
        hub, _ = hub_with(source)
        slow = hub.subscribe(ALICE, FIRST)
        await next_event(slow)
        # Three changes while it reads nothing.
        for page in ([call("c-1", "completed"), call("c-2")], [call("c-3"), call("c-2")],
                     [call("c-3"), call("c-2", "completed")]):  # fmt: skip
            source.answers["u-alice"] = page
            await asyncio.sleep(INTERVAL * 4)
        update = await next_event(slow)
        assert isinstance(update, Update)
        assert update.page.body == [call("c-3"), call("c-2", "completed")]
        assert (update.changed, update.removed) == (("c-3", "c-2"), ("c-1",))
        # Nothing older is queued behind it.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(INTERVAL * 5):
                await slow.__anext__()
        await slow.aclose()

    run(body)


def test_an_upstream_error_is_an_event_and_polling_goes_on() -> None:
    async def body() -> None:
        source = FakeSource()
        source.answers["u-alice"] = UpstreamTimeout("The upstream did not answer in time.")
        hub, metrics = hub_with(source)
        subscriber = hub.subscribe(ALICE, FIRST)
        error = await next_event(subscriber)
        assert isinstance(error, UpstreamTimeout)
        source.answers["u-alice"] = [call("c-1")]
        update = await next_event(subscriber)
        assert isinstance(update, Update)
        assert update.changed == ("c-1",)
        assert metrics.polls.labels("error")._value.get() >= 1
        await subscriber.aclose()

    run(body)


@pytest.mark.parametrize(
    "error",
    [Unauthenticated("The upstream refused these credentials."), Forbidden("No.")],
    ids=["unauthenticated", "forbidden"],
)
def test_refused_credentials_end_the_subscription(error: GatewayError) -> None:
    async def body() -> None:
        source = FakeSource()
        source.answers["u-alice"] = error
        hub, _ = hub_with(source)
        subscriber = hub.subscribe(ALICE, FIRST)
        assert type(await next_event(subscriber)) is type(error)
        with pytest.raises(StopAsyncIteration):
            await next_event(subscriber)
        polls = len(source.polls)
        await asyncio.sleep(INTERVAL * 5)
        assert len(source.polls) == polls == 1
        assert hub.poller_count == 0

    run(body)


def test_a_tick_the_pacing_refused_is_silent_but_an_upstream_429_is_not() -> None:
    async def body() -> None:
        source = FakeSource()
        source.answers["u-alice"] = RateLimited("Too many requests.", retry_after=1)
        hub, metrics = hub_with(source)
        subscriber = hub.subscribe(ALICE, FIRST)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(INTERVAL * 5):
                await subscriber.__anext__()
        assert metrics.polls.labels("skipped")._value.get() >= 2
        source.answers["u-alice"] = RateLimited("Slow down.", retry_after=3, upstreamStatus=429)
        error = await next_event(subscriber)
        assert isinstance(error, RateLimited)
        assert error.extensions == {"code": "RATE_LIMITED", "retryAfter": 3, "upstreamStatus": 429}
        await subscriber.aclose()

    run(body)


def test_subscriptions_per_account_are_bounded() -> None:
    async def body() -> None:
        source = FakeSource()
        hub, _ = hub_with(source, max_per_account=2)
        held = [hub.subscribe(ALICE, FIRST), hub.subscribe(ALICE, ListQuery(size=9))]
        with pytest.raises(RateLimited) as refused:
            hub.subscribe(ALICE, FIRST)
        assert refused.value.extensions["limit"] == "GATEWAY_LIVE_MAX_PER_ACCOUNT"
        # Another account is not affected, and leaving makes room.
        bob = hub.subscribe(BOB, FIRST)
        await held[0].aclose()
        again = hub.subscribe(ALICE, FIRST)
        for subscriber in (held[1], bob, again):
            await subscriber.aclose()

    run(body)


def test_a_wrong_secret_with_the_owners_token_does_not_use_the_owners_room() -> None:
    # The secret is checked only when a poll reaches the upstream: counted by token, a
    # caller knowing only Alice's token filled her room and Alice was refused.
    async def body() -> None:
        source = FakeSource()
        hub, _ = hub_with(source, max_per_account=2)
        mallory = Credentials(authorization="Basic YTp3cm9uZw==", user_id="u-alice", token="a")
        held = [hub.subscribe(mallory, FIRST), hub.subscribe(mallory, ListQuery(size=9))]
        with pytest.raises(RateLimited):
            hub.subscribe(mallory, ListQuery(size=3))
        owner = hub.subscribe(ALICE, FIRST)
        for subscriber in (*held, owner):
            await subscriber.aclose()

    run(body)


def test_a_subscriber_closed_before_reading_leaves_nothing_behind() -> None:
    async def body() -> None:
        source = FakeSource()
        hub, metrics = hub_with(source)
        subscriber = hub.subscribe(ALICE, FIRST)
        await subscriber.aclose()
        await subscriber.aclose()
        assert hub.poller_count == 0
        assert gauge(metrics, "active_subscriptions") == 0

    run(body)


def test_only_the_first_poll_may_be_answered_from_the_cache() -> None:
    async def body() -> None:
        source = FakeSource()
        hub, _ = hub_with(source)
        subscriber = hub.subscribe(ALICE, FIRST)
        await next_event(subscriber)
        await asyncio.sleep(INTERVAL * 4)
        await subscriber.aclose()
        assert source.fresh[0] is False
        assert len(source.fresh) >= 2
        assert all(source.fresh[1:])

    run(body)


@pytest.mark.server_errors
def test_a_poller_that_fails_unexpectedly_ends_its_subscriptions_with_a_code() -> None:
    async def body() -> None:
        source = FakeSource()
        source.answers["u-alice"] = [call("c-1")]
        hub, _ = hub_with(source)
        subscriber = hub.subscribe(ALICE, FIRST)
        await next_event(subscriber)
        source.answers["u-alice"] = ZeroDivisionError  # not a GatewayError: a bug
        error = await next_event(subscriber)
        assert isinstance(error, GatewayError)
        assert error.extensions == {"code": "INTERNAL_SERVER_ERROR"}
        with pytest.raises(StopAsyncIteration):
            await next_event(subscriber)
        assert hub.poller_count == 0

    run(body)


def test_subscribers_at_the_same_page_share_one_update() -> None:
    async def body() -> None:
        source = FakeSource()
        source.answers["u-alice"] = [call("c-1"), call("c-2")]
        hub, _ = hub_with(source)
        subscribers = [hub.subscribe(ALICE, FIRST) for _ in range(10)]
        first = [await next_event(subscriber) for subscriber in subscribers]
        source.answers["u-alice"] = [call("c-1", "completed"), call("c-2")]
        second = [await next_event(subscriber) for subscriber in subscribers]
        # One diff per page for all ten (and so one `renders` for the transports to fill).
        assert len({id(update) for update in first}) == 1
        assert len({id(update) for update in second}) == 1
        assert isinstance(second[0], Update)
        assert second[0].changed == ("c-1",)
        for subscriber in subscribers:
            await subscriber.aclose()

    run(body)


class RecordingSharing:
    """`Sharing` leading every key: polls here, records what it tells the other replicas."""

    def __init__(self) -> None:
        self.told: list[tuple[str, Any]] = []

    async def run(
        self, key: str, poll: Callable[[], Coroutine[Any, Any, None]], receive: Any
    ) -> None:
        await poll()

    async def publish(self, key: str, event: Any) -> None:
        self.told.append(("publish", event.body if isinstance(event, Page) else event))

    async def remember(self, key: str, page: Page) -> None:
        self.told.append(("remember", page.body))


def test_a_leader_tells_the_others_its_page_is_still_current_at_every_unchanged_poll() -> None:
    # Before: only a change was told, so the page stored for late joiners on the other
    # replicas aged (and outlived the poller) whatever the polls found.
    async def body() -> list[tuple[str, Any]]:
        source = FakeSource()
        source.answers["u-alice"] = [call("c-1")]
        sharing = RecordingSharing()
        hub, _ = hub_with(source, sharing=sharing)
        subscriber = hub.subscribe(ALICE, FIRST)
        await next_event(subscriber)
        # A few more polls, of the same page.
        await asyncio.sleep(INTERVAL * 8)
        await subscriber.aclose()
        return sharing.told

    told = asyncio.run(body())
    assert told[0] == ("publish", [call("c-1")])
    assert told[1:3] == [("remember", [call("c-1")])] * 2


# What a request's context carries while it is handled (its server span, when traced).
_REQUEST: contextvars.ContextVar[str | None] = contextvars.ContextVar("request", default=None)


class ContextSource(FakeSource):
    """Records, for each poll, which request's context the poll runs in, if any."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str | None] = []

    async def __call__(self, credentials: Credentials, query: ListQuery, fresh: bool) -> Page:
        self.seen.append(_REQUEST.get())
        return await super().__call__(credentials, query, fresh)


def test_a_poller_started_inside_a_request_runs_outside_that_requests_context() -> None:
    # The subscription's request ends long before its poller; the poller must not carry
    # that request's context (traced: its server span) into every later poll. (What a
    # poll sends is counted in a tally of its own, see source.py, whatever its context.)
    async def body() -> None:
        source = ContextSource()
        hub, _ = hub_with(source)
        token = _REQUEST.set("r-1")
        try:
            subscriber = hub.subscribe(ALICE, FIRST)
        finally:
            _REQUEST.reset(token)
        await next_event(subscriber)
        source.answers["u-alice"] = [call("c-1")]
        # A later poll, long after the request ended: it found the change.
        await next_event(subscriber)
        await subscriber.aclose()

        assert len(source.seen) >= 2
        assert set(source.seen) == {None}

    run(body)
