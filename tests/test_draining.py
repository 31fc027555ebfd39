"""The shutdown's announcement in a request's scope."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.draining import SCOPE_KEY, announce, draining


def test_an_announced_shutdown_is_found_in_the_scope() -> None:
    stopping = asyncio.Event()
    scope: dict[str, Any] = {"type": "http"}

    announce(scope, stopping)

    assert draining(scope) is stopping


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param({"type": "http"}, id="never-announced"),
        pytest.param({"type": "http", SCOPE_KEY: "set"}, id="not-an-event"),
    ],
)
def test_no_announcement_is_none(scope: dict[str, Any]) -> None:
    assert draining(scope) is None
