"""`callsConnection`'s walk over upstream pages, on a fake list of pages (no HTTP).

End to end, against the sandbox's `rel="next"` pages: tests/test_pagination.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import cast

import pytest

from gateway.calls import BadRecord, CallList, ListQuery, parse_call_list
from gateway.context import Context, UpstreamWarning, left_out_warning
from gateway.errors import BadUserInput, UpstreamBadResponse
from gateway.pagination import CursorCodec, Position
from gateway.schema.connection import MAX_FIRST, MAX_PAGES_PER_FIELD, CallConnection, walk
from tests.fakes import upstream_call

QUERY = ListQuery(size=3)
PATH = ("callsConnection",)
UNFOLLOWABLE = "unfollowable"
UNFOLLOWED_BECAUSE = "a link off the upstream's origin"


def page(
    *ids: str, next_url: str | None = "next", bad: tuple[int, ...] = (), excess: int = 0
) -> CallList:
    """A page of calls `ids` (a bad record before the indexes in `bad`), with a next link
    unless `next_url` is None (`UNFOLLOWABLE`: one that cannot be followed)."""
    records, _ = parse_call_list([upstream_call(call_id) for call_id in ids])
    left_out = [bad_record(before) for before in bad]
    if next_url == UNFOLLOWABLE:
        return CallList(records, left_out, next_refused=UNFOLLOWED_BECAUSE, excess=excess)
    # Any query marks a next page: `Pages.next_query` leads to the next number.
    return CallList(records, left_out, next=None if next_url is None else QUERY, excess=excess)


def bad_record(before: int) -> BadRecord:
    return BadRecord(None, f"bad entry {before}", before)


@dataclass
class Pages:
    """The upstream's pages by number; records the page numbers asked for. A page's next
    link leads to the next number (`UNFOLLOWABLE`: a link that cannot be followed)."""

    pages: dict[int, CallList]
    asked: list[int] = field(default_factory=list)

    async def list_calls(self, query: ListQuery) -> CallList:
        self.asked.append(query.page)
        return self.pages.get(query.page, page(next_url=None))

    def next_query(self, found: CallList, query: ListQuery) -> ListQuery | None:
        if found.next_refused is not None:
            raise UpstreamBadResponse(found.next_refused)
        return None if found.next is None else replace(query, page=query.page + 1)


@dataclass
class FakeContext:
    """What `walk` reads of a request's context: the calls, the cursors, the warnings."""

    calls: Pages
    cursors: CursorCodec = field(default_factory=lambda: CursorCodec(b"a test cursor key"))
    warnings: list[UpstreamWarning] = field(default_factory=list)


def run(
    pages: dict[int, CallList], first: int, after: Position | None = None, query: ListQuery = QUERY
) -> tuple[CallConnection, FakeContext]:
    context = FakeContext(Pages(pages))
    cursor = None if after is None else context.cursors.encode(after)
    connection = asyncio.run(walk(cast(Context, context), query, first, cursor, PATH))
    return connection, context


def ids(connection: CallConnection) -> list[str]:
    return [edge.node.record.id for edge in connection.edges]


def positions(connection: CallConnection, context: FakeContext) -> list[tuple[int, int]]:
    """Where each edge's cursor resumes: (page, skip)."""
    found = [context.cursors.decode(edge.cursor) for edge in connection.edges]
    return [(position.query.page, position.skip) for position in found]


def kinds(context: FakeContext) -> list[tuple[str, str | None]]:
    return [(warning.kind, warning.call_id) for warning in context.warnings]


@pytest.mark.parametrize("first", [0, -1, MAX_FIRST + 1], ids=repr)
def test_first_out_of_bounds_is_refused_before_any_upstream_request(first: int) -> None:
    context = FakeContext(Pages({}))

    with pytest.raises(BadUserInput) as refused:
        asyncio.run(walk(cast(Context, context), QUERY, first, None, PATH))

    assert refused.value.extensions["argument"] == "first"
    assert context.calls.asked == []


def test_the_walk_follows_next_links_until_it_has_first_calls() -> None:
    pages = {0: page("c-1", "c-2", "c-3"), 1: page("c-4", "c-5", "c-6")}

    connection, context = run(pages, first=4)

    assert ids(connection) == ["c-1", "c-2", "c-3", "c-4"]
    assert context.calls.asked == [0, 1]
    # Past a page's last call, a cursor names the start of the next page.
    assert positions(connection, context) == [(0, 1), (0, 2), (1, 0), (1, 1)]
    assert connection.page_info.has_next_page is True
    assert connection.page_info.end_cursor == connection.edges[-1].cursor
    assert context.warnings == []


def test_the_walk_ends_where_the_upstream_has_no_next_page() -> None:
    connection, _ = run({0: page("c-1", next_url=None)}, first=3)

    assert ids(connection) == ["c-1"]
    assert connection.page_info.has_next_page is False
    assert connection.page_info.end_cursor == connection.edges[-1].cursor


def test_an_empty_list_has_no_end_cursor() -> None:
    connection, _ = run({0: page(next_url=None)}, first=3)

    assert (connection.edges, connection.page_info.end_cursor) == ([], None)
    assert connection.page_info.has_next_page is False


def test_an_after_cursor_resumes_just_after_its_call() -> None:
    pages = {0: page("c-1", "c-2", "c-3"), 1: page("c-4", next_url=None)}

    connection, context = run(pages, first=2, after=Position(QUERY, 2))

    assert ids(connection) == ["c-3", "c-4"]
    assert context.calls.asked == [0, 1]
    assert connection.page_info.has_next_page is False


def test_an_after_cursor_of_another_list_is_refused() -> None:
    other = replace(QUERY, sort_order="asc")

    with pytest.raises(BadUserInput) as refused:
        run({}, first=2, after=Position(other, 1))

    assert refused.value.extensions["argument"] == "after"


def test_a_call_listed_twice_is_served_once_and_the_repeat_reported() -> None:
    pages = {0: page("c-1", "c-2", "c-3"), 1: page("c-3", "c-4", next_url=None)}

    connection, context = run(pages, first=10)

    assert ids(connection) == ["c-1", "c-2", "c-3", "c-4"]
    assert kinds(context) == [("left_out", "c-3")]


def test_a_next_link_it_cannot_follow_ends_the_walk_with_a_warning() -> None:
    connection, context = run({0: page("c-1", next_url=UNFOLLOWABLE)}, first=3)

    assert ids(connection) == ["c-1"]
    assert connection.page_info.has_next_page is False
    assert kinds(context) == [("next_link", None)]
    assert context.warnings[0].path == PATH


def test_a_slice_ending_inside_a_page_neither_follows_nor_judges_its_link() -> None:
    connection, context = run({0: page("c-1", "c-2", next_url=UNFOLLOWABLE)}, first=1)

    assert ids(connection) == ["c-1"]
    assert connection.page_info.has_next_page is True
    assert context.warnings == []


def test_the_walk_reads_at_most_its_pages_and_can_be_continued() -> None:
    empty_pages = {n: page() for n in range(MAX_PAGES_PER_FIELD + 2)}

    connection, context = run(empty_pages, first=3)

    assert context.calls.asked == list(range(MAX_PAGES_PER_FIELD))
    assert connection.edges == []
    assert connection.page_info.has_next_page is True
    # No edge to take it from: the end cursor is where the walk stopped.
    assert connection.page_info.end_cursor is not None
    stopped = context.cursors.decode(connection.page_info.end_cursor)
    assert (stopped.query.page, stopped.skip) == (MAX_PAGES_PER_FIELD, 0)


@pytest.mark.parametrize(
    ("first", "after", "reported"),
    [
        pytest.param(3, None, [1, 3], id="whole-page-reports-all"),
        pytest.param(1, None, [], id="first-call-only-reports-none"),
        pytest.param(1, Position(QUERY, 1), [1], id="the-slice-with-the-call-after-it"),
        pytest.param(1, Position(QUERY, 2), [3], id="trailing-one-with-the-last-call"),
    ],
)
def test_left_out_records_are_reported_by_the_slice_that_serves_their_place(
    first: int, after: Position | None, reported: list[int]
) -> None:
    pages = {0: page("c-1", "c-2", "c-3", next_url=None, bad=(1, 3))}

    _, context = run(pages, first=first, after=after)

    assert context.warnings == [left_out_warning(bad_record(before), PATH) for before in reported]


@pytest.mark.parametrize(
    ("first", "warned"),
    [pytest.param(3, True, id="reaching-the-end"), pytest.param(2, False, id="inside-the-page")],
)
def test_an_oversized_page_is_reported_only_by_a_slice_reaching_its_end(
    first: int, warned: bool
) -> None:
    pages = {0: page("c-1", "c-2", "c-3", next_url=None, excess=4)}

    _, context = run(pages, first=first)

    assert kinds(context) == ([("oversized_page", None)] if warned else [])
