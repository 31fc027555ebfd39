"""Bounded caches: entries, bytes, one entry's size, and expiry that frees without reads."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest

from gateway.bounded import ENTRY_OVERHEAD, BoundedCache, memoize

KIB = 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_entry_count_is_bounded_least_recently_used_first() -> None:
    cache: BoundedCache[str, bytes] = BoundedCache(max_entries=3, max_bytes=1 << 20)
    for key in "abc":
        cache.set(key, b"x", size=1)
    cache.get("a")  # used: now the most recent
    cache.set("d", b"x", size=1)

    assert len(cache) == 3
    assert cache.get("b") is None
    assert [cache.get(key) for key in "acd"] == [b"x"] * 3
    assert cache.evictions == 1


@pytest.mark.parametrize("count", [10, 100, 1000], ids=["10", "100", "1000"])
def test_the_bytes_are_bounded_however_many_entries_come(count: int) -> None:
    cache: BoundedCache[int, bytes] = BoundedCache(max_entries=10_000, max_bytes=64 * KIB)
    for key in range(count):
        cache.set(key, b"x" * 10 * KIB, size=10 * KIB)

    assert cache.size <= 64 * KIB
    assert len(cache) == min(count, 64 * KIB // (10 * KIB + ENTRY_OVERHEAD))
    assert cache.get(count - 1) is not None  # the newest stays


@pytest.mark.parametrize(
    ("size", "kept"),
    [
        pytest.param(8 * KIB, True, id="at-the-bound"),
        pytest.param(8 * KIB + 1, False, id="one-byte-over"),
        pytest.param(10 << 20, False, id="far-over"),
    ],
)
def test_an_entry_over_the_item_bound_is_not_kept(size: int, kept: bool) -> None:
    cache: BoundedCache[str, bytes] = BoundedCache(
        max_entries=10, max_bytes=64 * KIB, max_item_bytes=8 * KIB
    )
    cache.set("old", b"value", size=5)
    cache.set("old", b"new", size=size)  # a too-large value also drops the old one

    assert cache.set("key", b"v", size=size) is kept
    assert (cache.get("key") is not None) is kept
    assert (cache.get("old") is not None) is kept


def test_an_expired_entry_is_not_served_and_is_freed_on_the_next_insert() -> None:
    clock = Clock()
    cache: BoundedCache[str, bytes] = BoundedCache(max_entries=10, max_bytes=1 << 20, timer=clock)
    cache.set("a", b"x" * 100, size=100, expires=clock.now + 5)
    clock.now += 5

    assert cache.get("a") is None
    cache.set("b", b"y", size=1, expires=clock.now + 5)
    assert len(cache) == 1
    assert cache.size == 1 + ENTRY_OVERHEAD


def test_expired_entries_are_freed_without_anyone_asking_for_them() -> None:
    async def scenario() -> tuple[int, int]:
        cache: BoundedCache[int, bytes] = BoundedCache(
            max_entries=100, max_bytes=1 << 20, sweep_interval=0.05
        )
        loop = asyncio.get_running_loop()
        for key in range(50):
            cache.set(key, b"x" * KIB, size=KIB, expires=loop.time() + 0.1)
        held = len(cache)
        await asyncio.sleep(0.5)  # no reads, no inserts: only the sweep can free them
        return held, len(cache)

    assert asyncio.run(scenario()) == (50, 0)


def test_memoize_keeps_none_and_skips_results_too_heavy_to_keep() -> None:
    calls: list[str] = []

    def work(text: str) -> str | None:
        calls.append(text)
        return None if text == "none" else text.upper()

    cache: BoundedCache[Hashable, tuple[str | None]] = BoundedCache(
        max_entries=10, max_bytes=64 * KIB, max_item_bytes=4 * KIB
    )
    memoized = memoize(work, cache, lambda text: len(text) * 256)
    heavy = "h" * 100  # 25,600 estimated bytes: over the item bound

    results = [memoized(text) for text in ("none", "none", "a", "a", heavy, heavy)]

    assert results == [None, None, "A", "A", heavy.upper(), heavy.upper()]
    assert calls == ["none", "a", heavy, heavy]


def test_memoized_results_are_freed_a_lifetime_after_they_were_made() -> None:
    # The document caches: a burst of distinct documents must not stay resident once the
    # burst is over, whether or not newer documents come to push them out.
    async def scenario() -> tuple[int, int, int]:
        cache: BoundedCache[Hashable, tuple[str]] = BoundedCache(
            max_entries=100, max_bytes=1 << 20, sweep_interval=0.05, lifetime=0.2
        )
        calls: list[str] = []

        def work(text: str) -> str:
            calls.append(text)
            return text.upper()

        memoized = memoize(work, cache, lambda text: len(text))
        for n in range(20):
            memoized(f"document {n}")
        memoized("document 0")  # still kept: not made again
        held = len(cache)
        await asyncio.sleep(0.5)  # no reads, no inserts: only the sweep can free them
        return held, len(cache), len(calls)

    assert asyncio.run(scenario()) == (20, 0, 20)


def test_a_result_in_use_is_kept_past_its_lifetime_and_freed_a_lifetime_after_its_last_use() -> (
    None
):
    # A hot document was prepared again every lifetime (30 s), which a slow clock (the
    # instruction count under valgrind) turned into a share of every request.
    clock = Clock()
    cache: BoundedCache[Hashable, tuple[str]] = BoundedCache(
        max_entries=10, max_bytes=1 << 20, timer=clock, lifetime=30
    )
    calls: list[str] = []

    def work(text: str) -> str:
        calls.append(text)
        return text.upper()

    memoized = memoize(work, cache, lambda text: len(text))
    memoized("hot")
    memoized("cold")
    for _ in range(6):  # a read every 10 s, for a minute
        clock.now += 10
        memoized("hot")
    assert calls == ["hot", "cold"]  # the hot one was never made again
    assert cache.get(("cold",)) is None  # the other expired with its lifetime

    clock.now += 30  # unused for a lifetime: freed
    cache.expire()
    assert len(cache) == 0
