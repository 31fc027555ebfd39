"""The per-request context handed to every resolver, and the seam it reads calls through.

The schema sees only `CallSource`; the implementation (upstream, cache, deduplication)
is wired by the app, so the schema never learns about HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.calls import BadRecord, CallList, CallRecord, ListQuery
from gateway.errors import GatewayError, UpstreamBadResponse
from gateway.pagination import CursorCodec


class CallSource(Protocol):
    """Where resolvers get calls from, on behalf of the request's caller."""

    async def list_calls(self, query: ListQuery) -> CallList:
        """One page of the caller's calls."""

    async def list_calls_raw(self, query: ListQuery) -> Any:
        """The same page as the upstream's JSON, unparsed; shares its upstream request."""

    async def get_call(self, call_id: str) -> CallRecord | BadRecord | None:
        """One call, or None when the upstream does not know it."""

    def next_query(self, found: CallList, query: ListQuery) -> ListQuery | None:
        """The page after `found` (fetched with `query`) per the upstream's `rel="next"`."""


@dataclass(frozen=True, slots=True)
class Notice:
    """A non-fatal problem reported beside the data (a record that was left out)."""

    error: GatewayError
    path: tuple[str | int, ...]


def left_out_notice(bad: BadRecord, path: tuple[str | int, ...]) -> Notice:
    """The notice for a record that cannot be a `Call` and was left out of a list."""
    return Notice(
        UpstreamBadResponse(
            f"The upstream sent {bad.reason}; it was left out of this list.",
            callId=bad.call_id,
        ),
        path,
    )


@dataclass(slots=True)
class Context:
    """What one GraphQL request's resolvers share."""

    request_id: str
    calls: CallSource
    cursors: CursorCodec
    notices: list[Notice] = field(default_factory=list)
