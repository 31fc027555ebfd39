"""The root `Query` type: the call list and a single call."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.types import Info

from gateway.calls import MAX_PAGE_SIZE, ListQuery
from gateway.context import Context, Notice
from gateway.errors import UpstreamBadResponse
from gateway.schema.types import Call, CallFilter, SortOrder, fetch_call


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
        filter: Annotated[
            CallFilter | None, strawberry.argument(description="Only calls that match.")
        ] = None,
        page: Annotated[
            int, strawberry.argument(description="The page to return, counting from 0.")
        ] = 0,
        size: Annotated[
            int,
            strawberry.argument(description=f"Calls per page, 1 to {MAX_PAGE_SIZE}."),
        ] = 25,
        sort_order: Annotated[
            SortOrder, strawberry.argument(description="Order by `startTime`.")
        ] = SortOrder.DESC,
    ) -> list[Call]:
        query = ListQuery.create(
            bridge_id=None if filter is None else filter.bridge_id,
            conference_id=None if filter is None else filter.conference_id,
            from_=None if filter is None else filter.from_,
            to=None if filter is None else filter.to,
            page=page,
            size=size,
            sort_order="asc" if sort_order is SortOrder.ASC else "desc",
        )
        found = await info.context.calls.list_calls(query)
        path = tuple(info.path.as_list())
        # A record that cannot be a Call is left out and reported beside the data:
        # in a non-null list, an error in its place would blank the whole page.
        for bad in found.bad:
            info.context.notices.append(
                Notice(
                    UpstreamBadResponse(
                        f"The upstream sent {bad.reason}; it was left out of this list.",
                        callId=bad.call_id,
                    ),
                    path,
                )
            )
        return [Call(record=record) for record in found.records]

    @strawberry.field(
        description="One call by id, or null when the upstream has no call with that id."
    )
    async def call(
        self,
        info: Info[Context, None],
        id: Annotated[strawberry.ID, strawberry.argument(description="The call's id.")],
    ) -> Call | None:
        return await fetch_call(info.context, str(id))
