"""Pacing lanes by credential pair: only a pair the upstream accepted may take the account's.

The upstream limits an account (its API token) whatever the secret, so pacing is keyed by
the token. Keyed by the token alone, anyone who knows a token (it is no secret: it shows
in URLs and logs) could fill its owner's queue with requests carrying a wrong secret: 4
loops doing so made the owner get 15 of 15 `RATE_LIMITED` over 15 s. So:

- a pair (token and secret) the upstream accepted within ACCEPTED_SECONDS takes the
  account's lane, as before;
- a pair not accepted yet takes the token's probe lane: PROBE_RATE requests a second,
  waiting at most PROBE_QUEUE_SECONDS, beyond it `RATE_LIMITED` at once. While one
  request of a pair is out probing, the pair's others wait for its verdict (a new
  caller's first page of several fields is not refused for its own burst);
- a pair the upstream refused with 401 is answered `UNAUTHENTICATED` here for
  REJECTED_SECONDS, without an upstream request.

Pairs are remembered in memory as a keyed hash (`CacheKeys`, as cache keys are), never
the secret, in bounded tables. Each process learns on its own; the lanes' schedules are
shared like the account's (Redis, or one host's locked file).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from gateway.bounded import BoundedCache
from gateway.credentials import Credentials
from gateway.errors import Forbidden, Unauthenticated
from gateway.upstream.cache import CacheKeys
from gateway.upstream.pacing import Pacer, account_key

T = TypeVar("T")
V = TypeVar("V")

# How long an accepted pair keeps the account's lane without a new acceptance: every
# successful upstream answer renews it, so an active owner never leaves it.
ACCEPTED_SECONDS = 3600.0
# How long a pair the upstream refused (401) is refused here without asking again: long
# enough that a loop of wrong secrets costs the upstream one request in ten seconds, short
# enough that a secret re-enabled upstream works again soon.
REJECTED_SECONDS = 10.0
# The probe lane of each token: one request a second, and a wait long enough for one
# probe behind another (a slot is 1.05 s apart), as two replicas' first requests are.
PROBE_RATE = 1.0
PROBE_QUEUE_SECONDS = 2.0
# Pairs remembered per table; past it, the least recently used are forgotten (a
# forgotten accepted pair probes once more, a forgotten refused one asks once more).
MAX_PAIRS = 10_000
# What a remembered pair costs, at most: its hash, and a refusal's message and codes.
_PAIR_BYTES = 1024


class CredentialLanes:
    """Runs each upstream request in the lane its credential pair has earned."""

    def __init__(
        self,
        keys: CacheKeys,
        *,
        account: Pacer,
        probe: Pacer,
        accepted: Remembered[bool],
        rejected: Remembered[Unauthenticated],
    ) -> None:
        self._keys = keys
        self._account = account
        self._probe = probe
        self._accepted = accepted
        self._rejected = rejected
        # Per pair: the verdict its probe in flight will give.
        self._probing: dict[str, asyncio.Future[None]] = {}
        self.refused_locally = 0

    async def run(self, credentials: Credentials, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call` in the pair's lane; raises `Unauthenticated` for a pair just refused."""
        # With the user id: the upstream answers 401 as well for a good pair asking for
        # a user id it may not read, which says nothing of the pair's other user ids.
        pair = self._keys.digest(["pair", credentials.authorization, credentials.user_id])
        if not self._account.enabled:
            # Pacing off (GATEWAY_UPSTREAM_RATE=0): there are no slots for a wrong secret to
            # take, so a new pair's requests go at once, side by side, as they did before
            # lanes; a pair just refused is still answered here.
            self._refuse_if_rejected(pair)
            return await self._run(pair, call, self._account, "")
        while True:
            self._refuse_if_rejected(pair)
            if self._accepted.get(pair) is not None:
                lane = account_key(self._keys, credentials.account)
                return await self._run(pair, call, self._account, lane)
            probing = self._probing.get(pair)
            if probing is None:
                break
            # asyncio.wait: a waiter cancelled leaves the verdict to the others.
            await asyncio.wait([probing])
        verdict = asyncio.get_running_loop().create_future()
        self._probing[pair] = verdict
        try:
            lane = self._keys.digest(["probe", credentials.account])
            try:
                return await self._run(pair, call, self._probe, lane)
            finally:
                if self._accepted.get(pair) is not None:
                    # It counted against the account's rate: the account's own requests
                    # space from it. (A refused one is assumed not to count: the sandbox
                    # authenticates before it limits, as the upstream's 401 body suggests.)
                    self._account.left_outside(account_key(self._keys, credentials.account))
        finally:
            del self._probing[pair]
            verdict.set_result(None)

    async def _run(self, pair: str, call: Callable[[], Awaitable[T]], pacer: Pacer, lane: str) -> T:
        try:
            result = await (pacer.run(lane, call) if pacer.enabled else call())
        except Unauthenticated as exc:
            if exc.extra.get("upstreamStatus") == 401:
                self._accepted.pop(pair)
                self._rejected.set(pair, exc)
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
            # A new instance each time, as the upstream's (its message and codes): one
            # raised twice would grow its traceback.
            raise Unauthenticated(refusal.message, **refusal.extra)

    def state(self) -> dict[str, float | int]:
        """Pacing's counters for /readyz, over both lanes."""
        account, probe = self._account.state(), self._probe.state()
        return {
            "rate": account["rate"],
            "refused": account["refused"] + probe["refused"],
            "waitedOut429": account["waitedOut429"] + probe["waitedOut429"],
            "refusedLocally": self.refused_locally,
        }


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
