"""The Catapult v1 REST paths and query parameters the gateway uses, written down once.

    GET /v1/users/{userId}/calls/           a page of the user's calls (a JSON array)
        ?bridgeId= &conferenceId= &from= &to=       filters, each optional
        &page= &size=                               not sent with bridgeId or conferenceId
        &sortOrder=asc|desc
    GET /v1/users/{userId}/calls/{callId}   one call (a JSON object)

Requests are built here, next links are checked against these paths and parameters
(next_page.py), and traces name these templates rather than the paths, which hold the
caller's ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlencode

from gateway.calls import ListQuery, entries_kept

# The list-calls path, segment by segment; the documentation shows a trailing slash.
_CALLS_SEGMENTS = ("v1", "users", "{userId}", "calls")
CALLS_ROUTE = "/" + "/".join(_CALLS_SEGMENTS) + "/"
CALL_ROUTE = CALLS_ROUTE + "{callId}"
OTHER_ROUTE = "other"

# The list's filter parameters, each with the `ListQuery` attribute it carries.
FILTER_PARAMS = (
    ("bridgeId", "bridge_id"),
    ("conferenceId", "conference_id"),
    ("from", "from_"),
    ("to", "to"),
)
PAGE, SIZE, SORT_ORDER = "page", "size", "sortOrder"
LIST_PARAMS = frozenset({name for name, _ in FILTER_PARAMS} | {PAGE, SIZE, SORT_ORDER})

# Marks a `Link` target whose `anchor` names another resource; never a URL's start. Here,
# not in the client, as pagination.py reads it: importing the schema, which checks next
# links, then loads no HTTP client.
ANCHORED = "anchored "


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One idempotent GET: a path below the base URL and its query parameters."""

    path: str
    params: tuple[tuple[str, str], ...] = ()
    # The JSON shape a good answer has ("array": a call list, "object": one call). An
    # answer of another shape is an UPSTREAM_BAD_RESPONSE raised by the client itself,
    # before any cache can keep it: errors are never cached.
    shape: Literal["array", "object"] | None = field(default=None, compare=False)
    # For an array: how many entries are read; the rest are dropped unread (a warning).
    limit: int | None = field(default=None, compare=False)

    @property
    def target(self) -> str:
        """Path and query string, with every parameter percent-encoded (`+` as `%2B`)."""
        if not self.params:
            return self.path
        return f"{self.path}?{urlencode(self.params, quote_via=quote, safe='')}"


def calls_segments(user_id: str) -> list[str]:
    """The list-calls path as its (decoded) segments, without the empty ones."""
    return [user_id if segment == "{userId}" else segment for segment in _CALLS_SEGMENTS]


def calls_path(user_id: str) -> str:
    """The list-calls path."""
    return "/" + "/".join(calls_segments(user_id)) + "/"


def call_path(user_id: str, call_id: str) -> str:
    """The get-one-call path."""
    return calls_path(user_id) + call_id


def list_params(query: ListQuery) -> tuple[tuple[str, str], ...]:
    """The list-calls query parameters of `query`, in a stable order."""
    params: list[tuple[str, str]] = []
    for name, attr in FILTER_PARAMS:
        value = getattr(query, attr)
        if value is not None:
            params.append((name, value))
    # Catapult ignores page and size with a bridge or conference; not sending them
    # keeps one upstream request (and one cache entry) per bridge or conference.
    if query.paginated:
        params += [(PAGE, str(query.page)), (SIZE, str(query.size))]
    params.append((SORT_ORDER, query.sort_order))
    return tuple(params)


def list_calls(user_id: str, query: ListQuery) -> UpstreamRequest:
    """The request for one page of the user's calls."""
    return UpstreamRequest(
        calls_path(user_id), list_params(query), shape="array", limit=entries_kept(query)
    )


def get_call(user_id: str, call_id: str) -> UpstreamRequest:
    """The request for one call of the user's."""
    return UpstreamRequest(call_path(user_id, call_id), shape="object")


# The user and call ids are the caller's data: spans name the route, not the path.
_CALLS_PATTERN = "^/" + "/".join(
    "[^/]+" if segment == "{userId}" else re.escape(segment) for segment in _CALLS_SEGMENTS
)
_TEMPLATES = (
    (re.compile(_CALLS_PATTERN + "/?$"), CALLS_ROUTE),
    (re.compile(_CALLS_PATTERN + "/[^/]+$"), CALL_ROUTE),
)


def template(path: str) -> str:
    """The route template of an upstream path, without any id in it."""
    for pattern, route in _TEMPLATES:
        if pattern.match(path):
            return route
    return OTHER_ROUTE
