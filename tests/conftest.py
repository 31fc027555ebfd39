"""Shared fixtures: a real sandbox upstream, gateways in this process or on loopback ports."""

from __future__ import annotations

import base64
import logging
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
import redis
from hypothesis import settings as hypothesis_settings

from gateway.app import create_app
from gateway.config import load_settings
from gateway.observability.logging import JsonFormatter
from gateway.sandbox import ACCOUNTS, SandboxOptions, create_sandbox_app, credential_headers
from tests.fakes import FakeUpstream
from tests.inprocess import BASE_URL, gateway_environ, serve_in_process
from tests.servers import free_port, serve

DEMO, SECOND = ACCOUNTS[0], ACCOUNTS[1]

# What must never appear in a log line: every test account's token, secret and Basic
# credentials, and the upstream's error details (they carry the caller's address).
SECRETS = (
    *(account.token for account in ACCOUNTS),
    *(account.secret for account in ACCOUNTS),
    *(base64.b64encode(f"{a.token}:{a.secret}".encode()).decode() for a in ACCOUNTS),
    "remoteAddress",
)


def leaks(lines: Iterable[str]) -> list[str]:
    """The log lines that contain a credential or an upstream error's details."""
    return [line for line in lines if any(secret in line for secret in SECRETS)]


class KeepEveryLine(logging.Handler):
    """Formats every record as the gateway writes it (JSON, with extras and tracebacks)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="session", autouse=True)
def every_log_line() -> Iterator[KeepEveryLine]:
    """Keeps every log line of the whole run; the run fails if one holds a credential."""
    root = logging.getLogger()
    keeper = KeepEveryLine()
    level = root.level
    root.addHandler(keeper)
    root.setLevel(logging.DEBUG)
    try:
        yield keeper
    finally:
        root.removeHandler(keeper)
        root.setLevel(level)
    leaked = leaks(keeper.lines)
    if leaked:
        pytest.fail(
            f"{len(leaked)} of {len(keeper.lines)} log lines leak a credential, e.g.: "
            f"{leaked[0][:300]}",
            pytrace=False,
        )


# -- Hypothesis: fewer examples in the fast set --

# `scripts/test` without `--all` loads this profile (`--hypothesis-profile=fast`): quick
# feedback from a quarter of each property test's examples. CI (`--all`) and a plain
# pytest run keep Hypothesis's default profile, so every example still runs there.
FAST_SHARE = 4
hypothesis_settings.register_profile(
    "fast", max_examples=hypothesis_settings.get_profile("default").max_examples // FAST_SHARE
)


def examples(thorough: int) -> int:
    """A test's example count: `thorough` under the default profile, scaled like the
    profile's own under another (a quarter under `fast`). The profile is loaded before
    the test modules are imported, so a `@settings` decorator may call this."""
    default = hypothesis_settings.get_profile("default").max_examples
    loaded = hypothesis_settings()  # the loaded profile's values
    return max(1, thorough * loaded.max_examples // default)


# -- Order: the longest modules first --

# The modules whose tests take longest (measured with `--durations`: the Dockerfile's
# commands replayed, node and browser clients, whose first run also waits on `npm ci`,
# the live economy's minute, CLI subprocesses, Hypothesis, routers), longest first. Run
# first, they overlap the short tests instead of being the last ones left: with
# pytest-xdist a run lasts as long as its busiest process. Listed by hand, not read from
# a previous run, so a fresh CI machine gets the same order. The slow ones lead `--all`'s
# first pass; in the fast set (no slow tests) the CLI, cache and Hypothesis modules do.
LONGEST_FIRST = (
    "tests/test_dockerfile.py",
    "tests/test_federation.py",
    "tests/test_live_economy.py",
    "tests/test_schema_tools.py",
    "tests/test_live_clients.py",
    "tests/test_serve.py",
    "tests/test_clients.py",
    "tests/test_graphiql_browser.py",
    "tests/test_live_graphiql.py",
    "tests/test_http_compliance.py",
    "tests/test_deploy.py",
    "tests/test_cli.py",
    "tests/upstream/test_cache.py",
    "tests/test_hostile_memory.py",
    "tests/upstream/test_redis.py",
    "tests/test_calls.py",
    "tests/test_fastpath.py",
    "tests/test_fuzz.py",
    "tests/upstream/test_lanes.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Moves the `LONGEST_FIRST` modules' tests to the front, in that order; the rest keep
    theirs. Every xdist process sorts its collection alike, as xdist requires."""
    rank = {path: n for n, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


# -- No 5xx in the logs: a server error the test did not ask for fails it --

SERVER_ERRORS_MARK = "server_errors"
# What uvicorn logs before it answers a bare `500 Internal Server Error` of its own.
_UVICORN_FAILURES = ("Exception in ASGI application", "ASGI callable returned without")


def is_server_error(record: logging.LogRecord) -> bool:
    """A log record saying a request failed on the gateway's side (5xx or masked error)."""
    status = getattr(record, "status", None)
    if record.name.startswith("gateway") and isinstance(status, int) and status >= 500:
        return True
    if "INTERNAL_SERVER_ERROR" in (getattr(record, "error_codes", None) or ()):
        return True
    if record.name.startswith("gateway") and record.levelno >= logging.ERROR:
        return True  # the endpoint's "unexpected error" before it masks one
    return record.name.startswith("uvicorn") and record.getMessage().startswith(_UVICORN_FAILURES)


class ServerErrorRecords(logging.Handler):
    """Keeps the server-error records logged while one test runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.found: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if is_server_error(record):
            self.found.append(record)


@pytest.fixture(autouse=True)
def no_server_errors_in_the_logs(
    request: pytest.FixtureRequest, every_log_line: KeepEveryLine
) -> Iterator[ServerErrorRecords]:
    """Fails a test whose run logged a 5xx, an INTERNAL_SERVER_ERROR or a gateway error.

    A test that provokes one on purpose says so with `@pytest.mark.server_errors`.
    (Gateways in a child process log elsewhere; this sees every in-process one.)
    """
    root = logging.getLogger()
    records = ServerErrorRecords()
    root.addHandler(records)
    try:
        yield records
    finally:
        root.removeHandler(records)
    if records.found and request.node.get_closest_marker(SERVER_ERRORS_MARK) is None:
        first = records.found[0]
        fields = {k: getattr(first, k, None) for k in ("status", "error_codes", "request_id")}
        pytest.fail(
            f"{len(records.found)} server error(s) in the logs of a test that expects none "
            f"(mark it `{SERVER_ERRORS_MARK}` if it provokes them): "
            f"{first.name}: {first.getMessage()[:200]} {fields}",
            pytrace=False,
        )


@dataclass
class Sandbox:
    """A sandbox upstream on a loopback port, with its test controls."""

    url: str
    control: httpx.Client

    def requests(self) -> list[dict[str, Any]]:
        """Every API request the sandbox received since the last reset."""
        result: list[dict[str, Any]] = self.control.get("/__sandbox/requests").json()
        return result

    def faults(self, **faults: Any) -> None:
        self.control.put("/__sandbox/faults", json=faults).raise_for_status()

    def reset(self) -> None:
        self.control.post("/__sandbox/reset").raise_for_status()


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[Sandbox]:
    """The session's sandbox process, as the last test left it: tests ask for `sandbox`,
    which resets it (a fault one test set, like a rate limit, would reach the next)."""
    with serve(create_sandbox_app(SandboxOptions())) as url, httpx.Client(base_url=url) as control:
        yield Sandbox(url, control)


@pytest.fixture
def sandbox(sandbox_server: Sandbox) -> Sandbox:
    """The shared sandbox, reset (no faults, no recorded requests) for this test."""
    sandbox_server.reset()
    return sandbox_server


@dataclass
class Gateway:
    """A gateway and an HTTP client that talks GraphQL to it.

    In this process (`gateway`, `gateway_factory`, `shared_gateway`) unless the test asked
    for one on a loopback port (`loopback_gateway`, `loopback_gateway_factory`): only
    that one has a `url` that a client other than `http` can reach.
    """

    http: httpx.Client
    # Sent with every query that passes no headers of its own; passed headers replace them.
    headers: dict[str, str] | None = None
    loopback_url: str | None = None

    @property
    def url(self) -> str:
        if self.loopback_url is None:
            raise RuntimeError(
                "this gateway runs in this process and answers only through `http`; a test "
                "whose client needs a URL asks for `loopback_gateway(_factory)` instead"
            )
        return self.loopback_url

    def as_caller(self, headers: dict[str, str]) -> Gateway:
        """The same gateway, queried with these headers (and no others) by default."""
        return replace(self, headers=headers)

    def query(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
        operation_name: str | None = None,
    ) -> httpx.Response:
        body: dict[str, Any] = {"query": query}
        if variables is not None:
            body["variables"] = variables
        if operation_name is not None:
            body["operationName"] = operation_name
        return self.http.post(
            "/graphql", json=body, headers=self.headers if headers is None else headers
        )

    def burst(self, query: str, count: int) -> list[httpx.Response]:
        """`count` copies of `query` sent at once, one thread each; the answers in order."""
        with ThreadPoolExecutor(max_workers=count) as pool:
            return list(pool.map(lambda _: self.query(query), range(count)))


GatewayFactory = Callable[..., Gateway]


def gateways(stack: ExitStack, sandbox: Sandbox, *, loopback: bool) -> GatewayFactory:
    """A factory of gateways in front of the sandbox; keyword arguments are settings.

    Requests carry the demo account's credentials unless a test passes other headers.
    With `loopback`, each gateway runs under uvicorn on a loopback port (the way
    `serve` runs it); otherwise in this process through httpx.ASGITransport.
    """

    def start(
        *,
        headers: dict[str, str] | None = None,
        upstream_url: str | None = None,
        **settings: Any,
    ) -> Gateway:
        # Pacing off unless a test asks for it: the sandbox has no rate limit by
        # default, and pacing at 1/s would make every multi-request test slow.
        settings.setdefault("upstream_rate", 0)
        app = create_app(load_settings(gateway_environ(upstream_url or sandbox.url, settings)))
        default_headers = credential_headers(DEMO) if headers is None else headers
        if loopback:
            url = stack.enter_context(serve(app))
            client = httpx.Client(base_url=url, headers=default_headers, timeout=30)
            return Gateway(stack.enter_context(client), loopback_url=url)
        transport = stack.enter_context(serve_in_process(app))
        client = httpx.Client(transport=transport, base_url=BASE_URL, headers=default_headers)
        return Gateway(stack.enter_context(client))

    return start


@pytest.fixture
def gateway_factory(sandbox: Sandbox) -> Iterator[GatewayFactory]:
    """Start gateways in this process in front of the sandbox; keyword arguments are settings."""
    with ExitStack() as stack:
        yield gateways(stack, sandbox, loopback=False)


@pytest.fixture
def loopback_gateway_factory(sandbox: Sandbox) -> Iterator[GatewayFactory]:
    """Start gateways under uvicorn on loopback ports: for tests where the network is the
    point (HTTP framing, real clients and browsers, connection handling)."""
    with ExitStack() as stack:
        yield gateways(stack, sandbox, loopback=True)


def pacing_off() -> dict[str, Any]:
    """Settings that let a burst of upstream requests through at once.

    The gateway paces upstream requests per account (1/s by default); tests that make
    several upstream requests in a row, or want to see the upstream's own 429, turn that
    off with `upstream_rate=0` (`gateway_factory` already does unless told otherwise).
    """
    return {"upstream_rate": 0}


@pytest.fixture(scope="module")
def shared_gateway(sandbox_server: Sandbox) -> Iterator[Gateway]:
    """One gateway per test module, in this process, caching and pacing off.

    Its client sends no headers of its own: `as_caller(headers)` sends exactly the given
    ones (demo credentials by default). Use it with the `sandbox` fixture, which resets
    the sandbox, in tests that need no settings of their own.
    """
    settings = {"cache_ttl": 0, **pacing_off()}
    app = create_app(load_settings(gateway_environ(sandbox_server.url, settings)))
    with (
        serve_in_process(app) as transport,
        httpx.Client(transport=transport, base_url=BASE_URL) as http,
    ):
        yield Gateway(http, credential_headers(DEMO))


@pytest.fixture
def gateway(gateway_factory: GatewayFactory) -> Gateway:
    """A gateway in this process with default settings in front of the sandbox."""
    return gateway_factory()


@pytest.fixture
def loopback_gateway(loopback_gateway_factory: GatewayFactory) -> Gateway:
    """A gateway under uvicorn on a loopback port with default settings."""
    return loopback_gateway_factory()


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """A recording fake upstream on a loopback port (`.url`): answers the sandbox never gives."""
    fake = FakeUpstream()
    with serve(fake.app) as url:
        fake.url = url
        yield fake


@dataclass
class PathPair:
    """Two gateways in front of one recording fake upstream: one with the compiled path
    (`fast`), one without (`standard`), to compare answers byte for byte."""

    upstream: FakeUpstream
    fast: httpx.Client
    standard: httpx.Client

    def both(self, body: dict[str, Any]) -> tuple[httpx.Response, httpx.Response]:
        return self.fast.post("/graphql", json=body), self.standard.post("/graphql", json=body)


def _path_gateway(upstream_url: str, *, fast: bool) -> Any:
    return create_app(
        load_settings(
            {
                "GATEWAY_UPSTREAM_URL": upstream_url,
                "GATEWAY_CACHE_TTL": "0",
                "GATEWAY_UPSTREAM_RATE": "0",
                "GATEWAY_FAST_PATH": str(fast).lower(),
            }
        )
    )


@contextmanager
def path_pair() -> Iterator[PathPair]:
    """A `PathPair` served on loopback ports (uncached, unpaced) for a `with` block."""
    upstream = FakeUpstream()
    with serve(upstream.app) as upstream_url:
        upstream.url = upstream_url
        with (
            serve(_path_gateway(upstream_url, fast=True)) as fast_url,
            serve(_path_gateway(upstream_url, fast=False)) as standard_url,
            httpx.Client(base_url=fast_url, headers=credential_headers(DEMO)) as fast,
            httpx.Client(base_url=standard_url, headers=credential_headers(DEMO)) as standard,
        ):
            yield PathPair(upstream, fast, standard)


# -- Redis: the suite starts its own redis-server (never the machine's on 6379) --

REQUIRE_REDIS = "GATEWAY_TEST_REQUIRE_REDIS"


class RedisServer:
    """A redis-server of our own on a free loopback port; can be stopped and started again."""

    def __init__(
        self, *config: str, username: str | None = None, password: str | None = None
    ) -> None:
        """`config`: more redis-server arguments; `username`/`password`: what it requires."""
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get(REQUIRE_REDIS):
                pytest.fail(f"redis-server is not installed and {REQUIRE_REDIS} is set")
            pytest.skip("redis-server is not installed (set GATEWAY_TEST_REQUIRE_REDIS to fail)")
        self._binary = binary
        self._config = config
        self.username = username
        self.password = password
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def client(self, db: int = 0) -> redis.Redis:
        """A redis-py client with the credentials this server requires."""
        return redis.Redis(
            port=self.port, db=db, username=self.username, password=self.password, socket_timeout=1
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                self._binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *self._config,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, as when a host or container dies."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()


@contextmanager
def redis_server(
    *config: str, username: str | None = None, password: str | None = None
) -> Iterator[RedisServer]:
    """A fresh redis-server for one test that stops and restarts it (or needs a password)."""
    server = RedisServer(*config, username=username, password=password)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_session: RedisServer) -> str:
    """The URL of the suite's own Redis, emptied for this test."""
    redis_session.flush()
    return redis_session.url


@pytest.fixture
def short_list(gateway: Gateway) -> tuple[str, list[str]]:
    """A caller number with 7 to 20 calls, and their ids newest first."""
    calls = gateway.query("{ calls(size: 1000) { id from } }").json()["data"]["calls"]
    counts = Counter(call["from"] for call in calls)
    number = next(n for n, count in sorted(counts.items()) if 7 <= count <= 20)
    listed = gateway.query(
        "query($f: String) { calls(filter: {from: $f}, size: 1000) { id } }", {"f": number}
    ).json()["data"]["calls"]
    return number, [call["id"] for call in listed]
