"""CORS as a browser enforces it: a page on another origin calls the gateway with the
headers real GraphQL clients add (Apollo Client's client awareness, W3C Trace Context and
Baggage from browser OpenTelemetry). Debian's Chromium, driven by Playwright, as in
tests/test_graphiql_browser.py; skipped without it unless GATEWAY_TEST_REQUIRE_BROWSER is set.
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from gateway.sandbox import credential_headers
from tests.conftest import DEMO, GatewayFactory
from tests.servers import serve
from tests.test_graphiql_browser import CHROMIUM, CHROMIUM_FLAGS, _require

CALL_FROM_THE_PAGE = """
async ({ url, headers }) => {
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify({ query: "{ calls(size: 2) { id } }" }),
    });
    return { status: response.status, body: await response.json() };
  } catch (error) {
    return { thrown: String(error) };
  }
}
"""


async def _page(request: Request) -> HTMLResponse:
    return HTMLResponse("<!doctype html><title>frontend</title><p>another origin</p>")


@pytest.mark.slow  # a real browser: start-up alone takes seconds
def test_a_browser_on_an_allowed_origin_sends_client_and_tracing_headers(
    loopback_gateway_factory: GatewayFactory,
) -> None:
    _require("chromium", CHROMIUM.is_file(), "GATEWAY_TEST_REQUIRE_BROWSER")
    from playwright.sync_api import sync_playwright

    with serve(Starlette(routes=[Route("/", _page)])) as frontend:
        gateway = loopback_gateway_factory(cors_origins=frontend)
        headers = {
            **credential_headers(DEMO),
            "apollographql-client-name": "web",
            "apollographql-client-version": "1.2.3",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate": "vendor=opaque",
            "baggage": "userTier=gold",
        }
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
            )
            try:
                page = browser.new_page()
                page.goto(frontend, wait_until="load")
                result: dict[str, Any] = page.evaluate(
                    CALL_FROM_THE_PAGE, {"url": f"{gateway.url}/graphql", "headers": headers}
                )
            finally:
                browser.close()

    assert "thrown" not in result, result
    assert result["status"] == 200
    assert len(result["body"]["data"]["calls"]) == 2
