"""The root `Query` type: the call list and a single call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from gateway.calls import MAX_PAGE_SIZE, ListQuery
from gateway.context import Context, left_out_warning, oversized_page_warning
from gateway.schema.connection import MAX_FIRST, CallConnection, walk
from gateway.schema.types import (
    Call,
    CallFilter,
    FilterArgument,
    SortArgument,
    SortOrder,
    fetch_call,
)


@strawberry.type(description="The call history of the account named by your request headers.")
class Query:
    @strawberry.field(
        description=(
            "One page of your calls, newest first unless `sortOrder` says otherwise. "
            "A page past the end is an empty list. Prefer `callsConnection` to page "
            "through everything."
        )
    )
    async def calls(
        self,
        info: Info[Context, None],
        filter: FilterArgument = None,
        page: Annotated[
            int, strawberry.argument(description="The page to return, counting from 0.")
        ] = 0,
        size: Annotated[
            int,
            strawberry.argument(description=f"Calls per page, 1 to {MAX_PAGE_SIZE}."),
        ] = 25,
        sort_order: SortArgument = SortOrder.DESC,
    ) -> list[Call]:
        query = list_query(filter, sort_order, page=page, size=size)
        found = await info.context.calls.list_calls(query)
        # The whole upstream page is served, so every record left out of it is reported.
        path = tuple(info.path.as_list())
        if found.excess:
            info.context.warnings.append(oversized_page_warning(found.excess, size, path))
        info.context.warnings.extend(left_out_warning(bad, path) for bad in found.bad)
        return [Call(record=record) for record in found.records]

    @strawberry.field(
        description=(
            "Your calls as a Relay cursor connection: `first` calls, then the `first` after "
            "`pageInfo.endCursor`, until `hasNextPage` is false. Follows the upstream's own "
            "next-page links. With `bridgeId` or `conferenceId` the upstream returns every "
            "match at once, so one slice of up to `first` calls is usually the whole list."
        )
    )
    async def calls_connection(
        self,
        info: Info[Context, None],
        filter: FilterArgument = None,
        first: Annotated[
            int, strawberry.argument(description=f"How many calls to return, 1 to {MAX_FIRST}.")
        ] = 25,
        after: Annotated[
            str | None,
            strawberry.argument(
                description="Start after this cursor (an `endCursor` or an edge's `cursor`)."
            ),
        ] = None,
        sort_order: SortArgument = SortOrder.DESC,
    ) -> CallConnection:
        # The first upstream page is `first` calls long (capped to what the upstream
        # allows); later pages are whatever the upstream's next link says.
        query = list_query(filter, sort_order, page=0, size=min(max(first, 1), MAX_PAGE_SIZE))
        return await walk(info.context, query, first, after, tuple(info.path.as_list()))

    @strawberry.field(
        description="One call by id, or null when the upstream has no call with that id."
    )
    async def call(
        self,
        info: Info[Context, None],
        id: Annotated[strawberry.ID, strawberry.argument(description="The call's id.")],
    ) -> Call | None:
        return await fetch_call(info.context, str(id), tuple(info.path.as_list()))


def list_query(
    filter: CallFilter | None, sort_order: SortOrder, *, page: int, size: int
) -> ListQuery:
    """The upstream list request of `calls` and `callsConnection`, on both execution paths."""
    return ListQuery.create(
        bridge_id=None if filter is None else filter.bridge_id,
        conference_id=None if filter is None else filter.conference_id,
        from_=None if filter is None else filter.from_,
        to=None if filter is None else filter.to,
        page=page,
        size=size,
        sort_order="asc" if sort_order is SortOrder.ASC else "desc",
    )


def call_filter(values: Mapping[str, Any]) -> CallFilter:
    """The `CallFilter` of a coerced GraphQL input (what the compiled path is given)."""
    return CallFilter(
        bridge_id=values.get("bridgeId"),
        conference_id=values.get("conferenceId"),
        from_=values.get("from"),
        to=values.get("to"),
    )
