"""How a GraphQL error leaves the gateway: with a code, or masked.

The one renderer for both ways a request arrives (the HTTP endpoint and the live
transports), so that an error reads the same over POST, WebSocket and SSE:

    a GatewayError                      as raised: its message and code
    variable coercion (no path)         BAD_USER_INPUT, worded by graphql-core
    anything else                       INTERNAL_SERVER_ERROR with the request id;
                                        the detail goes to the log only
"""

from __future__ import annotations

import logging
from typing import Any

from graphql import GraphQLError

from gateway.errors import GatewayError

# The request's logger: a masked error is logged beside the request it belongs to.
log = logging.getLogger("gateway.request")


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
