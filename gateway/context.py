"""The per-request context handed to every resolver, and the seam it reads calls through.

The schema sees only `CallSource`; the implementation (upstream, cache, deduplication)
is wired by the app, so the schema never learns about HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from gateway.calls import BadRecord, CallList, CallRecord, ListQuery
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


class LiveSource(Protocol):
    """Where `callsUpdated` gets its updates from, on behalf of the caller."""

    def watch(self, query: ListQuery) -> LiveStream:
        """The updates of one page; raises `GatewayError` when it cannot be watched."""


class LiveStream(Protocol):
    """Updates of one page (see `gateway.live.hub.Update`), or the error a poll ended with."""

    def __aiter__(self) -> LiveStream: ...

    async def __anext__(self) -> Any: ...

    async def aclose(self) -> None: ...


WarningKind = Literal["unknown_value", "malformed_field", "left_out", "next_link", "oversized_page"]


@dataclass(frozen=True, slots=True)
class UpstreamWarning:
    """Upstream data the gateway tolerated, reported in `extensions.warnings`, never `errors`.

    Real clients treat any entry in `errors` as a failure (Apollo Client's default
    `errorPolicy` throws the whole result away), so what the gateway can still serve is
    reported beside the data instead. `kind` is for the metric, not shown to callers.
    """

    CODE: ClassVar[str] = "UPSTREAM_BAD_RESPONSE"

    message: str
    path: tuple[str | int, ...]
    call_id: str | None
    kind: WarningKind

    def as_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"message": self.message, "path": list(self.path)}
        if self.call_id is not None:
            shown["callId"] = self.call_id
        shown["code"] = self.CODE
        return shown


def left_out_warning(bad: BadRecord, path: tuple[str | int, ...]) -> UpstreamWarning:
    """The warning for a record that cannot be a `Call` and was left out of a list."""
    return UpstreamWarning(
        f"The upstream sent {bad.reason}; it was left out of this list.",
        path,
        bad.call_id,
        "left_out",
    )


def oversized_page_warning(excess: int, size: int, path: tuple[str | int, ...]) -> UpstreamWarning:
    """The warning for a page that held more records than the `size` asked for."""
    return UpstreamWarning(
        f"The upstream sent {excess} more calls than the {size} asked for; "
        f"only the first {size} are served.",
        path,
        None,
        "oversized_page",
    )


@dataclass(slots=True)
class Context:
    """What one GraphQL request's resolvers share."""

    request_id: str
    calls: CallSource
    cursors: CursorCodec
    # GATEWAY_MAX_ENTITIES, and the representations the operation's `_entities` fields
    # asked for so far: each field alone may be under a bound that their sum is over.
    max_entities: int
    entities_asked: int = 0
    warnings: list[UpstreamWarning] = field(default_factory=list)
    # Set for operations that arrive over WebSocket or SSE, the transports that can
    # carry a subscription's updates.
    live: LiveSource | None = None
