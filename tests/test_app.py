"""The composition root: it only wires, and its process housekeeping."""

from __future__ import annotations

import ast
import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import gateway.app
from gateway.app import collect_cycles, create_app, heap_trimmer
from gateway.config import load_settings
from tests.inprocess import serve_in_process


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


def create_app_tree() -> ast.FunctionDef:
    tree = ast.parse(Path(gateway.app.__file__).read_text())
    [function] = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "create_app"
    ]
    return function


def test_create_app_defines_no_handler_of_its_own() -> None:
    # A function defined inside create_app is a closure on the request path: the handlers
    # are objects of their own modules, made here with their collaborators. The lifespan is
    # the one exception, run once at start-up and shutdown.
    function = create_app_tree()

    inner = [
        "<lambda>" if isinstance(node, ast.Lambda) else node.name
        for node in ast.walk(function)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        and node is not function
    ]

    assert inner == ["lifespan"]


def test_create_app_reads_its_settings_as_given() -> None:
    # Before: `serve --sandbox` rebound `settings` halfway down, and the sandbox's URL
    # reached the upstream client only because the lifespan read it late.
    rebound = [
        node.lineno
        for node in ast.walk(create_app_tree())
        if isinstance(node, ast.Name)
        and node.id == "settings"
        and isinstance(node.ctx, ast.Store | ast.Del)
    ]

    assert rebound == []


def test_readyz_says_starting_until_the_lifespan_opens_then_names_the_sandbox() -> None:
    app = create_app(load_settings({"GATEWAY_SANDBOX": "true", "GATEWAY_PORT": "8123"}))

    async def before_the_lifespan() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            return await http.get("/readyz")

    starting = asyncio.run(before_the_lifespan())
    with (
        serve_in_process(app) as transport,
        httpx.Client(transport=transport, base_url="http://gateway") as http,
    ):
        ready = http.get("/readyz")

    assert (starting.status_code, starting.json()) == (503, {"status": "starting"})
    assert (ready.status_code, ready.json()["upstream"]) == (200, "http://127.0.0.1:8123/sandbox")
