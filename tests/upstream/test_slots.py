"""The pacing schedule that worker processes share through a locked file."""

from __future__ import annotations

import asyncio
import fcntl
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.upstream.slots import FileSlots


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


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[1, 2]", b'{"account": [1]}', b'{"account": [1e9, 1e9]}', b'{"account": {}}'],
    ids=["garbage", "not-an-object", "short-entry", "far-future", "entry-not-a-list"],
)
def test_a_corrupt_or_planted_table_is_started_again(tmp_path: Path, content: bytes) -> None:
    # A write cut short or a planted value must neither stop sharing nor stall an account.
    path = tmp_path / "pacing"
    path.write_bytes(content)
    path.chmod(0o600)
    slots = FileSlots(str(path))
    try:
        wait = run(slots.reserve("account", 1.0, 5.0))
    finally:
        slots.close()

    assert wait == 0
    assert isinstance(orjson.loads(path.read_bytes())["account"], list)


def test_a_symbolic_link_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"[1, 2, 3]")
    (tmp_path / "pacing").symlink_to(victim)
    slots = FileSlots(str(tmp_path / "pacing"))
    try:
        assert run(slots.reserve("account", 1.0, 5.0)) is None
    finally:
        slots.close()

    assert victim.read_bytes() == b"[1, 2, 3]"


def test_a_file_others_may_write_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "pacing"
    path.write_bytes(b"{}")
    path.chmod(0o666)
    slots = FileSlots(str(path))
    try:
        assert run(slots.reserve("account", 1.0, 5.0)) is None
    finally:
        slots.close()


def test_a_lock_held_elsewhere_is_not_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "pacing"
    slots = FileSlots(str(path))
    with path.open("a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        try:
            assert run(slots.reserve("account", 1.0, 5.0)) is None
        finally:
            slots.close()


def test_a_missing_directory_means_pacing_alone(tmp_path: Path) -> None:
    slots = FileSlots(str(tmp_path / "gone" / "pacing"))

    assert run(slots.reserve("account", 1.0, 5.0)) is None


def run(pending: Any) -> Any:
    return asyncio.run(pending)
