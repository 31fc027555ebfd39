from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from gateway.health import Readiness
from tests.conftest import Gateway


def test_alive_and_ready(gateway: Gateway) -> None:
    alive = gateway.http.get("/healthz")
    ready = gateway.http.get("/readyz")

    assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def graphql_requests_counted(gateway: Gateway) -> float:
    """The sum of the gateway's GraphQL request counter, over every label."""
    families = text_string_to_metric_families(gateway.http.get("/metrics").text)
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == "gateway_requests_total"
    )


def test_probes_are_not_counted_as_graphql_requests(gateway: Gateway) -> None:
    gateway.http.get("/healthz")
    gateway.http.get("/readyz")
    # One GraphQL request after the probes: the counter must exist under this name and
    # count it, or a renamed counter would pass for one that ignores the probes.
    assert gateway.query("{ calls(size: 1) { id } }").status_code == 200

    assert graphql_requests_counted(gateway) == 1


class _Client:
    base_url = "http://upstream.test"


class _Upstream:
    """The upstream service as readiness sees it; open unless a test says otherwise."""

    def __init__(self, *, is_open: bool = True) -> None:
        self.is_open = is_open

    async def check(self) -> dict[str, Any]:
        return {"pacing": {"rate": math.inf, "nan": math.nan}, "cache": {"backend": "memory"}}


def test_readyz_never_answers_500_for_what_it_reports() -> None:
    # Before: GATEWAY_UPSTREAM_RATE=inf put `inf` in the pacing state and Starlette's
    # JSONResponse refused it: /readyz answered 500.
    scope = {"type": "http", "method": "GET", "path": "/readyz", "headers": []}

    response = asyncio.run(Readiness(_Client(), _Upstream()).readyz(Request(scope)))

    assert response.status_code == 200
    assert json.loads(bytes(response.body))["pacing"] == {"rate": None, "nan": None}


def test_readyz_says_starting_until_the_lifespan_opens_the_upstream() -> None:
    upstream = _Upstream(is_open=False)
    readiness = Readiness(_Client(), upstream)
    scope = {"type": "http", "method": "GET", "path": "/readyz", "headers": []}

    starting = asyncio.run(readiness.readyz(Request(scope)))
    upstream.is_open = True
    ready = asyncio.run(readiness.readyz(Request(scope)))

    assert (starting.status_code, json.loads(bytes(starting.body))) == (
        503,
        {"status": "starting"},
    )
    assert (ready.status_code, json.loads(bytes(ready.body))["status"]) == (200, "ready")
