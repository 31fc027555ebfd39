"""Per-operation access to the upstream: credentials checked once, each request made once.

An `OperationLoader` lives for one GraphQL operation. Two fields asking for the same
upstream resource (aliases, or `call` and `_entities` for one id) share one upstream
request, whether or not the cross-request cache is on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.calls import (
    BadRecord,
    CallList,
    CallRecord,
    ListQuery,
    parse_call,
    parse_call_list,
    validate_id,
)
from gateway.credentials import Credentials
from gateway.errors import NotFound, OperationTooComplex, UpstreamBadResponse
from gateway.pagination import next_query
from gateway.upstream import UpstreamAnswer, UpstreamRequest, call_path, calls_path

Fetch = Callable[[Credentials, UpstreamRequest], Awaitable[UpstreamAnswer]]
# The request's credentials as `credentials.request_credentials` read them (the one
# reader of the credential headers); raises `Unauthenticated`.
ReadCredentials = Callable[[], Credentials]


class OperationLoader:
    """The `CallSource` of one operation, on behalf of the caller `credentials` names."""

    def __init__(
        self,
        fetch: Fetch,
        credentials: ReadCredentials,
        *,
        upstream_base: str,
        fetched_at: list[float] | None = None,
        max_requests: int | None = None,
    ) -> None:
        self._fetch = fetch
        self._credentials = credentials
        self._upstream_base = upstream_base
        # When each answer this operation used was fetched; see responses.ResponseNote.
        self.fetched_at = [] if fetched_at is None else fetched_at
        self._max_requests = max_requests
        self._inflight: dict[UpstreamRequest, asyncio.Future[UpstreamAnswer]] = {}
        self.upstream_requests = 0

    def credentials(self) -> Credentials:
        """The caller's credentials; raises `Unauthenticated` before any upstream request."""
        return self._credentials()

    async def list_calls(self, query: ListQuery) -> CallList:
        answer = await self._list(query)
        records, bad = parse_call_list(answer.body)
        return CallList(records, bad, answer.links.get("next"))

    def next_query(self, found: CallList, query: ListQuery) -> ListQuery | None:
        if found.next_url is None:
            return None
        return next_query(
            found.next_url,
            query,
            base_url=self._upstream_base,
            user_id=self.credentials().user_id,
        )

    async def list_calls_raw(self, query: ListQuery) -> Any:
        """The upstream's JSON body for `query`, unparsed (for the compiled path)."""
        return (await self._list(query)).body

    async def _list(self, query: ListQuery) -> UpstreamAnswer:
        credentials = self.credentials()
        request = UpstreamRequest(calls_path(credentials.user_id), tuple(query.params()))
        return await self._get(credentials, request)

    async def get_call(self, call_id: str) -> CallRecord | BadRecord | None:
        validate_id(call_id, "id")
        credentials = self.credentials()
        try:
            answer = await self._get(
                credentials, UpstreamRequest(call_path(credentials.user_id, call_id))
            )
        except NotFound as exc:
            # An unknown call is an expected outcome (null); an unknown user is an error.
            if exc.extra.get("upstreamCode") == "call-not-found":
                return None
            raise
        if not isinstance(answer.body, dict):
            raise UpstreamBadResponse("The upstream answered a call that is not a JSON object.")
        return parse_call(answer.body)

    async def _get(self, credentials: Credentials, request: UpstreamRequest) -> UpstreamAnswer:
        future = self._inflight.get(request)
        if future is None:
            # The backstop of the limit checked before execution, which cannot see
            # requests that depend on variables or on the upstream's answers.
            if self._max_requests is not None and self.upstream_requests >= self._max_requests:
                raise OperationTooComplex(
                    f"This operation needs more than {self._max_requests} upstream requests.",
                    limit="maxUpstreamRequests",
                )
            self.upstream_requests += 1
            future = asyncio.ensure_future(self._fetch(credentials, request))
            self._inflight[request] = future
        # shield: one field being cancelled must not cancel the request for the others.
        answer = await asyncio.shield(future)
        self.fetched_at.append(answer.fetched_at)
        return answer
