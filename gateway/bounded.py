"""In-memory caches bounded by entries and by bytes, whose expired entries are freed.

Every cache the gateway keeps in its own memory is one of these: upstream answers (the
memory backend), whole GraphQL answers, persisted queries, and parsed, validated and
planned documents. Each has a bound on how many entries it holds and on how many bytes
they take, and a bound on one entry (a larger value is simply not kept), so no input can
make a cache outgrow a stated size, whatever the sizes of the answers or documents.

The bookkeeping is cachetools' `TLRUCache`: least recently used out first, sizes summed
through `getsizeof`, and a per-entry expiry kept in a heap, so that `expire()` costs
nothing when nothing has expired. It bounds one quantity (bytes), so the entry count is
bounded here. Expired entries are freed on every insert and by a sweep on the event loop
while the cache holds anything, not only when someone asks for them again.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, NamedTuple, ParamSpec, TypeVar

from cachetools import TLRUCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
P = ParamSpec("P")

# Bytes charged for each entry besides its value: the key, the cache's own dictionaries,
# heap and bookkeeping objects (measured at about 400 bytes with a 64-character key).
ENTRY_OVERHEAD = 512
# How often a cache holding entries with an expiry frees the expired ones.
SWEEP_INTERVAL = 1.0


class _Slot(NamedTuple):
    value: Any
    expires: float
    size: int
    # Set with the cache's `lifetime` rather than an expiry of its own: kept that long
    # after its last use (see `BoundedCache.get`).
    renews: bool = False


def _expiry(key: object, slot: _Slot, now: float) -> float:
    return slot.expires


def _size(slot: _Slot) -> int:
    return slot.size


class BoundedCache(Generic[K, V]):
    """Values by key: at most `max_entries` of them, `max_bytes` in all (each charged its
    size and `ENTRY_OVERHEAD`), each value at most `max_item_bytes`; an entry is dropped at
    its expiry (by `timer`'s clock), or `lifetime` after its last use unless given one."""

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        max_item_bytes: int | None = None,
        timer: Callable[[], float] = time.monotonic,
        sweep_interval: float = SWEEP_INTERVAL,
        lifetime: float = math.inf,
    ) -> None:
        self.max_entries = max_entries
        # How long an entry set without its own expiry is kept.
        self.lifetime = lifetime
        self.max_bytes = max_bytes
        self.max_item_bytes = min(max_bytes, max_item_bytes or max_bytes)
        self._timer = timer
        self._entries: TLRUCache[K, _Slot] = TLRUCache(
            max_bytes, _expiry, timer=timer, getsizeof=_size
        )
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_interval = sweep_interval
        self.evictions = 0

    def get(self, key: K) -> V | None:
        """The value of `key`, unless absent or expired (counts as used)."""
        slot = self._entries.get(key)
        if slot is not None and slot.renews:
            now = self._timer()
            # Renewed once past half its lifetime rather than on every read (a renewal
            # is a re-insert): an entry in use is never dropped and made again, one
            # unused for `lifetime` is freed.
            if slot.expires - now < self.lifetime / 2:
                self._entries[key] = slot._replace(expires=now + self.lifetime)
        return None if slot is None else slot.value

    def set(self, key: K, value: V, *, size: int, expires: float | None = None) -> bool:
        """Keep `value` (taking `size` bytes) until `expires` (by default `lifetime` after
        its last use); False if it is too large."""
        renews = expires is None and self.lifetime != math.inf
        if expires is None:
            expires = self._timer() + self.lifetime
        entries = self._entries
        if size > self.max_item_bytes:
            entries.pop(key, None)
            return False
        size += ENTRY_OVERHEAD
        if size > self.max_bytes or expires <= self._timer():
            entries.pop(key, None)
            return False
        if key not in entries:
            entries.expire()
            while len(entries) >= self.max_entries:
                entries.popitem()
                self.evictions += 1
        added = key not in entries
        before = len(entries)
        # cachetools evicts least recently used entries to make room for the bytes.
        entries[key] = _Slot(value, expires, size, renews)
        self.evictions += before + added - len(entries)
        if expires != math.inf:
            self._schedule_sweep()
        return True

    def pop(self, key: K) -> None:
        """Forget `key`."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes taken by the entries (values plus `ENTRY_OVERHEAD` each)."""
        return int(self._entries.currsize)

    def expire(self) -> None:
        """Free every expired entry now."""
        self._entries.expire()

    def _schedule_sweep(self) -> None:
        if self._sweep is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # used outside a loop: expiry happens on inserts only
            return
        self._sweep = loop.call_later(self._sweep_interval, self._swept)

    def _swept(self) -> None:
        self._sweep = None
        self._entries.expire()
        if len(self._entries):
            self._schedule_sweep()


def memoize(
    function: Callable[P, V],
    cache: BoundedCache[Hashable, tuple[V]],
    weight: Callable[P, int],
) -> Callable[P, V]:
    """`function` with its results kept in `cache`, each charged `weight(*args)` bytes.

    Keyed by the positional arguments (hashable); keyword arguments are passed on but are
    no part of the key: what the positional ones determine, already at hand (a parsed
    document), so that a miss need not compute it again. A result too heavy to keep is
    computed each time. Results are kept in a 1-tuple, so that None is a result like any other.
    """

    def memoized(*args: P.args, **kwargs: P.kwargs) -> V:
        found = cache.get(args)
        if found is not None:
            return found[0]
        value = function(*args, **kwargs)
        cache.set(args, (value,), size=weight(*args, **kwargs))
        return value

    return memoized
