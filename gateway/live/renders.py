"""What rendering live updates may cost this process, whatever the clients send.

An update is executed once per distinct request (document, operation, variables), but a
client chooses how many distinct requests it sends: an alias, a space or a variable per
subscription makes each one distinct, and with 1,000 calls on a page one execution takes
a large part of a second. Two bounds keep the process responsive:

- executions run one at a time, each in a worker thread: the event loop goes on serving
  `/healthz` and every other request while an update is rendered (the interpreter lets
  the loop's thread in every few milliseconds), and a hundred renders of one update never
  run back to back in one turn of the loop;
- one account (counted per credentials, as the subscription bound is) holds at most
  `max_documents` distinct requests at once; a subscription that would add one more is
  refused with RATE_LIMITED, while more subscribers of a request it already holds cost
  nothing more to render.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager

from gateway.credentials import Credentials
from gateway.errors import RateLimited

LIMIT = "GATEWAY_LIVE_MAX_DOCUMENTS_PER_ACCOUNT"


class Renders:
    """The bound on distinct requests per account, and the one-at-a-time execution."""

    def __init__(self, *, max_documents: int, retry_after: int) -> None:
        self._max_documents = max_documents
        self._retry_after = retry_after
        self._held: dict[Credentials, Counter[Hashable]] = {}
        self._turn = asyncio.Lock()

    def hold(self, credentials: Credentials, request: Hashable) -> Callable[[], None]:
        """Count a subscription of `request` for `credentials`; the returned function
        releases it (once, however often it is called). `RateLimited` when `request` is
        new for this account and it already holds `max_documents` others."""
        held = self._held.setdefault(credentials, Counter())
        if request not in held and len(held) >= self._max_documents:
            if not held:
                del self._held[credentials]
            raise RateLimited(
                f"This account's live subscriptions already use {self._max_documents} "
                "different operations (document, operation name and variables) on this "
                "server; subscribe with one of those, or end one first.",
                retry_after=self._retry_after,
                limit=LIMIT,
            )
        held[request] += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            held[request] -= 1
            if held[request] <= 0:
                del held[request]
            if not held and self._held.get(credentials) is held:
                del self._held[credentials]

        return release

    def documents(self, credentials: Credentials) -> int:
        """How many distinct requests `credentials` hold now."""
        return len(self._held.get(credentials, ()))

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """This process's one rendering turn: executions queue here and run one at a time.

        A render shared by several subscribers is looked for again once in turn: they
        queue here together, and the first one's render is everyone's. The execution
        itself runs in a worker thread (`Stream` in `operations.py`), holding the turn."""
        async with self._turn:
            yield
