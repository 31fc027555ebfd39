"""The root `Subscription` type: a page of calls, pushed again whenever it changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from gateway.calls import MAX_PAGE_SIZE
from gateway.context import Context, LiveStream, left_out_warning
from gateway.errors import GatewayError
from gateway.schema.query import list_query
from gateway.schema.types import Call, DateTime, FilterArgument, SortArgument, SortOrder


@strawberry.type(
    description=(
        "One update of a live page: the whole page as `calls` would return it now, and "
        "which calls are new, changed or gone since the previous update."
    )
)
class CallsUpdate:
    update: strawberry.Private[Any]  # gateway.live.hub.Update

    @strawberry.field(
        description="The page now, exactly as `calls(filter, page: 0, size, sortOrder)` returns it."
    )
    def calls(self, info: Info[Context, None]) -> list[Call]:
        records, bad = self.update.page.parsed()
        path = tuple(info.path.as_list())
        info.context.warnings.extend(left_out_warning(record, path) for record in bad)
        return [Call(record=record) for record in records]

    @strawberry.field(
        description=(
            "Ids of the calls that are new on the page or whose fields changed since the "
            "previous update; every id of the page in the first update."
        )
    )
    def changed(self) -> list[strawberry.ID]:
        return [strawberry.ID(call_id) for call_id in self.update.changed]

    @strawberry.field(description="Ids of the calls that left the page since the previous update.")
    def removed(self) -> list[strawberry.ID]:
        return [strawberry.ID(call_id) for call_id in self.update.removed]

    @strawberry.field(description="When the gateway fetched this page from the upstream.")
    def at(self) -> DateTime:
        return DateTime(datetime.fromtimestamp(self.update.page.fetched_at, UTC))


@strawberry.type(
    description="Live views of the call history, over WebSocket or Server-Sent Events."
)
class Subscription:
    @strawberry.subscription(
        description=(
            "The first page of your calls, sent at once and again whenever it changes. "
            "The gateway polls the upstream for it (every `GATEWAY_LIVE_INTERVAL` seconds, "
            "once for every subscriber with the same credentials and arguments). An "
            "upstream error arrives as an update with errors, and the subscription goes "
            "on; UNAUTHENTICATED or FORBIDDEN end it."
        )
    )
    async def calls_updated(
        self,
        info: Info[Context, None],
        filter: FilterArgument = None,
        size: Annotated[
            int,
            strawberry.argument(description=f"Calls per page, 1 to {MAX_PAGE_SIZE}."),
        ] = 25,
        sort_order: SortArgument = SortOrder.DESC,
    ) -> AsyncIterator[CallsUpdate]:
        # A coroutine returning the stream, not a generator: what is raised here (a bad
        # argument, no credentials, too many subscriptions) reaches the client as a coded
        # error before the stream starts, as the same mistake in `calls` would.
        query = list_query(filter, sort_order, page=0, size=size)
        live = info.context.live
        if live is None:
            raise GatewayError(
                "Subscriptions are served over WebSocket (graphql-transport-ws) or "
                "Server-Sent Events (`Accept: text/event-stream`)."
            )
        return _Updates(live.watch(query))  # type: ignore[return-value]


class _Updates:
    """The live stream's events as `CallsUpdate`s; closing it leaves the poller.

    A class rather than a generator: a generator closed before its first step never
    runs its `finally`, and the subscriber would stay counted.
    """

    def __init__(self, stream: LiveStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _Updates:
        return self

    async def __anext__(self) -> CallsUpdate | GatewayError:
        event = await self._stream.__anext__()
        # An error is yielded as the event itself: graphql-core raises it at
        # `callsUpdated`, so that update carries it, coded, and the stream goes on.
        return event if isinstance(event, GatewayError) else CallsUpdate(update=event)

    async def aclose(self) -> None:
        await self._stream.aclose()
