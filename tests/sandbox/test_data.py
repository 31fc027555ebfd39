"""The sandbox's seeded history: deterministic, varied as the upstream is, and consistent.

What the app serves of it (pages, filters, events over HTTP): tests/sandbox/test_app.py.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping

import pytest

from gateway.sandbox import ACCOUNTS, SandboxOptions
from gateway.sandbox.data import (
    ID_CHARS,
    STATES,
    History,
    StoredCall,
    call_events,
    credential_headers,
    format_instant,
    generate_history,
)

DEMO, SECOND = ACCOUNTS[0], ACCOUNTS[1]
DEFAULTS = SandboxOptions()


@pytest.fixture(scope="module")
def history() -> History:
    """The history `serve --sandbox` serves: its seed and size."""
    return generate_history(DEFAULTS.seed, DEFAULTS.calls_per_user)


@pytest.fixture(scope="module")
def demo_calls(history: History) -> list[Mapping[str, object]]:
    return [call.fields for call in history.users[DEMO.user_id].asc]


def test_credential_headers_carry_basic_credentials_and_the_user_id() -> None:
    headers = credential_headers(DEMO)

    scheme, encoded = headers["Authorization"].split(" ")
    assert (scheme, base64.b64decode(encoded).decode()) == ("Basic", "t-demo:s-demo-secret")
    assert headers["X-Catapult-User-Id"] == "u-demo"


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        pytest.param(0, "1970-01-01T00:00:00.000Z", id="epoch"),
        pytest.param(1360329347587, "2013-02-08T13:15:47.587Z", id="documented-example"),
        pytest.param(1360329347007, "2013-02-08T13:15:47.007Z", id="leading-zeros"),
    ],
)
def test_instants_are_written_as_documented(ms: int, text: str) -> None:
    assert format_instant(ms) == text


def test_the_same_seed_gives_the_same_history_and_users_differ() -> None:
    def fields(seed: int, user_id: str) -> list[Mapping[str, object]]:
        return [call.fields for call in generate_history(seed, 300).users[user_id].asc]

    first = fields(7, DEMO.user_id)
    assert fields(7, DEMO.user_id) == first
    assert fields(8, DEMO.user_id) != first
    assert not {c["id"] for c in first} & {c["id"] for c in fields(7, SECOND.user_id)}


def test_every_account_gets_its_calls_sorted_both_ways(history: History) -> None:
    assert set(history.users) == {account.user_id for account in ACCOUNTS}
    for user_id, user in history.users.items():
        assert len(user.asc) == len(user.by_id) == DEFAULTS.calls_per_user
        assert [(c.start_ms, c.id) for c in user.asc] == sorted(
            (c.start_ms, c.id) for c in user.asc
        )
        assert [c.start_ms for c in user.desc] == sorted(
            (c.start_ms for c in user.asc), reverse=True
        )
        assert all(call.user_id == user_id for call in user.asc)
        assert all(user.by_id[call.id] is call for call in user.asc)


def test_the_history_varies_as_the_upstream_does(demo_calls: list[Mapping[str, object]]) -> None:
    calls = demo_calls
    assert {c["state"] for c in calls} == set(STATES)
    assert {c["direction"] for c in calls} == {"in", "out"}
    ends = [str(c[side]) for c in calls for side in ("from", "to")]
    assert any(e.startswith("sip:") for e in ends)
    assert all(e.startswith("sip:") or re.fullmatch(r"\+1\d{10}", e) for e in ends)
    assert {c.get("callbackHttpMethod") for c in calls} == {"GET", "POST", "get", "post", None}
    assert "" in {c["callbackUrl"] for c in calls}
    for optional in ("sipHeaders", "bridgeId", "conferenceId", "fallbackUrl", "recordingEnabled"):
        present = sum(optional in c for c in calls)
        assert 0 < present < len(calls), optional
    assert all(1 <= len(c["sipHeaders"]) <= 5 for c in calls if "sipHeaders" in c)  # type: ignore[arg-type]
    assert len({c["bridgeId"] for c in calls if "bridgeId" in c}) < 10
    variants = {
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d",
    }
    for variant in variants:
        assert any(re.fullmatch(variant, str(c["startTime"])) for c in calls), variant


def test_each_calls_fields_agree_with_its_state(demo_calls: list[Mapping[str, object]]) -> None:
    for call in demo_calls:
        assert None not in call.values()
        state = call["state"]
        assert ("activeTime" in call) == (state in {"active", "transferring", "completed"})
        assert ("chargeableDuration" in call) == (state == "completed")
        assert ("endTime" in call) == (state in {"completed", "rejected", "error"})
        assert ("recordingFileFormat" in call) == (call.get("recordingEnabled") is True)
        # As the documented ids (`c-xytsl6nfcayzsxdbqq7q36i`): `c-` and 23 characters.
        assert re.fullmatch(rf"c-[a-z0-9]{{{ID_CHARS}}}", str(call["id"]))


def test_the_stored_instants_are_the_calls_own(history: History) -> None:
    for call in history.users[DEMO.user_id].asc:
        assert (call.active_ms is not None) == ("activeTime" in call.fields)
        assert (call.end_ms is not None) == ("endTime" in call.fields)
        assert call.start_ms <= (call.active_ms or call.start_ms) <= (call.end_ms or 2**63)


def _events(call: StoredCall, seed: int = DEFAULTS.seed) -> list[dict[str, object]]:
    return call_events(call, seed)


def test_events_follow_the_calls_life(history: History) -> None:
    for call in history.users[DEMO.user_id].asc[:300]:
        events = _events(call)
        names = [event["name"] for event in events]
        assert names[0] == "create"
        assert events[0]["time"] == call.start_ms
        assert ("answer" in names) == (call.active_ms is not None)
        assert (names[-1] == "hangup") == (call.end_ms is not None)
        assert [event["time"] for event in events] == sorted(event["time"] for event in events)  # type: ignore[type-var]
        assert all(re.fullmatch(rf"ce-[a-z0-9]{{{ID_CHARS}}}", str(e["id"])) for e in events)


def test_events_are_made_again_alike_from_the_call_and_the_seed(history: History) -> None:
    call = history.users[DEMO.user_id].asc[0]

    assert _events(call) == _events(call)
    assert _events(call) != _events(call, seed=DEFAULTS.seed + 1)
