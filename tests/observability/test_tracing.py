from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.app import create_app, create_telemetry
from gateway.config import load_settings
from gateway.observability.tracing import Tracing, upstream_route
from gateway.sandbox import credential_headers
from tests.conftest import DEMO, Sandbox
from tests.servers import serve

CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver that keeps every span it is sent."""

    url: str
    spans: list[Span] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    spans: list[Span] = []

    async def traces(request: Request) -> Response:
        export = ExportTraceServiceRequest.FromString(await request.body())
        for resource_spans in export.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                spans.extend(scope_spans.spans)
        return Response(
            ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf"
        )

    app = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
    with serve(app) as url:
        yield Receiver(url, spans)


def test_spans_exported_and_trace_context_forwarded_upstream(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    settings = load_settings(
        {"GATEWAY_UPSTREAM_URL": sandbox.url, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
    )
    assert settings.otlp_endpoint is not None
    headers = {
        **credential_headers(DEMO),
        "traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01",
    }
    # Leaving `serve` runs the lifespan's shutdown, which flushes the exporter.
    with serve(create_app(settings)) as url:
        response = httpx.post(
            f"{url}/graphql",
            json={"query": "query Two { a: calls(size: 2) { id } b: calls(size: 3) { id } }"},
            headers=headers,
        )
        assert response.status_code == 200
        assert "errors" not in response.json()

    server_spans = [s for s in receiver.spans if s.kind == Span.SPAN_KIND_SERVER]
    client_spans = [s for s in receiver.spans if s.kind == Span.SPAN_KIND_CLIENT]
    [server] = server_spans
    assert len(client_spans) == 2
    assert server.trace_id.hex() == CALLER_TRACE_ID
    assert server.parent_span_id.hex() == CALLER_SPAN_ID
    assert server.name == "POST /graphql"
    attributes = {a.key: a.value for a in server.attributes}
    assert attributes["graphql.operation.name"].string_value == "Two"
    assert attributes["http.response.status_code"].int_value == 200
    upstream = sandbox.requests()
    assert len(upstream) == 2
    forwarded = {entry["headers"]["traceparent"] for entry in upstream}
    expected = {f"00-{CALLER_TRACE_ID}-{s.span_id.hex()}-01" for s in client_spans}
    assert forwarded == expected
    for span in client_spans:
        assert span.trace_id == server.trace_id
        assert span.parent_span_id == server.span_id
        assert span.name == "GET /v1/users/{userId}/calls/"
        assert DEMO.user_id not in str(span)


def test_a_cache_hit_is_traced_without_an_upstream_span(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    settings = load_settings(
        {
            "GATEWAY_UPSTREAM_URL": sandbox.url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "GATEWAY_CACHE_TTL": "30",
        }
    )
    body = {"query": "query Latest { calls(size: 2) { id } }"}
    with serve(create_app(settings)) as url:
        for _ in range(2):
            response = httpx.post(f"{url}/graphql", json=body, headers=credential_headers(DEMO))
            assert response.status_code == 200

    server_spans = [s for s in receiver.spans if s.kind == Span.SPAN_KIND_SERVER]
    client_spans = [s for s in receiver.spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert len(server_spans) == 2  # the fill and the hit
    assert len(client_spans) == 1  # only the fill asked the upstream
    assert len(sandbox.requests()) == 1
    for span in server_spans:
        attributes = {a.key: a.value for a in span.attributes}
        assert attributes["graphql.operation.name"].string_value == "Latest"
        assert attributes["http.response.status_code"].int_value == 200


def test_no_trace_context_without_an_endpoint(sandbox: Sandbox) -> None:
    settings = load_settings({"GATEWAY_UPSTREAM_URL": sandbox.url})
    with serve(create_app(settings)) as url:
        httpx.post(
            f"{url}/graphql",
            json={"query": "{ calls(size: 1) { id } }"},
            headers={
                **credential_headers(DEMO),
                "traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01",
            },
        ).raise_for_status()

    [request] = sandbox.requests()
    assert "traceparent" not in request["headers"]


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v1/users/u-1/calls/", "/v1/users/{userId}/calls/"),
        ("/v1/users/u-1/calls", "/v1/users/{userId}/calls/"),
        ("/v1/users/u-1/calls/c-9", "/v1/users/{userId}/calls/{callId}"),
        ("/v1/users/u-1/calls/c-9/events", "other"),
    ],
    ids=["list", "list-no-slash", "one", "unknown"],
)
def test_upstream_routes_carry_no_ids(path: str, route: str) -> None:
    assert upstream_route(path) == route


def test_the_service_name_is_the_apps_not_the_environments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Resource.create would take OTEL_SERVICE_NAME over the name the app passes.
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-the-environment")
    tracing = Tracing("http://127.0.0.1:9", service_name="catapult-gateway", resource_attributes={})
    try:
        assert tracing.provider.resource.attributes["service.name"] == "catapult-gateway"
    finally:
        tracing.shutdown()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, {"service.name": "catapult-gateway"}, id="default"),
        pytest.param({"OTEL_SERVICE_NAME": "gw-eu"}, {"service.name": "gw-eu"}, id="service-name"),
        pytest.param(
            {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod, team=calls%2Cvoice"},
            {
                "service.name": "catapult-gateway",
                "deployment.environment": "prod",
                "team": "calls,voice",
            },
            id="resource-attributes",
        ),
        pytest.param(
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=other", "OTEL_SERVICE_NAME": "gw-eu"},
            {"service.name": "gw-eu"},
            id="the-service-name-wins",
        ),
    ],
)
def test_the_spans_resource_is_the_settings(
    environ: dict[str, str], expected: dict[str, str]
) -> None:
    settings = load_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", **environ})
    tracing = create_telemetry(settings, None).tracing
    assert tracing is not None
    try:
        attributes = tracing.provider.resource.attributes
        assert {key: attributes.get(key) for key in expected} == expected
    finally:
        tracing.shutdown()
