"""GraphiQL with no internet access, in a real headless Chromium.

The pinned files are fetched the way the build does (`npm pack`, hashes checked) into the
package's static folder, the gateway serves them in sandbox mode, and the browser may
reach nothing but loopback: every other request is aborted and recorded.

Debian's chromium is driven by Playwright (never a browser Playwright downloads). Without
chromium the test is skipped, unless GATEWAY_TEST_REQUIRE_BROWSER is set (CI sets it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gateway.app import create_app
from gateway.config import load_settings
from gateway.graphiql import ASSETS, DEFAULT_STATIC_DIR, FetchError, fetch_assets
from tests.servers import free_port, serve

CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = Path(__file__).parent.parent / "test-output"
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Belt and braces beside the route interception: no name but loopback resolves.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]


def _require(tool: str, present: bool, variable: str) -> None:
    if not present:
        if os.environ.get(variable):
            pytest.fail(f"{tool} is required ({variable} is set) but missing")
        pytest.skip(f"{tool} is not installed (set {variable} to make this a failure)")


@pytest.fixture(scope="module")
def pinned_assets() -> Path:
    if all((DEFAULT_STATIC_DIR / asset.name).is_file() for asset in ASSETS):
        return DEFAULT_STATIC_DIR
    _require("npm", shutil.which("npm") is not None, "GATEWAY_TEST_REQUIRE_BROWSER")
    fetch_assets(DEFAULT_STATIC_DIR)
    return DEFAULT_STATIC_DIR


@pytest.fixture
def sandbox_gateway(pinned_assets: Path) -> Iterator[str]:
    # Sandbox mode reaches its sandbox through its own port, so it must know it up front.
    port = free_port()
    settings = load_settings({"GATEWAY_SANDBOX": "true", "GATEWAY_PORT": str(port)})
    with serve(create_app(settings), port=port) as url:
        yield url


def test_graphiql_runs_the_example_query_offline(sandbox_gateway: str) -> None:
    _require("chromium", CHROMIUM.is_file(), "GATEWAY_TEST_REQUIRE_BROWSER")
    from playwright.sync_api import Route, sync_playwright

    blocked: list[str] = []
    served_locally: list[str] = []

    def only_loopback(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOOPBACK:
            if "/graphiql/assets/" in url:
                served_locally.append(url.rsplit("/", 1)[-1])
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    OUTPUT.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.route("**/*", only_loopback)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{sandbox_gateway}/graphql", wait_until="load")
            page.locator(".graphiql-execute-button").click(timeout=20_000)
            result = page.locator(".graphiql-response")
            page.wait_for_function(
                "() => (document.querySelector('.graphiql-response')?.innerText ?? '')"
                ".includes('chargeableDuration')",
                timeout=20_000,
            )
            text = result.inner_text()
            headers = page.locator(".graphiql-editor-tool").inner_text()
            page.screenshot(path=str(OUTPUT / "graphiql-offline.png"))
        finally:
            browser.close()

    assert '"calls"' in text
    assert '"id": "c-' in text
    assert "errors" not in text
    assert "X-Catapult-User-Id" in headers  # the sandbox headers were pre-filled
    assert sorted(served_locally) == sorted(asset.name for asset in ASSETS)
    assert blocked == []
    assert errors == []


def test_fetch_refuses_a_tarball_that_is_not_the_pinned_one(tmp_path: Path) -> None:
    # A stand-in `npm` that packs a look-alike react: same file names, other bytes.
    package = tmp_path / "package" / "umd"
    package.mkdir(parents=True)
    (package / "react.production.min.js").write_text("/* not react */")
    fake_npm = tmp_path / "npm"
    fake_npm.write_text(
        f'#!/bin/sh\ntar -czf react-18.3.1.tgz -C "{tmp_path}" package\necho react-18.3.1.tgz\n'
    )
    fake_npm.chmod(0o755)
    target = tmp_path / "vendor"

    with pytest.raises(FetchError, match=r"react@18\.3\.1: tarball is sha512-"):
        fetch_assets(target, npm=str(fake_npm))
    assert list(target.iterdir()) == []
