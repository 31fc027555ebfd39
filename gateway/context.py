"""The per-request context handed to every resolver, the seam it reads calls through, and
the factory that makes one for each request.

The schema sees only `CallSource`; the implementation (upstream, cache, deduplication)
is wired by `ContextFactory`, which the app builds once from its collaborators, so the
schema never learns about HTTP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from gateway.cache_control import wants_fresh
from gateway.calls import BadRecord, CallList, CallRecord, ListQuery
from gateway.credentials import CredentialsVerdict, caller
from gateway.errors import printable
from gateway.loaders import CallService, OperationLoader
from gateway.pagination import CursorCodec
from gateway.upstream.tally import UpstreamTally

if TYPE_CHECKING:
    from starlette.requests import Request


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
    # hands it down with every ask; `GraphQLExecution.run` gives it to the request's record.
    tally: UpstreamTally
    entities_asked: int = 0
    warnings: list[UpstreamWarning] = field(default_factory=list)
    # Set for operations that arrive over WebSocket or SSE, the transports that can
    # carry a subscription's updates.
    live: LiveSource | None = None


class MakeContext(Protocol):
    """Makes the Context of one request (`ContextFactory`), for the endpoint and the live
    operations alike, for the caller of the credentials verdict they read."""

    def __call__(
        self, request: Request, request_id: str, credentials: CredentialsVerdict, /
    ) -> Context: ...


class ContextFactory:
    """Makes each request's `Context`: its loader, deadline, reading of `no-cache`, and
    upstream tally.

    Built once by the app; the upstream comes from the lifespan's state, as it is opened
    at start-up, after the routes are made.
    """

    def __init__(
        self,
        *,
        cursors: CursorCodec,
        request_timeout: float,
        max_upstream_requests: int,
        max_calls_per_operation: int,
        max_entities: int,
    ) -> None:
        self._cursors = cursors
        self._request_timeout = request_timeout
        self._max_upstream_requests = max_upstream_requests
        self._max_calls = max_calls_per_operation
        self._max_entities = max_entities

    def __call__(
        self, request: Request, request_id: str, credentials: CredentialsVerdict
    ) -> Context:
        # The credentials come as the verdict the caller read once (`RequestFacts`): the
        # loader acts on that value, never on the request's headers.
        upstream: CallService = request.state.upstream
        tally = UpstreamTally()
        loader = OperationLoader(
            upstream,
            partial(caller, credentials),
            tally=tally,
            deadline=time.monotonic() + self._request_timeout,
            refresh=wants_fresh(request.headers),
            max_requests=self._max_upstream_requests,
            max_calls=self._max_calls,
        )
        return Context(request_id, loader, self._cursors, self._max_entities, tally)
