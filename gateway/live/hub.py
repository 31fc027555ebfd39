"""One poller per (credentials, arguments), however many subscribers watch it.

    LiveHub.subscribe(credentials, query)   counts the subscriber against its credentials,
                                            joins the poller for this key or starts one
    Poller                                  polls the page every `interval` seconds through
                                            the upstream's cache, single flight and pacing;
                                            publishes a page when its content changed, an
                                            error when the poll failed
    Subscriber                              holds only the newest event (a slow consumer
                                            skips to the latest state, never a backlog)
                                            and turns pages into updates against the page it
                                            last delivered: changed and removed ids

Per update, the work is done once per poller, not per subscriber: the poller computes the
update from each previous page once (`Poller.update`), and the `Update` carries `renders`,
where the transports keep what each distinct GraphQL request made of it, serialized, for
every subscriber that sent the same request (see `gateway.live.operations`). What stays per
subscriber is small: the newest event (a shared object) and the page it last delivered.

A poll the account's pacing did not allow is skipped silently; any other failure is
published as the error itself, and the subscriptions go on, except after `Unauthenticated`
or `Forbidden`, which end them (polling again would only be refused again). The poller
stops when its last subscriber leaves.

With Redis (`sharing`), pollers of the same key on different replicas elect one of them
through a lease; the others receive its events over pub/sub (see `gateway.live.sharing`).
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.calls import BadRecord, CallRecord, ListQuery, parse_call_list
from gateway.credentials import Credentials
from gateway.errors import Forbidden, GatewayError, RateLimited, Unauthenticated

log = logging.getLogger("gateway.live")


# Page serials: an update is remembered by the serial of the page it was computed from, so
# that a page never holds on to the one before it (nor could a reused `id()` mix them up).
_serials = itertools.count(1)


class Page:
    """One poll's answer: the upstream's list body as it came, and when it was fetched."""

    __slots__ = ("_by_id", "_parsed", "body", "fetched_at", "serial")

    def __init__(self, body: Any, fetched_at: float) -> None:
        self.body = body
        self.fetched_at = fetched_at
        self.serial = next(_serials)
        self._parsed: tuple[list[CallRecord], list[BadRecord]] | None = None
        self._by_id: dict[str, Any] | None = None

    def parsed(self) -> tuple[list[CallRecord], list[BadRecord]]:
        """The page's calls and the records that cannot be calls; parsed once for everyone."""
        if self._parsed is None:
            self._parsed = parse_call_list(self.body)
        return self._parsed

    def by_id(self) -> dict[str, Any]:
        """The page's records by id, in page order; records without an id are not tracked."""
        if self._by_id is None:
            self._by_id = _by_id(self.body)
        return self._by_id


# What a poller publishes: the page, or the error its poll ended with.
Event = Page | GatewayError
# Fetches one page of the caller's calls through the upstream's cache and pacing; with
# `fresh`, not from the cache (but joining an identical request in flight).
PageSource = Callable[[Credentials, ListQuery, bool], Awaitable[Page]]


@dataclass(frozen=True, slots=True)
class Update:
    """What one subscriber is sent: the page, and how it differs from the one sent before.

    One instance for every subscriber that last received the same page.
    """

    page: Page
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    # Nothing changed, none left, same order: sent only to a subscriber that saw an error.
    same: bool = False
    # What each distinct request (document, variables) made of this update, serialized
    # once and sent to every subscriber that made the same request (kept by the
    # transports' `Operations`; the hub never reads it).
    renders: dict[Hashable, bytes] = field(default_factory=dict, compare=False)


def diff(page: Page, before: Page | None) -> Update:
    """The update that takes a subscriber from `before` (None: nothing yet) to `page`."""
    current = page.by_id()
    if before is None:
        return Update(page, tuple(current), ())
    previous = before.by_id()
    changed = tuple(call_id for call_id, raw in current.items() if previous.get(call_id) != raw)
    removed = tuple(call_id for call_id in previous if call_id not in current)
    same = not (changed or removed) and list(previous) == list(current)
    return Update(page, changed, removed, same)


class HubMetrics(Protocol):
    """What the hub reports (see `gateway.live.metrics.LiveMetrics`)."""

    def subscriptions(self, delta: int) -> None: ...

    def pollers(self, delta: int) -> None: ...

    def poll(self, outcome: str) -> None: ...

    def update_sent(self) -> None: ...


class Sharing(Protocol):
    """How pollers of one key on several replicas agree on which of them polls."""

    def run(
        self, key: str, poll: Callable[[], Awaitable[None]], receive: Callable[[Event], None]
    ) -> Awaitable[None]:
        """Run until cancelled: `poll` while this replica leads `key`, else `receive`."""
        ...

    async def publish(self, key: str, event: Event) -> None:
        """Tell the other replicas' pollers of `key` about `event`."""

    async def remember(self, key: str, page: Page) -> None:
        """Tell them that `key`'s page is still `page` (polled again, unchanged): what a
        subscriber joining on another replica is sent at once."""


def is_final(event: Event) -> bool:
    """Whether an event ends the subscriptions that receive it."""
    return isinstance(event, Unauthenticated | Forbidden)


def copy_error(error: GatewayError) -> GatewayError:
    """A new instance of `error` for each subscriber: one instance raised in several
    executions would collect every one's traceback."""
    extra = dict(error.extra)
    if isinstance(error, RateLimited):
        extra.pop("retryAfter", None)
        return RateLimited(error.message, retry_after=error.retry_after, **extra)
    return type(error)(error.message, **extra)


def _paced_out(error: GatewayError) -> bool:
    # The gateway's own pacing refused the slot (the upstream's 429 says `upstreamStatus`):
    # the tick is skipped, the next one comes in `interval` seconds.
    return isinstance(error, RateLimited) and "upstreamStatus" not in error.extra


class Poller:
    """Polls one page for every subscriber of one key; publishes what changed."""

    def __init__(
        self,
        key: str,
        identity: str,
        credentials: Credentials,
        query: ListQuery,
        *,
        source: PageSource,
        interval: float,
        metrics: HubMetrics,
        sharing: Sharing | None,
    ) -> None:
        self.key = key
        self.identity = identity
        self._credentials = credentials
        self._query = query
        self._source = source
        self._interval = interval
        self._metrics = metrics
        self._sharing = sharing
        self.subscribers: set[Subscriber] = set()
        # The last event published, for whoever subscribes next.
        self.last: Event | None = None
        self.finished = False
        self._polled = False
        self._task: asyncio.Task[None] | None = None
        # The updates to the newest page, by the serial of the page each starts from
        # (None: a subscriber's first): computed once for all who start there.
        self._updates_to: Page | None = None
        self._updates: dict[int | None, Update] = {}

    def start(self) -> None:
        # A fresh context: the poller is started while some request is handled and
        # outlives it; inheriting that request's context would make every later poll
        # count into (and, traced, hang its spans under) a request that has ended.
        self._task = asyncio.get_running_loop().create_task(
            self._run(), context=contextvars.Context()
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            if self._sharing is None:
                await self.poll_forever()
            else:
                await self._sharing.run(self.key, self.poll_forever, self.receive)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug here must not leave subscribers waiting for ever without a word.
            log.exception("live poller failed")
            # Final: nothing polls for these subscribers any more.
            self.receive(GatewayError("The live update poller stopped unexpectedly."), final=True)

    async def poll_forever(self) -> None:
        """Poll every `interval` seconds until a final error (or cancellation)."""
        loop = asyncio.get_running_loop()
        while not self.finished:
            started = loop.time()
            event = await self._poll()
            if (
                isinstance(event, Page)
                and isinstance(self.last, Page)
                and (self.last.body == event.body)
            ):
                self._metrics.poll("unchanged")
                if self._sharing is not None:
                    await self._sharing.remember(self.key, event)
            elif event is not None:
                if isinstance(event, Page):
                    self._metrics.poll("changed")
                if self._sharing is not None:
                    await self._sharing.publish(self.key, event)
                self.receive(event)
            if self.finished:
                return
            await asyncio.sleep(max(0.0, started + self._interval - loop.time()))

    async def _poll(self) -> Event | None:
        """The page polled (changed or not), the error the poll ended with, or None for a
        tick the pacing skipped."""
        # The first poll may take a cached answer (a `calls` query's, seconds old): the
        # subscriber gets its page at once. Later ones must not: an answer cached at the
        # previous poll would still be fresh for the cache (TTL 5 s, interval 5 s) and
        # every other poll would miss a change, doubling the delay.
        fresh, self._polled = self._polled, True
        try:
            page = await self._source(self._credentials, self._query, fresh)
        except GatewayError as exc:
            if _paced_out(exc):
                self._metrics.poll("skipped")
                return None
            self._metrics.poll("error")
            return exc
        return page

    def receive(self, event: Event, *, final: bool = False) -> None:
        """Hand `event` to every subscriber (from this replica's poll or another's)."""
        if self.finished:
            return
        if isinstance(event, Page) and isinstance(self.last, Page) and event.body == self.last.body:
            return
        self.last = event
        final = final or is_final(event)
        if final:
            self.finished = True
        for subscriber in self.subscribers:
            subscriber.offer(event, final=final)

    def update(self, page: Page, before: Page | None) -> Update:
        """The update from `before` to `page`, the same instance for every subscriber."""
        if page is not self._updates_to:
            # A new page: the updates to the previous one are no longer asked for.
            self._updates_to, self._updates = page, {}
        start = None if before is None else before.serial
        update = self._updates.get(start)
        if update is None:
            update = self._updates[start] = diff(page, before)
        return update


class Subscriber:
    """One subscription's view of a poller: the newest event only, and what it last sent."""

    def __init__(self, hub: LiveHub, poller: Poller, metrics: HubMetrics) -> None:
        self._hub = hub
        self._poller = poller
        self._metrics = metrics
        self._pending: Event | None = None
        self._ready = asyncio.Event()
        # The page last delivered (shared with the poller and the other subscribers).
        self._sent: Page | None = None
        # After an error, the next page is sent even if it did not change: the client
        # learns that polling works again.
        self._errored = False
        self._final = False
        self._closed = False

    def offer(self, event: Event, *, final: bool = False) -> None:
        # Replaces whatever was not read yet: a consumer that reads slowly gets the
        # latest state, and `changed` still covers everything since its last update.
        self._pending = event
        self._final = self._final or final
        self._ready.set()

    def __aiter__(self) -> Subscriber:
        return self

    async def __anext__(self) -> Update | GatewayError:
        """The next update, or the error a poll ended with; stops after a final error."""
        while not self._closed:
            await self._ready.wait()
            self._ready.clear()
            event, self._pending = self._pending, None
            if event is None:
                continue
            if isinstance(event, GatewayError):
                if self._final or is_final(event):
                    # Sent once, then the iteration stops.
                    await self.aclose()
                self._errored = True
                return copy_error(event)
            update = self._diff(event)
            if update is not None:
                self._errored = False
                self._metrics.update_sent()
                return update
        raise StopAsyncIteration

    def _diff(self, page: Page) -> Update | None:
        update = self._poller.update(page, self._sent)
        self._sent = page
        if update.same and not self._errored:
            return None
        return update

    async def aclose(self) -> None:
        """Leave the poller (the last subscriber to leave stops it); safe to call twice."""
        if not self._closed:
            self._closed = True
            self._ready.set()
            await self._hub.leave(self, self._poller)


def _by_id(body: Any) -> dict[str, Any]:
    """The page's records by id, in page order; records without an id are not tracked."""
    if not isinstance(body, list):
        return {}
    return {
        raw["id"]: raw
        for raw in body
        if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]
    }


class LiveHub:
    """Every live subscription of this process, grouped into one poller per key."""

    def __init__(
        self,
        source: PageSource,
        key_of: Callable[[Credentials, ListQuery], str],
        identity_of: Callable[[Credentials], str],
        *,
        interval: float,
        max_per_account: int,
        metrics: HubMetrics,
        sharing: Sharing | None,
    ) -> None:
        self._source = source
        self._key_of = key_of
        # What the per-account bound counts by: the whole credentials (token, secret and
        # user id), keyed and hashed, never the token alone. Credentials are checked only
        # when the first poll reaches the upstream: counted by token, anyone who knew an
        # account's token could fill its room with a wrong secret, and the owner would be
        # refused. Unchecked credentials fill only their own room, and end at their first
        # poll (UNAUTHENTICATED).
        self._identity_of = identity_of
        self.interval = interval
        self._max_per_account = max_per_account
        self._metrics = metrics
        self._sharing = sharing
        self._pollers: dict[str, Poller] = {}
        self._per_identity: Counter[str] = Counter()

    def subscribe(self, credentials: Credentials, query: ListQuery) -> Subscriber:
        """A subscriber of the page `query` names; `RateLimited` past the account's bound."""
        identity = self._identity_of(credentials)
        if self._per_identity[identity] >= self._max_per_account:
            raise RateLimited(
                f"This account already holds {self._max_per_account} live subscriptions "
                "on this server; end one first.",
                retry_after=max(1, round(self.interval)),
                limit="GATEWAY_LIVE_MAX_PER_ACCOUNT",
            )
        key = self._key_of(credentials, query)
        poller = self._pollers.get(key)
        if poller is None or poller.finished:
            poller = Poller(
                key,
                identity,
                credentials,
                query,
                source=self._source,
                interval=self.interval,
                metrics=self._metrics,
                sharing=self._sharing,
            )
            self._pollers[key] = poller
            self._metrics.pollers(1)
            poller.start()
        subscriber = Subscriber(self, poller, self._metrics)
        poller.subscribers.add(subscriber)
        self._per_identity[identity] += 1
        self._metrics.subscriptions(1)
        if poller.last is not None:
            subscriber.offer(poller.last, final=poller.finished)
        return subscriber

    async def leave(self, subscriber: Subscriber, poller: Poller) -> None:
        if subscriber not in poller.subscribers:
            return
        poller.subscribers.discard(subscriber)
        self._per_identity[poller.identity] -= 1
        if self._per_identity[poller.identity] <= 0:
            del self._per_identity[poller.identity]
        self._metrics.subscriptions(-1)
        if not poller.subscribers:
            if self._pollers.get(poller.key) is poller:
                del self._pollers[poller.key]
            self._metrics.pollers(-1)
            await poller.stop()

    @property
    def poller_count(self) -> int:
        return len(self._pollers)

    async def close(self) -> None:
        """Stop every poller (at shutdown, after the connections have gone)."""
        pollers, self._pollers = list(self._pollers.values()), {}
        await asyncio.gather(*(poller.stop() for poller in pollers))


class LiveCalls:
    """The live pages of one caller (the `Context.live` of an operation)."""

    def __init__(self, hub: LiveHub, credentials: Callable[[], Credentials]) -> None:
        self._hub = hub
        self._credentials = credentials

    def watch(self, query: ListQuery) -> Subscriber:
        """Updates of the page `query` names; raises at once without credentials or room.

        The subscriber must be closed (`aclose`) when it is no longer read.
        """
        return self._hub.subscribe(self._credentials(), query)
