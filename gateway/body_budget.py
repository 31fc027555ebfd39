"""One process-wide budget for the bytes of upstream bodies being read or parsed at once.

Each upstream body is bounded alone (`GATEWAY_UPSTREAM_MAX_BODY_BYTES`), but a burst of
requests for large pages read them all at once: six requests fetching two 9 MB pages
each took the process to 551 MB. Every upstream attempt holds a `BodyLease` from the
start of its body until that body is parsed; the upstream client takes each chunk from
the lease before keeping it, so the bodies read and held at once never exceed the budget.

A chunk that does not fit waits (the socket is not read meanwhile, so the upstream is
held back by TCP). Waiters are served oldest lease first. Leases that are all waiting,
each holding part of a body, would wait for each other forever; so when nothing that
holds bytes is still moving, the youngest holders are refused (`NoBodyBudget`, which the
client maps to `RATE_LIMITED`, retry in a second) and their bytes go to the oldest
("wound-wait"): the oldest lease always finishes, and a lease that holds nothing is never
refused, only kept waiting. The client bounds a wait by the request's deadline.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from types import TracebackType

# What a refused caller is told to wait: bodies are read in well under a second.
RETRY_AFTER = 1


class NoBodyBudget(Exception):
    """A lease was refused its bytes (to let an older one finish), or its wait for them
    was cut short; the upstream client turns this into the gateway's error."""


class BodyBudget:
    """At most `capacity` bytes of upstream bodies held at once, by all leases together."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("a body budget needs a positive capacity")
        self.capacity = capacity
        self.used = 0
        self._order = itertools.count()
        # Leases holding bytes, and waiters by age: (lease order, bytes wanted, lease).
        self._holders: set[BodyLease] = set()
        self._waiters: list[tuple[int, int, BodyLease]] = []
        self.refused = 0

    def lease(self) -> BodyLease:
        """A lease for one upstream body; use it as a context manager, which releases it."""
        return BodyLease(self, next(self._order))

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _take_now(self, lease: BodyLease, size: int) -> bool:
        """Grant `size` bytes if they are free and nobody waits before; False otherwise."""
        if not self._waiters and self.used + size <= self.capacity:
            self._grant(lease, size)
            return True
        return False

    def _take(self, lease: BodyLease, size: int) -> asyncio.Future[None] | None:
        """Grant `size` bytes now (None), or a future settled when they are granted."""
        if self._take_now(lease, size):
            return None
        future = asyncio.get_running_loop().create_future()
        lease._future, lease._wanted = future, size
        heapq.heappush(self._waiters, (lease.order, size, lease))
        self._settle()
        return future

    def _grant(self, lease: BodyLease, size: int) -> None:
        self.used += size
        lease.held += size
        if lease.held:
            self._holders.add(lease)

    def _release(self, lease: BodyLease) -> None:
        self._forget_waiter(lease)
        self.used -= lease.held
        lease.held = 0
        self._holders.discard(lease)
        self._settle()

    def _forget_waiter(self, lease: BodyLease) -> None:
        if lease._future is None:
            return
        self._waiters = [entry for entry in self._waiters if entry[2] is not lease]
        heapq.heapify(self._waiters)
        lease._future = None

    def _settle(self) -> None:
        """Grant waiters, oldest first; refuse young holders if everyone is stuck."""
        while self._waiters:
            _, size, oldest = self._waiters[0]
            if self.used + size <= self.capacity:
                heapq.heappop(self._waiters)
                future, oldest._future = oldest._future, None
                self._grant(oldest, size)
                if future is not None and not future.done():
                    future.set_result(None)
                continue
            if any(holder._future is None for holder in self._holders):
                return  # a holder still reading or parsing will release or move on
            # Every holder waits for another: refuse the youngest one holding bytes.
            victim = max(
                (holder for holder in self._holders if holder is not oldest),
                key=lambda holder: holder.order,
                default=None,
            )
            if victim is None:
                return  # only the oldest holds bytes; what it waits for is free soon
            future = victim._future
            self._forget_waiter(victim)
            self.used -= victim.held
            victim.held = 0
            self._holders.discard(victim)
            self.refused += 1
            if future is not None and not future.done():
                future.set_exception(NoBodyBudget("refused to let an older upstream body finish"))


class BodyLease:
    """The bytes of one upstream body, from its first chunk until it has been parsed."""

    def __init__(self, budget: BodyBudget, order: int) -> None:
        self._budget = budget
        self.order = order
        self.held = 0
        # Set while waiting for budget.
        self._future: asyncio.Future[None] | None = None
        self._wanted = 0

    def take_now(self, size: int) -> bool:
        """Hold `size` more bytes if they are free now, without waiting; False if not."""
        return self._budget._take_now(self, size)

    async def take(self, size: int) -> None:
        """Hold `size` more bytes, waiting while the budget has none free.

        Raises `NoBodyBudget` when this lease is refused to let an older one finish. A
        cancelled wait (a deadline) leaves the queue.
        """
        future = self._budget._take(self, size)
        if future is None:
            return
        try:
            await future
        except asyncio.CancelledError:
            self._budget._forget_waiter(self)
            self._budget._settle()
            raise

    def release(self) -> None:
        """Give every byte back (idempotent)."""
        self._budget._release(self)

    def __enter__(self) -> BodyLease:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
