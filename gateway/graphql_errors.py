"""How a GraphQL error leaves the gateway: with a code, or masked.

The one renderer for both ways a request arrives (the HTTP endpoint and the live
transports), so that an error reads the same over POST, WebSocket and SSE:

    a GatewayError                      as raised: its message and code
    variable coercion (no path)         BAD_USER_INPUT, worded by graphql-core
    anything else                       INTERNAL_SERVER_ERROR with the request id;
                                        the detail goes to the log only

and the upstream's tolerated oddities beside the data (`extensions.warnings`), in a stable
order and capped at `MAX_WARNINGS`, the same way for an HTTP response and a live update.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from graphql import GraphQLError

from gateway.context import UpstreamWarning
from gateway.errors import GatewayError

# `extensions.warnings` shown in one answer; past it, one more entry gives the count.
MAX_WARNINGS = 100

# The request's logger: a masked error is logged beside the request it belongs to.
log = logging.getLogger("gateway.request")


def refusal(error: GatewayError) -> dict[str, Any]:
    """A request refused before any execution (`BadRequest`, an unknown persisted query,
    too many operations on a socket), as one GraphQL error: its message and code."""
    return {"message": error.message, "extensions": error.extensions}


def refusal_body(error: GatewayError) -> dict[str, Any]:
    """The response body of a request `error` refused: no `data`, that one error."""
    return {"errors": [refusal(error)]}


def coded(error: GraphQLError, code: str) -> dict[str, Any]:
    """graphql-core's rendering of `error`, with `code` in its extensions."""
    formatted = dict(error.formatted)
    formatted["extensions"] = {"code": code, **(error.extensions or {})}
    return formatted


def format_error(error: GraphQLError, request_id: str) -> dict[str, Any]:
    """An error raised while executing an operation, as the caller may see it."""
    original = error.original_error
    if isinstance(original, GatewayError):
        return dict(error.formatted)
    if error.path is None and (original is None or isinstance(original, GraphQLError)):
        # Variable coercion: the caller's input, worded by graphql-core (which, since 3.3,
        # keeps the scalar's own GraphQLError as the original error).
        return coded(error, "BAD_USER_INPUT")
    log.error(
        "unexpected error in %s (request id %s)",
        ".".join(str(part) for part in error.path or ()),
        request_id,
        exc_info=original or error,
    )
    masked = internal_error(request_id)
    if error.locations:
        masked["locations"] = [loc._asdict() for loc in error.locations]
    if error.path:
        masked["path"] = error.path
    return masked


def internal_error(request_id: str) -> dict[str, Any]:
    """The masked error: a generic message and the request id to find the detail by."""
    return {
        "message": f"Internal server error (request id {request_id}).",
        "extensions": {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id},
    }


def ordered_warnings(
    warnings: Iterable[UpstreamWarning], data: dict[str, Any] | None
) -> list[UpstreamWarning]:
    """`warnings` by root field (in the order of `data`), then path, then message.

    Both execution paths make the same set; root fields resolve concurrently and their
    readers run in different orders, so they are sorted, so that the same answer always
    has the same bytes.
    """
    order = {key: index for index, key in enumerate(data or ())}
    return sorted(
        warnings,
        key=lambda w: (order.get(str(w.path[0]) if w.path else "", -1), _path_key(w.path),
                       w.message),
    )  # fmt: skip


def render_warnings(warnings: Sequence[UpstreamWarning], *, answer: str) -> list[dict[str, Any]]:
    """`extensions.warnings` of one `answer` ("response", "update"): at most `MAX_WARNINGS`,
    then one entry counting the rest."""
    shown = [warning.as_json() for warning in warnings[:MAX_WARNINGS]]
    if len(warnings) > MAX_WARNINGS:
        # Every odd field of a 1000-call page, times aliases, would be megabytes of
        # warnings: the first ones say what is wrong, a count says how much more.
        left = len(warnings) - MAX_WARNINGS
        shown.append(
            {
                "message": f"{left} more upstream warnings were left out of this {answer}.",
                "path": [],
                "code": UpstreamWarning.CODE,
                "leftOut": left,
            }
        )
    return shown


def _path_key(path: tuple[str | int, ...]) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, part, "") if isinstance(part, int) else (1, 0, part) for part in path)
