"""The composition root's process housekeeping."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from gateway.app import collect_cycles, heap_trimmer


class Node:
    """An object that can be part of a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def rare_collections() -> Iterator[None]:
    """Thresholds so high that no collection follows allocations, as after a burst."""
    thresholds = gc.get_threshold()
    gc.set_threshold(1_000_000_000)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("rare_collections")
def test_cycles_left_behind_are_collected_on_a_clock() -> None:
    first, second = Node(), Node()
    first.other, second.other = second, first
    left_behind = weakref.ref(first)
    del first, second

    async def run() -> None:
        collector = asyncio.create_task(collect_cycles(0.05, lambda: None))
        await asyncio.sleep(0)
        assert left_behind() is not None  # nothing but the clock will free it now
        for _ in range(200):
            await asyncio.sleep(0.01)
            if left_behind() is None:
                break
        collector.cancel()

    asyncio.run(run())
    assert left_behind() is None


def test_the_heap_is_trimmed_after_each_collection() -> None:
    events: list[str] = []
    collections = gc.callbacks

    def collected(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            events.append("collected")

    async def run() -> None:
        collector = asyncio.create_task(collect_cycles(0.01, lambda: events.append("trimmed")))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if "trimmed" in events:
                break
        collector.cancel()

    collections.append(collected)
    try:
        asyncio.run(run())
    finally:
        collections.remove(collected)
    trimmed = events.index("trimmed")
    assert "collected" in events[:trimmed]


def test_the_heap_trimmer_runs_whatever_the_c_library() -> None:
    heap_trimmer()()  # glibc's malloc_trim here, nothing where the C library has none
