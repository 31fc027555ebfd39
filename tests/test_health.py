from __future__ import annotations

from tests.conftest import Gateway


def test_alive_and_ready(gateway: Gateway) -> None:
    alive = gateway.http.get("/healthz")
    ready = gateway.http.get("/readyz")

    assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_probes_are_not_counted_as_graphql_requests(gateway: Gateway) -> None:
    gateway.http.get("/healthz")
    gateway.http.get("/readyz")

    assert "gateway_requests_total{" not in gateway.http.get("/metrics").text
