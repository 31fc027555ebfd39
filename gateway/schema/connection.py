"""`callsConnection`: the Relay cursor connection over the upstream's `rel="next"` pages.

The walk starts at a position (the first page, or the one an `after` cursor names) and
reads upstream pages, following `rel="next"` and never computing page numbers, until it
has `first` calls or the upstream has no next page. Every edge's cursor names the
position just after its call, so `after: <any edge cursor>` resumes there (Relay and
Apollo Client only use `endCursor`, but both allow any edge's cursor).
"""

from __future__ import annotations

import strawberry

from gateway.calls import CallList, ListQuery
from gateway.context import Context, UpstreamWarning, left_out_warning, oversized_page_warning
from gateway.errors import BadUserInput, UpstreamBadResponse
from gateway.pagination import Position
from gateway.schema.types import Call

MAX_FIRST = 1000
# Upstream pages one `callsConnection` field may read. Pages are `first` calls long, so
# one page is the usual case; more are needed only when `first` grew since the cursor
# was issued. The upstream allows one request per second, so the walk stays short and
# reports `hasNextPage` for the rest.
MAX_PAGES_PER_FIELD = 4


@strawberry.type(description="One call in a `CallConnection`, with the cursor just after it.")
class CallEdge:
    cursor: str = strawberry.field(
        description="Opaque; pass it as `after` to continue with the calls after this one."
    )
    node: Call = strawberry.field(description="The call.")


@strawberry.type(description="Whether there is more to read after this slice (Relay `PageInfo`).")
class PageInfo:
    has_next_page: bool = strawberry.field(
        description="True while the upstream has more calls after `endCursor`."
    )
    end_cursor: str | None = strawberry.field(
        description="The last edge's cursor; pass it as `after` for the next slice."
    )


@strawberry.type(
    description=(
        "A slice of your calls as a Relay cursor connection; works unchanged with Relay's "
        "`@connection` and Apollo Client's `relayStylePagination`."
    )
)
class CallConnection:
    edges: list[CallEdge] = strawberry.field(description="The calls of this slice, in order.")
    page_info: PageInfo = strawberry.field(description="How to ask for the next slice.")


async def walk(
    context: Context,
    query: ListQuery,
    first: int,
    after: str | None,
    path: tuple[str | int, ...],
) -> CallConnection:
    """Up to `first` calls from the start of `query`'s list or from the `after` cursor."""
    if not 1 <= first <= MAX_FIRST:
        raise BadUserInput(
            f"`first` must be between 1 and {MAX_FIRST} (got {first}).", argument="first"
        )
    position = Position(query)
    if after is not None:
        position = context.cursors.decode(after)
        if _list_identity(position.query) != _list_identity(query):
            raise BadUserInput(
                "`after` belongs to another `filter` or `sortOrder` than this field's.",
                argument="after",
            )
    edges: list[CallEdge] = []
    # A call the upstream lists twice (a page repeating, or overlapping the next) is
    # served once per slice; the repeat is reported, never served.
    served: set[str] = set()
    for _ in range(MAX_PAGES_PER_FIELD):
        found = await context.calls.list_calls(position.query)
        records = found.records
        skip = position.skip
        end = min(len(records), skip + first - len(edges))
        # The next link only matters once the slice reaches the end of this page; a
        # slice that ends before it neither follows nor reports it.
        reaches_end = end == len(records)
        if reaches_end and found.excess:
            # Only a slice reaching the page's end would have served the calls cut off.
            context.warnings.append(oversized_page_warning(found.excess, position.query.size, path))
        following = _following(context, found, position.query, path) if reaches_end else None
        _report_left_out(context, found, skip, end, path)
        for index in range(skip, end):
            # The position just after this call; past a page's last call it is the start
            # of the next page, so resuming there does not re-read this one.
            after_this = (
                Position(following)
                if index + 1 == len(records) and following is not None
                else Position(position.query, index + 1)
            )
            if records[index].id in served:
                context.warnings.append(_repeat_warning(records[index].id, path))
                continue
            served.add(records[index].id)
            edges.append(
                CallEdge(
                    cursor=context.cursors.encode(after_this), node=Call(record=records[index])
                )
            )
        if not reaches_end:
            return _connection(context, edges, True, position)
        if following is None:
            return _connection(context, edges, False, position)
        position = Position(following)
        if len(edges) == first:
            break
    return _connection(context, edges, True, position)


def _following(
    context: Context, found: CallList, query: ListQuery, path: tuple[str | int, ...]
) -> ListQuery | None:
    """The page after `found`, or None; a next link it cannot follow is a warning.

    The page already fetched is served whatever its link says: a link that cannot be
    followed ends the walk there (`hasNextPage: false`) and says so beside the data.
    """
    try:
        return context.calls.next_query(found, query)
    except UpstreamBadResponse as exc:
        context.warnings.append(
            UpstreamWarning(
                f'The upstream sent a `Link rel="next"` this gateway cannot follow '
                f"({exc.message}); the calls before it are served and `hasNextPage` is false.",
                path,
                None,
                "next_link",
            )
        )
        return None


def _repeat_warning(call_id: str, path: tuple[str | int, ...]) -> UpstreamWarning:
    return UpstreamWarning(
        "The upstream listed this call again in the same walk; the repeat was left out.",
        path,
        call_id,
        "left_out",
    )


def _report_left_out(
    context: Context, found: CallList, skip: int, end: int, path: tuple[str | int, ...]
) -> None:
    """Report the records left out of the part of a page this slice serves, and only those.

    A left-out record belongs to the slice that serves the call after it, or, past the
    page's last call, to the slice that reaches the end of the page from within it: so
    consecutive slices never repeat a warning, and none is about a call they did not serve.
    """
    count = len(found.records)
    trailing = end == count and (skip < count or skip == 0)
    context.warnings.extend(
        left_out_warning(bad, path)
        for bad in found.bad
        if skip <= bad.before < end or (trailing and bad.before == count)
    )


def _list_identity(query: ListQuery) -> tuple[object, ...]:
    return (query.bridge_id, query.conference_id, query.from_, query.to, query.sort_order)


def _connection(
    context: Context, edges: list[CallEdge], has_next: bool, position: Position
) -> CallConnection:
    # With no edge to take it from, the end cursor is where the walk stopped, so that a
    # slice cut short by MAX_PAGES_PER_FIELD can still be continued.
    end = edges[-1].cursor if edges else context.cursors.encode(position) if has_next else None
    return CallConnection(edges=edges, page_info=PageInfo(has_next_page=has_next, end_cursor=end))
