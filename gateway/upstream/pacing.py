"""Pacing: each account's upstream requests spaced to the upstream's rate limit.

The real upstream allows about one request per second per account and answers 429 to the
rest. The gateway keeps a schedule per account (keyed by an HMAC of the credentials,
never the secret) and makes each request wait for its slot, so that a burst is served a
little late instead of refused. A request whose slot is further away than the queue
timeout fails at once with RATE_LIMITED and `retryAfter`; one that meets a 429 anyway
(another client on the same account) waits out the reset once, if the reset is that near.

With Redis the schedule is shared by every replica (`RedisSlots`: two Lua scripts on
Redis's own clock); when Redis cannot be asked, each process keeps its own. Without Redis,
the worker processes of one host share it through a locked file (`FileSlots`). Accounts
are keyed by an HMAC (`KeyedHashes.account`), never a credential.

A slot is a plan; the upstream sees departures. When the CPU is saturated the event loop
wakes a request late, and the next one, woken on time, would leave less than an interval
after it. So a request that has waited for its slot checks, as it leaves, the time the
account's previous request actually left, waits out the rest of the interval if needed,
and records its own departure (in Redis too, when shared).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, Protocol, TypeVar

import orjson

from gateway.errors import RateLimited
from gateway.pacing_file import unfit
from gateway.upstream.redis import NAMESPACE, RedisStore

log = logging.getLogger("gateway.pacing")

T = TypeVar("T")

# Requests leave on schedule but the upstream stamps them on arrival, after network
# jitter; spacing them 5% wider keeps two neighbours from landing under one interval.
JITTER_MARGIN = 1.05


class SharedSlots(Protocol):
    """A schedule shared by replicas (`RedisSlots`) or by one host's workers (`FileSlots`)."""

    async def reserve(self, account: str, interval: float, max_wait: float) -> float | None:
        """Seconds until the account's next slot, reserved only if within `max_wait`;
        None when the shared schedule cannot be reached."""

    async def depart(self, account: str, interval: float) -> float | None:
        """Record a departure now and return 0, or return the seconds still to wait for
        the account's previous departure to be `interval` old; None when unreachable."""


class Clock(Protocol):
    """Where the pacer reads the time and waits (a test passes one whose loop runs late)."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""

    async def sleep(self, seconds: float) -> None:
        """Return no sooner than `seconds` from now (a busy event loop returns later)."""


class MonotonicClock:
    """The real clock: `time.monotonic` and `asyncio.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Pacer:
    """Spaces upstream requests per account; `rate` 0 turns pacing (and 429 waits) off."""

    def __init__(
        self,
        *,
        rate: float,
        queue_timeout: float,
        clock: Clock,
        shared: SharedSlots | None,
        on_wait: Callable[[float], None],
        on_refusal: Callable[[], None],
    ) -> None:
        self._interval = JITTER_MARGIN / rate if rate > 0 else 0.0
        self._rate = rate
        self._queue_timeout = queue_timeout
        self._shared = shared
        self._clock = clock
        # Metrics hooks: a wait for a slot (seconds), a refusal.
        self._on_wait = on_wait
        self._on_refusal = on_refusal
        # Local schedule: the monotonic instant of each account's next free slot, and of
        # its last actual departure.
        self._next_slot: dict[str, float] = {}
        self._departed: dict[str, float] = {}
        self.refused = 0
        self.waited_out_429 = 0

    @property
    def enabled(self) -> bool:
        return self._interval > 0

    async def run(self, account: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call` in the account's next slot; raises `RateLimited` if that is too far."""
        if not self.enabled:
            return await call()
        await self._wait_for_slot(account)
        try:
            return await call()
        except RateLimited as exc:
            # Someone else on this account (another gateway, a script) used the slot.
            if exc.retry_after > self._queue_timeout:
                raise
            self.waited_out_429 += 1
            await self._clock.sleep(exc.retry_after)
        await self._wait_for_slot(account)
        return await call()

    async def _wait_for_slot(self, account: str) -> None:
        wait = await self._reserve(account)
        if wait > 0:
            self._on_wait(wait)
            await self._clock.sleep(wait)
        # Hold the spacing from the previous request's actual departure, however late the
        # loop woke either of them (each check moves on, so this ends).
        while (late := await self._depart(account)) > 0:
            await self._clock.sleep(late)

    async def _depart(self, account: str) -> float:
        """0 once this request may leave (its departure recorded), else seconds to wait."""
        if self._shared is not None:
            wait = await self._shared.depart(account, self._interval)
            if wait is not None and wait > 0:
                return wait
        # Also checked with Redis: a departure made while Redis was unreachable is local.
        now = self._clock.now()
        previous = self._departed.get(account)
        if previous is not None and now < previous + self._interval:
            return previous + self._interval - now
        self._departed[account] = now
        # Later reservations start one interval after this departure at the earliest.
        self._next_slot[account] = max(self._next_slot.get(account, 0.0), now + self._interval)
        return 0.0

    async def _reserve(self, account: str) -> float:
        if self._shared is not None:
            wait = await self._shared.reserve(account, self._interval, self._queue_timeout)
            if wait is not None:
                self._check(wait)
                return wait
        now = self._clock.now()
        slot = max(now, self._next_slot.get(account, 0.0))
        wait = slot - now
        self._check(wait)
        self._next_slot[account] = slot + self._interval
        if len(self._next_slot) > 10_000:
            self._forget_past(now)
        return wait

    def _check(self, wait: float) -> None:
        if wait > self._queue_timeout:
            self.refuse(wait)

    def refuse(self, wait: float) -> NoReturn:
        """Refuse a request of the account that could leave in `wait` seconds: counted and
        reported as a pacing refusal (the credential lanes' gate refuses with it too)."""
        self.refused += 1
        self._on_refusal()
        retry_after = max(1, math.ceil(wait))
        raise RateLimited(
            "Too many requests for this account: the upstream allows "
            f"{self._rate:g} per second; retry in {retry_after} s.",
            retry_after=retry_after,
        )

    def _forget_past(self, now: float) -> None:
        for account in [a for a, slot in self._next_slot.items() if slot <= now]:
            del self._next_slot[account]
            self._departed.pop(account, None)

    def state(self) -> dict[str, float | int]:
        """Counters for /readyz."""
        return {
            "rate": self._rate,
            "refused": self.refused,
            "waitedOut429": self.waited_out_429,
        }


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


class RedisSlots:
    """The `SharedSlots` of every replica that uses one Redis."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    async def reserve(self, account: str, interval: float, max_wait: float) -> float | None:
        """Seconds until the account's next upstream slot, reserved for the caller only if
        it is within `max_wait`; None when Redis cannot be asked (pace locally then)."""
        result = await self._store.run_script(
            _RESERVE_SLOT,
            [f"{NAMESPACE}:pace:{account}"],
            [math.ceil(interval * 1000), math.floor(max_wait * 1000)],
        )
        if result is None:
            return None
        _, wait_ms = result
        return int(wait_ms) / 1000

    async def depart(self, account: str, interval: float) -> float | None:
        """Record the account's upstream request as leaving now (0), or the seconds until
        its previous one is `interval` old; None when Redis cannot be asked."""
        result = await self._store.run_script(
            _DEPART,
            [f"{NAMESPACE}:pace:{account}", f"{NAMESPACE}:left:{account}"],
            [math.ceil(interval * 1000)],
        )
        if result is None:
            return None
        return int(result) / 1000


# An account whose slot and departure are this far past holds nothing a request needs.
IDLE_SECONDS = 60.0
# Longest the event loop tries for the lock, and how far from now a stored time may be.
LOCK_WAIT = 0.02
PLAUSIBLE_SECONDS = 3600.0


class FileSlots:
    """The `SharedSlots` of the processes of one host, through a small locked file.

    `serve --workers N` runs N processes that each pace on their own unless something is
    shared; without Redis that something is this file (`GATEWAY_PACING_FILE`, which the CLI
    sets to a fresh private directory of its process group). It holds each account's next
    free slot and last departure (keyed by the account's HMAC, never a credential) as a small
    JSON object; a reservation or departure reads, updates and writes it under an exclusive
    `flock`, so the workers together keep one account to the rate, as the Redis schedule
    does for replicas.

    The lock is held for a read and a write of a few hundred bytes (microseconds), so it is
    taken on the event loop rather than in a thread, which would cost more than the wait; it
    is only ever tried for `LOCK_WAIT` seconds, so a process that holds it (or a stranger who
    planted the file) cannot stall the event loop. The clock must be `CLOCK_MONOTONIC`
    (`MonotonicClock`), one clock for every process of the host. The file is trusted only as
    far as it must be: it is never opened through a symbolic link, must be a regular file of
    this user that nobody else may write, an entry that is not two plausible times reads as
    empty, and an unreadable table is rewritten. A file that cannot be used reads as
    "unreachable": the caller paces alone, as without Redis.
    """

    def __init__(self, path: str, clock: Clock) -> None:
        self._path = path
        self._clock = clock
        self._fd: int | None = None
        self._failed = False

    async def reserve(self, account: str, interval: float, max_wait: float) -> float | None:
        """Seconds until the account's next slot, reserved only if within `max_wait`;
        None when the file cannot be used."""

        def reserve(entry: list[float], now: float) -> float:
            slot = max(now, entry[0])
            wait = slot - now
            if wait <= max_wait:
                entry[0] = slot + interval
            return wait  # past max_wait: not reserved, the caller refuses it

        return self._locked(account, reserve)

    async def depart(self, account: str, interval: float) -> float | None:
        """Record a departure now and return 0, or the seconds still to wait for the
        account's previous departure to be `interval` old; None when unusable."""

        def depart(entry: list[float], now: float) -> float:
            if entry[1] > 0 and now < entry[1] + interval:
                return entry[1] + interval - now
            entry[1] = now
            # Later reservations start one interval after this departure at the earliest.
            entry[0] = max(entry[0], now + interval)
            return 0.0

        return self._locked(account, depart)

    def _locked(self, account: str, change: Callable[[list[float], float], float]) -> float | None:
        try:
            return self._update(account, change)
        except (OSError, ValueError, TypeError, BlockingIOError) as exc:
            if not self._failed:
                self._failed = True
                log.warning(
                    "pacing file unusable; this process paces on its own",
                    extra={"error": type(exc).__name__},
                )
            return None

    def _update(self, account: str, change: Callable[[list[float], float], float]) -> float:
        if self._fd is None:
            self._fd = _open_private(self._path)
        fd = self._fd
        _lock(fd)
        try:
            table = _read(fd)
            now = self._clock.now()
            # [next free slot, last departure], both on the monotonic clock.
            entry = _entry(table.get(account), now)
            result = change(entry, now)
            table[account] = entry
            # Idle accounts leave at every write: the table is read and written whole
            # under the lock, and one of thousands of accounts holds it past LOCK_WAIT.
            table = {key: e for key, e in table.items() if key == account or _busy(e, now)}
            data = orjson.dumps(table)
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
            return result
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open_private(path: str) -> int:
    """Open (or create) the file, refusing a link, a non-file or one others may write."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    problem = unfit(os.fstat(fd))
    if problem is not None:
        os.close(fd)
        raise PermissionError(f"{path} {problem}")
    return fd


def _lock(fd: int) -> None:
    """Take the exclusive lock, trying for at most `LOCK_WAIT` seconds.

    Real time, not the pacer's clock: this bounds how long the event loop is blocked."""
    give_up = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= give_up:
                raise
            time.sleep(0.001)


def _entry(stored: Any, now: float) -> list[float]:
    """[next slot, last departure] as stored, or empty when they are not plausible times."""
    if isinstance(stored, list) and len(stored) == 2:
        try:
            entry = [float(stored[0]), float(stored[1])]
        except (TypeError, ValueError):
            return [0.0, 0.0]
        if all(value == 0.0 or abs(value - now) <= PLAUSIBLE_SECONDS for value in entry):
            return entry
    return [0.0, 0.0]


def _busy(stored: Any, now: float) -> bool:
    """Whether an entry still holds a slot or departure within `IDLE_SECONDS` of now."""
    return max(_entry(stored, now)) + IDLE_SECONDS > now


def _read(fd: int) -> dict[str, Any]:
    """The table; one that cannot be read (cut off, or planted) is started again."""
    size = os.fstat(fd).st_size
    if size == 0:
        return {}
    try:
        table = orjson.loads(os.pread(fd, min(size, 4 * 1024 * 1024), 0))
    except orjson.JSONDecodeError:
        return {}
    return table if isinstance(table, dict) else {}
