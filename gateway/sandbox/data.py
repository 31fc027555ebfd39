"""The sandbox's accounts and its seeded, deterministic call history.

Everything here is a pure function of the seed: two sandboxes started with the same seed
serve byte-identical data, which is what lets benchmarks and tests compare runs.
"""

from __future__ import annotations

import base64
import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

__all__ = [
    "ACCOUNTS",
    "STATES",
    "Account",
    "History",
    "StoredCall",
    "UserHistory",
    "call_events",
    "format_instant",
    "generate_history",
]


@dataclass(frozen=True)
class Account:
    """A Catapult account: the user id in the URL and the Basic credentials that open it."""

    user_id: str
    token: str
    secret: str


def credential_headers(account: Account) -> dict[str, str]:
    """The request headers that carry an account's credentials."""
    token = base64.b64encode(f"{account.token}:{account.secret}".encode()).decode()
    return {"Authorization": f"Basic {token}", "X-Catapult-User-Id": account.user_id}


ACCOUNTS: tuple[Account, ...] = (
    Account("u-demo", "t-demo", "s-demo-secret"),
    Account("u-second", "t-second", "s-second-secret"),
)

# The five documented states plus `error`, which only the C# SDK's enum knows about.
STATES: tuple[str, ...] = ("started", "rejected", "active", "completed", "transferring", "error")
_STATE_WEIGHTS = (5, 10, 5, 72, 4, 1.5)

_ALNUM = string.ascii_lowercase + string.digits
_SIP_URIS = (
    "sip:alice@example.com",
    "sip:bob@example.com",
    "sip:carol@sip.example.org",
    "sip:support@pbx.example.net",
)
_CALLBACK_METHODS = ("GET", "POST", "get", "post", None)
_HOUR_OFFSETS = (-5, -2, -1, 1, 2, 9)
_HISTORY_START = datetime(2013, 1, 1, tzinfo=UTC)
_HISTORY_START_MS = int(_HISTORY_START.timestamp() * 1000)
_HISTORY_SPAN_MS = 4 * 365 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class StoredCall:
    """One call as the sandbox stores it: the upstream's JSON and the instants it was made from.

    Not the gateway's `calls.CallRecord`, on purpose: the sandbox imitates the upstream, so
    it writes the upstream's JSON (in its timestamp variants and spellings) from its own
    numbers and never reads it back with the gateway's parser. A bug in that parser can then
    never be mirrored by the sandbox, and the tests that compare the two can see it.

    `fields` is the JSON object the list endpoint answers, except that `events` holds a
    path (`/v1/users/.../events`): the absolute URL depends on the base URL the client used.
    The instants are epoch milliseconds: `start_ms` (the sort key) of `startTime`, and
    `active_ms` and `end_ms` of `activeTime` and `endTime` where the call has them.
    """

    id: str
    user_id: str
    start_ms: int
    fields: Mapping[str, object]
    active_ms: int | None = None
    end_ms: int | None = None


@dataclass(frozen=True, slots=True)
class UserHistory:
    """One user's calls, pre-sorted both ways so a page is a slice."""

    asc: Sequence[StoredCall]
    desc: Sequence[StoredCall]
    by_id: Mapping[str, StoredCall]


@dataclass(frozen=True, slots=True)
class History:
    """Every user's calls, keyed by user id."""

    seed: int
    users: Mapping[str, UserHistory]


def _token(rng: random.Random, prefix: str, k: int = 20) -> str:
    return prefix + "".join(rng.choices(_ALNUM, k=k))


# Call and event ids are `c-` / `ce-` and 23 lower-case letters and digits, like the
# documented ones (`c-xytsl6nfcayzsxdbqq7q36i`).
ID_CHARS = 23


def _call_id(rng: random.Random, tail: random.Random) -> str:
    # The first 20 characters come from the history's generator as they always did, so
    # the rest of the history (states, numbers, times) is what it was before ids grew to
    # the documented length; the last 3 come from a generator of their own.
    return _token(rng, "c-") + "".join(tail.choices(_ALNUM, k=ID_CHARS - 20))


def format_instant(ms: int) -> str:
    """Epoch milliseconds as the documented `2013-02-08T13:15:47.587Z`."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class _Stamp:
    """Formats instants in one of the timestamp variants the real API mixes."""

    variant: int  # 0: milliseconds + Z, 1: seconds + Z, 2: seconds + hour-only offset
    offset_hours: int

    def format(self, ms: int) -> str:
        """`ms` after the history's start; the caller drops what the variant cannot show."""
        moment = _HISTORY_START + timedelta(milliseconds=ms)
        if self.variant == 0:
            return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
        if self.variant == 1:
            return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        local = moment.astimezone(timezone(timedelta(hours=self.offset_hours)))
        return local.strftime("%Y-%m-%dT%H:%M:%S") + f"{self.offset_hours:+03d}"


class _Pools:
    """The numbers, bridges and conferences one user's calls draw from."""

    def __init__(self, rng: random.Random) -> None:
        numbers = rng.sample(range(10_000), 60)
        e164 = [f"+1919555{n:04d}" for n in numbers]
        self.own = e164[:12]
        self.remote = e164[12:]
        self.bridges = [_token(rng, "brg-") for _ in range(6)]
        self.conferences = [_token(rng, "conf-") for _ in range(4)]

    def endpoint(self, rng: random.Random, own: bool) -> str:
        if rng.random() < 0.06:
            return rng.choice(_SIP_URIS)
        return rng.choice(self.own if own else self.remote)


def _make_call(
    rng: random.Random, pools: _Pools, user_id: str, call_id: str, index: int
) -> StoredCall:
    # The first calls of every user cover each state and timestamp variant, so even a
    # small history shows all of them.
    state = STATES[index] if index < len(STATES) else rng.choices(STATES, _STATE_WEIGHTS)[0]
    variant = index % 3 if index < 3 else rng.choices((0, 1, 2), (80, 15, 5))[0]
    stamp = _Stamp(variant, rng.choice(_HOUR_OFFSETS))
    start = rng.randrange(_HISTORY_SPAN_MS)
    if variant != 0:
        start -= start % 1000
    direction = rng.choice(("in", "out"))
    fields: dict[str, object] = {
        "id": call_id,
        "direction": direction,
        "from": pools.endpoint(rng, own=direction == "out"),
        "to": pools.endpoint(rng, own=direction == "in"),
    }
    if rng.random() < 0.9:
        recording = rng.random() < 0.25
        fields["recordingEnabled"] = recording
        if recording:
            fields["recordingFileFormat"] = rng.choice(("wav", "mp3"))
            if rng.random() < 0.5:
                fields["transcriptionEnabled"] = rng.random() < 0.6
    fields["callbackUrl"] = (
        "" if rng.random() < 0.3 else f"https://callbacks.example.com/catapult/{user_id}/calls"
    )
    method = rng.choice(_CALLBACK_METHODS)
    if method is not None:
        fields["callbackHttpMethod"] = method
    if rng.random() < 0.8:
        fields["callbackTimeout"] = rng.choice((5000, 15000, 30000))
    if rng.random() < 0.2:
        fields["fallbackUrl"] = "https://fallback.example.com/catapult/calls"
    fields["state"] = state
    fields["startTime"] = stamp.format(start)
    active = start + rng.randrange(1000, 30_000)
    end = active + rng.randrange(1000, 3_600_000)
    if variant != 0:
        active -= active % 1000
        end -= end % 1000
    active_ms = end_ms = None
    if state in ("active", "transferring", "completed"):
        fields["activeTime"] = stamp.format(active)
        active_ms = _HISTORY_START_MS + active
    if state == "completed":
        fields["endTime"] = stamp.format(end)
        end_ms = _HISTORY_START_MS + end
        billed_seconds = (end - active + 999) // 1000
        fields["chargeableDuration"] = -(-billed_seconds // 60) * 60
    elif state in ("rejected", "error"):
        fields["endTime"] = stamp.format(active)
        end_ms = _HISTORY_START_MS + active
    roll = rng.random()
    if roll < 0.1:
        fields["bridgeId"] = rng.choice(pools.bridges)
    elif roll < 0.2:
        fields["conferenceId"] = rng.choice(pools.conferences)
    fields["events"] = f"/v1/users/{user_id}/calls/{call_id}/events"
    if rng.random() < 0.4:
        count = rng.randint(1, 5)
        fields["sipHeaders"] = {
            f"X-Header-{n}": f"value-{rng.randrange(1000)}" for n in range(1, count + 1)
        }
    return StoredCall(
        id=call_id,
        user_id=user_id,
        start_ms=_HISTORY_START_MS + start,
        fields=fields,
        active_ms=active_ms,
        end_ms=end_ms,
    )


def _user_history(seed: int, user_id: str, count: int) -> UserHistory:
    # A string seed is hashed with SHA-512, so it is stable across processes.
    rng = random.Random(f"{seed}:{user_id}")
    tail = random.Random(f"{seed}:{user_id}:ids")
    pools = _Pools(rng)
    calls: list[StoredCall] = []
    ids: set[str] = set()
    while len(calls) < count:
        call_id = _call_id(rng, tail)
        if call_id in ids:
            continue
        ids.add(call_id)
        calls.append(_make_call(rng, pools, user_id, call_id, len(calls)))
    asc = tuple(sorted(calls, key=lambda call: (call.start_ms, call.id)))
    desc = tuple(sorted(calls, key=lambda call: (-call.start_ms, call.id)))
    return UserHistory(asc=asc, desc=desc, by_id={call.id: call for call in calls})


def generate_history(
    seed: int, calls_per_user: int, accounts: tuple[Account, ...] = ACCOUNTS
) -> History:
    """Generate `calls_per_user` calls for every account, deterministically from `seed`."""
    return History(
        seed=seed,
        users={
            account.user_id: _user_history(seed, account.user_id, calls_per_user)
            for account in accounts
        },
    )


def call_events(call: StoredCall, seed: int) -> list[dict[str, object]]:
    """The call's events, derived from the call and the seed alone (made on demand).

    `time` is epoch milliseconds here; the list endpoint answers it as an ISO string and
    the get-one-event endpoint as the number (see the app module's docstring).
    """
    rng = random.Random(f"{seed}:{call.id}:events")
    fields = call.fields
    events: list[dict[str, object]] = []

    def add(name: str, time_ms: int, data: str | None = None) -> None:
        event: dict[str, object] = {
            "id": _token(rng, "ce-", ID_CHARS),
            "time": time_ms,
            "name": name,
        }
        if data is not None:
            event["data"] = data
        events.append(event)

    add("create", call.start_ms)
    if call.active_ms is not None:
        add("answer", call.active_ms)
        for step in range(rng.randint(0, 3)):
            name, data = rng.choice((("speak", "done"), ("dtmf", "5"), ("playback", "done")))
            add(name, call.active_ms + 500 * (step + 1), data)
    if call.end_ms is not None:
        reasons = {"rejected": "CALL_REJECTED", "error": "INTERNAL_SERVER_ERROR"}
        add("hangup", call.end_ms, reasons.get(str(fields["state"]), "NORMAL_CLEARING"))
    return events
