"""Pacing lanes by credential pair: callers without the secret cannot crowd out its owner.

The upstream limits an account (its API token) whatever the secret, so pacing is keyed by
the token: one schedule per account, shared by every request of it and, through Redis or
one host's locked file, by every process (see pacing.py). Anyone who knows a token (it is
no secret: it shows in URLs and logs) can send requests with a wrong secret, and when any
pair could queue freely, 4 such loops made the owner get 15 of 15 `RATE_LIMITED` over
15 s. So what a pair may put in the account's queue depends on what the upstream said of it:

- a pair (token and secret) the upstream accepted within ACCEPTED_SECONDS queues freely;
- a pair not accepted yet probes: ONE request of such pairs per token is in the account's
  queue or in flight at a time, in this process (the token's gate). While it is out, the
  same pair's other requests wait for its verdict (a new caller's first page of several
  fields is not refused for its own burst), and the requests of the token's OTHER pairs not
  accepted yet are refused at once with `RATE_LIMITED` (`retryAfter` 1, as the pacer
  refuses). The probe takes an ordinary slot of the account's schedule, so across replicas
  it is spaced from the account's other requests like any of them; a verified owner waits
  behind at most one wrong-secret probe per slot;
- a pair the upstream refused with 401 is answered `UNAUTHENTICATED` here for
  REJECTED_SECONDS, without an upstream request.

Known gap: an owner whose pair is not accepted in this process (a fresh start, a new
replica, after ACCEPTED_SECONDS idle) competes with wrong-secret probes for the token's
gate, and may get `RATE_LIMITED` until one of its requests gets through.

Pairs are remembered in memory as a keyed hash (`KeyedHashes`, as cache keys are), never
the secret, in bounded tables; a refusal as its message and codes only (`Refusal`), not
the exception raised, whose traceback would keep its frames alive. Each process learns on
its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gateway.bounded import BoundedCache
from gateway.credentials import Credentials
from gateway.errors import Forbidden, Unauthenticated
from gateway.upstream.keys import KeyedHashes
from gateway.upstream.pacing import Pacer

T = TypeVar("T")
V = TypeVar("V")

# How long an accepted pair queues freely without a new acceptance: every successful
# upstream answer renews it, so an active owner never loses it.
ACCEPTED_SECONDS = 3600.0
# How long a pair the upstream refused (401) is refused here without asking again: long
# enough that a loop of wrong secrets costs the upstream one request in ten seconds, short
# enough that a secret re-enabled upstream works again soon.
REJECTED_SECONDS = 10.0
# What the token's gate tells the pairs it turns away: a probe's slot is about a second.
GATE_RETRY_AFTER = 1.0
# Pairs remembered per table; past it, the least recently used are forgotten (a
# forgotten accepted pair probes once more, a forgotten refused one asks once more).
MAX_PAIRS = 10_000
# What a remembered pair costs, at most: its hash, and a refusal's message and codes.
_PAIR_BYTES = 1024


@dataclass(frozen=True)
class Refusal:
    """What the upstream's 401 said (message, extensions), to answer the pair with."""

    message: str
    extra: Mapping[str, Any]

    def error(self) -> Unauthenticated:
        # A new instance each time: one raised twice would grow its traceback.
        return Unauthenticated(self.message, **self.extra)


class CredentialLanes:
    """Runs each upstream request on the account's schedule as far as its pair has earned."""

    def __init__(
        self,
        keys: KeyedHashes,
        *,
        pacer: Pacer,
        accepted: Remembered[bool],
        rejected: Remembered[Refusal],
    ) -> None:
        self._keys = keys
        self._pacer = pacer
        self._accepted = accepted
        self._rejected = rejected
        # Per pair: the verdict its probe in flight will give.
        self._probing: dict[str, asyncio.Future[None]] = {}
        # Per account key: the pair whose probe holds the token's gate.
        self._gate: dict[str, str] = {}
        self.refused_locally = 0

    async def run(self, credentials: Credentials, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call` on the account's schedule; raises `Unauthenticated` for a pair just
        refused, `RateLimited` for a new pair while another of its token probes."""
        # With the user id: the upstream answers 401 as well for a good pair asking for
        # a user id it may not read, which says nothing of the pair's other user ids.
        pair = self._keys.pair(credentials.authorization, credentials.user_id)
        lane = self._keys.account(credentials.account)
        if not self._pacer.enabled:
            # Pacing off (GATEWAY_UPSTREAM_RATE=0): there are no slots for a wrong secret to
            # take, so a new pair's requests go at once, side by side, as they did before
            # lanes; a pair just refused is still answered here.
            self._refuse_if_rejected(pair)
            return await self._run(pair, call, lane)
        while True:
            self._refuse_if_rejected(pair)
            if self._accepted.get(pair) is not None:
                return await self._run(pair, call, lane)
            probing = self._probing.get(pair)
            if probing is None:
                break
            # asyncio.wait: a waiter cancelled leaves the verdict to the others.
            await asyncio.wait([probing])
        if lane in self._gate:
            # Another pair of this token, not accepted yet either, is probing: one such
            # request at a time may sit in the account's queue, or wrong secrets fill it.
            self._pacer.refuse(GATE_RETRY_AFTER)
        verdict = asyncio.get_running_loop().create_future()
        self._probing[pair] = verdict
        self._gate[lane] = pair
        try:
            # The account's own schedule: shared across replicas, it spaces the probe from
            # the account's other requests wherever they leave from.
            return await self._run(pair, call, lane)
        finally:
            del self._gate[lane]
            del self._probing[pair]
            verdict.set_result(None)

    async def _run(self, pair: str, call: Callable[[], Awaitable[T]], lane: str) -> T:
        try:
            result = await self._pacer.run(lane, call)
        except Unauthenticated as exc:
            if exc.extra.get("upstreamStatus") == 401:
                self._accepted.pop(pair)
                self._rejected.set(pair, Refusal(exc.message, dict(exc.extra)))
            raise
        except Forbidden:
            # Authenticated, only not allowed this: the pair is the owner's.
            self._accepted.set(pair, True)
            raise
        self._accepted.set(pair, True)
        return result

    def _refuse_if_rejected(self, pair: str) -> None:
        refusal = self._rejected.get(pair)
        if refusal is not None:
            self.refused_locally += 1
            raise refusal.error()

    def state(self) -> dict[str, float | int]:
        """Pacing's counters for /readyz (`refused` counts the gate's refusals too)."""
        return {**self._pacer.state(), "refusedLocally": self.refused_locally}


class Remembered(Generic[V]):
    """Keyed pair hashes with a small value each, for a fixed time, bounded in count."""

    def __init__(self, *, seconds: float, clock: Callable[[], float]) -> None:
        self._entries: BoundedCache[str, V] = BoundedCache(
            max_entries=MAX_PAIRS,
            max_bytes=MAX_PAIRS * (_PAIR_BYTES + 1024),
            timer=clock,
            lifetime=seconds,
        )

    def get(self, pair: str) -> V | None:
        return self._entries.get(pair)

    def set(self, pair: str, value: V) -> None:
        # A refusal's message is at most 500 characters (the client cuts the upstream's).
        self._entries.set(pair, value, size=_PAIR_BYTES)

    def pop(self, pair: str) -> None:
        self._entries.pop(pair)
