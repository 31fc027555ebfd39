"""The pacing schedule that worker processes share through a locked file."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.slots import FileSlots


def test_two_holders_of_one_file_share_one_schedule(tmp_path: Path) -> None:
    first, second = FileSlots(str(tmp_path / "pacing")), FileSlots(str(tmp_path / "pacing"))
    try:
        waits = [
            run(first.reserve("account", 1.0, 5.0)),
            run(second.reserve("account", 1.0, 5.0)),
            run(first.reserve("other account", 1.0, 5.0)),
            run(second.reserve("account", 1.0, 5.0)),
        ]
    finally:
        first.close()
        second.close()

    assert waits[0] == 0
    assert waits[1] == pytest.approx(1.0, abs=0.2)
    assert waits[2] == 0
    assert waits[3] == pytest.approx(2.0, abs=0.2)


def test_a_slot_past_the_wait_bound_is_not_reserved(tmp_path: Path) -> None:
    slots = FileSlots(str(tmp_path / "pacing"))
    try:
        run(slots.reserve("account", 3.0, 5.0))
        refused = run(slots.reserve("account", 3.0, 1.0))  # 3 s away: refused
        next_wait = run(slots.reserve("account", 3.0, 5.0))
    finally:
        slots.close()

    assert refused == pytest.approx(3.0, abs=0.2)
    assert next_wait == pytest.approx(3.0, abs=0.2)  # the refusal took no slot


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]"], ids=["garbage", "not-an-object"])
def test_an_unusable_file_means_pacing_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "pacing"
    path.write_bytes(content)
    slots = FileSlots(str(path))
    try:
        wait = run(slots.reserve("account", 1.0, 5.0))
    finally:
        slots.close()

    assert wait is None if content == b"not json" else wait == 0


def test_a_missing_directory_means_pacing_alone(tmp_path: Path) -> None:
    slots = FileSlots(str(tmp_path / "gone" / "pacing"))

    assert run(slots.reserve("account", 1.0, 5.0)) is None


def run(pending: Any) -> Any:
    return asyncio.run(pending)
