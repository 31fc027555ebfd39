"""The factory that makes each request's `Context`: the one module that wires the schema's
seam (`gateway.context`) to the loaders and the upstream."""

from __future__ import annotations

import time
from functools import partial

from gateway.context import Context
from gateway.credentials import CredentialsVerdict, caller
from gateway.loaders import CallService, OperationLoader
from gateway.pagination import CursorCodec
from gateway.upstream.tally import UpstreamTally


class ContextFactory:
    """Makes each request's `Context`: its loader, deadline, and upstream tally.

    Built once by the app, with the upstream service (which the app's lifespan opens).
    """

    def __init__(
        self,
        upstream: CallService,
        *,
        cursors: CursorCodec,
        request_timeout: float,
        max_upstream_requests: int,
        max_calls_per_operation: int,
        max_entities: int,
    ) -> None:
        self._upstream = upstream
        self._cursors = cursors
        self._request_timeout = request_timeout
        self._max_upstream_requests = max_upstream_requests
        self._max_calls = max_calls_per_operation
        self._max_entities = max_entities

    def __call__(
        self, request_id: str, credentials: CredentialsVerdict, *, refresh: bool
    ) -> Context:
        # The credentials come as the verdict the caller read once (`RequestFacts`), and
        # `refresh` as its reading of `no-cache` (`wants_fresh`): the loader acts on those
        # values, never on the request.
        tally = UpstreamTally()
        loader = OperationLoader(
            self._upstream,
            partial(caller, credentials),
            tally=tally,
            deadline=time.monotonic() + self._request_timeout,
            refresh=refresh,
            max_requests=self._max_upstream_requests,
            max_calls=self._max_calls,
        )
        return Context(request_id, loader, self._cursors, self._max_entities, tally)
