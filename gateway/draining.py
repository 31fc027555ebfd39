"""Whether the server is shutting down, as a long answer learns it from its scope.

The server (`gateway.server`, outermost) puts its `asyncio.Event` in every HTTP request's
scope and sets it when it starts shutting down: an event stream (`gateway.live.sse`),
which would never end on its own, ends then instead of being cut off at
GATEWAY_SHUTDOWN_TIMEOUT. A leaf that imports nothing of the gateway: the server and the
command line that loads it must not load the GraphQL stack (or prometheus-client, which
the command line configures before its first import) to learn a scope key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, MutableMapping
from typing import Any

SCOPE_KEY = "gateway.draining"


def announce(scope: MutableMapping[str, Any], stopping: asyncio.Event) -> None:
    """Let the request `scope` describes learn of a shutdown: `stopping` is set then."""
    scope[SCOPE_KEY] = stopping


def draining(scope: Mapping[str, Any]) -> asyncio.Event | None:
    """The event set when the server shuts down, or None when no server announced one
    (an app run in process, under another server)."""
    stopping = scope.get(SCOPE_KEY)
    return stopping if isinstance(stopping, asyncio.Event) else None
