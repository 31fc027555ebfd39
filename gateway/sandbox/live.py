"""The live sandbox: calls start, are answered and end while a client watches.

On top of the seeded history, every `interval` seconds (a "tick") a new call may start,
ringing calls are answered (or rejected, or fail) and active calls end, as the real
API's list shows them: `started` with only `startTime`; `active` with `activeTime`;
`completed` with `endTime` and `chargeableDuration` (billed by the started minute, like
the seeded history); `rejected`/`error` with `endTime` and no `activeTime`. Fields are
omitted until they apply, never null (docs/upstream.md).

The world is a pure function of the seed and the clock: tick `k` is the instant
`k * interval` since the epoch, each tick's draws come from a generator seeded with
(seed, user, tick), and a call's whole life is drawn when it starts. So every process
serving the same seed (`serve --sandbox --workers N` mounts one sandbox per worker)
shows the same calls at the same moment, and a restart changes nothing. A call's
timestamps are the ticks at which the sandbox started showing each change, so a client
can tell from the data alone how late it saw one. Only the last `RETAINED_TICKS` ticks
are kept (an hour at the default 3 s), which bounds memory and the work of catching up
after an idle spell; older live calls leave the list, as if the account's retention
dropped them.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import overload

from gateway.sandbox.data import (
    ID_CHARS,
    History,
    StoredCall,
    UserHistory,
    format_instant,
)

__all__ = ["RETAINED_TICKS", "LiveWorld"]

RETAINED_TICKS = 1200
# About every other tick a call starts; with the durations below a few calls are always
# ringing or in progress: enough to watch, few enough to follow.
BIRTH_CHANCE = 0.6
RING_TICKS = (1, 2)
TALK_TICKS = (2, 12)
# How a ringing call ends: answered, rejected, or the `error` state the C# SDK knows.
OUTCOMES = (("completed", 0.82), ("rejected", 0.13), ("error", 0.05))
TRANSFER_CHANCE = 0.1
# Fields a new call takes from one of the account's seeded calls, so that its numbers,
# callback settings, bridges and conferences are the account's own (and filtered
# subscriptions see changes too).
_COPIED = (
    "direction",
    "from",
    "to",
    "recordingEnabled",
    "recordingFileFormat",
    "transcriptionEnabled",
    "callbackUrl",
    "callbackHttpMethod",
    "callbackTimeout",
    "fallbackUrl",
)
_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"


# A tick's instant is written once for every call that changes in it.
_instant = lru_cache(maxsize=4096)(format_instant)


@dataclass(frozen=True, slots=True)
class _Plan:
    """One live call's whole life, drawn at the tick it starts."""

    id: str
    user_id: str
    born: int
    ends_ringing: int  # answered, rejected or failed at this tick
    ended: int  # completed at this tick (== ends_ringing unless answered)
    outcome: str  # completed | rejected | error
    transfer: int | None  # the tick it spends `transferring`, if any
    template: Mapping[str, object]


def _draw(rng: random.Random, user: UserHistory, user_id: str, tick: int, taken: set[str]) -> _Plan:
    call_id = "c-" + "".join(rng.choices(_ALNUM, k=ID_CHARS))
    while call_id in taken or call_id in user.by_id:
        call_id = "c-" + "".join(rng.choices(_ALNUM, k=ID_CHARS))
    ring = rng.randint(*RING_TICKS)
    outcome = rng.choices([o for o, _ in OUTCOMES], [w for _, w in OUTCOMES])[0]
    talk = rng.randint(*TALK_TICKS) if outcome == "completed" else 0
    transfer = None
    if talk > 2 and rng.random() < TRANSFER_CHANCE:
        transfer = tick + ring + rng.randrange(1, talk - 1)
    template = rng.choice(user.asc).fields if user.asc else {"direction": "out"}
    extras: dict[str, object] = {k: template[k] for k in _COPIED if k in template}
    for optional in ("bridgeId", "conferenceId", "sipHeaders"):
        if optional in template:
            extras[optional] = template[optional]
    return _Plan(
        id=call_id,
        user_id=user_id,
        born=tick,
        ends_ringing=tick + ring,
        ended=tick + ring + talk,
        outcome=outcome,
        transfer=transfer,
        template=extras,
    )


def _record(plan: _Plan, tick: int, interval_ms: int) -> StoredCall:
    """The call as the list shows it at `tick`."""

    def at(k: int) -> str:
        return _instant(k * interval_ms)

    template = plan.template
    fields: dict[str, object] = {"id": plan.id}
    fields.update((k, template[k]) for k in _COPIED if k in template)
    if tick < plan.ends_ringing:
        state = "started"
    elif plan.outcome != "completed":
        state = plan.outcome
    elif tick >= plan.ended:
        state = "completed"
    else:
        state = "transferring" if tick == plan.transfer else "active"
    fields["state"] = state
    fields["startTime"] = at(plan.born)
    if state in ("active", "transferring", "completed"):
        fields["activeTime"] = at(plan.ends_ringing)
    if state == "completed":
        fields["endTime"] = at(plan.ended)
        billed_seconds = -(-(plan.ended - plan.ends_ringing) * interval_ms // 1000)
        fields["chargeableDuration"] = -(-billed_seconds // 60) * 60
    elif state in ("rejected", "error"):
        fields["endTime"] = at(plan.ends_ringing)
    for optional in ("bridgeId", "conferenceId"):
        if optional in template:
            fields[optional] = template[optional]
    fields["events"] = f"/v1/users/{plan.user_id}/calls/{plan.id}/events"
    if "sipHeaders" in template:
        fields["sipHeaders"] = template["sipHeaders"]
    return StoredCall(
        id=plan.id, user_id=plan.user_id, start_ms=plan.born * interval_ms, fields=fields
    )


class _Joined(Sequence[StoredCall]):
    """Two sorted runs read as one: the live calls are all newer than the seeded ones,
    so a page is a slice of their concatenation, made without copying the history."""

    def __init__(self, head: Sequence[StoredCall], tail: Sequence[StoredCall]) -> None:
        self._head = head
        self._tail = tail

    def __len__(self) -> int:
        return len(self._head) + len(self._tail)

    @overload
    def __getitem__(self, index: int) -> StoredCall: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[StoredCall]: ...

    def __getitem__(self, index: int | slice) -> StoredCall | Sequence[StoredCall]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            split = len(self._head)
            return [
                *self._head[min(start, split) : min(stop, split)],
                *self._tail[max(start - split, 0) : max(stop - split, 0)],
            ]
        if index < 0:
            index += len(self)
        split = len(self._head)
        return self._head[index] if index < split else self._tail[index - split]

    def __iter__(self) -> Iterator[StoredCall]:
        yield from self._head
        yield from self._tail


class _Overlay(Mapping[str, StoredCall]):
    """The seeded calls by id with the live ones on top, without copying the seeded map."""

    def __init__(self, live: Mapping[str, StoredCall], seeded: Mapping[str, StoredCall]) -> None:
        self._live = live
        self._seeded = seeded

    def __getitem__(self, key: str) -> StoredCall:
        found = self._live.get(key)
        return self._seeded[key] if found is None else found

    def __len__(self) -> int:
        return len(self._live) + len(self._seeded)

    def __iter__(self) -> Iterator[str]:
        yield from self._live
        yield from self._seeded


class _LiveUser:
    """One account's live calls: the plans of the retained ticks and their records."""

    def __init__(self, user_id: str, seeded: UserHistory) -> None:
        self.user_id = user_id
        self.seeded = seeded
        self.plans: deque[_Plan] = deque()
        self.drawn_until: int | None = None
        # A finished call never changes again: its record is made once.
        self.finished: dict[str, StoredCall] = {}

    def advance(self, seed: int, tick: int) -> None:
        first = tick - RETAINED_TICKS + 1
        start = first if self.drawn_until is None else max(first, self.drawn_until + 1)
        taken = {plan.id for plan in self.plans}
        for k in range(start, tick + 1):
            rng = random.Random(f"{seed}:{self.user_id}:live:{k}")
            if rng.random() < BIRTH_CHANCE:
                plan = _draw(rng, self.seeded, self.user_id, k, taken)
                taken.add(plan.id)
                self.plans.append(plan)
        self.drawn_until = tick if self.drawn_until is None else max(tick, self.drawn_until)
        while self.plans and self.plans[0].born < first:
            self.finished.pop(self.plans.popleft().id, None)

    def history(self, tick: int, interval_ms: int) -> UserHistory:
        live: list[StoredCall] = []
        for plan in self.plans:
            if plan.born > tick:
                break
            record = self.finished.get(plan.id)
            if record is None:
                record = _record(plan, tick, interval_ms)
                if tick >= plan.ended:
                    self.finished[plan.id] = record
            live.append(record)
        seeded = self.seeded
        newest = live[::-1]
        if seeded.desc and live and seeded.desc[0].start_ms >= live[0].start_ms:
            # Only with a clock set before the seeded history ends (2017): merge instead.
            asc = tuple(sorted([*seeded.asc, *live], key=lambda c: (c.start_ms, c.id)))
            desc = tuple(sorted([*seeded.desc, *live], key=lambda c: (-c.start_ms, c.id)))
            return UserHistory(asc, desc, _Overlay({c.id: c for c in live}, seeded.by_id))
        return UserHistory(
            asc=_Joined(seeded.asc, live),
            desc=_Joined(newest, seeded.desc),
            by_id=_Overlay({call.id: call for call in live}, seeded.by_id),
        )


class LiveWorld:
    """The seeded history plus the live calls, as they stand at a given instant."""

    def __init__(self, seeded: History, *, interval: float) -> None:
        if interval <= 0:
            raise ValueError("the live sandbox needs a positive interval")
        self.seeded = seeded
        self.interval_ms = max(1, round(interval * 1000))
        self._users = {user_id: _LiveUser(user_id, h) for user_id, h in seeded.users.items()}
        self._tick: int | None = None
        self._history = seeded

    def tick_at(self, now_ms: float) -> int:
        """The tick in force at `now_ms` (epoch milliseconds)."""
        return int(now_ms // self.interval_ms)

    def history_at(self, now_ms: float) -> History:
        """Every account's calls at `now_ms`: the same object until the next tick."""
        tick = self.tick_at(now_ms)
        if tick != self._tick:
            for user in self._users.values():
                user.advance(self.seeded.seed, tick)
            self._history = History(
                seed=self.seeded.seed,
                users={
                    user_id: user.history(tick, self.interval_ms)
                    for user_id, user in self._users.items()
                },
            )
            self._tick = tick
        return self._history
