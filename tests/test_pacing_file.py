"""What a file must be to hold the pacing table: the one rule settings and pacer share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.pacing_file import holds_a_pacing_table, unfit


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        pytest.param(0o600, None, id="private"),
        pytest.param(0o644, None, id="others-may-read"),
        pytest.param(0o620, "writable by others or the group", id="group-may-write"),
        pytest.param(0o606, "writable by others or the group", id="others-may-write"),
    ],
)
def test_a_file_others_may_write_is_unfit(tmp_path: Path, mode: int, problem: str | None) -> None:
    path = tmp_path / "pacing"
    path.write_text("{}")
    path.chmod(mode)

    found = unfit(path.lstat())

    assert found is None if problem is None else problem in (found or "")


def test_what_is_not_a_regular_file_is_unfit(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo", 0o600)

    assert unfit((tmp_path / "fifo").lstat()) == (
        "must be a regular file of the user running the gateway"
    )
    assert unfit(tmp_path.lstat()) is not None


@pytest.mark.parametrize(
    ("first_byte", "holds"),
    [
        pytest.param(b"", True, id="empty"),
        pytest.param(b"{", True, id="a-table-or-a-torn-one"),
        pytest.param(b"r", False, id="another-file"),
        pytest.param(b"[", False, id="other-json"),
    ],
)
def test_only_an_empty_file_or_a_json_object_holds_a_table(first_byte: bytes, holds: bool) -> None:
    assert holds_a_pacing_table(first_byte) is holds
