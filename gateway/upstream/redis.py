"""The Redis store: aiocache's Redis backend behind short timeouts and an outage switch.

The only module that imports aiocache (untyped, so it stays confined here). One guarded
connection pool serves the upstream cache, the entity view and the pacing scripts.

A store that fails or is slow never fails a request: the cache reports a miss, the
caller goes to the upstream, and the outage is logged once when it starts and once when
it ends, however many requests are in flight: while it is down one request at a time
(at most once a second) probes it, failures of operations begun before the store went
down or came back say nothing new, and a full connection pool (more concurrent
operations than connections) is a miss, not an outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from aiocache import RedisCache
from aiocache.serializers import NullSerializer
from redis.asyncio.connection import parse_url
from redis.exceptions import MaxConnectionsError

log = logging.getLogger("gateway.cache")

NAMESPACE = "catapult-gateway:v1"
# While the store is down, try it again after this long rather than on every request.
OUTAGE_PROBE_INTERVAL = 1.0


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
        self._timeout = timeout
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

    async def run_script(self, script: str, keys: Sequence[str], args: Sequence[int]) -> Any:
        """The reply of a Lua script run on the server; None when Redis cannot be asked."""
        return await self._guarded(self._cache.raw("eval", script, len(keys), *keys, *args))

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
        await self._guarded(self._ping())

    async def _ping(self) -> Any:
        # aiocache bounds its own commands by `timeout`, but a PING goes to redis-py's
        # client directly, which has no socket timeout here: a server that accepts and
        # never answers held start-up and every /readyz for 5 s (redis-py's own wait),
        # whatever GATEWAY_CACHE_TIMEOUT said.
        async with asyncio.timeout(self._timeout):
            return await self._cache.client.ping()

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
