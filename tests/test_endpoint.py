"""GraphQL over HTTP: methods, CSRF prevention, content negotiation, request ids, GraphiQL,
and the masking of unexpected errors."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest
from graphql import GraphQLField, GraphQLObjectType, GraphQLSchema, GraphQLString
from graphql.language.ast import Node
from starlette.requests import Request
from starlette.types import Message

from gateway.app import create_app
from gateway.config import load_settings
from gateway.context import Context
from gateway.credentials import CredentialsVerdict, caller
from gateway.errors import UpstreamTimeout
from gateway.graphiql import ASSETS
from gateway.loaders import OperationLoader
from gateway.media import GRAPHQL_RESPONSE_JSON
from gateway.observability.metrics import Metrics
from gateway.observability.telemetry import Telemetry
from gateway.pagination import CursorCodec
from gateway.sandbox import ACCOUNTS, credential_headers
from gateway.upstream.client import UpstreamAnswer
from gateway.upstream.entities import KnownCall
from gateway.upstream.tally import UpstreamTally
from tests.conftest import Gateway, Sandbox
from tests.fakes import bare_endpoint, in_process_endpoint
from tests.servers import free_port, serve

DEMO = ACCOUNTS[0]
QUERY = "{ calls(size: 2) { id } }"


@pytest.fixture
def gateway(shared_gateway: Gateway, sandbox: Sandbox) -> Gateway:
    """This module's tests share one gateway; the sandbox is reset per test."""
    return shared_gateway


def post(
    gateway: Gateway, content: bytes | str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """A POST with exactly these headers (besides the demo credentials)."""
    return gateway.http.post(
        "/graphql", content=content, headers={**credential_headers(DEMO), **(headers or {})}
    )


def code(response: httpx.Response) -> str:
    [error] = response.json()["errors"]
    result: str = error["extensions"]["code"]
    return result


# -- GET ---------------------------------------------------------------------------------

PREFLIGHT = [
    pytest.param({"X-Catapult-User-Id": DEMO.user_id}, id="user-id-header"),
    pytest.param({"Apollo-Require-Preflight": "true"}, id="apollo-require-preflight"),
    pytest.param({"X-Apollo-Operation-Name": "Q"}, id="x-apollo-operation-name"),
    pytest.param({"Content-Type": "application/json"}, id="json-content-type"),
]


@pytest.mark.parametrize("preflight", PREFLIGHT)
def test_a_get_query_with_a_preflight_forcing_header_runs(
    gateway: Gateway, sandbox: Sandbox, preflight: dict[str, str]
) -> None:
    # The user id header is needed for the query itself: send it via the query when the
    # preflight header under test is another one.
    headers = {**credential_headers(DEMO), **preflight}

    response = gateway.http.get("/graphql", params={"query": QUERY}, headers=headers)

    assert response.status_code == 200
    assert len(response.json()["data"]["calls"]) == 2
    assert len(sandbox.requests()) == 1


SIMPLE_REQUESTS = [
    pytest.param("GET", {}, id="get-without-headers"),
    pytest.param("GET", {"Content-Type": "text/plain"}, id="get-text-plain"),
    pytest.param("POST", {"Content-Type": "text/plain"}, id="post-text-plain"),
    pytest.param("POST", {"Content-Type": "application/x-www-form-urlencoded"}, id="post-form"),
    pytest.param("POST", {"Content-Type": "multipart/form-data; boundary=x"}, id="post-multipart"),
    pytest.param("GET", {"Apollo-Require-Preflight": ""}, id="empty-preflight-header"),
]


@pytest.mark.parametrize(("method", "headers"), SIMPLE_REQUESTS)
def test_a_request_a_browser_sends_without_preflight_is_blocked(
    gateway: Gateway, sandbox: Sandbox, method: str, headers: dict[str, str]
) -> None:
    # Credentials a browser would attach on its own (a cookie-less Basic header), no user id.
    headers = {"Authorization": credential_headers(DEMO)["Authorization"], **headers}
    body = json.dumps({"query": QUERY}) if method == "POST" else None

    response = gateway.http.request(
        method, "/graphql", params={"query": QUERY}, content=body, headers=headers
    )

    assert response.status_code == 400
    assert "Cross-Site Request Forgery" in response.json()["errors"][0]["message"]
    assert sandbox.requests() == []


def test_get_carries_variables_and_operation_name(gateway: Gateway, sandbox: Sandbox) -> None:
    params = {
        "query": "query A($s: Int!) { calls(size: $s) { id } } query B { calls { id } }",
        "variables": json.dumps({"s": 3}),
        "operationName": "A",
    }

    response = gateway.http.get("/graphql", params=params, headers=credential_headers(DEMO))

    assert len(response.json()["data"]["calls"]) == 3
    [request] = sandbox.requests()
    assert request["query"] == "page=0&size=3&sortOrder=desc"


def test_get_with_variables_that_are_not_json_is_a_bad_request(gateway: Gateway) -> None:
    params = {"query": QUERY, "variables": "{nope"}

    response = gateway.http.get("/graphql", params=params, headers=credential_headers(DEMO))

    assert response.status_code == 400
    assert code(response) == "BAD_REQUEST"


def test_a_mutation_over_get_is_not_allowed(gateway: Gateway, sandbox: Sandbox) -> None:
    response = gateway.http.get(
        "/graphql", params={"query": "mutation { x }"}, headers=credential_headers(DEMO)
    )

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert sandbox.requests() == []


def test_a_mutation_over_post_fails_validation(gateway: Gateway) -> None:
    response = gateway.query("mutation { x }")

    assert response.status_code == 200
    assert code(response) == "GRAPHQL_VALIDATION_FAILED"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_not_allowed(gateway: Gateway, method: str) -> None:
    response = gateway.http.request(method, "/graphql", headers=credential_headers(DEMO))

    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert code(response) == "BAD_REQUEST"


# -- POST bodies ---------------------------------------------------------------------------

BAD_BODIES = [
    pytest.param(b"{not json", 400, id="broken-json"),
    pytest.param(b"[]", 400, id="array-batch"),
    pytest.param(b'"a string"', 400, id="string"),
    pytest.param(b"{}", 400, id="no-query"),
    pytest.param(b'{"query": "   "}', 400, id="blank-query"),
    pytest.param(b'{"query": 1}', 400, id="query-not-string"),
    pytest.param(b'{"query": "{ calls { id } }", "variables": []}', 400, id="variables-list"),
    pytest.param(b'{"query": "{ calls { id } }", "operationName": 1}', 400, id="op-name-int"),
    pytest.param(b'{"query": "{ calls { id } }", "extensions": "x"}', 400, id="extensions-str"),
]


@pytest.mark.parametrize(("content", "status"), BAD_BODIES)
def test_a_malformed_body_is_a_bad_request(
    gateway: Gateway, sandbox: Sandbox, content: bytes, status: int
) -> None:
    response = post(gateway, content, {"Content-Type": "application/json"})

    assert response.status_code == status
    assert code(response) == "BAD_REQUEST"
    assert "data" not in response.json()
    assert sandbox.requests() == []


def test_a_body_that_is_not_json_by_content_type_is_unsupported(gateway: Gateway) -> None:
    response = post(gateway, "query=x", {"Content-Type": "application/xml"})

    assert response.status_code == 415


def test_a_json_content_type_with_charset_is_accepted(gateway: Gateway) -> None:
    response = post(
        gateway, json.dumps({"query": QUERY}), {"Content-Type": "application/json; charset=utf-8"}
    )

    assert len(response.json()["data"]["calls"]) == 2


# -- content negotiation -------------------------------------------------------------------

NEGOTIATION = [
    pytest.param(None, "application/json", id="no-accept"),
    pytest.param("application/json", "application/json", id="json"),
    pytest.param(GRAPHQL_RESPONSE_JSON, GRAPHQL_RESPONSE_JSON, id="graphql-response-json"),
    pytest.param("*/*", "application/json", id="anything"),
    pytest.param(
        f"application/json;q=0.5, {GRAPHQL_RESPONSE_JSON}", GRAPHQL_RESPONSE_JSON, id="by-quality"
    ),
    pytest.param(f"{GRAPHQL_RESPONSE_JSON};q=0, */*", "application/json", id="refused-type"),
]


@pytest.mark.parametrize(("accept", "media_type"), NEGOTIATION)
def test_the_response_media_type_follows_accept(
    gateway: Gateway, accept: str | None, media_type: str
) -> None:
    headers = {} if accept is None else {"Accept": accept}

    response = gateway.query(QUERY, headers={**credential_headers(DEMO), **headers})

    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == media_type


@pytest.mark.parametrize(
    ("query", "error_code"),
    [("{ calls { ", "GRAPHQL_PARSE_FAILED"), ("{ nope }", "GRAPHQL_VALIDATION_FAILED")],
    ids=["parse", "validation"],
)
@pytest.mark.parametrize(
    ("accept", "status"), [("application/json", 200), (GRAPHQL_RESPONSE_JSON, 400)]
)
def test_a_request_error_is_400_only_for_graphql_response_json(
    gateway: Gateway, sandbox: Sandbox, query: str, error_code: str, accept: str, status: int
) -> None:
    response = gateway.query(query, headers={**credential_headers(DEMO), "Accept": accept})

    assert response.status_code == status
    assert code(response) == error_code
    assert "data" not in response.json()
    assert sandbox.requests() == []


def test_a_field_error_is_200_with_data_for_graphql_response_json(gateway: Gateway) -> None:
    response = gateway.query(
        "{ calls(size: 0) { id } }",
        headers={**credential_headers(DEMO), "Accept": GRAPHQL_RESPONSE_JSON},
    )

    assert response.status_code == 200
    assert response.json()["data"] is None
    assert code(response) == "BAD_USER_INPUT"


@pytest.mark.parametrize("accept", ["text/csv", "application/xml", "application/json;q=0"])
def test_an_unacceptable_accept_is_406(gateway: Gateway, sandbox: Sandbox, accept: str) -> None:
    response = gateway.query(QUERY, headers={**credential_headers(DEMO), "Accept": accept})

    assert response.status_code == 406
    assert sandbox.requests() == []


def test_every_accept_line_is_read(gateway: Gateway) -> None:
    # Before, only the first line was: a second line naming JSON still got a 406.
    headers = [
        *credential_headers(DEMO).items(),
        ("content-type", "application/json"),
        ("accept", "text/csv"),
        ("accept", "application/json"),
    ]

    response = gateway.http.post("/graphql", content=json.dumps({"query": QUERY}), headers=headers)

    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "application/json"


# -- request ids ------------------------------------------------------------------------------

GENERATED = re.compile(r"[0-9a-f]{32}")


def test_a_request_id_is_echoed(gateway: Gateway) -> None:
    response = gateway.query(
        QUERY, headers={**credential_headers(DEMO), "X-Request-Id": "req-123.abc:9"}
    )

    assert response.headers["x-request-id"] == "req-123.abc:9"


@pytest.mark.parametrize("given", [None, "", "has space", "a" * 129, "<script>"], ids=repr)
def test_a_missing_or_unsafe_request_id_is_replaced(gateway: Gateway, given: str | None) -> None:
    extra = {} if given is None else {"X-Request-Id": given}

    response = gateway.query(QUERY, headers={**credential_headers(DEMO), **extra})

    assert GENERATED.fullmatch(response.headers["x-request-id"])


def test_error_responses_carry_a_request_id_too(gateway: Gateway) -> None:
    response = gateway.http.put("/graphql", headers={"X-Request-Id": "r-1"})

    assert response.headers["x-request-id"] == "r-1"


# -- GraphiQL --------------------------------------------------------------------------------

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def graphiql_config(page: str) -> dict[str, Any]:
    match = re.search(r'<script id="graphiql-config" type="application/json">(.*?)</script>', page)
    assert match is not None
    config: dict[str, Any] = json.loads(match.group(1))
    return config


def test_a_browser_gets_graphiql_with_pinned_assets(gateway: Gateway, sandbox: Sandbox) -> None:
    response = gateway.http.get("/graphql", headers=BROWSER)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    for asset in ASSETS:
        assert f'integrity="{asset.integrity}"' in page
        assert asset.cdn_url in page or asset.local_url in page
        assert "@" in asset.cdn_url  # pinned to a version
    config = graphiql_config(page)
    assert config["endpoint"] == "/graphql"
    assert json.loads(config["headers"]) == {}
    assert "calls" in config["query"]
    assert sandbox.requests() == []


@pytest.mark.parametrize(
    "accept",
    [
        pytest.param("text/html;q=0, application/json", id="html-refused"),
        pytest.param("application/json, text/html", id="json-listed-first"),
    ],
)
def test_graphiql_only_for_a_client_that_prefers_html(gateway: Gateway, accept: str) -> None:
    # Before, any mention of text/html got the page, `q=0` included.
    response = gateway.http.get("/graphql", headers={"Accept": accept})

    assert response.headers["content-type"].startswith("application/json")


def test_a_browser_get_with_a_query_runs_it(gateway: Gateway) -> None:
    response = gateway.http.get(
        "/graphql", params={"query": QUERY}, headers={**BROWSER, **credential_headers(DEMO)}
    )

    assert response.headers["content-type"].startswith("application/json")
    assert len(response.json()["data"]["calls"]) == 2


@pytest.fixture(scope="module")
def sandbox_mode() -> Iterator[str]:
    """A gateway in sandbox mode (the in-process sandbox) on a port chosen for it."""
    port = free_port()
    settings = load_settings({"GATEWAY_SANDBOX": "true", "GATEWAY_PORT": str(port)})
    with serve(create_app(settings), port=port) as url:
        yield url


def test_sandbox_mode_prefills_the_demo_credentials(sandbox_mode: str) -> None:
    page = httpx.get(sandbox_mode + "/graphql", headers=BROWSER).text

    headers = json.loads(graphiql_config(page)["headers"])
    assert headers == credential_headers(DEMO)


def test_sandbox_mode_answers_the_prefilled_query_with_sandbox_calls(sandbox_mode: str) -> None:
    page = httpx.get(sandbox_mode + "/graphql", headers=BROWSER).text
    config = graphiql_config(page)

    # What GraphiQL sends: a JSON POST with the pre-filled headers and the example query
    # (the tab holds a second example, the subscription, so it names the operation).
    response = httpx.post(
        sandbox_mode + config["endpoint"],
        json={"query": config["query"], "operationName": "LatestCalls"},
        headers=json.loads(config["headers"]),
    )

    calls = response.json()["data"]["calls"]
    assert len(calls) == 10
    assert all(call["id"].startswith("c-") for call in calls)


# -- masking unexpected errors ---------------------------------------------------------------
# No honest request to the real schema raises an unexpected exception, so a tiny schema
# with resolvers that fail on purpose drives the same endpoint.


def _boom(root: Any, info: Any) -> str:
    raise ValueError("database password is hunter2")


def _timeout(root: Any, info: Any) -> str:
    raise UpstreamTimeout("The upstream did not answer in time.")


FAILING_SCHEMA = GraphQLSchema(
    query=GraphQLObjectType(
        "Query",
        {
            "boom": GraphQLField(GraphQLString, resolve=_boom),
            "timeout": GraphQLField(GraphQLString, resolve=_timeout),
            "fine": GraphQLField(GraphQLString, resolve=lambda root, info: "ok"),
        },
    )
)


class _NoUpstream:
    """The failing schema makes no upstream requests."""

    async def list_calls(self, *args: Any, **options: Any) -> UpstreamAnswer:
        raise AssertionError("the failing schema makes no upstream requests")

    async def get_call(self, *args: Any, **options: Any) -> UpstreamAnswer | None:
        raise AssertionError("the failing schema makes no upstream requests")

    async def recall_calls(self, *args: Any) -> dict[str, KnownCall]:
        raise AssertionError("the failing schema makes no upstream requests")

    def next_page(self, *args: Any) -> None:
        raise AssertionError("the failing schema makes no upstream requests")


def _context(request_id: str, credentials: CredentialsVerdict, *, refresh: bool) -> Context:
    tally = UpstreamTally()
    return Context(
        request_id=request_id,
        calls=OperationLoader(
            _NoUpstream(),
            partial(caller, credentials),
            tally=tally,
            deadline=time.monotonic() + 5,
            refresh=False,
            max_requests=None,
            max_calls=5000,
        ),
        cursors=CursorCodec(b"a test cursor key"),
        max_entities=1000,
        tally=tally,
    )


@pytest.fixture(scope="module")
def failing_endpoint() -> Iterator[str]:
    telemetry = Telemetry(Metrics(multiprocess_dir=None), None)
    endpoint = bare_endpoint(FAILING_SCHEMA, _context, telemetry)
    with serve(endpoint, lifespan="off") as url:
        yield url


@pytest.mark.server_errors
def test_an_unexpected_exception_is_masked_with_the_request_id(
    failing_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="gateway.request"):
        response = httpx.post(
            failing_endpoint,
            json={"query": "{ fine boom }"},
            headers={"X-Request-Id": "req-masked"},
        )

    assert response.status_code == 200
    assert response.json() == {
        "errors": [
            {
                "message": "Internal server error (request id req-masked).",
                "extensions": {"code": "INTERNAL_SERVER_ERROR", "requestId": "req-masked"},
                "locations": [{"line": 1, "column": 8}],
                "path": ["boom"],
            }
        ],
        "data": {"fine": "ok", "boom": None},
    }
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    # The detail goes to the log, with the request id to find it by.
    [record] = [r for r in caplog.records if r.exc_info]
    assert "req-masked" in record.getMessage()
    assert record.exc_info is not None
    assert "hunter2" in str(record.exc_info[1])


def test_a_gateway_error_keeps_its_code_and_message(failing_endpoint: str) -> None:
    response = httpx.post(failing_endpoint, json={"query": "{ timeout }"})

    [error] = response.json()["errors"]
    assert error["message"] == "The upstream did not answer in time."
    assert error["extensions"] == {"code": "UPSTREAM_TIMEOUT"}


# -- what a refused document leaves behind --------------------------------------------------

REFUSED = [
    pytest.param("POST", "{ nope }", "GRAPHQL_VALIDATION_FAILED", id="invalid"),
    pytest.param(
        "POST",
        "{ " + " ".join(f"a{n}: fine" for n in range(25)) + " }",
        "OPERATION_TOO_COMPLEX",
        id="over-a-limit",
    ),
    pytest.param("POST", "subscription { fine }", "BAD_REQUEST", id="subscription-over-post"),
    pytest.param("GET", "mutation { fine }", "BAD_REQUEST", id="mutation-over-get"),
]


def _nodes_of(marker: str) -> int:
    """Syntax nodes still referenced from documents whose text holds `marker`."""
    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        if isinstance(o, Node) and o.loc is not None and marker in o.loc.source.body
    )


@pytest.mark.parametrize(("method", "query", "expected"), REFUSED)
def test_a_refused_document_keeps_no_parse(
    failing_endpoint: str, method: str, query: str, expected: str
) -> None:
    # Distinct refused documents (cache stuffing) must not fill the document cache with
    # their syntax trees: a parse held for the cache's lifetime is megabytes of small
    # objects that keep the allocator's arenas resident after it is freed.
    marker = f"refused-{method}-{expected}"

    def send(n: int) -> httpx.Response:
        document = f"# {marker} {n}\n{query}"
        if method == "GET":
            preflighted = {"Apollo-Require-Preflight": "true"}
            return httpx.get(failing_endpoint, params={"query": document}, headers=preflighted)
        return httpx.post(failing_endpoint, json={"query": document})

    answers = [send(n) for n in range(10)]
    again = send(0)

    assert [code(answer) for answer in answers] == [expected] * 10
    # A verdict kept reads the same as the first one.
    assert again.status_code == answers[0].status_code
    assert again.json() == answers[0].json()
    assert _nodes_of(marker) == 0


def test_an_accepted_document_keeps_its_parse(failing_endpoint: str) -> None:
    assert httpx.post(failing_endpoint, json={"query": "# kept\n{ fine }"}).status_code == 200
    assert _nodes_of("# kept") > 0


def test_a_subscription_over_an_event_stream_keeps_no_parse_here(gateway: Gateway) -> None:
    # The endpoint parses a subscription only to see what it is, and the live operations
    # find that parse in the same cache: refused there, it is not kept.
    for n in range(3):
        query = f"# streamed {n}\nsubscription {{ callsUpdated {{ nope }} }}"
        response = gateway.http.post(
            "/graphql",
            json={"query": query},
            headers={**credential_headers(DEMO), "Accept": "application/json, text/event-stream"},
        )
        assert "GRAPHQL_VALIDATION_FAILED" in response.text

    assert _nodes_of("# streamed") == 0


class _HangingUpstream:
    """Sends one HTTP attempt (counted in the tally, as the client counts it), whose answer
    never comes: the request is cut short while it waits."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    async def list_calls(self, *args: Any, tally: UpstreamTally, **options: Any) -> UpstreamAnswer:
        tally.request_sent()
        self.asked.set()
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    async def get_call(self, *args: Any, **options: Any) -> UpstreamAnswer | None:
        raise AssertionError("these tests list calls only")

    async def recall_calls(self, *args: Any) -> dict[str, KnownCall]:
        raise AssertionError("these tests list calls only")

    def next_page(self, *args: Any) -> None:
        raise AssertionError("never answered, so never followed")


@pytest.mark.server_errors
def test_a_request_cut_short_still_logs_what_its_operation_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The endpoint hands its record the context's tally before it awaits the run: the
    # line of a request cancelled mid-operation (a shutdown) counts the attempt it sent.
    upstream = _HangingUpstream()
    telemetry = Telemetry(Metrics(multiprocess_dir=None), None)
    endpoint = in_process_endpoint(upstream, telemetry)
    headers = {**credential_headers(ACCOUNTS[0]), "content-type": "application/json"}
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/graphql",
        "query_string": b"",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
    }
    body = json.dumps({"query": "{ calls { id } }"}).encode()

    async def receive() -> Message:
        return {"type": "http.request", "body": body}

    async def cut_short() -> None:
        handled = asyncio.ensure_future(endpoint.handle(Request(scope, receive)))
        await asyncio.wait_for(upstream.asked.wait(), 5)
        handled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handled

    with caplog.at_level(logging.INFO, logger="gateway.request"):
        asyncio.run(cut_short())

    [line] = [r.__dict__ for r in caplog.records if r.getMessage() == "graphql request"]
    assert (line["status"], line["upstream_requests"]) == (503, 1)
