"""GraphQL over HTTP: the graphql-http audit suite, malformed requests, CSRF and CORS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli import settings_environment
from gateway.config import SettingsError, load_settings
from tests.conftest import Gateway, GatewayFactory, Sandbox
from tests.node import node_project, run_node

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"

# With CSRF prevention on (the default), a GET without a preflight-forcing header is
# exactly what a cross-site <img> or link could send, so these optional audits, which
# send bare GETs, are refused on purpose. Everything else passes.
REFUSED_FOR_CSRF = {
    "5A70": "MAY accept application/x-www-form-urlencoded formatted GET requests",
    "D6D5": "MAY allow URL-encoded JSON string {variables} parameter in GETs "
    "when accepting application/graphql-response+json",
    "6A70": "MAY allow URL-encoded JSON string {variables} parameter in GETs "
    "when accepting application/json",
}


@pytest.fixture(scope="module")
def audit_project() -> Path:
    return node_project("http-audit")


def audit(folder: Path, url: str, *, preflight: bool = False) -> list[dict[str, Any]]:
    env = {"AUDIT_URL": f"{url}/graphql", "AUDIT_PREFLIGHT": "1" if preflight else "0"}
    results: list[dict[str, Any]] = run_node(folder, "audit.mjs", env)
    print(f"\ngraphql-http audit of {url} (preflight header: {preflight}):")
    for result in results:
        print(f"  {result['status']:6} {result['id']} {result['name']}  {result['reason'] or ''}")
    return results


def test_the_audit_passes_every_must_against_the_default_gateway(
    audit_project: Path, loopback_gateway_factory: GatewayFactory
) -> None:
    gateway = loopback_gateway_factory(headers={})

    results = audit(audit_project, gateway.url)

    assert len(results) >= 60  # 61 in graphql-http 1.23
    assert [r for r in results if r["status"] == "error"] == []
    not_ok = {r["id"]: r["name"] for r in results if r["status"] != "ok"}
    assert not_ok == REFUSED_FOR_CSRF


def test_the_audit_passes_every_audit_for_a_client_that_forces_a_preflight(
    audit_project: Path, loopback_gateway_factory: GatewayFactory
) -> None:
    # What a browser client of a CSRF-protected server sends (Apollo Client does so).
    gateway = loopback_gateway_factory(headers={})

    results = audit(audit_project, gateway.url, preflight=True)

    assert [r for r in results if r["status"] != "ok"] == []
    assert len(results) >= 60  # 61 in graphql-http 1.23


# -- malformed requests: always a 4xx or a coded GraphQL error, never a 5xx --


def post_raw(gateway: Gateway, content: bytes, **headers: str) -> httpx.Response:
    return gateway.http.post(
        "/graphql", content=content, headers={"content-type": "application/json", **headers}
    )


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{", 400),
        (b"", 400),
        (b"null", 400),
        (b'"query"', 400),
        (b"[]", 400),
        (b'[{"query": "{ __typename }"}, {"query": "{ __typename }"}]', 400),
        (b'{"query": 1}', 400),
        (b'{"query": ["{ __typename }"]}', 400),
        (b'{"query": null}', 400),
        (b'{"query": "{ __typename }", "variables": "x"}', 400),
        (b'{"query": "{ __typename }", "variables": [1]}', 400),
        (b'{"query": "{ __typename }", "operationName": 5}', 400),
        (b'{"query": "{ __typename }", "extensions": 5}', 400),
        (b'\xff\xfe{"query"}', 400),
    ],
    ids=[
        "broken-json",
        "empty",
        "null",
        "string",
        "empty-batch",
        "batch",
        "query-number",
        "query-list",
        "query-null",
        "variables-string",
        "variables-list",
        "operation-name-number",
        "extensions-number",
        "not-utf8",
    ],
)
def test_malformed_bodies_are_4xx_with_a_code(
    gateway: Gateway, sandbox: Sandbox, content: bytes, status: int
) -> None:
    response = post_raw(gateway, content)

    assert response.status_code == status
    assert [e["extensions"]["code"] for e in response.json()["errors"]] == ["BAD_REQUEST"]
    assert sandbox.requests() == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"query": "{ calls { id "}, "GRAPHQL_PARSE_FAILED"),
        ({"query": "{ nope }"}, "GRAPHQL_VALIDATION_FAILED"),
        ({"query": "query A { __typename } query B { __typename }"}, "BAD_USER_INPUT"),
        (
            {"query": "query A { __typename }", "operationName": "Nope"},
            "BAD_USER_INPUT",
        ),
        (
            {"query": "query($s: Int!) { calls(size: $s) { id } }", "variables": {"s": "x"}},
            "BAD_USER_INPUT",
        ),
        ({"query": "{ a" * 5000 + "}" * 5000}, "OPERATION_TOO_COMPLEX"),
        ({"query": "{ calls { id } }" * 3000}, "OPERATION_TOO_COMPLEX"),
    ],
    ids=[
        "syntax",
        "unknown-field",
        "ambiguous-operation",
        "unknown-operation-name",
        "variable-type",
        "deep-nesting",
        "huge-document",
    ],
)
def test_bad_documents_are_coded_graphql_errors(
    gateway: Gateway, sandbox: Sandbox, body: dict[str, Any], code: str
) -> None:
    legacy = gateway.http.post("/graphql", json=body)
    modern = gateway.http.post("/graphql", json=body, headers={"accept": GRAPHQL_RESPONSE_JSON})

    assert legacy.status_code == 200
    assert modern.status_code == 400
    for response in (legacy, modern):
        errors = response.json()["errors"]
        assert {e["extensions"]["code"] for e in errors} == {code}
        assert "data" not in response.json()
    assert sandbox.requests() == []


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("PUT", {"content-type": "application/json"}, 405),
        ("DELETE", {}, 405),
        ("POST", {"content-type": "text/xml"}, 415),
        ("POST", {"content-type": "application/json", "accept": "text/xml"}, 406),
    ],
    ids=["put", "delete", "xml-body", "xml-accept"],
)
def test_wrong_methods_and_media_types(
    gateway: Gateway, method: str, headers: dict[str, str], status: int
) -> None:
    response = gateway.http.request(
        method, "/graphql", content=b'{"query": "{ __typename }"}', headers=headers
    )

    assert response.status_code == status
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


def test_mutations_and_unknown_operations_are_refused_on_get(gateway: Gateway) -> None:
    response = gateway.http.get(
        "/graphql", params={"query": "mutation { x }"}, headers={"apollo-require-preflight": "1"}
    )

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


# -- CSRF prevention (on by default) --


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", {}),
        ("POST", {"content-type": "text/plain"}),
        ("POST", {"content-type": "application/x-www-form-urlencoded"}),
        ("POST", {"content-type": "multipart/form-data; boundary=x"}),
    ],
    ids=["get", "text-plain", "form", "multipart"],
)
def test_requests_a_browser_sends_without_preflight_are_refused(
    gateway_factory: GatewayFactory, sandbox: Sandbox, method: str, headers: dict[str, str]
) -> None:
    gateway = gateway_factory(headers={})
    query = "{ calls { id } }"
    if method == "GET":
        response = gateway.http.get("/graphql", params={"query": query}, headers=headers)
    else:
        response = gateway.http.post(
            "/graphql", content=json.dumps({"query": query}).encode(), headers=headers
        )

    assert response.status_code == 400
    assert "Cross-Site Request Forgery" in response.json()["errors"][0]["message"]
    assert sandbox.requests() == []


@pytest.mark.parametrize(
    "header",
    ["apollo-require-preflight", "x-apollo-operation-name", "x-catapult-user-id"],
)
def test_a_preflight_forcing_header_lets_a_get_through(
    gateway_factory: GatewayFactory, header: str
) -> None:
    gateway = gateway_factory(headers={})

    response = gateway.http.get(
        "/graphql", params={"query": "{ __typename }"}, headers={header: "u-x"}
    )

    assert response.status_code == 200
    assert response.json() == {"data": {"__typename": "Query"}}


def test_csrf_prevention_can_be_switched_off(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(headers={}, csrf_prevention=False)

    response = gateway.http.get("/graphql", params={"query": "{ __typename }"})

    assert response.status_code == 200


# -- CORS: an allow-list, none by default --

PREFLIGHT = {
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type, x-catapult-user-id",
}


def test_no_origin_is_allowed_by_default(gateway: Gateway) -> None:
    preflight = gateway.http.options(
        "/graphql", headers={"origin": "https://app.example.com", **PREFLIGHT}
    )
    simple = gateway.query("{ __typename }", headers={"origin": "https://app.example.com"})

    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in simple.headers


def test_allow_listed_origins_get_cors_with_credentials(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(cors_origins="https://app.example.com, https://ops.example.com")

    allowed = gateway.http.options(
        "/graphql", headers={"origin": "https://ops.example.com", **PREFLIGHT}
    )
    refused = gateway.http.options(
        "/graphql", headers={"origin": "https://evil.example.net", **PREFLIGHT}
    )
    answer = gateway.query("{ __typename }", headers={"origin": "https://app.example.com"})

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://ops.example.com"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    allowed_headers = allowed.headers["access-control-allow-headers"].lower()
    for header in ("authorization", "content-type", "x-catapult-user-id"):
        assert header in allowed_headers
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    assert answer.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()


CLIENT_HEADERS = [
    pytest.param("apollographql-client-name, apollographql-client-version", id="apollo-client"),
    pytest.param("traceparent", id="traceparent"),
    pytest.param("traceparent, tracestate, baggage", id="otel-browser"),
    pytest.param(
        "authorization, content-type, x-catapult-user-id, apollographql-client-name, "
        "apollographql-client-version, traceparent, tracestate",
        id="everything-at-once",
    ),
    pytest.param("Traceparent, X-Tenant", id="from-the-setting"),
]


@pytest.mark.parametrize("asked", CLIENT_HEADERS)
def test_preflights_allow_the_headers_graphql_clients_send(
    gateway_factory: GatewayFactory, asked: str
) -> None:
    gateway = gateway_factory(cors_origins="https://app.example.com", cors_allow_headers="X-Tenant")

    preflight = gateway.http.options(
        "/graphql",
        headers={
            "origin": "https://app.example.com",
            "access-control-request-method": "POST",
            "access-control-request-headers": asked,
        },
    )

    assert preflight.status_code == 200, preflight.text
    allowed = {h.strip() for h in preflight.headers["access-control-allow-headers"].split(",")}
    assert {h.strip().lower() for h in asked.split(",")} <= {h.lower() for h in allowed}


def test_preflights_still_refuse_headers_nobody_allowed(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(cors_origins="https://app.example.com")

    preflight = gateway.http.options(
        "/graphql",
        headers={
            "origin": "https://app.example.com",
            "access-control-request-method": "POST",
            "access-control-request-headers": "traceparent, x-tenant",
        },
    )

    assert preflight.status_code == 400


@pytest.mark.parametrize("value", ["x tenant", "x-tenant:", "é"])
def test_cors_allow_headers_must_be_header_names(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_CORS_ALLOW_HEADERS: "):
        load_settings({"GATEWAY_CORS_ALLOW_HEADERS": value})


@pytest.mark.parametrize(
    "value", ["*", "app.example.com", "https://app.example.com/graphql", "ftp://x.example"]
)
def test_cors_origins_must_be_plain_origins(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_CORS_ORIGINS: "):
        load_settings({"GATEWAY_CORS_ORIGINS": value})


def test_cors_origins_reach_workers_intact() -> None:
    settings = load_settings(
        {
            "GATEWAY_CORS_ORIGINS": "https://a.example, http://b.example:8080",
            "GATEWAY_CORS_ALLOW_HEADERS": "X-Tenant, x-trace",
        }
    )

    assert settings.cors_origins == ("https://a.example", "http://b.example:8080")
    assert settings.cors_allow_headers == ("x-tenant", "x-trace")
    assert load_settings(settings_environment(settings)) == settings
