"""The page a poller watches, fetched as the `calls` query fetches it.

The same upstream request (path and parameters) through the same cached, shared and
paced upstream service: a `calls` query for the same page within the cache's TTL gets the
poll's answer, a poll joins an identical request already in flight, and it waits for the
account's pacing slot like any request. Only the first poll of a poller reads the cache
(see `Poller._poll`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Protocol

from gateway.calls import ListQuery
from gateway.credentials import Credentials
from gateway.live.hub import Page, PageSource
from gateway.upstream.client import UpstreamAnswer
from gateway.upstream.tally import UpstreamTally


class ListCalls(Protocol):
    """`CatapultService.list_calls`: the upstream behind its cache, single flight and pacing."""

    def __call__(
        self,
        credentials: Credentials,
        query: ListQuery,
        *,
        deadline: float,
        refresh: bool,
        tally: UpstreamTally,
    ) -> Awaitable[UpstreamAnswer]: ...


def page_source(list_calls: ListCalls, *, timeout: float) -> PageSource:
    """Polls through `list_calls`, each poll given `timeout` seconds like a request."""

    async def poll(credentials: Credentials, query: ListQuery, fresh: bool) -> Page:
        # A tally of its own, which nothing reads: a poll is no request's, and what it
        # sends is counted in the metrics only (a request that shares its load in flight
        # counts its own look-up, as with any load another started).
        answer = await list_calls(
            credentials,
            query,
            deadline=time.monotonic() + timeout,
            refresh=fresh,
            tally=UpstreamTally(),
        )
        return Page(answer.body, answer.fetched_at)

    return poll
