"""GraphiQL with no internet access, in a real headless Chromium.

The pinned files are vendored in the package (`gateway/static/vendor/`, hashes checked
here); the gateway serves them, and the browser may reach nothing but loopback: every other
request is aborted and recorded. One test builds the sdist and the wheel from it, installs
the wheel into a fresh virtual environment and opens GraphiQL from that installation.

Debian's chromium is driven by Playwright (never a browser Playwright downloads). Without
chromium the test is skipped, unless GATEWAY_TEST_REQUIRE_BROWSER is set (CI sets it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from gateway.app import create_app
from gateway.config import load_settings
from gateway.graphiql import (
    ASSETS,
    GraphiQLPage,
    integrity,
)
from tests.servers import free_port, serve
from tests.test_graphiql import FETCH_COMMAND

if TYPE_CHECKING:
    from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = ROOT / "test-output"
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


@dataclass
class Visit:
    """What the browser saw of the GraphiQL page, with only loopback reachable."""

    text: str = ""  # the response pane, or the page's message when GraphiQL did not load
    headers: str = ""  # the headers editor
    served_locally: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextmanager
def offline_page(
    *, blocked: list[str], errors: list[str], served: Callable[[str], None] = lambda url: None
) -> Iterator[Page]:
    """A page of a headless Chromium that may reach nothing but loopback: every other
    request is aborted and its URL added to `blocked`; `served` sees each loopback URL,
    and the page's uncaught errors are added to `errors`. Skipped without chromium."""
    _require("chromium", CHROMIUM.is_file(), "GATEWAY_TEST_REQUIRE_BROWSER")
    from playwright.sync_api import Route as PlaywrightRoute
    from playwright.sync_api import sync_playwright

    def only_loopback(route: PlaywrightRoute) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOOPBACK:
            served(url)
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
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page
        finally:
            browser.close()


def visit_graphiql(url: str, *, run_query: bool, screenshot: str) -> Visit:
    """Open GraphiQL at `url` offline; run the example query, or read the page's message."""
    visit = Visit()

    def served(url: str) -> None:
        if "/graphiql/assets/" in url:
            visit.served_locally.append(url.rsplit("/", 1)[-1])

    with offline_page(blocked=visit.blocked, errors=visit.errors, served=served) as page:
        page.goto(url, wait_until="load")
        if run_query:
            # The tab holds two operations (the query and the live example): Ctrl-Enter
            # runs the one under the cursor, where the execute button would ask which.
            page.locator(".graphiql-query-editor .CodeMirror").get_by_text(
                "LatestCalls", exact=True
            ).click(timeout=20_000)
            page.keyboard.press("Control+Enter")
            page.wait_for_function(
                "() => (document.querySelector('.graphiql-response')?.innerText ?? '')"
                ".includes('chargeableDuration')",
                timeout=20_000,
            )
            visit.text = page.locator(".graphiql-response").inner_text()
            visit.headers = page.locator(".graphiql-editor-tool").inner_text()
        else:
            message = page.get_by_role("alert")
            message.wait_for(state="visible", timeout=20_000)
            visit.text = message.inner_text()
        page.screenshot(path=str(OUTPUT / screenshot))
    return visit


def assert_the_example_query_ran_offline(visit: Visit) -> None:
    assert '"calls"' in visit.text
    assert '"id": "c-' in visit.text
    assert "errors" not in visit.text
    assert "X-Catapult-User-Id" in visit.headers  # the sandbox headers were pre-filled
    assert sorted(visit.served_locally) == sorted(asset.name for asset in ASSETS)
    assert visit.blocked == []
    assert visit.errors == []


@pytest.fixture
def sandbox_gateway() -> Iterator[str]:
    # Sandbox mode reaches its sandbox through its own port, so it must know it up front.
    port = free_port()
    settings = load_settings({"GATEWAY_SANDBOX": "true", "GATEWAY_PORT": str(port)})
    with serve(create_app(settings), port=port) as url:
        yield url


@pytest.mark.slow  # a real browser runs GraphiQL
def test_graphiql_runs_the_example_query_offline(sandbox_gateway: str) -> None:
    visit = visit_graphiql(
        f"{sandbox_gateway}/graphql", run_query=True, screenshot="graphiql-offline.png"
    )

    assert_the_example_query_ran_offline(visit)


@pytest.mark.slow  # a real browser loads the page
def test_without_its_files_the_page_says_what_to_run(tmp_path: Path) -> None:
    # No vendored files and no CDN (the browser reaches loopback only).
    page = GraphiQLPage(endpoint="/graphql", static_dir=tmp_path)

    async def graphiql(request: Request) -> HTMLResponse:
        return HTMLResponse(page.html)

    with serve(Starlette(routes=[Route("/graphql", graphiql)]), lifespan="off") as url:
        visit = visit_graphiql(
            f"{url}/graphql", run_query=False, screenshot="graphiql-files-missing.png"
        )

    assert FETCH_COMMAND in visit.text
    assert "reinstall catapult-gateway" in visit.text
    assert visit.blocked  # it did try the CDN
    assert visit.errors == []


# -- the built wheel, installed into a fresh virtual environment --------------------------------


def _build(*args: str, outdir: Path) -> Path:
    # --no-isolation: hatchling comes from the dev extras, so no network is needed.
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", *args, "--outdir", str(outdir), "."],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = outdir.glob("*.whl")
    return wheel


def _contents(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _fresh_environment(directory: Path, wheel: Path) -> Path:
    """A new virtual environment with `wheel` installed; returns its bin directory.

    The wheel is installed with pip, without dependencies; those are made importable from
    the test's own environment by a path entry placed after the new site-packages (a
    plain path, so the test environment's editable install of the checkout is not).
    """
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True, timeout=300)
    python = directory / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return directory / "bin"


@pytest.mark.slow
def test_the_built_wheel_serves_graphiql_offline(tmp_path: Path) -> None:
    from_sdist = _build(outdir=tmp_path / "dist")  # the sdist, then the wheel from it
    from_tree = _build("--wheel", outdir=tmp_path / "tree")
    wheel = _contents(from_sdist)
    for asset in ASSETS:
        data = wheel[f"gateway/static/vendor/{asset.name}"]
        assert integrity(data, "sha384") == asset.integrity
    # The sdist is honest: the wheel built from it is the wheel built from the checkout.
    assert wheel == _contents(from_tree)

    bin_dir = _fresh_environment(tmp_path / "venv", from_sdist)
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
    located = subprocess.run(
        [str(bin_dir / "python"), "-c", "import gateway; print(gateway.__file__)"],
        cwd=tmp_path,
        env=environ,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert located.startswith(str(tmp_path / "venv"))

    port = free_port()
    process = subprocess.Popen(
        [str(bin_dir / "catapult-gateway"), "serve", "--sandbox", "--port", str(port)],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the installed gateway did not start"
            time.sleep(0.1)
        visit = visit_graphiql(f"{url}/graphql", run_query=True, screenshot="graphiql-wheel.png")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)

    assert_the_example_query_ran_offline(visit)
    assert process.returncode == 0
    assert "GraphiQL files not found" not in stderr
