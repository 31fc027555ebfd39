"""Opened: a collaborator the app's lifespan opens after its users are built."""

from __future__ import annotations

import pytest

from gateway.opened import Opened


def test_a_collaborator_is_read_between_its_opening_and_its_closing() -> None:
    hub: Opened[str] = Opened("the live hub")
    before = hub.current
    hub.open("a hub")
    opened = (hub.current, hub.get())
    hub.close()

    assert (before, opened, hub.current) == (None, ("a hub", "a hub"), None)


def test_reading_one_not_open_says_which_and_why() -> None:
    hub: Opened[str] = Opened("the live hub")

    with pytest.raises(RuntimeError, match="the live hub is not open"):
        hub.get()
