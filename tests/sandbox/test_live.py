"""The live sandbox: calls start, are answered and end on a clock, over a still seeded history."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.config import load_sandbox_settings, load_settings
from gateway.sandbox import ACCOUNTS, SandboxOptions, create_sandbox_app
from gateway.sandbox.data import History, StoredCall, generate_history
from gateway.sandbox.live import RETAINED_TICKS, LiveWorld
from tests.servers import free_port, serve

DEMO = ACCOUNTS[0]
CALLS = f"/v1/users/{DEMO.user_id}/calls"
INTERVAL_MS = 3000
# A fixed instant (2026-01-01T00:00:00Z), so the tests do not depend on the clock.
NOW_MS = 1_767_225_600_000
SEEDED = generate_history(20130208, 300)
# Each state's next states, as the upstream's call lifecycle allows them.
NEXT = {
    "started": {"started", "active", "rejected", "error"},
    "active": {"active", "transferring", "completed"},
    "transferring": {"active", "completed"},
    "completed": {"completed"},
    "rejected": {"rejected"},
    "error": {"error"},
}


def live_calls(
    history: History, user_id: str = DEMO.user_id, newest: int | None = None
) -> dict[str, StoredCall]:
    """The live calls, or the `newest` ones (only those can still change)."""
    seeded = SEEDED.users[user_id].by_id
    calls = history.users[user_id].desc[:newest]
    return {c.id: c for c in calls if c.id not in seeded}


def walk(world: LiveWorld, ticks: int, start_ms: int = NOW_MS) -> Iterator[History]:
    for tick in range(ticks):
        yield world.history_at(start_ms + tick * INTERVAL_MS)


def instant_ms(value: object) -> int:
    assert isinstance(value, str)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", value), value
    return int(datetime.fromisoformat(value).timestamp() * 1000)


def test_the_world_is_a_function_of_the_clock() -> None:
    # `serve --sandbox --workers N` mounts one sandbox per worker: started apart, they
    # must still show the same calls at the same instant.
    early = LiveWorld(SEEDED, interval=3)
    early.history_at(NOW_MS - 600_000)
    late = LiveWorld(SEEDED, interval=3)

    for offset in (0, 2999, 3000, 60_000):
        now = NOW_MS + offset
        mine, theirs = early.history_at(now), late.history_at(now)
        for user_id in SEEDED.users:
            assert [c.fields for c in mine.users[user_id].desc] == [
                c.fields for c in theirs.users[user_id].desc
            ]


def test_within_a_tick_nothing_changes_and_ticks_do_change_the_first_page() -> None:
    world = LiveWorld(SEEDED, interval=3)
    tick_start = NOW_MS - NOW_MS % INTERVAL_MS

    assert world.history_at(tick_start) is world.history_at(tick_start + INTERVAL_MS - 1)
    pages = [[c.fields for c in h.users[DEMO.user_id].desc[:10]] for h in walk(world, 20)]
    changed = sum(before != after for before, after in itertools.pairwise(pages))
    # A few calls always move: most ticks change the newest page.
    assert changed >= 10


def test_every_live_call_follows_the_upstream_lifecycle() -> None:
    world = LiveWorld(SEEDED, interval=3)
    seen: dict[str, list[dict[str, Any]]] = {}
    for history in walk(world, 200):
        for call_id, call in live_calls(history, newest=40).items():
            seen.setdefault(call_id, []).append(dict(call.fields))

    outcomes = {lives[-1]["state"] for lives in seen.values()}
    assert {"started", "active", "completed", "rejected"} <= {
        f["state"] for lives in seen.values() for f in lives
    }
    assert {"completed", "rejected"} <= outcomes
    for lives in seen.values():
        for before, after in itertools.pairwise(lives):
            assert after["state"] in NEXT[before["state"]], (before, after)
            # What was set stays set: the call's history only grows.
            for name in ("id", "from", "to", "direction", "startTime", "activeTime"):
                if name in before:
                    assert after[name] == before[name]
        for fields in lives:
            state = fields["state"]
            assert None not in fields.values()
            assert ("activeTime" in fields) == (state in {"active", "transferring", "completed"})
            assert ("endTime" in fields) == (state in {"completed", "rejected", "error"})
            assert ("chargeableDuration" in fields) == (state == "completed")
            assert re.fullmatch(r"c-[a-z0-9]{23}", fields["id"])
            start = instant_ms(fields["startTime"])
            if "activeTime" in fields:
                assert instant_ms(fields["activeTime"]) > start
            if state == "completed":
                active, end = instant_ms(fields["activeTime"]), instant_ms(fields["endTime"])
                assert end > active
                # Billed by the started minute, as the seeded history is.
                billed = fields["chargeableDuration"]
                assert billed % 60 == 0
                assert billed - 60 < (end - active) / 1000 <= billed


def test_a_change_is_stamped_with_the_tick_that_first_shows_it() -> None:
    # The benchmark measures delivery delays from these stamps.
    world = LiveWorld(SEEDED, interval=3)
    previous: dict[str, StoredCall] = {}
    for index, history in enumerate(walk(world, 60)):
        tick_ms = (NOW_MS // INTERVAL_MS + index) * INTERVAL_MS
        for call_id, call in live_calls(history, newest=40).items():
            before = previous.get(call_id)
            if before is None and index > 0:
                assert instant_ms(call.fields["startTime"]) == tick_ms
            elif before is not None and before.fields != call.fields:
                stamps = [
                    instant_ms(call.fields[name])
                    for name in ("startTime", "activeTime", "endTime")
                    if name in call.fields
                ]
                if call.fields["state"] != "transferring" and before.fields["state"] != (
                    "transferring"
                ):
                    assert max(stamps) == tick_ms
        previous = live_calls(history, newest=40)


def test_the_seeded_history_stays_as_it_was() -> None:
    history = LiveWorld(SEEDED, interval=3).history_at(NOW_MS)

    for user_id, seeded in SEEDED.users.items():
        live = history.users[user_id]
        old = [c for c in live.desc if c.id in seeded.by_id]
        assert old == list(seeded.desc)
        assert list(live.asc) == list(reversed(list(live.desc)))
        assert all(live.by_id[c.id] is c for c in live.desc)
        assert len(live.by_id) == len(live.desc)
        keys = [(-c.start_ms, c.id) for c in live.desc]
        assert keys == sorted(keys)
        # Pages are slices of the whole, across the seam between live and seeded calls.
        seam = len(live.desc) - len(seeded.desc)
        assert list(live.desc[seam - 3 : seam + 3]) == list(live.desc)[seam - 3 : seam + 3]
        assert list(live.asc[-5:]) == list(live.asc)[-5:]


def test_only_the_retained_ticks_are_kept() -> None:
    world = LiveWorld(SEEDED, interval=3)
    first = live_calls(world.history_at(NOW_MS))
    later = live_calls(world.history_at(NOW_MS + (RETAINED_TICKS + 5) * INTERVAL_MS))

    tick = NOW_MS // INTERVAL_MS + RETAINED_TICKS + 5
    oldest = (tick - RETAINED_TICKS + 1) * INTERVAL_MS
    assert 0 < len(later) <= RETAINED_TICKS
    assert all(call.start_ms >= oldest for call in later.values())
    dropped = {i for i, c in first.items() if c.start_ms < oldest}
    assert dropped
    assert not dropped & set(later)


# -- settings: live in the commands, still in the suite's own sandboxes --


def test_the_commands_are_live_by_default_and_zero_keeps_them_still() -> None:
    assert load_sandbox_settings({}).live_interval == 3.0
    assert load_settings({}).sandbox_live_interval == 3.0
    still = {"GATEWAY_SANDBOX_LIVE_INTERVAL": "0"}
    assert load_sandbox_settings(still).live_interval == 0
    assert load_settings(still).sandbox_live_interval == 0
    assert SandboxOptions().live_interval == 0  # create_sandbox_app(): the tests' sandbox


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("0.05", id="too-fast"),
        pytest.param("-1", id="negative"),
        pytest.param("inf", id="infinite"),
        pytest.param("often", id="not-a-number"),
    ],
)
def test_a_bad_live_interval_names_the_setting(value: str) -> None:
    from gateway.config import SettingsError

    environ = {"GATEWAY_SANDBOX_LIVE_INTERVAL": value}
    for load in (load_sandbox_settings, load_settings):
        with pytest.raises(SettingsError, match="GATEWAY_SANDBOX_LIVE_INTERVAL"):
            load(environ)


# -- over HTTP --


def get(url: str, path: str = CALLS, **params: Any) -> httpx.Response:
    return httpx.get(url + path, params=params, auth=(DEMO.token, DEMO.secret), timeout=5)


def test_a_live_sandbox_serves_its_changes_over_http() -> None:
    with serve(create_sandbox_app(SandboxOptions(live_interval=0.1, calls_per_user=50))) as url:
        first = get(url, size=5).json()
        deadline = time.monotonic() + 5
        while (latest := get(url, size=5).json()) == first:
            assert time.monotonic() < deadline, "the first page never changed"
            time.sleep(0.05)
        newest = latest[0]
        one = get(url, f"{CALLS}/{newest['id']}").json()
        events = get(url, f"{CALLS}/{newest['id']}/events").json()
        ascending = get(url, size=5, sortOrder="asc").json()

    assert instant_ms(newest["startTime"]) > time.time() * 1000 - 3_600_000
    assert one["id"] == newest["id"]
    assert events[0]["name"] == "create"
    # The oldest calls are the seeded ones, untouched.
    assert all(c["startTime"] < "2018" for c in ascending)


def test_a_still_sandbox_never_changes() -> None:
    with serve(create_sandbox_app(SandboxOptions(calls_per_user=50))) as url:
        first = get(url, size=50).json()
        time.sleep(0.3)
        again = get(url, size=50).json()

    assert again == first
    assert all(call["startTime"] < "2018" for call in first)


def test_the_demo_sandbox_is_live() -> None:
    port = free_port()
    settings = load_settings({"GATEWAY_SANDBOX": "true", "GATEWAY_PORT": str(port)})
    with serve(create_app(settings), port=port) as url:
        newest = get(f"{url}/sandbox", size=1).json()[0]

    assert instant_ms(newest["startTime"]) > time.time() * 1000 - 3_600_000
