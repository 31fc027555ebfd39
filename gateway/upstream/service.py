"""The upstream as operations see it: the cache, shared in-flight requests and pacing,
in front of the client.

    list_calls / get_call(credentials, ..., tally)
      -> SingleFlightCache.get_or_load  a hit under the same credentials' key ends here;
                                        identical concurrent misses share one load
                                        (skipped with TTL 0: nothing is reused then)
      -> CredentialLanes.run            UNAUTHENTICATED for a pair the upstream just
                                        refused; else the lane the pair has earned:
                                        RATE_LIMITED for a new pair while another
                                        pair of its token probes (lanes.py)
      -> Pacer.run                      wait for the account's slot (or RATE_LIMITED)
      -> gate                           the operation's own veto (a refusal it already had)
      -> CatapultClient                 HTTP, retries, errors; None for an unknown call
      -> EntityView.remember            every call record in the answer, by id

Only successful answers reach the cache: an error raised by the client passes through
`get_or_load` to every waiter and nothing is stored, nor is an unknown call's None.

`tally` is the asking operation's `UpstreamTally`, handed down as `deadline` and `gate`
are: the cache counts the look-up into it, the client every HTTP attempt (a load shared in
flight counts into its starter's, see `SingleFlightCache.get_or_load`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar

import orjson

from gateway.calls import ListQuery
from gateway.credentials import Credentials
from gateway.upstream import routes
from gateway.upstream.cache import SingleFlightCache, create_store
from gateway.upstream.client import CatapultClient, UpstreamAnswer
from gateway.upstream.entities import EntityView, KnownCall, call_in_answer, calls_in_list
from gateway.upstream.keys import KeyedHashes
from gateway.upstream.lanes import (
    ACCEPTED_SECONDS,
    REJECTED_SECONDS,
    CredentialLanes,
    Remembered,
)
from gateway.upstream.next_page import next_query
from gateway.upstream.pacing import (
    Clock,
    FileSlots,
    Pacer,
    RedisSlots,
    SharedSlots,
)
from gateway.upstream.redis import RedisStore
from gateway.upstream.routes import UpstreamRequest
from gateway.upstream.tally import UpstreamTally

log = logging.getLogger("gateway.cache")


class AnswerCodec:
    """An `UpstreamAnswer` as orjson bytes: the JSON body, `Link` relations, fetch time."""

    def encode(self, value: UpstreamAnswer) -> bytes:
        return orjson.dumps(
            {
                "body": value.body,
                "links": dict(value.links),
                "fetchedAt": value.fetched_at,
                "excess": value.excess,
            }
        )

    def decode(self, data: bytes) -> UpstreamAnswer:
        stored = orjson.loads(data)
        # fetchedAt travels along: whatever is built from a cached answer (a cached whole
        # response) must expire with the answer, not restart its TTL.
        return UpstreamAnswer(
            body=stored["body"],
            links=stored["links"],
            fetched_at=stored["fetchedAt"],
            # Entries of an older version of this cache had no count.
            excess=stored.get("excess", 0),
        )


# A list always has an answer; a call may have none (None: the upstream does not know it).
Fetched = TypeVar("Fetched", UpstreamAnswer, UpstreamAnswer | None)


class UpstreamMetrics(Protocol):
    """What the cache and the pacer report, process-wide (`observability.telemetry.Telemetry`
    counts it); what one operation caused is counted in its `UpstreamTally` instead."""

    def cache_result(self, result: str) -> None: ...

    def singleflight_share(self) -> None: ...

    def pacing_wait(self, seconds: float) -> None: ...

    def pacing_refusal(self) -> None: ...


def _no_veto() -> None:
    pass


class CatapultService:
    """The Catapult calls API as the operations see it: cached, shared and paced.

    Built with the app and opened by its lifespan (`open`, then `close`): it makes no
    connection before its first use, so it is built without an event loop.
    """

    def __init__(
        self,
        client: CatapultClient,
        cache: SingleFlightCache[UpstreamAnswer],
        keys: KeyedHashes,
        lanes: CredentialLanes,
        *,
        ttl: float,
        entities: EntityView | None,
        slots_file: FileSlots | None,
    ) -> None:
        self._client = client
        self._cache = cache
        self._keys = keys
        self._lanes = lanes
        self._ttl = ttl
        self._entities = entities
        self._slots_file = slots_file
        self._open = False

    async def list_calls(
        self,
        credentials: Credentials,
        query: ListQuery,
        *,
        deadline: float,
        refresh: bool = False,
        gate: Callable[[], None] = _no_veto,
        tally: UpstreamTally,
    ) -> UpstreamAnswer:
        """One page of the caller's calls; `refresh` skips the cache read.

        `gate` runs right before the request leaves (after any wait for a slot) and may
        raise to keep it from leaving.
        """

        request = routes.list_calls(credentials.user_id, query)

        async def send() -> UpstreamAnswer:
            gate()
            # The request made above for the cache key, not made again: a page's
            # parameters cost a cache miss a little each time.
            return await self._client.fetch(credentials, request, deadline=deadline, tally=tally)

        return await self._through_cache(credentials, request, send, refresh, calls_in_list, tally)

    async def get_call(
        self,
        credentials: Credentials,
        call_id: str,
        *,
        deadline: float,
        refresh: bool = False,
        gate: Callable[[], None] = _no_veto,
        tally: UpstreamTally,
    ) -> UpstreamAnswer | None:
        """One of the caller's calls, or None when the upstream has no such call."""
        request = routes.get_call(credentials.user_id, call_id)

        async def send() -> UpstreamAnswer | None:
            gate()
            # The request made above for the cache key, as `list_calls` does.
            return await self._client.get_call(credentials, request, deadline=deadline, tally=tally)

        return await self._through_cache(credentials, request, send, refresh, call_in_answer, tally)

    async def _through_cache(
        self,
        credentials: Credentials,
        request: UpstreamRequest,
        send: Callable[[], Awaitable[Fetched]],
        refresh: bool,
        calls_in: Callable[[Any], Iterable[tuple[str, Any]]],
        tally: UpstreamTally,
    ) -> Fetched:
        async def load() -> Fetched:
            # Paced in the lane the credential pair has earned (see lanes.py).
            answer = await self._lanes.run(credentials, send)
            if answer is not None and self._entities is not None:
                await self._entities.remember(credentials, calls_in(answer.body), answer.fetched_at)
            return answer

        if self._ttl <= 0:
            # TTL 0 means no upstream answer is reused across client requests, including
            # by sharing one in flight (within one operation, the loader still dedupes).
            return await load()
        key = self._keys.request(
            credentials.authorization, credentials.user_id, request.path, request.params
        )
        return await self._cache.get_or_load(key, load, self._ttl, refresh=refresh, tally=tally)

    def next_page(
        self, credentials: Credentials, query: ListQuery, answer: UpstreamAnswer
    ) -> ListQuery | None:
        """The page after `answer` (a page of calls asked for with `query`) per its
        `Link rel="next"`, or None when it has none; `UpstreamBadResponse`, with the
        reason, for a link that cannot be followed (see `next_page.next_query`)."""
        link = answer.links.get("next")
        if link is None:
            return None
        return next_query(link, query, base_url=self._client.base_url, user_id=credentials.user_id)

    def list_key(self, credentials: Credentials, query: ListQuery) -> str:
        """The keyed hash `list_calls` caches this page under (live pollers share by it)."""
        request = routes.list_calls(credentials.user_id, query)
        return self._keys.request(
            credentials.authorization, credentials.user_id, request.path, request.params
        )

    def identity_key(self, credentials: Credentials) -> str:
        """A keyed hash of the whole credentials (token, secret, user id): who they are
        once the upstream accepts them, with none of them readable in it."""
        return self._keys.identity(credentials.authorization, credentials.user_id)

    async def recall_calls(
        self, credentials: Credentials, call_ids: Sequence[str]
    ) -> dict[str, KnownCall]:
        """The calls among `call_ids` that the entity view holds for these credentials."""
        if self._entities is None:
            return {}
        return await self._entities.recall(credentials, call_ids)

    def state(self) -> dict[str, Any]:
        """The cache's and the pacer's state, as last seen."""
        return {"cache": self._cache.state(), "pacing": self._lanes.state()}

    async def check(self) -> dict[str, Any]:
        """The state for /readyz, after asking the cache store whether it answers now."""
        return {
            "cache": await self._cache.check(),
            "pacing": self._lanes.state(),
        }

    async def open(self) -> None:
        """Ask the cache store once, at start-up: a wrong password or an unreachable Redis
        is logged now, not at the first request, and /readyz says so."""
        await self.check()
        self._open = True

    @property
    def is_open(self) -> bool:
        """Opened and not closed yet: start-up has finished (what /readyz waits for)."""
        return self._open

    async def close(self) -> None:
        self._open = False
        await self._cache.close()
        if self._entities is not None:
            await self._entities.close()
        if self._slots_file is not None:
            self._slots_file.close()


def create_upstream(
    client: CatapultClient,
    metrics: UpstreamMetrics,
    *,
    cache_url: str,
    cache_key: bytes | None,
    cache_ttl: float,
    cache_max_entries: int,
    cache_max_bytes: int,
    cache_timeout: float,
    rate: float,
    queue_timeout: float,
    pacing_file: str | None,
    clock: Clock,
) -> CatapultService:
    """Build the cache, keys and pacer around `client` (`cache_key` None: a random one).

    `clock`: what the pacer and the pair tables read and sleep on (`MonotonicClock` in
    the gateway; a test's fake one paces a burst without waiting for it)."""
    # The entity view needs a store of its own in memory, and shares the cache's in Redis.
    new_store = partial(
        create_store,
        cache_url,
        max_entries=cache_max_entries,
        max_bytes=cache_max_bytes,
        timeout=cache_timeout,
    )
    store = new_store()
    keys = KeyedHashes(cache_key)
    # Redis holds the pacing schedule too, so that replicas pace each account together;
    # without it, the processes of one host (`serve --workers N`) share a locked file.
    slots_file = None if pacing_file is None else FileSlots(pacing_file, clock)
    shared: SharedSlots | None = RedisSlots(store) if isinstance(store, RedisStore) else slots_file
    if isinstance(store, RedisStore) and not keys.shared:
        log.warning(
            "GATEWAY_CACHE_URL is Redis but GATEWAY_CACHE_KEY is unset: this process uses a "
            "random key, so replicas will not share cache entries or pacing"
        )
    pacer = Pacer(
        rate=rate,
        queue_timeout=queue_timeout,
        clock=clock,
        shared=shared,
        on_wait=metrics.pacing_wait,
        on_refusal=metrics.pacing_refusal,
    )
    lanes = CredentialLanes(
        keys,
        pacer=pacer,
        accepted=Remembered(seconds=ACCEPTED_SECONDS, clock=clock.now),
        rejected=Remembered(seconds=REJECTED_SECONDS, clock=clock.now),
    )
    cache = SingleFlightCache(
        store,
        AnswerCodec(),
        on_lookup=metrics.cache_result,
        on_share=metrics.singleflight_share,
    )
    entities = None
    if cache_ttl > 0:
        # Its own store: a page of 1,000 calls must not evict the upstream cache's
        # answers. With Redis both live in one server under different keys.
        entity_store = store if isinstance(store, RedisStore) else new_store()
        entities = EntityView(
            entity_store, keys, ttl=cache_ttl, owns_store=entity_store is not store
        )
    return CatapultService(
        client,
        cache,
        keys,
        lanes,
        ttl=cache_ttl,
        entities=entities,
        slots_file=slots_file,
    )
