from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from starlette.requests import Request

from gateway.health import readyz
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


class _Client:
    base_url = "http://upstream.test"


class _Upstream:
    async def check(self) -> dict[str, Any]:
        return {"pacing": {"rate": math.inf, "nan": math.nan}, "cache": {"backend": "memory"}}


def test_readyz_never_answers_500_for_what_it_reports() -> None:
    # Before: GATEWAY_UPSTREAM_RATE=inf put `inf` in the pacing state and Starlette's
    # JSONResponse refused it: /readyz answered 500.
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/readyz",
        "headers": [],
        "state": {"catapult": _Client(), "upstream": _Upstream()},
    }

    response = asyncio.run(readyz(Request(scope)))

    assert response.status_code == 200
    assert json.loads(bytes(response.body))["pacing"] == {"rate": None, "nan": None}
