"""The upstream result cache: credential-scoped keys, single flight, memory or Redis storage.

Consumers see `SingleFlightCache.get_or_load(key, load, ttl, tally=)`, with keys made by
`keys.KeyedHashes`; which store sits behind it comes from `GATEWAY_CACHE_URL`:

    memory://             this process only, bounded by entries and bytes, least recently
                          used evicted first, expired entries freed as they expire
    redis://host:port/db  shared by replicas and workers; also holds the pacing slots
                          (rediss:// for TLS; user and password percent-encoded, read
                          by redis-py's own URL parser, exactly as redis-py reads them);
                          see redis.py for what an outage does

A store that fails or is slow never fails a request: it reads as a miss. Keys are HMACs,
so neither keys nor values hold a credential (keys.py). (The whole-answer cache in front of the
endpoint is another thing: `gateway/middleware/answer_cache.py`.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar, overload
from urllib.parse import urlsplit

from gateway.bounded import BoundedCache
from gateway.upstream.redis import RedisStore
from gateway.upstream.tally import UpstreamTally

T = TypeVar("T")


class Codec(Protocol[T]):
    """How cached values become bytes and back."""

    def encode(self, value: T) -> bytes: ...

    def decode(self, data: bytes) -> T: ...


class Store(Protocol):
    """Where cached bytes live. Never raises: a failing store reads as empty."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set_many(self, entries: Sequence[tuple[str, bytes]], ttl: float) -> None: ...

    def state(self) -> dict[str, Any]: ...

    async def check(self) -> None:
        """Ask the store whether it answers, so that `state()` tells the truth."""

    @property
    def healthy(self) -> bool: ...

    async def close(self) -> None: ...


class SingleFlightCache(Generic[T]):
    """Values by key, loaded once however many callers ask at the same time."""

    def __init__(
        self,
        store: Store,
        codec: Codec[T],
        *,
        on_lookup: Callable[[str], None],
        on_share: Callable[[], None],
    ) -> None:
        self.store = store
        self._codec = codec
        # Metrics hooks: a look-up's result ("hit", "miss", "error"), a shared flight.
        self._on_lookup = on_lookup
        self._on_share = on_share
        self._flights: dict[str, asyncio.Task[T | None]] = {}
        self.hits = 0
        self.misses = 0
        self.shared_flights = 0

    @overload
    async def get_or_load(
        self,
        key: str,
        load: Callable[[], Awaitable[T]],
        ttl: float,
        *,
        refresh: bool = ...,
        tally: UpstreamTally,
    ) -> T: ...

    @overload
    async def get_or_load(
        self,
        key: str,
        load: Callable[[], Awaitable[T | None]],
        ttl: float,
        *,
        refresh: bool = ...,
        tally: UpstreamTally,
    ) -> T | None: ...

    async def get_or_load(
        self,
        key: str,
        load: Callable[[], Awaitable[T | None]],
        ttl: float,
        *,
        refresh: bool = False,
        tally: UpstreamTally,
    ) -> T | None:
        """The cached value for `key`, or the result of `load()`, kept for `ttl` seconds.

        `ttl` 0 caches nothing but still shares a load in flight. `refresh` skips the read
        and replaces the entry. Failures of `load` reach every waiter and are not cached, nor
        is a None it returns. The look-up's result is counted into the asking operation's
        `tally` (and reported to the metrics hook).
        """
        if ttl > 0 and not refresh:
            data = await self.store.get(key)
            if data is not None:
                self.hits += 1
                self._on_lookup("hit")
                tally.cache_result("hit")
                return self._codec.decode(data)
            result = "miss" if self.store.healthy else "error"
            self._on_lookup(result)
            tally.cache_result(result)
        # A load shared in flight is counted once: `load` is the starter's, and whatever it
        # sends counts in the tally it carries, the starter's; a caller that joins it counts
        # its own look-up above and no upstream request. So each request's log line says what
        # that request sent, and the lines add up to what the upstream received (the
        # `gateway_upstream_requests_total` count), as when the line was filled from the
        # context the load ran in; the sharing shows in `gateway_singleflight_shares_total`.
        flight = self._flights.get(key)
        if flight is None:
            # A refresh joins a load already in flight: it started no earlier than the
            # entry it would replace, and a second upstream request would cost more.
            self.misses += 1
            flight = asyncio.create_task(self._load(key, load, ttl))
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        else:
            self.shared_flights += 1
            self._on_share()
        # shield: a waiter that is cancelled (its client went away) must not cancel the
        # load the other waiters share.
        return await asyncio.shield(flight)

    async def _load(
        self, key: str, load: Callable[[], Awaitable[T | None]], ttl: float
    ) -> T | None:
        value = await load()
        # None is nothing found (an unknown call): shared with the waiters but not kept,
        # as an error is not, since it may stop being true at any moment.
        if ttl > 0 and value is not None:
            await self.store.set(key, self._codec.encode(value), ttl)
        return value

    def _landed(self, key: str, flight: asyncio.Task[T | None]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            # Marks the exception retrieved even when every waiter has gone away.
            flight.exception()

    def state(self) -> dict[str, Any]:
        """What /readyz shows: the store's health and counters; never keys or values."""
        return {
            **self.store.state(),
            "hits": self.hits,
            "misses": self.misses,
            "sharedFlights": self.shared_flights,
            "inFlight": len(self._flights),
        }

    async def check(self) -> dict[str, Any]:
        """`state()`, after asking the store whether it answers now."""
        await self.store.check()
        return self.state()

    async def close(self) -> None:
        """Close the store's connections."""
        await self.store.close()


class MemoryStore:
    """This process's memory, bounded by entries and by bytes, least recently used first out.

    Not aiocache's memory backend: that one has no bound at all (neither entries nor
    bytes) and arms one timer per key; a `BoundedCache` has both bounds and one sweep.
    """

    def __init__(self, max_entries: int, max_bytes: int = 128 * 1024 * 1024) -> None:
        # Values are bytes, immutable, so nothing can alter an entry once stored.
        self._cache: BoundedCache[str, bytes] = BoundedCache(
            max_entries=max_entries, max_bytes=max_bytes
        )

    async def get(self, key: str) -> bytes | None:
        return self._cache.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self._cache.set(key, value, size=len(value), expires=time.monotonic() + ttl)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [await self.get(key) for key in keys]

    async def set_many(self, entries: Sequence[tuple[str, bytes]], ttl: float) -> None:
        for key, value in entries:
            await self.set(key, value, ttl)

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def evictions(self) -> int:
        return self._cache.evictions

    @property
    def healthy(self) -> bool:
        return True

    async def check(self) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {
            "backend": "memory",
            "status": "ok",
            "entries": len(self._cache),
            "maxEntries": self._cache.max_entries,
            "bytes": self._cache.size,
            "maxBytes": self._cache.max_bytes,
            "evictions": self._cache.evictions,
        }

    async def close(self) -> None:
        self._cache.clear()


def create_store(
    url: str, *, max_entries: int, max_bytes: int, timeout: float
) -> MemoryStore | RedisStore:
    """The store `GATEWAY_CACHE_URL` names (the settings have checked its scheme)."""
    if urlsplit(url).scheme == "memory":
        return MemoryStore(max_entries, max_bytes)
    return RedisStore(url, timeout=timeout)
