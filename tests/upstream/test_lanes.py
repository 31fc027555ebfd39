"""Pacing lanes by credential pair: callers without the secret cannot take its owner's slots.

The reviewer's scenario: four loops send the owner's API token with a wrong secret while
the owner asks once a second. Keyed by the token alone, the owner got 15 of 15
`RATE_LIMITED` over 15 s; now the owner's accepted pair queues freely, a pair just refused
is answered here, and the token's new pairs probe one at a time, on the account's schedule.
Under such an attack an accepted owner keeps at least every other slot of the account's
one request a second (a wrong-secret probe may take the others).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import itertools
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from gateway.calls import ListQuery
from gateway.credentials import Credentials
from gateway.errors import RateLimited, Unauthenticated
from gateway.sandbox import credential_headers
from gateway.upstream.keys import KeyedHashes
from gateway.upstream.lanes import REJECTED_SECONDS, CredentialLanes, Refusal, Remembered
from gateway.upstream.pacing import MonotonicClock, Pacer
from gateway.upstream.service import CatapultService
from gateway.upstream.tally import UpstreamTally
from tests.conftest import DEMO, GatewayFactory, Sandbox
from tests.upstream.test_pacing import (
    RateLimitedUpstream,
    VirtualClock,
    ask,
    gaps,
    paced_service,
)
from tests.upstream.test_service import RecordingMetrics

OWNER = credential_headers(DEMO)
ATTACKERS = 4
# The owner asks OWNER_REQUESTS times, every OWNER_EVERY seconds. Every other slot: the
# account's one request a second is shared with at most one wrong-secret probe at a time,
# so an owner asking once a second alone would already fill it (and wait past the queue
# bound when a probe takes a slot); the owner keeps at least every other one.
OWNER_REQUESTS = 4
OWNER_EVERY = 2.0


def wrong(secret: str) -> dict[str, str]:
    basic = base64.b64encode(f"{DEMO.token}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {basic}", "X-Catapult-User-Id": DEMO.user_id}


def page(n: int) -> dict[str, str]:
    return {"query": f"{{ calls(page: {n}, size: 1) {{ id }} }}"}


def codes(body: dict[str, Any]) -> list[str]:
    return [error["extensions"]["code"] for error in body.get("errors", [])]


class AccountUpstream:
    """A fake Catapult on the virtual clock: the owner's pair (the demo token and secret)
    is served one request a second, the rest answered 429 (as the sandbox's `rate_limit`
    fault does); any other secret is answered 401 before the limit is looked at, as the
    sandbox does. Records each request's time and status."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self._next_allowed = 0.0
        self.requests: list[tuple[float, int]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        now = self._clock.now()
        if request.headers["authorization"] != OWNER["Authorization"]:
            self.requests.append((now, 401))
            return httpx.Response(401, json={"code": "authentication-failed"})
        if now < self._next_allowed:
            self.requests.append((now, 429))
            return httpx.Response(
                429, json={"code": "rate-limit-reached"}, headers={"Retry-After": "1"}
            )
        self._next_allowed = now + 1.0
        self.requests.append((now, 200))
        return httpx.Response(200, json=[{"id": f"c-{len(self.requests)}", "state": "completed"}])

    def statuses(self) -> list[int]:
        return [status for _, status in self.requests]


def signed(headers: dict[str, str]) -> Credentials:
    """`headers`' credentials as the gateway reads them: on the demo token's account,
    whatever the secret (the token is what the upstream and the pacing limit)."""
    return Credentials(
        authorization=headers["Authorization"], user_id=DEMO.user_id, token=DEMO.token
    )


# What one attacker's request costs it between answers (its round trip): the attackers
# keep their loops going on the virtual clock without spinning in one instant.
ROUND_TRIP = 0.01


async def attack_while_the_owner_asks(
    built: CatapultService, clock: VirtualClock, secrets: Any
) -> tuple[list[str | RateLimited], list[str], float]:
    """The owner's answers (a call id, or the refusal; one every OWNER_EVERY seconds),
    the attackers' codes, and how long the attack lasted (virtual seconds)."""
    owner = signed(OWNER)
    owner_answers: list[str | RateLimited] = []
    attacker_codes: list[str] = []
    # The owner has used the gateway before the attack starts.
    _, first = await ask(built, clock, owner, 0)
    assert isinstance(first, str)
    stop = asyncio.Event()

    async def attacker() -> None:
        while not stop.is_set():
            try:
                await built.list_calls(
                    signed(wrong(next(secrets))),
                    ListQuery(page=0, size=1),
                    deadline=time.monotonic() + 60,
                    tally=UpstreamTally(),
                )
            except (Unauthenticated, RateLimited) as exc:
                attacker_codes.append(exc.code)
            await clock.sleep(ROUND_TRIP)

    began = clock.now()
    loops = [asyncio.ensure_future(attacker()) for _ in range(ATTACKERS)]
    await clock.sleep(0.5)  # the attack is under way
    for n in range(1, OWNER_REQUESTS + 1):
        owner_answers.append((await ask(built, clock, owner, n))[1])
        await clock.sleep(OWNER_EVERY)
    stop.set()
    await asyncio.gather(*loops)
    return owner_answers, attacker_codes, clock.now() - began


@pytest.mark.parametrize(
    ("secrets", "most_401s"),
    [
        # Refused once, then answered here for REJECTED_SECONDS.
        pytest.param(lambda: itertools.repeat("wrong"), 1, id="one-wrong-secret"),
        # A new pair each time: one probes at a time, in the account's slots, the
        # others are refused at the token's gate (None: one a second of the attack, and
        # one more).
        pytest.param(
            lambda: (f"wrong-{n}" for n in itertools.count()), None, id="a-new-secret-each-time"
        ),
    ],
)
def test_callers_without_the_secret_cannot_take_the_owners_slots(
    secrets: Any, most_401s: int | None
) -> None:
    # On the virtual clock (the pacer's, the pair tables' and the attackers'): the
    # owner's queue bound (2 s, the default) is measured in the pacer's own time, so a
    # loaded machine neither breaks it nor hides a wait past it.
    assert OWNER_REQUESTS * OWNER_EVERY + 1 < REJECTED_SECONDS
    clock = VirtualClock()
    upstream = AccountUpstream(clock)
    built = paced_service(upstream, clock, RecordingMetrics(), queue_timeout=2)

    async def scenario() -> tuple[list[str | RateLimited], list[str], float]:
        try:
            return await attack_while_the_owner_asks(built, clock, secrets())
        finally:
            await built.close()

    owner_answers, attacker_codes, lasted = asyncio.run(clock.run(scenario()))

    assert [answer for answer in owner_answers if not isinstance(answer, str)] == []
    assert attacker_codes
    assert set(attacker_codes) <= {"UNAUTHENTICATED", "RATE_LIMITED"}
    assert 1 <= upstream.statuses().count(401) <= (most_401s or int(lasted) + 1)
    assert 429 not in upstream.statuses()
    # The probes take the account's own slots: every request, the owner's and the
    # probes', an interval apart.
    assert min(gaps([at for at, _ in upstream.requests])) >= 1.0


def test_with_pacing_off_a_new_pairs_requests_are_answered_and_refusals_remembered(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    # GATEWAY_UPSTREAM_RATE=0 end to end: a new pair's burst is served, and a refused
    # pair is still answered here (side by side: the test below, on the virtual clock).
    gateway = gateway_factory(upstream_rate=0)

    def burst(headers: dict[str, str]) -> list[list[str]]:
        with ThreadPoolExecutor(max_workers=5) as pool:
            answers = pool.map(
                lambda n: gateway.http.post("/graphql", json=page(n), headers=headers), range(5)
            )
            return [codes(answer.json()) for answer in answers]

    assert (burst(OWNER)) == [[]] * 5
    assert (burst(wrong("wrong"))) == [["UNAUTHENTICATED"]] * 5
    assert (burst(wrong("wrong"))) == [["UNAUTHENTICATED"]] * 5
    statuses = [r["status"] for r in sandbox.requests()]
    assert statuses.count(200) == 5
    assert 1 <= statuses.count(401) <= 5  # the first burst asked; the second was answered here


class LatentUpstream:
    """A fake Catapult that answers each request a second later on the virtual clock:
    the owner's pair 200, any other secret 401. Records when each request came."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock
        self.arrivals: list[tuple[float, int]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        owner = request.headers["authorization"] == OWNER["Authorization"]
        self.arrivals.append((self._clock.now(), 200 if owner else 401))
        await self._clock.sleep(1.0)
        if not owner:
            return httpx.Response(401, json={"code": "authentication-failed"})
        return httpx.Response(200, json=[{"id": f"c-{len(self.arrivals)}", "state": "active"}])


def test_with_pacing_off_a_new_pairs_requests_go_side_by_side() -> None:
    # No slots to protect: the probe's verdict is not waited for (pacing off serves a
    # first burst as it did before lanes), and a refused pair is still answered here.
    clock = VirtualClock()
    upstream = LatentUpstream(clock)
    built = paced_service(upstream, clock, RecordingMetrics(), queue_timeout=5, rate=0)
    stranger = signed(wrong("wrong"))

    async def burst(credentials: Credentials) -> list[tuple[float, object]]:
        async def timed(n: int) -> tuple[float, object]:
            try:
                return await ask(built, clock, credentials, n)
            except Unauthenticated as exc:
                return clock.now(), exc

        return list(await asyncio.gather(*(timed(n) for n in range(5))))

    async def scenario() -> list[list[tuple[float, object]]]:
        try:
            return [await burst(pair(DEMO.user_id)), await burst(stranger), await burst(stranger)]
        finally:
            await built.close()

    owners, refused, remembered = asyncio.run(clock.run(scenario()))

    # One upstream latency for all five, not five probes one after another.
    assert [(at, isinstance(answer, str)) for at, answer in owners] == [(1.0, True)] * 5
    assert [(at, type(answer)) for at, answer in refused] == [(2.0, Unauthenticated)] * 5
    assert [(at, type(answer)) for at, answer in remembered] == [(2.0, Unauthenticated)] * 5
    assert upstream.arrivals == [(0.0, 200)] * 5 + [(1.0, 401)] * 5


def pair(user_id: str) -> Credentials:
    """The demo token and secret asking for `user_id`: a pair of its own (the pair's key
    holds the user id) on the demo account, which the fake upstream limits as one."""
    return Credentials(authorization=OWNER["Authorization"], user_id=user_id)


def test_a_new_pairs_probe_and_the_accounts_requests_share_one_schedule() -> None:
    # Two schedules (a probe lane beside the account's) let a probe and an account request
    # leave within an interval of each other: across replicas, an upstream 429.
    clock = VirtualClock()
    upstream = RateLimitedUpstream(clock)
    built = paced_service(upstream, clock, RecordingMetrics(), queue_timeout=5)

    async def scenario() -> list[tuple[float, str | RateLimited]]:
        try:
            first = await ask(built, clock, pair(DEMO.user_id), 0)  # the owner, accepted
            together = await asyncio.gather(
                ask(built, clock, pair(DEMO.user_id), 1), ask(built, clock, pair("u-new"), 2)
            )
            return [first, *together]
        finally:
            await built.close()

    answers = asyncio.run(clock.run(scenario()))

    assert not [answer for _, answer in answers if isinstance(answer, RateLimited)]
    assert upstream.statuses() == [200] * 3
    assert min(gaps([at for at, _ in upstream.requests])) >= 1.05


def test_while_a_new_pair_probes_the_tokens_other_new_pairs_are_refused_at_once() -> None:
    clock = VirtualClock()
    upstream = RateLimitedUpstream(clock)
    metrics = RecordingMetrics()
    built = paced_service(upstream, clock, metrics, queue_timeout=5)

    async def scenario() -> list[tuple[float, str | RateLimited]]:
        try:
            # The owner's request takes the slot at 0 s: the probe waits for the next.
            await ask(built, clock, pair(DEMO.user_id), 0)
            together = await asyncio.gather(
                ask(built, clock, pair("u-probe"), 1),
                ask(built, clock, pair("u-probe"), 2),  # waits for its pair's verdict
                ask(built, clock, pair("u-other"), 3),
                ask(built, clock, pair("u-third"), 4),
            )
            return list(together)
        finally:
            await built.close()

    answers = asyncio.run(clock.run(scenario()))

    (_, probe), (_, same_pair), *others = answers
    assert isinstance(probe, str)
    assert isinstance(same_pair, str)
    for at, refusal in others:
        assert isinstance(refusal, RateLimited)
        assert at == 0.0  # at once, not after a wait in the queue
        assert refusal.extra == {"retryAfter": 1}  # as the pacer refuses: no upstreamStatus
    assert upstream.statuses() == [200] * 3
    assert built.state()["pacing"]["refused"] == 2
    assert metrics.reports.count(("refusal", None)) == 2


class Marker:
    """Something only the failing call's frame refers to."""


def test_a_remembered_refusal_keeps_no_traceback_alive() -> None:
    # A stored exception keeps its traceback, and the traceback every frame it passed
    # through (~10 KB a refused pair): only the message and codes are kept.
    clock = MonotonicClock()
    keys = KeyedHashes(b"a test cache key")
    rejected: Remembered[Refusal] = Remembered(seconds=REJECTED_SECONDS, clock=clock.now)
    lanes = CredentialLanes(
        keys,
        pacer=Pacer(
            rate=1, queue_timeout=2, clock=clock, shared=None, on_wait=ignore, on_refusal=ignore
        ),
        accepted=Remembered(seconds=60, clock=clock.now),
        rejected=rejected,
    )
    credentials = pair("u-refused")
    alive: list[weakref.ref[Marker]] = []

    async def refused_upstream() -> None:
        marker = Marker()
        alive.append(weakref.ref(marker))
        raise Unauthenticated("Invalid credentials.", upstreamStatus=401)

    async def twice() -> list[tuple[str, dict[str, Any]]]:
        # Only what the errors say leaves: the test keeps no exception of its own.
        said = []
        for _ in range(2):
            try:
                await lanes.run(credentials, refused_upstream)
            except Unauthenticated as exc:
                said.append((exc.message, exc.extra))
        return said

    first, second = asyncio.run(twice())
    gc.collect()

    [marker] = alive  # the second was answered here, without calling
    assert marker() is None
    assert second == first == ("Invalid credentials.", {"upstreamStatus": 401})
    assert lanes.refused_locally == 1


def ignore(*_: object) -> None:
    """A metrics hook this test does not observe."""
