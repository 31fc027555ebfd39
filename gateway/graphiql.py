"""The GraphiQL page: pinned GraphiQL, React and ReactDOM, served locally or from a CDN.

The files are pinned by version and by Subresource Integrity hash, and they are vendored
in the repository (`gateway/static/vendor/`, MIT like their licences beside them), so
every wheel and sdist carries them and the gateway serves them itself: GraphiQL works
without internet access after a plain `pip install`. `python -m gateway.graphiql fetch`
re-fetches them with `npm pack` (to bump a pin, or to restore a deleted folder), checking
every hash. Only when the folder is gone does the page load the same files from a CDN; the
browser checks the hashes either way, and if they cannot load at all the page says what to
run instead of waiting forever. The gateway serves each file under a path that holds its
content hash (`/graphiql/assets/<hash>/<name>`), so browsers may keep it forever: a new pin
is a new URL, never a cached old file that fails its integrity check.

Subscriptions run over a WebSocket to the same endpoint: GraphiQL's bundle carries the
graphql-ws client (`createFetcher` loads it for a `subscriptionUrl`), so no further file
is pinned for them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse
from starlette.types import Receive, Scope, Send

log = logging.getLogger("gateway.graphiql")

CDN = "https://cdn.jsdelivr.net/npm"
ASSET_ROUTE = "/graphiql/assets"
# The path carries the file's content hash, so a browser may keep it for good.
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class Asset:
    """One pinned file of an npm package."""

    package: str
    version: str
    path: str  # inside the package
    integrity: str  # the file's Subresource Integrity hash

    @property
    def name(self) -> str:
        """The file name it is served under."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def cdn_url(self) -> str:
        return f"{CDN}/{self.package}@{self.version}/{self.path}"

    @property
    def fingerprint(self) -> str:
        """The first 16 hex digits of the file's pinned SHA-384: changes with its bytes."""
        digest = base64.b64decode(self.integrity.partition("-")[2])
        return digest.hex()[:16]

    @property
    def local_url(self) -> str:
        """Where the gateway serves it. The content hash is part of the path, so the file
        can be cached as immutable: a new pin is a new URL, never a stale file that fails
        its integrity check."""
        return f"{ASSET_ROUTE}/{self.fingerprint}/{self.name}"


REACT = Asset(
    "react",
    "18.3.1",
    "umd/react.production.min.js",
    "sha384-DGyLxAyjq0f9SPpVevD6IgztCFlnMF6oW/XQGmfe+IsZ8TqEiDrcHkMLKI6fiB/Z",
)
REACT_DOM = Asset(
    "react-dom",
    "18.3.1",
    "umd/react-dom.production.min.js",
    "sha384-gTGxhz21lVGYNMcdJOyq01Edg0jhn/c22nsx0kyqP0TxaV5WVdsSH1fSDUf5YJj1",
)
GRAPHIQL_JS = Asset(
    "graphiql",
    "3.8.3",
    "graphiql.min.js",
    "sha384-HbRVEFG0JGJZeAHCJ9Xm2+tpknBQ7QZmNlO/DgZtkZ0aJSypT96YYGRNod99l9Ie",
)
GRAPHIQL_CSS = Asset(
    "graphiql",
    "3.8.3",
    "graphiql.min.css",
    "sha384-Mq3vbRBY71jfjQAt/DcjxUIYY33ksal4cgdRt9U/hNPvHBCaT2JfJ/PTRiPKf0aM",
)
ASSETS = (REACT, REACT_DOM, GRAPHIQL_JS, GRAPHIQL_CSS)
# Each package's licence travels with its files (`<package>.LICENSE`).
LICENSE_PATH = "LICENSE"
# The npm registry's integrity of each package tarball (`npm view <pkg>@<ver> dist.integrity`).
TARBALLS = {
    ("react", "18.3.1"): "sha512-wS+hAgJShR0KhEvPJArfuPVN1+Hz1t0Y6n5jLrGQbkb4urgPE/0Rve+1kMB1"
    "v/oWgHgm4WIcV+i7F2pTVj+2iQ==",
    ("react-dom", "18.3.1"): "sha512-5m4nQKp+rZRb09LNH59GM4BxTh9251/ylbKIbpe7TpGxfJ+9kv6BLkLBXIjj"
    "spbgbnIBNqlI23tRnTWT0snUIw==",
    ("graphiql", "3.8.3"): "sha512-cuPDYtXVKV86Pu5PHBX642Odi/uVEE2y1Jxq5rGO/Qy1G2lRp7ZZ7a/T30Rz"
    "xhuLSWo9zUbzq0P3U49//H0Ugw==",
}

DEFAULT_STATIC_DIR = Path(__file__).parent / "static" / "vendor"
FETCH_COMMAND = "python -m gateway.graphiql fetch"
# What a user can do when the files are missing: the wheel carries them, and a checkout
# can fetch them again.
FIX = (
    "reinstall catapult-gateway (its wheel carries them), "
    f"or in a source checkout run `{FETCH_COMMAND}`"
)

EXAMPLE_QUERY = """\
# Your latest calls. Press the run button (or Ctrl-Enter).
query LatestCalls {
  calls(size: 10) {
    id
    direction
    from
    to
    state
    startTime
    chargeableDuration
  }
}

# The same calls, live. Click in here, press Ctrl-Enter
# (the run button becomes a stop button). First the page,
# then an update whenever it changes: `changed` lists new
# or changed ids, `removed` those that left. The sandbox
# starts, answers and ends calls every few seconds.
subscription WatchCalls {
  callsUpdated(size: 5) {
    at
    changed
    removed
    calls {
      id
      state
      startTime
      activeTime
      endTime
      chargeableDuration
    }
  }
}
"""


class GraphiQLPage:
    """Renders the page once per configuration; the HTML is the same for every request."""

    def __init__(
        self,
        *,
        endpoint: str,
        static_dir: Path = DEFAULT_STATIC_DIR,
        default_headers: dict[str, str] | None = None,
    ) -> None:
        self.static_dir = static_dir
        self.local = all((static_dir / asset.name).is_file() for asset in ASSETS)
        if not self.local:
            log.warning(
                "GraphiQL files not found in %s; the page loads them from %s, which fails "
                "without internet access. To serve them locally: %s.",
                static_dir,
                CDN,
                FIX,
            )
        self.html = _render(endpoint, self.local, default_headers)

    def asset_path(self, fingerprint: str, name: str) -> Path | None:
        """The local file served at `ASSET_ROUTE/<fingerprint>/<name>`, or None: only the
        current pin's fingerprint finds a file."""
        for asset in ASSETS:
            if (asset.fingerprint, asset.name) == (fingerprint, name) and self.local:
                return self.static_dir / asset.name
        return None


class GraphiQLAssets:
    """`GET ASSET_ROUTE/{fingerprint}/{name}`: the page's pinned files, from `page`'s folder."""

    ROUTE = ASSET_ROUTE + "/{fingerprint}/{name}"

    def __init__(self, page: GraphiQLPage) -> None:
        self._page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = Request(scope, receive).path_params
        path = self._page.asset_path(params["fingerprint"], params["name"])
        if path is None:
            response = PlainTextResponse("Not Found", status_code=404)
            await response(scope, receive, send)
            return
        await FileResponse(path, headers={"cache-control": IMMUTABLE})(scope, receive, send)


def _src(asset: Asset, local: bool) -> str:
    return html.escape(asset.local_url if local else asset.cdn_url)


def _render(endpoint: str, local: bool, default_headers: dict[str, str] | None) -> str:
    options = {
        "endpoint": endpoint,
        "query": EXAMPLE_QUERY,
        "headers": orjson.dumps(default_headers or {}, option=orjson.OPT_INDENT_2).decode(),
    }
    # `</` would end the script element early; JSON allows the escaped form.
    config = orjson.dumps(options).decode().replace("</", "<\\/")
    scripts = "\n    ".join(
        f'<script src="{_src(a, local)}" integrity="{a.integrity}" '
        'crossorigin="anonymous"></script>'
        for a in (REACT, REACT_DOM, GRAPHIQL_JS)
    )
    stylesheet = (
        f'<link rel="stylesheet" href="{_src(GRAPHIQL_CSS, local)}" '
        f'integrity="{GRAPHIQL_CSS.integrity}" crossorigin="anonymous">'
    )
    source = "the gateway" if local else f"the CDN ({CDN})"
    missing = html.escape(
        f"GraphiQL could not load its files from {source}. "
        f"To serve them from the gateway itself: {FIX}, then restart the gateway."
    )
    return f"""<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>catapult-gateway · GraphiQL</title>
    <style>body {{ margin: 0; height: 100vh; }} #graphiql {{ height: 100vh; }}</style>
    {stylesheet}
    {scripts}
  </head>
  <body>
    <div id="graphiql">Loading GraphiQL…</div>
    <p id="graphiql-missing" role="alert" hidden
       style="font: 16px/1.5 sans-serif; margin: 2em; max-width: 60em">{missing}</p>
    <script id="graphiql-config" type="application/json">{config}</script>
    <script>
      // The scripts above block parsing, so by now each has loaded or failed (network,
      // integrity mismatch): a failure leaves its global undefined.
      if (typeof React === "undefined" || typeof ReactDOM === "undefined"
          || typeof GraphiQL === "undefined") {{
        document.getElementById("graphiql").remove();
        document.getElementById("graphiql-missing").hidden = false;
      }} else {{
        const config = JSON.parse(document.getElementById("graphiql-config").textContent);
        const url = new URL(config.endpoint, location.href).href;
        // Subscriptions go over a WebSocket (graphql-transport-ws, with the graphql-ws
        // client GraphiQL's bundle carries); the headers editor's values travel in its
        // connection_init payload, since a browser cannot set headers on a WebSocket.
        const subscriptionUrl = url.replace(/^http/, "ws");
        const fetcher = GraphiQL.createFetcher({{ url, subscriptionUrl }});
        ReactDOM.createRoot(document.getElementById("graphiql")).render(
          React.createElement(GraphiQL, {{
            fetcher,
            defaultQuery: config.query,
            defaultHeaders: config.headers,
            // Headers are secrets: keep them out of localStorage.
            shouldPersistHeaders: false,
            defaultEditorToolsVisibility: "headers",
          }}),
        );
      }}
    </script>
  </body>
</html>
"""


class FetchError(Exception):
    """A pinned package or file could not be fetched, or its hash is not the pinned one."""


def integrity(data: bytes, algorithm: str) -> str:
    """A Subresource Integrity / npm integrity string (`sha384-...`, `sha512-...`)."""
    digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm}-{base64.b64encode(digest).decode()}"


def fetch_assets(target: Path = DEFAULT_STATIC_DIR, *, npm: str = "npm") -> list[Path]:
    """Fetch the pinned files with `npm pack` into `target`, checking every hash.

    Build-time only (the Dockerfile's build stage, or a developer once): the packages come
    from the npm registry through npm's own client and configuration; each tarball must
    match its pinned npm integrity, and each file taken from it its pinned SRI hash, so
    nothing unpinned is ever written. Returns the files written.
    """
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="graphiql-fetch-") as tmp:
        for (package, version), expected in TARBALLS.items():
            tarball = _npm_pack(npm, f"{package}@{version}", Path(tmp))
            actual = integrity(tarball.read_bytes(), "sha512")
            if actual != expected:
                raise FetchError(f"{package}@{version}: tarball is {actual}, pinned {expected}")
            with tarfile.open(tarball) as archive:
                for asset in ASSETS:
                    if (asset.package, asset.version) == (package, version):
                        written.append(_extract(archive, asset, target))
                # The tarball's integrity was checked above, so its licence is the pinned one.
                written.append(_extract_license(archive, package, target))
    return written


def _npm_pack(npm: str, spec: str, directory: Path) -> Path:
    try:
        done = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [npm, "pack", spec, "--ignore-scripts", "--silent", "--pack-destination", "."],
            cwd=directory,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise FetchError(f"npm pack {spec} failed: {detail}") from exc
    name = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    tarball = directory / name
    if not name or tarball.parent != directory or not tarball.is_file():
        raise FetchError(f"npm pack {spec} did not report a tarball (got {done.stdout!r})")
    return tarball


def _extract(archive: tarfile.TarFile, asset: Asset, target: Path) -> Path:
    data = _member(archive, asset.package, asset.path)
    actual = integrity(data, "sha384")
    if actual != asset.integrity:
        raise FetchError(f"{asset.package}/{asset.path} is {actual}, pinned {asset.integrity}")
    return _write(target / asset.name, data)


def _extract_license(archive: tarfile.TarFile, package: str, target: Path) -> Path:
    return _write(target / license_name(package), _member(archive, package, LICENSE_PATH))


def license_name(package: str) -> str:
    """The file a package's licence is kept under beside its files."""
    return f"{package}.LICENSE"


def _member(archive: tarfile.TarFile, package: str, path: str) -> bytes:
    try:
        member = archive.extractfile(f"package/{path}")
    except KeyError:
        member = None
    if member is None:
        raise FetchError(f"{package} has no {path}")
    return member.read()


def _write(destination: Path, data: bytes) -> Path:
    partial = destination.with_suffix(destination.suffix + ".partial")
    partial.write_bytes(data)
    os.replace(partial, destination)
    return destination


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gateway.graphiql fetch [DIR]`."""
    parser = argparse.ArgumentParser(prog="python -m gateway.graphiql")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="fetch the pinned GraphiQL files with npm pack")
    fetch.add_argument("directory", nargs="?", type=Path, default=DEFAULT_STATIC_DIR)
    args = parser.parse_args(argv)
    try:
        for path in fetch_assets(args.directory):
            print(path)
    except FetchError as exc:
        print(f"graphiql fetch: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
