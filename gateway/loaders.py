"""Per-operation access to the upstream: credentials checked once, each request made once.

An `OperationLoader` lives for one GraphQL operation. Two fields asking for the same
upstream resource (aliases, or `call` and `_entities` for one id) share one upstream
request, whether or not the cross-request cache is on.

Single calls (`call(id)`, federation `_entities`) are batched: every id asked for in the
same tick of the event loop is looked up together, first in the entity view (no upstream
request, not counted against `maxUpstreamRequests`), then, for the ids not there:

    fewer than BATCH_THRESHOLD   one paced GET .../calls/{id} each
    BATCH_THRESHOLD or more      one newest page of 1,000 first (it fills the entity view),
                                 then one paced GET .../calls/{id} for each id not in it,
                                 unless that page is the account's whole history (below)

A newest page that holds fewer than 1,000 calls and no `next` link is the account's whole
history at the moment it was fetched. When it was fetched for this very batch (not an
earlier answer from the cache), an id it does not hold names no call: it is answered
null at once, without a GET per id. A cached page proves nothing about calls made since.

The upstream allows about one request per second per account, so twenty references cost
one request (a second of the account's budget) instead of twenty.

Every call the operation serves is counted here (`serve`), whichever field or execution
path serves it: a list once per list handed out, before anything is built from it (the
compiled path calls `serve` itself, see `list_calls_raw`), a single call once per ask.
Past `GATEWAY_MAX_CALLS_PER_OPERATION` the field is `OPERATION_TOO_COMPLEX`: aliases
share one upstream request but each serves its own copy, and 20 aliased pages of 1000
were a 67 MB answer (six at once peaked at 495 MB RSS).

After a 401 or 403 for its credentials, the operation asks the upstream nothing more:
every further request fails at once with the same code, including those already waiting
for a pacing slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from gateway.calls import (
    MAX_PAGE_SIZE,
    BadRecord,
    CallList,
    CallRecord,
    ListQuery,
    parse_call,
    parse_call_list,
    validate_id,
    within_size,
)
from gateway.credentials import Credentials
from gateway.errors import (
    Forbidden,
    GatewayError,
    OperationTooComplex,
    RateLimited,
    Unauthenticated,
    UpstreamBadResponse,
)
from gateway.upstream.client import UpstreamAnswer
from gateway.upstream.entities import KnownCall, calls_in_list
from gateway.upstream.tally import UpstreamTally

# From this many ids missing from the entity view in one batch, one newest page of
# MAX_PAGE_SIZE is asked first: one request instead of (at least) three.
BATCH_THRESHOLD = 3
NEWEST_PAGE = ListQuery(page=0, size=MAX_PAGE_SIZE, sort_order="desc")


class CallService(Protocol):
    """What a loader asks of the cached, paced upstream: `upstream.service.CatapultService`."""

    async def list_calls(
        self,
        credentials: Credentials,
        query: ListQuery,
        *,
        deadline: float,
        refresh: bool,
        gate: Callable[[], None],
        tally: UpstreamTally,
    ) -> UpstreamAnswer: ...

    async def get_call(
        self,
        credentials: Credentials,
        call_id: str,
        *,
        deadline: float,
        refresh: bool,
        gate: Callable[[], None],
        tally: UpstreamTally,
    ) -> UpstreamAnswer | None: ...

    def next_page(
        self, credentials: Credentials, query: ListQuery, answer: UpstreamAnswer
    ) -> ListQuery | None: ...

    async def recall_calls(
        self, credentials: Credentials, call_ids: Sequence[str]
    ) -> dict[str, KnownCall]: ...


# The request's credentials, from its one verdict on them (`credentials.caller`);
# raises `Unauthenticated`.
ReadCredentials = Callable[[], Credentials]
# Sends one upstream request, with the operation's veto to run right before it leaves.
Send = Callable[[Callable[[], None]], Awaitable[UpstreamAnswer | None]]
# What looking one call up came to: its record, a record that is not a call, or no call.
FoundCall = CallRecord | BadRecord | None


class OperationLoader:
    """The `CallSource` of one operation, on behalf of the caller `credentials` names."""

    def __init__(
        self,
        upstream: CallService,
        credentials: ReadCredentials,
        *,
        tally: UpstreamTally,
        deadline: float,
        refresh: bool,
        max_requests: int | None,
        max_calls: int,
    ) -> None:
        self._upstream = upstream
        self._credentials = credentials
        # The operation's: every ask hands it down, for the cache and the client to count
        # into (what the request's log line says it cost).
        self._tally = tally
        self._deadline = deadline
        # `Cache-Control: no-cache`: every cache read is skipped, the entity view's too.
        self._refresh = refresh
        # When the oldest answer this operation used was fetched (wall-clock seconds), or
        # None before any: the loader's own record, which the execution reads once the
        # operation has run, to say how old the answer's data is.
        self.oldest_fetch: float | None = None
        self._max_requests = max_requests
        # By what was asked: a list's upstream parameters, or a call's id.
        self._inflight: dict[object, asyncio.Future[UpstreamAnswer | None]] = {}
        # Distinct asks, against maxUpstreamRequests: each counts once whether the cache
        # answers it or not (not the log line's HTTP attempts, nor the metric).
        self._asked = 0
        self._max_calls = max_calls
        self.calls_served = 0
        # Single calls by id, and the ids waiting for the next batch.
        self._calls: dict[str, asyncio.Future[FoundCall]] = {}
        self._batch: list[str] = []
        # The first 401/403 per (authorization, user id): the operation's last word to it.
        self._refusals: dict[tuple[str, str], GatewayError] = {}

    def credentials(self) -> Credentials:
        """The caller's credentials; raises `Unauthenticated` before any upstream request."""
        return self._credentials()

    async def list_calls(self, query: ListQuery) -> CallList:
        answer = await self._list(query)
        body, excess = within_size(answer.body, query)
        self.serve(len(body) if body.__class__ is list else 0)
        records, bad = parse_call_list(body)
        following, refused = self._following(query, answer)
        return CallList(
            records, bad, next=following, next_refused=refused, excess=excess + answer.excess
        )

    def next_query(self, found: CallList, query: ListQuery) -> ListQuery | None:
        if found.next_refused is not None:
            raise UpstreamBadResponse(found.next_refused)
        return found.next

    def _following(
        self, query: ListQuery, answer: UpstreamAnswer
    ) -> tuple[ListQuery | None, str | None]:
        """The page after `answer` (the upstream reads its `Link rel="next"` against
        `query`, the asker's own: a request may be shared by queries that differ in what
        it does not send), or why its link cannot be followed."""
        try:
            return self._upstream.next_page(self.credentials(), query, answer), None
        except UpstreamBadResponse as exc:
            return None, exc.message

    async def list_calls_raw(self, query: ListQuery) -> tuple[Any, int]:
        """The upstream's JSON body for `query`, unparsed (for the compiled path), cut to
        `size` (`calls.within_size`) as `list_calls` cuts it, and how many calls were cut.
        The compiled path counts what it serves (`serve`) once it has all its pages: a
        count made here could land after that path gave up, in the standard executor's
        fresh count."""
        answer = await self._list(query)
        body, excess = within_size(answer.body, query)
        return body, excess + answer.excess

    def serve(self, count: int) -> None:
        """Count `count` more calls served; raises `OperationTooComplex` past the bound.

        Once per list or call, never per record: this is on the compiled path's hot path.
        """
        self.calls_served += count
        if self.calls_served > self._max_calls:
            raise OperationTooComplex(
                f"This operation serves more than {self._max_calls} calls.",
                limit="maxCallsPerOperation",
            )

    def restart(self) -> None:
        """Forget what was served: the standard executor starts afresh after the compiled
        path gave up, and nothing that path served is shown."""
        self.calls_served = 0

    async def _list(self, query: ListQuery) -> UpstreamAnswer:
        credentials = self.credentials()

        def send(gate: Callable[[], None]) -> Awaitable[UpstreamAnswer]:
            return self._upstream.list_calls(
                credentials,
                query,
                deadline=self._deadline,
                refresh=self._refresh,
                gate=gate,
                tally=self._tally,
            )

        # Two queries that send the same parameters (a bridge filter's pages) are one request.
        answer = await self._get(credentials, query.as_sent(), send)
        assert answer is not None, "only a call may be absent, never a list"
        return answer

    async def get_call(self, call_id: str) -> FoundCall:
        validate_id(call_id, "id")
        self.credentials()
        self.serve(1)
        future = self._calls.get(call_id)
        if future is None:
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            # Marks a failure retrieved even when every field waiting for it went away.
            future.add_done_callback(_retrieve)
            self._calls[call_id] = future
            if not self._batch:
                # Every id asked for until the loop comes round joins this batch (graphql
                # starts all of an `_entities` list's resolvers before awaiting any).
                loop.call_soon(self._dispatch)
            self._batch.append(call_id)
        # shield: one field being cancelled must not cancel the look-up for the others.
        return await asyncio.shield(future)

    def _dispatch(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.ensure_future(self._resolve(batch))
        # Marks a failure retrieved: it has already reached every waiter.
        task.add_done_callback(lambda done: None if done.cancelled() else done.exception())

    async def _resolve(self, batch: list[str]) -> None:
        try:
            await self._resolve_batch(batch)
        except Exception as exc:
            for call_id in batch:
                future = self._calls[call_id]
                if not future.done():
                    future.set_exception(exc)

    async def _resolve_batch(self, batch: list[str]) -> None:
        credentials = self.credentials()
        known = {} if self._refresh else await self._upstream.recall_calls(credentials, batch)
        for call_id, call in known.items():
            self._used(call.fetched_at)
            self._settle(call_id, parse_call(call.raw))
        cold = [call_id for call_id in batch if call_id not in known]
        if len(cold) >= BATCH_THRESHOLD:
            # The account's newest calls usually hold every id asked for.
            asked_at = time.time()
            newest = await self._list(NEWEST_PAGE)
            wanted = set(cold)
            for call_id, raw in calls_in_list(newest.body):
                if call_id in wanted:
                    wanted.discard(call_id)
                    self._settle(call_id, parse_call(raw))
            if _whole_history(newest, asked_at, self._following(NEWEST_PAGE, newest)):
                for call_id in wanted:
                    self._settle(call_id, None)
                wanted.clear()
            cold = [call_id for call_id in cold if call_id in wanted]
        await asyncio.gather(*(self._settle_one(credentials, call_id) for call_id in cold))

    def _settle(self, call_id: str, found: FoundCall) -> None:
        future = self._calls[call_id]
        if not future.done():
            future.set_result(found)

    async def _settle_one(self, credentials: Credentials, call_id: str) -> None:
        future = self._calls[call_id]
        try:
            found = await self._get_one(credentials, call_id)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        self._settle(call_id, found)

    async def _get_one(self, credentials: Credentials, call_id: str) -> FoundCall:
        def send(gate: Callable[[], None]) -> Awaitable[UpstreamAnswer | None]:
            return self._upstream.get_call(
                credentials,
                call_id,
                deadline=self._deadline,
                refresh=self._refresh,
                gate=gate,
                tally=self._tally,
            )

        answer = await self._get(credentials, call_id, send)
        if answer is None:
            return None
        return parse_call(answer.body)

    def _refused(self, credentials: Credentials) -> None:
        refusal = self._refusals.get((credentials.authorization, credentials.user_id))
        if refusal is not None:
            # A new instance each time: every error of the response has its own path.
            raise type(refusal)(refusal.message, **refusal.extra)

    async def _get(
        self, credentials: Credentials, asked: object, send: Send
    ) -> UpstreamAnswer | None:
        self._refused(credentials)
        future = self._inflight.get(asked)
        if future is None:
            # The backstop of the limit checked before execution, which cannot see
            # requests that depend on variables or on the upstream's answers.
            if self._max_requests is not None and self._asked >= self._max_requests:
                raise OperationTooComplex(
                    f"This operation needs more than {self._max_requests} upstream requests.",
                    limit="maxUpstreamRequests",
                )
            self._asked += 1
            # The refusal is checked again when the request is about to leave: one
            # already waiting for its pacing slot stays home after a refusal.
            future = asyncio.ensure_future(send(lambda: self._refused(credentials)))
            # Marks a failure retrieved even when every field waiting for it went away
            # (the executor cancels the other root fields once a non-null one fails, and
            # `asyncio.shield` then forgets the request): else asyncio logs each such
            # failure as an error, "Task exception was never retrieved".
            future.add_done_callback(_retrieve)
            self._inflight[asked] = future
        # shield: one field being cancelled must not cancel the request for the others.
        try:
            answer = await asyncio.shield(future)
        except (Unauthenticated, Forbidden) as exc:
            self._refusals.setdefault((credentials.authorization, credentials.user_id), exc)
            raise
        except RateLimited:
            # Refused a pacing slot while an earlier request of this operation was still
            # out: if that one comes back refused, its code is the true answer. Waiting
            # costs nothing, as the response waits for every field anyway.
            others = [f for f in self._inflight.values() if f is not future and not f.done()]
            if others:
                await asyncio.wait(others)
            self._refused(credentials)
            raise
        if answer is not None:
            self._used(answer.fetched_at)
        return answer

    def _used(self, fetched_at: float) -> None:
        if self.oldest_fetch is None or fetched_at < self.oldest_fetch:
            self.oldest_fetch = fetched_at


def _whole_history(
    newest: UpstreamAnswer, asked_at: float, following: tuple[ListQuery | None, str | None]
) -> bool:
    """Whether a newest page fetched since `asked_at` holds every call of the account;
    `following` is what its next link came to: any link, even one that cannot be
    followed, says there is more."""
    return (
        newest.fetched_at >= asked_at
        and isinstance(newest.body, list)
        and len(newest.body) < MAX_PAGE_SIZE
        and following == (None, None)
    )


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
