"""Operation limits, the body size limit, and switching introspection and suggestions off."""

from __future__ import annotations

import asyncio
from typing import Any

import graphql
import pytest

from gateway import limits
from gateway.config import Settings
from gateway.sandbox import credential_headers
from gateway.upstream.routes import calls_path
from tests.conftest import DEMO, Gateway, GatewayFactory, Sandbox
from tests.fakes import FakeUpstream
from tests.inprocess import healthz_within_a_second_while, in_process

HEADERS = [(k.lower().encode(), v.encode()) for k, v in credential_headers(DEMO).items()]
DEFAULT_QUERY_BYTES = Settings.model_fields["max_query_bytes"].default


def codes(body: dict[str, Any]) -> list[str]:
    return [error["extensions"]["code"] for error in body.get("errors", [])]


def fan_out(count: int) -> str:
    return "{" + " ".join(f"c{i}: calls(page: {i}, size: 1) {{ id }}" for i in range(count)) + "}"


def test_an_alias_fan_out_of_200_calls_is_refused_before_any_upstream_request(
    gateway: Gateway, sandbox: Sandbox
) -> None:
    response = gateway.query(fan_out(200))

    assert response.status_code == 200
    body = response.json()
    assert "data" not in body
    assert set(codes(body)) == {"OPERATION_TOO_COMPLEX"}
    assert sandbox.requests() == []


def test_the_upstream_estimate_refuses_a_fan_out_that_other_limits_allow(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    gateway = gateway_factory(max_aliases=1000, max_root_fields=1000, max_tokens=100_000)

    body = gateway.query(fan_out(200)).json()

    assert codes(body) == ["OPERATION_TOO_COMPLEX"]
    assert body["errors"][0]["extensions"]["limit"] == "maxUpstreamRequests"
    assert sandbox.requests() == []


def test_identical_argument_sets_count_once_against_the_upstream_limit(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    gateway = gateway_factory(max_upstream_requests=1)
    query = "{" + " ".join(f"c{i}: calls(size: 2) {{ id }}" for i in range(20)) + "}"

    body = gateway.query(query).json()

    assert "errors" not in body
    assert len(body["data"]) == 20
    assert len(sandbox.requests()) == 1


def test_the_loader_refuses_requests_past_the_limit_that_variables_hid(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    # `_entities` names its ids through a variable, which no document check can count.
    gateway = gateway_factory(max_upstream_requests=3)
    query = "query($r: [_Any!]!) { _entities(representations: $r) { ... on Call { id } } }"
    representations = [{"__typename": "Call", "id": f"c-{i}"} for i in range(6)]

    body = gateway.query(query, {"r": representations}).json()

    assert "OPERATION_TOO_COMPLEX" in codes(body)
    assert len(sandbox.requests()) == 3


@pytest.mark.parametrize(
    ("settings", "query", "limit"),
    [
        ({"max_depth": 2}, "{ calls { sipHeaders { name } } }", "maxDepth"),
        ({"max_aliases": 2}, "{ a: __typename b: __typename c: __typename }", "maxAliases"),
        (
            {"max_root_fields": 2},
            '{ __typename calls { id } call(id: "c-1") { id } }',
            "maxRootFields",
        ),
        (
            {"max_tokens": 10},
            "{ calls { id from to state direction startTime endTime } }",
            "maxTokens",
        ),
        (
            {"max_depth": 2},
            "query { ...Deep } fragment Deep on Query { calls { sipHeaders { name } } }",
            "maxDepth",
        ),
        ({"max_query_bytes": 1024}, "{ calls { id } }\n#" + "a" * 1100, "maxQueryBytes"),
        # 600 characters, 1200 bytes: bytes are what is counted.
        ({"max_query_bytes": 1024}, "{ calls { id } }\n#" + "\u00e9" * 600, "maxQueryBytes"),
        # One token, however long: the token limit alone let it through.
        ({}, '{ calls(filter: {from: "' + "a" * 900_000 + '"}) { id } }', "maxQueryBytes"),
    ],
    ids=[
        "depth",
        "aliases",
        "root-fields",
        "tokens",
        "depth-through-fragment",
        "query-bytes",
        "query-bytes-utf8",
        "900KB-string-literal",
    ],
)
def test_each_limit_refuses_with_operation_too_complex(
    gateway_factory: GatewayFactory,
    sandbox: Sandbox,
    settings: dict[str, int],
    query: str,
    limit: str,
) -> None:
    gateway = gateway_factory(**settings)

    response = gateway.query(query, headers={"accept": "application/graphql-response+json"})

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert [e["extensions"]["code"] for e in errors] == ["OPERATION_TOO_COMPLEX"]
    assert errors[0]["extensions"]["limit"] == limit
    assert sandbox.requests() == []


def test_operations_within_the_default_limits_run(gateway: Gateway) -> None:
    body = gateway.query("{ calls(size: 3) { id sipHeaders { name value } } }").json()

    assert "errors" not in body
    assert len(body["data"]["calls"]) == 3


def test_graphiql_introspection_fits_the_default_limits(gateway: Gateway) -> None:
    from graphql import get_introspection_query

    query = get_introspection_query(descriptions=True, input_value_deprecation=True)
    body = gateway.query(query).json()

    assert "errors" not in body
    assert body["data"]["__schema"]["queryType"]["name"] == "Query"


def test_a_body_over_the_limit_is_413_not_a_crash(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(max_body_bytes=2048)

    response = gateway.query("{ __typename }" + " " * 4096)
    streamed = gateway.http.post(
        "/graphql",
        content=iter([b'{"query": "{ __typename }"', b" " * 4096, b"}"]),
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 413
    assert codes(response.json()) == ["BAD_REQUEST"]
    assert streamed.status_code == 413
    assert gateway.query("{ __typename }").json() == {"data": {"__typename": "Query"}}


def test_introspection_can_be_switched_off(gateway_factory: GatewayFactory) -> None:
    closed = gateway_factory(introspection=False)

    body = closed.query("{ __schema { queryType { name } } }").json()
    typename = closed.query("{ __typename }").json()

    assert set(codes(body)) == {"GRAPHQL_VALIDATION_FAILED"}
    assert "introspection" in body["errors"][0]["message"]
    assert typename == {"data": {"__typename": "Query"}}


def test_field_suggestions_can_be_switched_off(gateway_factory: GatewayFactory) -> None:
    helpful = gateway_factory().query("{ calls { idd } }").json()
    quiet = gateway_factory(field_suggestions=False).query("{ calls { idd } }").json()

    assert "Did you mean" in helpful["errors"][0]["message"]
    assert "Did you mean" not in quiet["errors"][0]["message"]
    assert codes(quiet) == ["GRAPHQL_VALIDATION_FAILED"]


def test_call_aliases_served_from_the_entity_view_are_not_refused_in_advance(
    gateway: Gateway, sandbox: Sandbox
) -> None:
    # A hit in the entity view costs no upstream request, so twenty `call` fields for
    # calls just listed must not count against maxUpstreamRequests (10) before running.
    listed = gateway.query("{ calls(size: 20) { id } }").json()["data"]["calls"]
    query = (
        "{" + " ".join(f'c{i}: call(id: "{c["id"]}") {{ id }}' for i, c in enumerate(listed)) + "}"
    )

    body = gateway.query(query).json()

    assert "errors" not in body
    assert [body["data"][f"c{i}"]["id"] for i in range(20)] == [c["id"] for c in listed]
    assert len(sandbox.requests()) == 1


# -- GATEWAY_MAX_CALLS_PER_OPERATION: the calls one operation may serve -------------------

LIST = "calls(size: {n}) { id }"
EDGES = "callsConnection(first: {n}) { edges { node { id } } }"
CALLS_BOUND = {"max_calls_per_operation": 10}
REFERENCES = "query($r: [_Any!]!) { _entities(representations: $r) { ... on Call { id } } }"


def aliases(field: str, count: int, n: int | str) -> str:
    return " ".join(f"a{i}: " + field.replace("{n}", str(n)) for i in range(count))


@pytest.mark.parametrize(
    ("settings", "query", "variables", "refused"),
    [
        pytest.param(
            CALLS_BOUND, "{ " + aliases(LIST, 2, 5) + " }", None, None, id="at-the-bound-served"
        ),
        # What the document says alone: refused before any upstream request.
        pytest.param(
            CALLS_BOUND, "{ " + aliases(LIST, 2, 6) + " }", None, "document", id="aliased-sizes"
        ),
        pytest.param(
            CALLS_BOUND,
            "{ a: " + LIST.replace("{n}", "6") + " b: " + EDGES.replace("{n}", "6") + " }",
            None,
            "document",
            id="list-and-connection",
        ),
        pytest.param(
            CALLS_BOUND,
            "{ ...F } fragment F on Query { " + aliases(LIST, 2, 6) + " }",
            None,
            "document",
            id="through-a-fragment",
        ),
        pytest.param(
            {"max_calls_per_operation": 75},
            "{ " + aliases("calls { id }", 4, "") + " }",
            None,
            "document",
            id="default-sizes-count",
        ),
        # Sizes in variables: only the count at run time sees them, on either path.
        pytest.param(
            CALLS_BOUND,
            "query($n: Int!) { " + aliases(LIST, 2, "$n") + " }",
            {"n": 6},
            "run time",
            id="variables-compiled-path",
        ),
        pytest.param(
            {**CALLS_BOUND, "fast_path": False},
            "query($n: Int!) { " + aliases(LIST, 2, "$n") + " }",
            {"n": 6},
            "run time",
            id="variables-standard-path",
        ),
        pytest.param(
            CALLS_BOUND,
            "query($n: Int!) { " + aliases(EDGES, 2, "$n") + " }",
            {"n": 6},
            "run time",
            id="variables-connection",
        ),
        pytest.param(
            # Eleven cold ids are more upstream requests than the default allows.
            {**CALLS_BOUND, "max_upstream_requests": 100},
            "{ " + " ".join(f'c{i}: call(id: "c-{i}") {{ id }}' for i in range(11)) + " }",
            None,
            "run time",
            id="single-calls",
        ),
        pytest.param(
            {**CALLS_BOUND, "max_upstream_requests": 100},
            REFERENCES,
            {"r": [{"__typename": "Call", "id": f"c-{i}"} for i in range(11)]},
            "run time",
            id="entities",
        ),
    ],
)
def test_an_operation_serves_at_most_max_calls(
    gateway_factory: GatewayFactory,
    sandbox: Sandbox,
    settings: dict[str, Any],
    query: str,
    variables: dict[str, Any] | None,
    refused: str | None,
) -> None:
    gateway = gateway_factory(**settings)

    body = gateway.query(query, variables).json()

    if refused is None:
        assert "errors" not in body
        assert sum(len(page) for page in body["data"].values()) == 10
        return
    errors = body.get("errors", [])
    assert errors, body
    assert {error["extensions"]["code"] for error in errors} == {"OPERATION_TOO_COMPLEX"}
    assert {error["extensions"]["limit"] for error in errors} == {"maxCallsPerOperation"}
    if refused == "document":
        assert "data" not in body
        assert sandbox.requests() == []
    else:
        # Refused once over the bound: whatever was served stays within it.
        served = [value for value in (body.get("data") or {}).values() if value is not None]
        assert len(served) <= 10


def test_a_document_at_the_default_byte_bound_runs(gateway: Gateway) -> None:
    query = "{ calls(size: 1) { id } }\n#"
    body = gateway.query(query + "a" * (DEFAULT_QUERY_BYTES - len(query))).json()

    assert "errors" not in body
    assert len(body["data"]["calls"]) == 1


def test_a_document_is_parsed_once_per_request(
    fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Over 16 KiB of text, a document is not kept by the endpoint's caches: each step
    # (validation, the compiled path's plan) used to parse it again.
    parses: list[int] = []

    def counting(source: str, **options: Any) -> Any:
        parses.append(len(source))
        return graphql.parse(source, **options)

    monkeypatch.setattr(limits, "parse", counting)
    fake_upstream.answer(calls_path(DEMO.user_id), b"[]")
    query = "{ calls(size: 1) { id } }\n#" + "a" * 20_000

    async def run() -> dict[str, Any]:
        async with in_process(fake_upstream.url) as client:
            response = await client.post("/graphql", json={"query": query}, headers=HEADERS)
            body: dict[str, Any] = response.json()
            return body

    assert asyncio.run(run()) == {"data": {"calls": []}}
    assert parses == [len(query)]


@pytest.mark.serial  # /healthz within 1 s while six documents are refused
def test_megabyte_comments_do_not_stall_the_event_loop(fake_upstream: FakeUpstream) -> None:
    # Six at once stalled /healthz 1.09 s: each was parsed several times, 0.5 s a parse.
    query = "{ calls(size: 1) { id } }\n#" + "a" * 1_000_000

    async def run() -> list[dict[str, Any]]:
        async with in_process(fake_upstream.url) as client:

            async def ask() -> dict[str, Any]:
                response = await client.post("/graphql", json={"query": query}, headers=HEADERS)
                body: dict[str, Any] = response.json()
                return body

            answers: list[dict[str, Any]] = await healthz_within_a_second_while(
                client, asyncio.gather(*(ask() for _ in range(6)))
            )
            return answers

    for answer in asyncio.run(run()):
        assert codes(answer) == ["OPERATION_TOO_COMPLEX"]
