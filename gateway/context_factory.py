"""The factory that makes each request's `Context`: the one module that wires the schema's
seam (`gateway.context`) to the loaders and the upstream."""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

from gateway.cache_control import wants_fresh
from gateway.context import Context
from gateway.credentials import CredentialsVerdict, caller
from gateway.loaders import CallService, OperationLoader
from gateway.pagination import CursorCodec
from gateway.upstream.tally import UpstreamTally

if TYPE_CHECKING:
    from starlette.requests import Request


class ContextFactory:
    """Makes each request's `Context`: its loader, deadline, reading of `no-cache`, and
    upstream tally.

    Built once by the app; the upstream comes from the lifespan's state, as it is opened
    at start-up, after the routes are made.
    """

    def __init__(
        self,
        *,
        cursors: CursorCodec,
        upstream_base: str,
        request_timeout: float,
        max_upstream_requests: int,
        max_calls_per_operation: int,
        max_entities: int,
    ) -> None:
        self._cursors = cursors
        self._upstream_base = upstream_base
        self._request_timeout = request_timeout
        self._max_upstream_requests = max_upstream_requests
        self._max_calls = max_calls_per_operation
        self._max_entities = max_entities

    def __call__(
        self, request: Request, request_id: str, credentials: CredentialsVerdict
    ) -> Context:
        # The credentials come as the verdict the caller read once (`RequestFacts`): the
        # loader acts on that value, never on the request's headers.
        upstream: CallService = request.state.upstream
        tally = UpstreamTally()
        loader = OperationLoader(
            upstream,
            partial(caller, credentials),
            tally=tally,
            deadline=time.monotonic() + self._request_timeout,
            refresh=wants_fresh(request.headers),
            upstream_base=self._upstream_base,
            max_requests=self._max_upstream_requests,
            max_calls=self._max_calls,
        )
        return Context(request_id, loader, self._cursors, self._max_entities, tally)
