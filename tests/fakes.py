"""A recording fake upstream: canned answers per path, every request it received recorded.

`upstream_call` builds the call records tests give it to answer; `upstream_client` is the
gateway's upstream client in front of an in-process fake (an `httpx.MockTransport`).

Serve it with `tests.servers.serve(fake.app)` and point a gateway's `upstream_url` at it
when a test needs an answer the seeded sandbox never gives (an odd record, a header in
another form). Paths without a canned answer get a 404 in the upstream's error shape.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
from graphql import GraphQLSchema
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.body_budget import BodyBudget
from gateway.context import MakeContext
from gateway.context_factory import ContextFactory
from gateway.endpoint import GraphQLEndpoint
from gateway.execution import GraphQLExecution
from gateway.limits import OperationLimits
from gateway.observability.telemetry import Telemetry
from gateway.pagination import CursorCodec
from gateway.schema import build_schema, graphql_core_schema
from gateway.upstream.client import CatapultClient


@dataclass(frozen=True)
class Canned:
    """One answer: a status, a body (JSON-encoded unless it is bytes) and headers.

    `header_lines` are sent as they are, after `headers`, so a header may repeat
    (several `Link` lines).
    """

    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    header_lines: tuple[tuple[str, str], ...] = ()

    def response(self) -> Response:
        content = self.body if isinstance(self.body, bytes) else orjson.dumps(self.body)
        response = Response(
            content, self.status, headers=self.headers, media_type="application/json"
        )
        response.raw_headers += [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in self.header_lines
        ]
        return response


@dataclass(frozen=True)
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]


_NOT_FOUND = Canned(
    {"category": "not-found", "code": "resource-not-found", "message": "No canned answer"}, 404
)


class FakeUpstream:
    """Answers `GET <path>` with what `answer(path, ...)` set; records every request."""

    def __init__(self) -> None:
        self.url = ""  # set by whoever serves it
        self._answers: dict[str, Canned] = {}
        self._by_query: dict[tuple[str, frozenset[tuple[str, str]]], Canned] = {}
        self._requests: list[Recorded] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["GET"])])

    def answer(
        self,
        path: str,
        body: Any = None,
        *,
        status: int = 200,
        query: dict[str, str] | None = None,
        header_lines: tuple[tuple[str, str], ...] = (),
        **headers: str,
    ) -> None:
        """Answer requests for `path` (without the query string) with this body from now on.

        With `query`, only requests whose decoded query parameters are exactly these
        (in any order and encoding) get this answer; they take precedence.
        """
        canned = Canned(
            body, status, {k.replace("_", "-"): v for k, v in headers.items()}, header_lines
        )
        if query is None:
            self._answers[path] = canned
        else:
            self._by_query[(path, frozenset(query.items()))] = canned

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    async def _endpoint(self, request: Request) -> Response:
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        recorded = Recorded(
            method=request.method,
            path=raw_path.decode("latin-1"),
            query=request.scope["query_string"].decode("latin-1"),
            headers=dict(request.headers),
        )
        with self._lock:
            self._requests.append(recorded)
        params = frozenset(parse_qsl(recorded.query, keep_blank_values=True))
        canned = self._by_query.get((recorded.path, params)) or self._answers.get(recorded.path)
        return (canned or _NOT_FOUND).response()


# A value for `upstream_call` that leaves its key out of the record.
ABSENT: Any = object()


def upstream_call(call_id: str = "c-1", **fields: Any) -> dict[str, Any]:
    """One call as the upstream's list answers it: a plain completed outgoing call.

    `fields` replace or add keys by their upstream names (`None` is a JSON null, as the
    upstream may send it; `from` goes through `**{"from": ...}`); `ABSENT` leaves one out.
    """
    record: dict[str, Any] = {
        "id": call_id,
        "direction": "out",
        "from": "+19195550100",
        "to": "+19195550101",
        "state": "completed",
        "startTime": "2013-02-08T13:15:47.587Z",
        **fields,
    }
    return {key: value for key, value in record.items() if value is not ABSENT}


def upstream_client(
    transport: httpx.AsyncBaseTransport,
    *,
    retries: int = 0,
    upstream_timeout: float = 5,
    body_budget: BodyBudget | None = None,
) -> CatapultClient:
    """The upstream client as the gateway builds it, in front of `transport` (a fake):
    no retries and an unbounded body budget unless a test is about them."""
    return CatapultClient(
        transport,
        base_url="http://upstream",
        retries=retries,
        upstream_timeout=upstream_timeout,
        body_budget=BodyBudget(1 << 30) if body_budget is None else body_budget,
        connect_timeout=3.0,
        on_retry=lambda: None,
    )


def in_process_endpoint(upstream: Any, telemetry: Telemetry) -> GraphQLEndpoint:
    """The app's endpoint, execution and context factory over `upstream` (a `CallService`),
    without the middleware in front: an operation's whole way down, in process. Requests
    time out after 20 s."""
    contexts = ContextFactory(
        upstream,
        cursors=CursorCodec(b"a test cursor key"),
        request_timeout=20.0,
        max_upstream_requests=10,
        max_calls_per_operation=5000,
        max_entities=1000,
    )
    return bare_endpoint(graphql_core_schema(build_schema()), contexts, telemetry)


def bare_endpoint(
    schema: GraphQLSchema, make_context: MakeContext, telemetry: Telemetry
) -> GraphQLEndpoint:
    """An endpoint executing `schema` with contexts from `make_context`, with the default
    limits and the fast path: no event streams, no GraphiQL, no persisted queries."""
    return GraphQLEndpoint(
        GraphQLExecution(
            schema,
            report_warnings=telemetry.upstream_warnings,
            persisted_queries=None,
            limits=OperationLimits(),
            fast_path=True,
            introspection=True,
            suggestions=True,
        ),
        make_context,
        graphiql=None,
        telemetry=telemetry,
        max_body_bytes=1_048_576,
        csrf_prevention=True,
        get_max_age=0,
        event_streams=None,
    )
