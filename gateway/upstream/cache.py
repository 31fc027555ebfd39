"""The response cache: credential-scoped keys, single flight, memory or Redis storage.

The only module that imports aiocache (untyped, so it stays confined here). Consumers see
`ResponseCache.get_or_load(key, load, ttl)` and `CacheKeys`; which store sits behind them
comes from `GATEWAY_CACHE_URL`:

    memory://             this process only, bounded by entries and bytes, least recently
                          used evicted first, expired entries freed as they expire
    redis://host:port/db  shared by replicas and workers; also holds the pacing slots
                          (rediss:// for TLS; user and password percent-encoded, read
                          by redis-py's own URL parser, exactly as redis-py reads them)

A store that fails or is slow never fails a request: the cache reports a miss, the
caller goes to the upstream, and the outage is logged once when it starts and once when
it ends, however many requests are in flight: while it is down one request at a time
(at most once a second) probes it, failures of operations begun before the store went
down or came back say nothing new, and a full connection pool (more concurrent
operations than connections) is a miss, not an outage. Keys are HMACs, so neither keys
nor values hold a credential.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

import orjson
from aiocache import RedisCache
from aiocache.serializers import NullSerializer
from redis.asyncio.connection import parse_url
from redis.exceptions import MaxConnectionsError

from gateway.bounded import BoundedCache

log = logging.getLogger("gateway.cache")

T = TypeVar("T")

NAMESPACE = "catapult-gateway:v1"
# While the store is down, try it again after this long rather than on every request.
OUTAGE_PROBE_INTERVAL = 1.0


class CacheKeys:
    """Makes cache and pacing keys: HMAC-SHA256 of the credentials and what was asked."""

    def __init__(self, secret: bytes | None) -> None:
        self.shared = secret is not None
        secret = secret if secret is not None else secrets.token_bytes(32)
        # Keyed once; each digest starts from a copy, skipping HMAC's key set-up.
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)

    def request(
        self, authorization: str, user_id: str, path: str, params: Sequence[tuple[str, str]]
    ) -> str:
        """The key of one upstream request made with these credentials."""
        # A JSON array keeps the parts apart: no choice of values can make two different
        # requests (or two different callers) encode to the same bytes.
        return self._digest(["request", authorization, user_id, path, sorted(params)])

    def call(self, authorization: str, user_id: str, call_id: str) -> str:
        """The key of one call record in the entity view, under these credentials."""
        return self._digest(["call", authorization, user_id, call_id])

    def account(self, account: str) -> str:
        """The key of an account (`Credentials.account`; the upstream limits accounts)."""
        return self._digest(["account", account])

    def _digest(self, parts: list[Any]) -> str:
        mac = self._mac.copy()
        mac.update(orjson.dumps(parts))
        return mac.hexdigest()


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


def _ignore(*_: object) -> None:
    pass


class ResponseCache(Generic[T]):
    """Values by key, loaded once however many callers ask at the same time."""

    def __init__(
        self,
        store: Store,
        codec: Codec[T],
        *,
        on_lookup: Callable[[str], None] = _ignore,
        on_share: Callable[[], None] = _ignore,
    ) -> None:
        self.store = store
        self._codec = codec
        # Metrics hooks: a look-up's result ("hit", "miss", "error"), a shared flight.
        self._on_lookup = on_lookup
        self._on_share = on_share
        self._flights: dict[str, asyncio.Task[T]] = {}
        self.hits = 0
        self.misses = 0
        self.shared_flights = 0

    async def get_or_load(
        self, key: str, load: Callable[[], Awaitable[T]], ttl: float, *, refresh: bool = False
    ) -> T:
        """The cached value for `key`, or the result of `load()`, kept for `ttl` seconds.

        `ttl` 0 caches nothing but still shares a load in flight. `refresh` skips the read
        and replaces the entry. Failures of `load` reach every waiter and are not cached.
        """
        if ttl > 0 and not refresh:
            data = await self.store.get(key)
            if data is not None:
                self.hits += 1
                self._on_lookup("hit")
                return self._codec.decode(data)
            self._on_lookup("miss" if self.store.healthy else "error")
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

    async def _load(self, key: str, load: Callable[[], Awaitable[T]], ttl: float) -> T:
        value = await load()
        if ttl > 0:
            await self.store.set(key, self._codec.encode(value), ttl)
        return value

    def _landed(self, key: str, flight: asyncio.Task[T]) -> None:
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


# Reserves the next free slot of an account: returns {reserved, wait in ms}. The clock is
# Redis's own (TIME), so replicas with skewed clocks still agree on one schedule.
_RESERVE_SLOT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local interval_ms = tonumber(ARGV[1])
local max_wait_ms = tonumber(ARGV[2])
local next_ms = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot_ms = math.max(now_ms, next_ms)
local wait_ms = slot_ms - now_ms
if wait_ms > max_wait_ms then
  return {0, wait_ms}
end
redis.call('SET', KEYS[1], slot_ms + interval_ms, 'PX', wait_ms + interval_ms + 1000)
return {1, wait_ms}
"""


# Records an account's departure now (returns 0), unless its previous departure is less
# than an interval old (returns the ms still to wait): the spacing the upstream sees is
# between departures, whenever each request was planned to leave. Later reservations
# then start one interval after this departure at the earliest.
_DEPART = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local interval_ms = tonumber(ARGV[1])
local last_ms = tonumber(redis.call('GET', KEYS[2]) or '0')
if last_ms > 0 and now_ms < last_ms + interval_ms then
  return last_ms + interval_ms - now_ms
end
redis.call('SET', KEYS[2], now_ms, 'PX', interval_ms + 1000)
local next_ms = tonumber(redis.call('GET', KEYS[1]) or '0')
if next_ms < now_ms + interval_ms then
  redis.call('SET', KEYS[1], now_ms + interval_ms, 'PX', interval_ms + 1000)
end
return 0
"""


@dataclass
class _Outage:
    """Whether the store is down, since when, and when to try it again."""

    down_since: float | None = None
    probe_at: float = 0.0
    # One operation at a time tries a store that is down: a crowd of them, released at
    # once, would exhaust the pool and read as a new outage the moment it came back.
    probing: bool = False
    # Bumped when the store goes down and when it comes back; an operation's outcome
    # changes the state only if nothing changed it while the operation ran.
    epoch: int = 0
    errors: int = 0
    outages: int = 0
    # Until the store has answered once, "ok" would be a guess.
    answered: bool = False
    last_error: str | None = None


class RedisStore:
    """aiocache's Redis backend behind short timeouts and an outage switch."""

    def __init__(self, url: str, *, timeout: float) -> None:
        options = redis_options(url)
        host, port = options.pop("host"), options.pop("port")
        self._where = f"{host}:{port}"
        self._cache = RedisCache(
            serializer=NullSerializer(encoding=None),
            namespace=NAMESPACE,
            endpoint=host,
            port=port,
            db=options.pop("db"),
            password=options.pop("password", None),
            timeout=timeout,
            create_connection_timeout=timeout,
            # What aiocache has no argument for (user name, TLS, the URL's query options)
            # goes to redis-py's connection pool as redis-py's parser produced it.
            connection_pool_kwargs=options,
        )
        self._outage = _Outage()

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._guarded(self._cache.get(key))
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        # A float TTL makes aiocache use PSETEX (milliseconds), so fractions are honoured;
        # below one millisecond Redis would refuse it.
        await self._guarded(self._cache.set(key, value, ttl=max(float(ttl), 0.001)))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        # One MGET, one round trip, however many keys.
        values: list[bytes | None] | None = await self._guarded(self._cache.multi_get(list(keys)))
        return [None] * len(keys) if values is None else values

    async def set_many(self, entries: Sequence[tuple[str, bytes]], ttl: float) -> None:
        # One pipelined MSET with a PEXPIRE per key (a float TTL is taken in milliseconds).
        await self._guarded(self._cache.multi_set(list(entries), ttl=max(float(ttl), 0.001)))

    async def reserve(self, account: str, interval: float, max_wait: float) -> float | None:
        """Seconds until the account's next upstream slot, reserved for the caller only if
        it is within `max_wait`; None when Redis cannot be asked (pace locally then)."""
        result = await self._guarded(
            self._cache.raw(
                "eval",
                _RESERVE_SLOT,
                1,
                f"{NAMESPACE}:pace:{account}",
                math.ceil(interval * 1000),
                math.floor(max_wait * 1000),
            )
        )
        if result is None:
            return None
        _, wait_ms = result
        return int(wait_ms) / 1000

    async def depart(self, account: str, interval: float) -> float | None:
        """Record the account's upstream request as leaving now (0), or the seconds until
        its previous one is `interval` old; None when Redis cannot be asked."""
        result = await self._guarded(
            self._cache.raw(
                "eval",
                _DEPART,
                2,
                f"{NAMESPACE}:pace:{account}",
                f"{NAMESPACE}:left:{account}",
                math.ceil(interval * 1000),
            )
        )
        if result is None:
            return None
        return int(result) / 1000

    async def _guarded(self, operation: Awaitable[Any]) -> Any:
        outage = self._outage
        probe = False
        if outage.down_since is not None:
            if outage.probing or time.monotonic() < outage.probe_at:
                # Still down: do not spend the timeout on every request.
                if asyncio.iscoroutine(operation):
                    operation.close()
                outage.errors += 1
                return None
            outage.probing = probe = True
        epoch = outage.epoch
        try:
            result = await operation
        except MaxConnectionsError:
            # More operations at once than the pool has connections: this one skips the
            # cache, and the store is no less reachable for it.
            outage.errors += 1
            return None
        # Deliberately broad: whatever the store does wrong (refused, reset, timed out,
        # out of memory, a bad reply), the request carries on without the cache.
        except Exception as exc:
            self._failed(exc, epoch)
            return None
        else:
            if probe and outage.down_since is not None and outage.epoch == epoch:
                # Back: before any other operation may use the pool, close the connections
                # idle in it since before the outage (this probe's own is among them, and
                # cheap to open again). Left open, each fails at its next use after the
                # restart, and those failures read as new outages: a flapping store.
                await self._drop_idle_connections()
        finally:
            if probe:
                outage.probing = False
        outage.answered = True
        if probe and outage.down_since is not None and outage.epoch == epoch:
            log.info(
                "cache store reachable again",
                extra={
                    "store": self._where,
                    "down_seconds": round(time.monotonic() - outage.down_since, 2),
                },
            )
            outage.down_since = None
            outage.epoch += 1
        return result

    async def _drop_idle_connections(self) -> None:
        # Idle ones only: an operation in flight began before the recovery, and its
        # outcome belongs to the outage that is ending (see `epoch`).
        try:
            await self._cache.client.connection_pool.disconnect(inuse_connections=False)
        except Exception:  # closing a dead socket can fail; it is closed either way
            log.debug("closing idle cache connections failed", exc_info=True)

    def _failed(self, exc: Exception, epoch: int) -> None:
        outage = self._outage
        outage.errors += 1
        outage.last_error = type(exc).__name__
        if epoch != outage.epoch:
            # Begun before the store went down (or came back): already accounted for.
            return
        now = time.monotonic()
        outage.probe_at = now + OUTAGE_PROBE_INTERVAL
        if outage.down_since is None:
            outage.down_since = now
            outage.outages += 1
            outage.epoch += 1
            # Once per outage, not per request; the exception's type says enough.
            log.warning(
                "cache store unavailable; serving from the upstream until it returns",
                extra={"store": self._where, "error": type(exc).__name__},
            )

    @property
    def healthy(self) -> bool:
        return self._outage.down_since is None

    async def check(self) -> None:
        # A PING under the same guard as every operation: a store that is down is asked
        # again only once its probe interval has passed.
        await self._guarded(self._cache.client.ping())

    def state(self) -> dict[str, Any]:
        outage = self._outage
        if outage.down_since is not None:
            status = "unavailable"
        else:
            status = "ok" if outage.answered else "unknown"
        state: dict[str, Any] = {
            "backend": "redis",
            "status": status,
            "errors": outage.errors,
            "outages": outage.outages,
        }
        if outage.last_error is not None:
            # The exception's class only: a message could echo the URL or a reply.
            state["lastError"] = outage.last_error
        return state

    async def close(self) -> None:
        # aiocache's close() calls redis' deprecated close(); aclose() is the current one.
        await self._cache.client.aclose()


def redis_options(url: str) -> dict[str, Any]:
    """The connection options of a `redis://` or `rediss://` URL, as redis-py reads them.

    redis-py's own parser: percent-encoded user names and passwords (which managed Redis
    services hand out), `rediss://` for TLS, the database as the path or `?db=`, and
    redis-py's query options. Host, port and database always have a value.
    """
    options: dict[str, Any] = dict(parse_url(url))
    options.setdefault("host", "127.0.0.1")
    options.setdefault("port", 6379)
    options.setdefault("db", 0)
    return options


def create_store(
    url: str, *, max_entries: int, max_bytes: int, timeout: float
) -> MemoryStore | RedisStore:
    """The store `GATEWAY_CACHE_URL` names (the settings have checked its scheme)."""
    if urlsplit(url).scheme == "memory":
        return MemoryStore(max_entries, max_bytes)
    return RedisStore(url, timeout=timeout)
