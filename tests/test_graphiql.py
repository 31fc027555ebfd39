"""The GraphiQL page and its pinned files, without a browser: what the page refers to, what
the asset endpoint serves and with which headers, and the fetch command's checks.

`test_graphiql_browser.py` runs the same page in a real Chromium with no internet access.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.graphiql import (
    ASSETS,
    CDN,
    DEFAULT_STATIC_DIR,
    GRAPHIQL_CSS,
    GRAPHIQL_JS,
    REACT,
    TARBALLS,
    Asset,
    FetchError,
    GraphiQLAssets,
    GraphiQLPage,
    fetch_assets,
    integrity,
    license_name,
)
from tests.inprocess import in_process

# What the page and the start-up warning tell a user to run (spelled out, not imported).
FETCH_COMMAND = "python -m gateway.graphiql fetch"


def test_the_vendored_files_are_the_pinned_ones() -> None:
    for asset in ASSETS:
        data = (DEFAULT_STATIC_DIR / asset.name).read_bytes()
        assert integrity(data, "sha384") == asset.integrity, asset.name
    for package, _version in TARBALLS:
        assert "MIT License" in (DEFAULT_STATIC_DIR / license_name(package)).read_text()


# -- the gateway serves each file under its content hash -------------------------------------


def gateway_get(*paths: str, **headers: str) -> list[httpx.Response]:
    """GET each path from the gateway in this process (GraphiQL needs no upstream)."""

    async def run() -> list[httpx.Response]:
        async with in_process("http://127.0.0.1:9") as client:
            return [await client.get(path, headers=headers) for path in paths]

    return asyncio.run(run())


def test_each_file_is_served_under_its_content_hash_as_immutable() -> None:
    [page] = gateway_get("/graphql", accept="text/html")
    answers = gateway_get(*(asset.local_url for asset in ASSETS))

    for asset, answer in zip(ASSETS, answers, strict=True):
        url = asset.local_url
        data = (DEFAULT_STATIC_DIR / asset.name).read_bytes()
        # The path holds the hash of the very bytes served, beside the SRI hash that checks them.
        digest = hashlib.sha384(data).hexdigest()
        assert url == f"/graphiql/assets/{digest[:16]}/{asset.name}"
        assert f'"{url}" integrity="{asset.integrity}"' in page.text
        assert answer.status_code == 200, url
        assert answer.content == data
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(f"/graphiql/assets/{GRAPHIQL_JS.name}", id="version-less"),
        pytest.param(f"/graphiql/assets/{'0' * 16}/{GRAPHIQL_JS.name}", id="another-pin"),
        pytest.param(f"/graphiql/assets/{GRAPHIQL_JS.fingerprint}/{REACT.name}", id="mixed"),
        pytest.param(f"/graphiql/assets/{GRAPHIQL_JS.fingerprint}/x.js", id="unknown-name"),
    ],
)
def test_no_other_asset_path_finds_a_file(path: str) -> None:
    # An immutable URL whose bytes could change would be a stale file failing its SRI
    # check after a pin bump: only the current pin's hash path serves.
    [answer] = gateway_get(path)

    assert answer.status_code == 404


def test_a_new_pin_is_a_new_url() -> None:
    bumped = replace(GRAPHIQL_JS, version="3.8.4", integrity=integrity(b"other bytes", "sha384"))

    assert bumped.local_url != GRAPHIQL_JS.local_url
    assert bumped.name == GRAPHIQL_JS.name


def test_without_its_files_the_start_up_warning_names_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.graphiql"):
        GraphiQLPage(endpoint="/graphql", static_dir=tmp_path)

    [record] = caplog.records
    assert FETCH_COMMAND in record.getMessage()
    assert "reinstall catapult-gateway" in record.getMessage()


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


# -- the page and the asset endpoint on their own ----------------------------------------------


def vendored_copy(directory: Path) -> Path:
    """A static folder of its own holding the pinned files (bytes of the vendored ones)."""
    for asset in ASSETS:
        (directory / asset.name).write_bytes((DEFAULT_STATIC_DIR / asset.name).read_bytes())
    return directory


def get_assets(page: GraphiQLPage, *paths: str) -> list[httpx.Response]:
    """GET each path from an app that routes only the asset endpoint of `page`."""
    app = Starlette(routes=[Route(GraphiQLAssets.ROUTE, GraphiQLAssets(page), methods=["GET"])])

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            return [await c.get(path) for path in paths]

    return asyncio.run(run())


MEDIA_TYPES = [
    pytest.param(REACT, "text/javascript", id="react"),
    pytest.param(GRAPHIQL_JS, "text/javascript", id="graphiql-js"),
    pytest.param(GRAPHIQL_CSS, "text/css", id="graphiql-css"),
]


@pytest.mark.parametrize(("asset", "media_type"), MEDIA_TYPES)
def test_the_endpoint_serves_the_page_folders_file_as_immutable(
    tmp_path: Path, asset: Asset, media_type: str
) -> None:
    page = GraphiQLPage(endpoint="/graphql", static_dir=vendored_copy(tmp_path))
    # The page's own folder, not the package's: a copy that differs must be what is served.
    (tmp_path / asset.name).write_bytes(b"/* this folder's copy */")

    [answer] = get_assets(page, asset.local_url)

    assert answer.status_code == 200
    assert answer.content == b"/* this folder's copy */"
    assert answer.headers["content-type"].startswith(media_type)
    assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"


def test_without_its_files_the_endpoint_serves_nothing_and_the_page_uses_the_cdn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.graphiql"):
        page = GraphiQLPage(endpoint="/graphql", static_dir=tmp_path)

    answers = get_assets(page, *(asset.local_url for asset in ASSETS))

    assert [answer.status_code for answer in answers] == [404] * len(ASSETS)
    for asset in ASSETS:
        assert f'"{asset.cdn_url}" integrity="{asset.integrity}"' in page.html
        assert asset.local_url not in page.html
        assert asset.cdn_url.startswith(CDN + "/")


def test_with_its_files_the_page_refers_to_no_other_host(tmp_path: Path) -> None:
    page = GraphiQLPage(endpoint="/graphql", static_dir=vendored_copy(tmp_path))

    assert CDN not in page.html
    for asset in ASSETS:
        assert f'"{asset.local_url}" integrity="{asset.integrity}"' in page.html


def page_config(html: str) -> dict[str, str]:
    start = html.index('<script id="graphiql-config" type="application/json">')
    text = html[html.index(">", start) + 1 : html.index("</script>", start)]
    config: dict[str, str] = orjson.loads(text)
    return config


def test_the_pre_filled_headers_cannot_end_the_config_script_early(tmp_path: Path) -> None:
    # The headers are the operator's (the sandbox's credentials), but a value holding
    # `</script>` must stay data: JSON's escaped `<\/` keeps the element whole.
    headers = {"X-Catapult-User-Id": "</script><script>alert(1)</script>"}
    page = GraphiQLPage(
        endpoint="/graphql", static_dir=vendored_copy(tmp_path), default_headers=headers
    )

    config = page_config(page.html)

    # Read up to the first `</script>`, as a browser does: unescaped, the headers would cut it.
    assert orjson.loads(config["headers"]) == headers
    assert config["endpoint"] == "/graphql"
    assert "query LatestCalls" in config["query"]
