"""With Redis, one poller per key across every replica: a lease elects it, pub/sub fans out.

For each watched key (the keyed hash the cache uses for the same upstream request, so no
credential appears in a Redis key or channel):

    gateway:live:lease:<key>   SET NX PX: the replica holding it polls; it renews the
                               lease while it polls and deletes it when it stops
    gateway:live:<key>         the channel its events are published on
    gateway:live:last:<key>    its last event, so that a subscriber joining on another
                               replica gets the current page at once; stored again at
                               every poll, changed or not, and kept only about one
                               interval (`fresh_seconds`): once nobody polls the key any
                               more, a late joiner waits for its own poll instead of being
                               sent a page up to two leases old as if it were current

Every other replica watching the key listens on the channel and tries the lease once per
renewal period, so it takes over within one lease period when the leader stops or dies.
While Redis cannot be reached, a replica polls on its own (as its cache then serves from
the upstream): slower for the upstream, never a failed subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as redis_asyncio
from redis.asyncio.client import PubSub

from gateway import errors
from gateway.errors import GatewayError, RateLimited
from gateway.live.hub import Event, Page

log = logging.getLogger("gateway.live")

PREFIX = "gateway:live"
# Deletes or renews the lease only if this replica still holds it.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
# Seconds Redis is left alone after it failed to answer.
OUTAGE_PROBE_SECONDS = 5.0
# What `_ask` answers when Redis could not be asked (None is one of Redis's answers).
UNREACHABLE: Any = object()
_ERRORS: dict[str, type[GatewayError]] = {
    cls.code: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, GatewayError)
}


def encode_event(event: Event, origin: str) -> bytes:
    if isinstance(event, Page):
        return orjson.dumps({"origin": origin, "body": event.body, "at": event.fetched_at})
    return orjson.dumps(
        {"origin": origin, "error": {"message": event.message, "extensions": event.extensions}}
    )


def decode_event(data: bytes) -> tuple[str, Event]:
    """The origin replica and the event; raises ValueError for anything else."""
    try:
        message = orjson.loads(data)
        if "error" in message:
            extensions = dict(message["error"]["extensions"])
            cls = _ERRORS.get(extensions.pop("code", ""), GatewayError)
            text = str(message["error"]["message"])
            if issubclass(cls, RateLimited):
                retry_after = int(extensions.pop("retryAfter", 1))
                return message["origin"], RateLimited(text, retry_after=retry_after, **extensions)
            return message["origin"], cls(text, **extensions)
        return message["origin"], Page(message["body"], float(message["at"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError("not a live event") from exc


class RedisSharing:
    """The `Sharing` of the hub, through one Redis (the cache's, `GATEWAY_CACHE_URL`)."""

    def __init__(self, client: redis_asyncio.Redis, *, interval: float) -> None:
        self._redis = client
        self._interval = interval
        # Long enough that a leader on a busy loop keeps it, short enough to take over fast.
        self.lease_seconds = max(3.0, 2 * interval)
        # How long a stored last event is sent to newcomers: one interval, and a margin
        # for the poll's own time (the leader stores again after each poll).
        self.fresh_seconds = interval + max(1.0, interval / 2)
        self._origin = secrets.token_hex(8)
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        # By channel, then by the `run` that listens: during churn a key's stopping poller
        # and its successor both listen for a moment, and the one leaving must not take
        # the other's receiver (nor its subscription) with it.
        self._receivers: dict[str, dict[object, Callable[[Event], None]]] = {}
        self._lock = asyncio.Lock()
        self._warned = False
        self._down_until = 0.0

    async def run(
        self, key: str, poll: Callable[[], Awaitable[None]], receive: Callable[[Event], None]
    ) -> None:
        channel = f"{PREFIX}:{key}"
        listener = object()
        try:
            # Inside the `try`: a run cancelled while it subscribes must not leave its
            # receiver behind.
            await self._listen(channel, listener, receive)
            last = await self._ask(self._redis.get(f"{PREFIX}:last:{key}"))
            if isinstance(last, bytes):
                # Anything else under that key is ignored, as on the channel.
                with contextlib.suppress(ValueError):
                    receive(decode_event(last)[1])
            await self._lead_or_follow(key, poll)
        finally:
            await self._unlisten(channel, listener)

    async def _lead_or_follow(self, key: str, poll: Callable[[], Awaitable[None]]) -> None:
        lease = f"{PREFIX}:lease:{key}"
        token = f"{self._origin}:{secrets.token_hex(4)}"
        lease_ms = int(self.lease_seconds * 1000)
        renew_every = self.lease_seconds / 3
        polling: asyncio.Task[None] | None = None
        try:
            while True:
                if polling is None:
                    won = await self._ask(self._redis.set(lease, token, nx=True, px=lease_ms))
                    # Redis unreachable: poll on our own rather than not at all.
                    if won is UNREACHABLE or won:
                        polling = asyncio.ensure_future(poll())
                else:
                    held = await self._ask(self._redis.eval(_RENEW, 1, lease, token, lease_ms))
                    if held == 0:
                        # Lost it (Redis restarted, or this loop stalled past the lease):
                        # the new holder polls now.
                        polling.cancel()
                        await asyncio.gather(polling, return_exceptions=True)
                        polling = None
                    elif polling.done():
                        # Ended by a final error, or failed: the poller says which.
                        polling.result()
                        return
                await asyncio.sleep(renew_every)
        finally:
            if polling is not None:
                polling.cancel()
                await asyncio.gather(polling, return_exceptions=True)
            # Let another replica's subscribers take over at once. Also when not polling:
            # cancelled while its SET NX was answered, it may hold the lease without
            # knowing (the script deletes it only if the token is ours).
            await self._ask(self._redis.eval(_RELEASE, 1, lease, token))

    async def publish(self, key: str, event: Event) -> None:
        data = encode_event(event, self._origin)
        await self._store(key, data)
        await self._ask(self._redis.publish(f"{PREFIX}:{key}", data))

    async def remember(self, key: str, page: Page) -> None:
        await self._store(key, encode_event(page, self._origin))

    async def _store(self, key: str, data: bytes) -> None:
        await self._ask(
            self._redis.set(f"{PREFIX}:last:{key}", data, px=int(self.fresh_seconds * 1000))
        )

    async def _listen(
        self, channel: str, listener: object, receive: Callable[[Event], None]
    ) -> None:
        async with self._lock:
            receivers = self._receivers.setdefault(channel, {})
            receivers[listener] = receive
            if self._pubsub is None:
                self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            # Every time, not only for the first receiver: the first one's SUBSCRIBE may
            # have been cancelled, or failed while Redis was away (SUBSCRIBE is idempotent).
            await self._ask(self._pubsub.subscribe(**{channel: self._on_message}))
            if self._listener is None or self._listener.done():
                self._listener = asyncio.ensure_future(self._read())

    async def _unlisten(self, channel: str, listener: object) -> None:
        async with self._lock:
            receivers = self._receivers.get(channel, {})
            receivers.pop(listener, None)
            if receivers:
                # Another poller of this key still listens.
                return
            self._receivers.pop(channel, None)
            if self._pubsub is not None:
                await self._ask(self._pubsub.unsubscribe(channel))

    async def _read(self) -> None:
        # One connection for every channel of this process, read by this one task.
        while self._pubsub is not None:
            try:
                await self._pubsub.run(poll_timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._warn(exc)
                await asyncio.sleep(OUTAGE_PROBE_SECONDS)
                # Resubscribe what is still watched, on a fresh connection.
                async with self._lock:
                    old, self._pubsub = (
                        self._pubsub,
                        self._redis.pubsub(ignore_subscribe_messages=True),
                    )
                    if old is not None:
                        await self._ask(old.aclose())  # type: ignore[no-untyped-call]
                    for channel in list(self._receivers):
                        await self._ask(self._pubsub.subscribe(**{channel: self._on_message}))

    async def _on_message(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        receivers = self._receivers.get(name)
        data = message.get("data")
        if not receivers or not isinstance(data, bytes):
            return
        try:
            origin, event = decode_event(data)
        except ValueError:
            return
        if origin != self._origin:
            for receive in list(receivers.values()):
                receive(event)

    async def _ask(self, operation: Awaitable[Any]) -> Any:
        """The answer, or `UNREACHABLE` when Redis cannot be asked (logged once per outage).

        After a failure Redis is not asked again for `OUTAGE_PROBE_SECONDS`: each attempt
        costs a connect timeout, and a new subscriber would wait for every one of them.

        A cancellation that redis-py swallowed is raised again: with a socket timeout it
        writes through `asyncio.wait_for`, which before Python 3.12 returns the result
        instead of raising when the cancellation arrives as the write completes. A
        poller's `run` would then go on for ever (leading, polling, renewing its lease)
        after `Poller.stop` cancelled it, and `stop` would wait for it for ever.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        if loop.time() < self._down_until:
            if asyncio.iscoroutine(operation):
                operation.close()
            return UNREACHABLE
        try:
            result = await operation
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if task is not None and task.cancelling() > cancelling:
                raise asyncio.CancelledError from exc
            self._down_until = loop.time() + OUTAGE_PROBE_SECONDS
            self._warn(exc)
            return UNREACHABLE
        if task is not None and task.cancelling() > cancelling:
            raise asyncio.CancelledError
        self._warned = False
        return result

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "live updates cannot reach Redis; each replica polls on its own until it returns",
                extra={"error": type(exc).__name__},
            )

    async def close(self) -> None:
        if self._listener is not None:
            # Cancelled again until it ends: redis-py may swallow a cancellation (see `_ask`).
            while not self._listener.done():
                self._listener.cancel()
                await asyncio.wait({self._listener}, timeout=0.1)
        if self._pubsub is not None:
            await self._ask(self._pubsub.aclose())  # type: ignore[no-untyped-call]
        await self._ask(self._redis.aclose())
