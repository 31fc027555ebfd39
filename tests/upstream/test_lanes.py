"""Pacing lanes by credential pair: callers without the secret cannot take its owner's slots.

The reviewer's scenario: four loops send the owner's API token with a wrong secret while
the owner asks once a second. Keyed by the token alone, the owner got 15 of 15
`RATE_LIMITED` over 15 s; now the owner's accepted pair keeps the account's lane, a pair
just refused is answered here, and a new pair waits in the token's small probe lane.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from gateway.sandbox import credential_headers
from gateway.upstream.lanes import REJECTED_SECONDS
from tests.conftest import DEMO, GatewayFactory, Sandbox

OWNER = credential_headers(DEMO)
ATTACKERS = 4
SECONDS = 6


def wrong(secret: str) -> dict[str, str]:
    basic = base64.b64encode(f"{DEMO.token}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {basic}", "X-Catapult-User-Id": DEMO.user_id}


def page(n: int) -> dict[str, str]:
    return {"query": f"{{ calls(page: {n}, size: 1) {{ id }} }}"}


def codes(body: dict[str, Any]) -> list[str]:
    return [error["extensions"]["code"] for error in body.get("errors", [])]


async def attack_while_the_owner_asks(url: str, secrets: Any) -> tuple[list[Any], list[str], float]:
    """The owner's codes (one list per request, once a second), the attackers' codes, and
    how long the attack lasted (seconds)."""
    owner_codes: list[Any] = []
    attacker_codes: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        # The owner has used the gateway before the attack starts.
        first = await client.post("/graphql", json=page(0), headers=OWNER)
        assert codes(first.json()) == []
        stop = asyncio.Event()

        async def attacker() -> None:
            while not stop.is_set():
                response = await client.post("/graphql", json=page(0), headers=wrong(next(secrets)))
                attacker_codes.extend(codes(response.json()))

        began = time.monotonic()
        loops = [asyncio.ensure_future(attacker()) for _ in range(ATTACKERS)]
        await asyncio.sleep(0.5)  # the attack is under way
        for n in range(1, SECONDS + 1):
            response = await client.post("/graphql", json=page(n), headers=OWNER)
            owner_codes.append(codes(response.json()))
            await asyncio.sleep(1)
        stop.set()
        await asyncio.gather(*loops)
        lasted = time.monotonic() - began
    return owner_codes, attacker_codes, lasted


@pytest.mark.parametrize(
    ("secrets", "most_401s"),
    [
        # Refused once, then answered here for REJECTED_SECONDS.
        pytest.param(lambda: itertools.repeat("wrong"), 1, id="one-wrong-secret"),
        # A new pair each time: each probes, one a second at most (None: one a second
        # of the attack, and one more).
        pytest.param(
            lambda: (f"wrong-{n}" for n in itertools.count()), None, id="a-new-secret-each-time"
        ),
    ],
)
def test_callers_without_the_secret_cannot_take_the_owners_slots(
    loopback_gateway_factory: GatewayFactory, sandbox: Sandbox, secrets: Any, most_401s: int | None
) -> None:
    assert SECONDS + 1 < REJECTED_SECONDS
    gateway = loopback_gateway_factory(upstream_rate=1)
    sandbox.faults(rate_limit=True)

    owner_codes, attacker_codes, lasted = asyncio.run(
        attack_while_the_owner_asks(gateway.url, secrets())
    )

    assert owner_codes == [[]] * SECONDS
    assert attacker_codes
    assert set(attacker_codes) <= {"UNAUTHENTICATED", "RATE_LIMITED"}
    refused = [r for r in sandbox.requests() if r["status"] == 401]
    assert 1 <= len(refused) <= (most_401s or int(lasted) + 1)
    assert not [r for r in sandbox.requests() if r["status"] == 429]


def test_with_pacing_off_a_new_pairs_requests_go_side_by_side(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    # No slots to protect: the probe's verdict is not waited for (GATEWAY_UPSTREAM_RATE=0
    # serves a first burst as it did before lanes), and a refused pair is still answered
    # here.
    gateway = gateway_factory(upstream_rate=0)
    sandbox.faults(latency_ms=1000)

    def burst(headers: dict[str, str]) -> list[list[str]]:
        with ThreadPoolExecutor(max_workers=5) as pool:
            answers = pool.map(
                lambda n: gateway.http.post("/graphql", json=page(n), headers=headers), range(5)
            )
            return [codes(answer.json()) for answer in answers]

    began = time.monotonic()
    assert (burst(OWNER)) == [[]] * 5
    # One upstream latency for all five, not five probes one after another.
    assert time.monotonic() - began < 2.5
    assert (burst(wrong("wrong"))) == [["UNAUTHENTICATED"]] * 5
    sandbox.faults(latency_ms=0)
    assert (burst(wrong("wrong"))) == [["UNAUTHENTICATED"]] * 5
    statuses = [r["status"] for r in sandbox.requests()]
    assert statuses.count(200) == 5
    assert 1 <= statuses.count(401) <= 5  # the first burst asked; the second was answered here
