"""The Catapult v1 REST paths the gateway asks for, written down once.

    GET /v1/users/{userId}/calls/           a page of the user's calls (a JSON array)
    GET /v1/users/{userId}/calls/{callId}   one call (a JSON object)

Requests are built here, next links are checked against these paths (pagination.py), and
traces name these templates rather than the paths, which hold the caller's ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlencode

from gateway.calls import ListQuery

CALLS_ROUTE = "/v1/users/{userId}/calls/"
CALL_ROUTE = "/v1/users/{userId}/calls/{callId}"
OTHER_ROUTE = "other"


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One idempotent GET: a path below the base URL and its query parameters."""

    path: str
    params: tuple[tuple[str, str], ...] = ()
    # The JSON shape a good answer has ("array": a call list, "object": one call). An
    # answer of another shape is an UPSTREAM_BAD_RESPONSE raised by the client itself,
    # before any cache can keep it: errors are never cached.
    shape: Literal["array", "object"] | None = field(default=None, compare=False)

    @property
    def target(self) -> str:
        """Path and query string, with every parameter percent-encoded (`+` as `%2B`)."""
        if not self.params:
            return self.path
        return f"{self.path}?{urlencode(self.params, quote_via=quote, safe='')}"


def calls_path(user_id: str) -> str:
    """The list-calls path; the documentation shows the trailing slash."""
    return f"/v1/users/{user_id}/calls/"


def call_path(user_id: str, call_id: str) -> str:
    """The get-one-call path."""
    return f"/v1/users/{user_id}/calls/{call_id}"


def calls_segments(user_id: str) -> list[str]:
    """The list-calls path as its (decoded) segments, without the empty ones."""
    return ["v1", "users", user_id, "calls"]


def list_calls(user_id: str, query: ListQuery) -> UpstreamRequest:
    """The request for one page of the user's calls."""
    return UpstreamRequest(calls_path(user_id), tuple(query.params()), shape="array")


def get_call(user_id: str, call_id: str) -> UpstreamRequest:
    """The request for one call of the user's."""
    return UpstreamRequest(call_path(user_id, call_id), shape="object")


# The user and call ids are the caller's data: spans name the route, not the path.
_TEMPLATES = (
    (re.compile(r"^/v1/users/[^/]+/calls/?$"), CALLS_ROUTE),
    (re.compile(r"^/v1/users/[^/]+/calls/[^/]+$"), CALL_ROUTE),
)


def template(path: str) -> str:
    """The route template of an upstream path, without any id in it."""
    for pattern, route in _TEMPLATES:
        if pattern.match(path):
            return route
    return OTHER_ROUTE
