"""The composition root: it only wires, and its process housekeeping."""

from __future__ import annotations

import ast
import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway.app
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


def test_create_app_defines_no_handler_of_its_own() -> None:
    # A function defined inside create_app is a closure on the request path: the handlers
    # are objects of their own modules, made here with their collaborators. The lifespan is
    # the one exception, run once at start-up and shutdown.
    tree = ast.parse(Path(gateway.app.__file__).read_text())
    [create_app] = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "create_app"
    ]

    inner = [
        "<lambda>" if isinstance(node, ast.Lambda) else node.name
        for node in ast.walk(create_app)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        and node is not create_app
    ]

    assert inner == ["lifespan"]
