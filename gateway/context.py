"""The per-request context handed to every resolver, and the seam it reads calls through.

The schema sees only `CallSource`; the implementation (upstream, cache, deduplication)
is wired by `gateway.context_factory.ContextFactory`, which imports the loaders and the
upstream: this module does not, so that importing the schema loads no HTTP client or
server (tests/test_layering.py follows the imports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from gateway.calls import BadRecord, CallList, CallRecord, ListQuery
from gateway.errors import printable

if TYPE_CHECKING:
    from gateway.credentials import CredentialsVerdict
    from gateway.pagination import CursorCodec
    from gateway.upstream.tally import UpstreamTally


class CallSource(Protocol):
    """Where resolvers get calls from, on behalf of the request's caller."""

    async def list_calls(self, query: ListQuery) -> CallList:
        """One page of the caller's calls."""

    async def list_calls_raw(self, query: ListQuery) -> tuple[Any, int]:
        """The same page as the upstream's JSON, unparsed, cut to `size`, and how many
        calls were cut; shares its upstream request."""

    async def get_call(self, call_id: str) -> CallRecord | BadRecord | None:
        """One call, or None when the upstream does not know it."""

    def next_query(self, found: CallList, query: ListQuery) -> ListQuery | None:
        """The page after `found` (fetched with `query`) per the upstream's `rel="next"`."""

    def serve(self, count: int) -> None:
        """Count `count` more calls served; raises `OperationTooComplex` past the bound."""

    def restart(self) -> None:
        """Start counting served calls afresh (the compiled path gave the operation up)."""

    @property
    def oldest_fetch(self) -> float | None:
        """When the oldest upstream answer used so far was fetched (wall-clock seconds),
        or None if none was."""


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

    def __post_init__(self) -> None:
        # Messages hold upstream text (a call's id, an odd value): shown and logged
        # without control or bidi-override characters.
        object.__setattr__(self, "message", printable(self.message))
        if self.call_id is not None:
            object.__setattr__(self, "call_id", printable(self.call_id))

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
    # What the operation asked of the upstream (cache look-ups, HTTP attempts): the loader
    # hands it down with every ask; whoever made the context gives it to its own record.
    tally: UpstreamTally
    entities_asked: int = 0
    warnings: list[UpstreamWarning] = field(default_factory=list)
    # Set for operations that arrive over WebSocket or SSE, the transports that can
    # carry a subscription's updates.
    live: LiveSource | None = None


class MakeContext(Protocol):
    """Makes the Context of one request (`ContextFactory`), for the endpoint and the live
    operations alike: for the caller of the credentials verdict they read, refreshing the
    caches when the request said `no-cache` (`wants_fresh`)."""

    def __call__(
        self, request_id: str, credentials: CredentialsVerdict, /, *, refresh: bool
    ) -> Context: ...
