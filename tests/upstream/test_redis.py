"""The guarded Redis connection the cache shares: outages (requests go on, one warning and one
recovery line each, no stale connections after), a Redis that never answers, readiness, and
Redis URLs as managed services hand them out."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.config import load_settings
from gateway.upstream.pacing import RedisSlots
from gateway.upstream.redis import RedisStore, redis_options
from tests.conftest import (
    DEMO,
    Gateway,
    GatewayFactory,
    RedisServer,
    Sandbox,
    redis_server,
)
from tests.servers import serve
from tests.upstream.test_cache import LIST, fresh, ids, ready


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may stop and start."""
    with redis_server() as server:
        yield server


def test_redis_stopped_mid_run_requests_still_succeed_and_service_resumes(
    gateway_factory: GatewayFactory, sandbox: Sandbox, own_redis: RedisServer, caplog: Any
) -> None:
    gateway = gateway_factory(cache_url=own_redis.url, cache_key="a sixteen+ char key")
    ids(gateway.query(fresh(LIST)))
    ids(gateway.query(fresh(LIST)))
    assert len(sandbox.requests()) == 1

    own_redis.stop()
    with caplog.at_level(logging.INFO, logger="gateway.cache"):
        for n in range(5):
            assert ids(gateway.query(fresh(LIST))), n
        down = ready(gateway)["cache"]
        assert (down["status"], down["outages"]) == ("unavailable", 1)
        metrics = gateway.http.get("/metrics").text.splitlines()
        assert 'gateway_cache_requests_total{result="error"} 5.0' in metrics
        assert len(sandbox.requests()) == 6

        own_redis.start()
        deadline = time.monotonic() + 10
        while ready(gateway)["cache"]["status"] != "ok":
            assert time.monotonic() < deadline, "the cache did not come back"
            ids(gateway.query(fresh(LIST)))
            time.sleep(0.2)
    messages = [r.getMessage() for r in caplog.records if r.name == "gateway.cache"]
    assert sum("unavailable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1
    assert not any("Basic" in m or DEMO.secret in m for m in caplog.text.splitlines())

    served = len(sandbox.requests())
    ids(gateway.query(fresh(LIST)))
    ids(gateway.query(fresh(LIST)))
    assert len(sandbox.requests()) <= served + 1
    assert ready(gateway)["cache"]["status"] == "ok"


# Well over the Redis client's 100 pooled connections.
CROWD = 400


def assert_one_outage_logged(caplog: Any) -> None:
    """The cache said "unavailable" once and "reachable again" once."""
    messages = [r.getMessage() for r in caplog.records if r.name == "gateway.cache"]
    assert sum("unavailable" in m for m in messages) == 1, messages
    assert sum("reachable again" in m for m in messages) == 1, messages


def run_one_outage(
    redis: RedisServer, caplog: Any, outage: Callable[[RedisStore], Awaitable[None]]
) -> None:
    """Run `outage` on a fresh store; afterwards the store is up, with one outage counted
    and logged once."""

    async def run() -> None:
        # Generous: on a loaded test machine a crowd of new connections can take a second,
        # and a real timeout is an outage; pool exhaustion is the point here.
        store = RedisStore(redis.url, timeout=5.0)
        try:
            await outage(store)
            assert (store.state()["status"], store.state()["outages"]) == ("ok", 1)
        finally:
            await store.close()

    with caplog.at_level(logging.INFO, logger="gateway.cache"):
        asyncio.run(run())
    assert_one_outage_logged(caplog)


async def restart_until_healthy(
    redis: RedisServer,
    store: RedisStore,
    use: Callable[[], Awaitable[None]],
    pause: float,
) -> None:
    """Start Redis again and use the store until it has noticed (it only notices when used)."""
    await asyncio.to_thread(redis.start)
    deadline = time.monotonic() + 20
    while not store.healthy:
        assert time.monotonic() < deadline, "the cache did not come back"
        await use()
        await asyncio.sleep(pause)


def test_one_warning_and_one_recovery_line_per_outage_under_concurrency(
    own_redis: RedisServer, caplog: Any
) -> None:
    """Crowds of operations while Redis is up, down and back: one outage, logged once.

    Before, the crowd released when Redis came back exhausted the connection pool, and
    each MaxConnectionsError read as a new outage: several warnings within milliseconds.
    """

    async def crowd(store: RedisStore) -> None:
        await asyncio.gather(*(store.get("k") for _ in range(CROWD)))

    async def outage(store: RedisStore) -> None:
        await crowd(store)  # up: a full pool is no outage
        assert store.state()["outages"] == 0
        await asyncio.to_thread(own_redis.stop)
        for _ in range(3):
            await crowd(store)
        assert store.state()["status"] == "unavailable"
        await restart_until_healthy(own_redis, store, lambda: crowd(store), pause=0.01)
        for _ in range(10):
            await crowd(store)

    run_one_outage(own_redis, caplog, outage)


def test_connections_idle_since_before_an_outage_are_not_used_after_it(
    own_redis: RedisServer, caplog: Any
) -> None:
    """Redis killed and restarted under a crowd: one outage, and no stale socket reused.

    Before, the connections idle in the pool since before the restart stayed open; each
    failed at its first use after the recovery, and that failure read as a new outage
    (five warnings for one restart, the last seconds after "reachable again").
    """

    async def crowd(store: RedisStore, size: int = 30) -> None:
        await asyncio.gather(
            *(store.get("k") for _ in range(size)),
            *(store.set(f"k{n}", b"v", 10) for n in range(size)),
            *(RedisSlots(store).reserve(f"a{n}", 0.1, 1.0) for n in range(size // 3)),
        )

    async def outage(store: RedisStore) -> None:
        pool = store._cache.client.connection_pool
        await crowd(store)
        before = {id(c._writer) for c in pool._available_connections if c._writer}
        assert before
        await asyncio.to_thread(own_redis.kill)
        # Fewer at once than before: most pooled connections stay idle in the outage.
        await crowd(store, 1)
        assert store.state()["status"] == "unavailable"
        await restart_until_healthy(own_redis, store, lambda: crowd(store, 1), pause=0.05)
        stale = [c for c in pool._available_connections if id(c._writer) in before]
        assert stale == []
        for _ in range(20):
            await crowd(store)

    run_one_outage(own_redis, caplog, outage)


def test_a_redis_that_never_answers_does_not_fail_requests(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    # A listening socket that accepts and never replies: every Redis call times out.
    with serve_silence() as port:
        gateway = gateway_factory(cache_url=f"redis://127.0.0.1:{port}/0", cache_timeout=0.1)
        for _ in range(3):
            assert ids(gateway.query(fresh(LIST)))
        assert ready(gateway)["cache"]["status"] == "unavailable"
    assert len(sandbox.requests()) == 3


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda store: store.check(), id="check"),
        pytest.param(lambda store: store.get("key"), id="get"),
        pytest.param(lambda store: store.set("key", b"value", 1.0), id="set"),
        pytest.param(lambda store: store.run_script("return 1", ["key"], []), id="script"),
    ],
)
def test_every_store_operation_gives_up_within_the_cache_timeout(
    operation: Callable[[RedisStore], Awaitable[Any]],
) -> None:
    # The readiness check's PING once waited 5 s (redis-py's own wait) on a store that
    # accepts and never answers, holding start-up and every /readyz, at 0.1 s set.
    async def main() -> float:
        store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.1)
        started = time.monotonic()
        await operation(store)
        taken = time.monotonic() - started
        assert store.state()["status"] == "unavailable"
        await store.close()
        return taken

    with serve_silence() as port:
        assert asyncio.run(main()) < 2.0


@contextmanager
def serve_silence() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_readyz_stays_ready_and_reports_the_cache(gateway: Gateway) -> None:
    body = ready(gateway)

    assert body["status"] == "ready"
    assert body["cache"]["backend"] == "memory"
    assert body["cache"]["status"] == "ok"


# -- Redis URLs as managed services hand them out: percent-encoded secrets, users, TLS --

# Every character that means something in a URL, percent-encoded as RFC 3986 asks.
SECRET = "s3cr@t/pa=ss:#?%"
ENCODED_SECRET = "s3cr%40t%2Fpa%3Dss%3A%23%3F%25"


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[RedisServer]:
    """A redis-server that needs SECRET, for the default user and for the user `al@ice`."""
    with redis_server(
        "--requirepass",
        SECRET,
        "--user",
        "al@ice",
        "on",
        f">{SECRET}",
        "~*",
        "&*",
        "+@all",
        password=SECRET,
    ) as server:
        yield server


REDIS_URLS = [
    pytest.param("redis://:{secret}@127.0.0.1:{port}/0", 0, id="password-only"),
    pytest.param("redis://default:{secret}@127.0.0.1:{port}/0", 0, id="default-user"),
    pytest.param("redis://al%40ice:{secret}@127.0.0.1:{port}/3", 3, id="acl-user-and-db"),
    pytest.param("redis://:{secret}@127.0.0.1:{port}?db=5", 5, id="db-as-query"),
]


@pytest.mark.parametrize(("template", "db"), REDIS_URLS)
def test_redis_urls_with_percent_encoded_credentials_connect(
    gateway_factory: GatewayFactory,
    sandbox: Sandbox,
    redis_with_password: RedisServer,
    template: str,
    db: int,
) -> None:
    redis_with_password.flush()
    url = template.format(secret=ENCODED_SECRET, port=redis_with_password.port)
    gateway = gateway_factory(cache_url=url, cache_key="a sixteen+ char key")

    assert ready(gateway)["cache"]["status"] == "ok"
    first = ids(gateway.query(LIST))
    assert ids(gateway.query(LIST)) == first

    # The second answer came from Redis, in the URL's database.
    assert len(sandbox.requests()) == 1
    with redis_with_password.client(db) as client:
        assert client.dbsize() >= 1
    assert ready(gateway)["cache"] == {**ready(gateway)["cache"], "status": "ok", "errors": 0}


def test_a_wrong_redis_password_is_reported_by_readyz_and_logged_once(
    gateway_factory: GatewayFactory, sandbox: Sandbox, redis_with_password: RedisServer, caplog: Any
) -> None:
    url = f"redis://:wrong%40pass@127.0.0.1:{redis_with_password.port}/0"
    with caplog.at_level(logging.WARNING, logger="gateway.cache"):
        gateway = gateway_factory(cache_url=url, cache_key="a sixteen+ char key")
        # Before any request: start-up asked the store, and readyz tells the truth.
        before = gateway.http.get("/readyz")
        assert ids(gateway.query(LIST))

    assert before.status_code == 200
    assert before.json()["cache"]["status"] == "unavailable"
    assert before.json()["cache"]["lastError"] == "AuthenticationError"
    outages = [r for r in caplog.records if "cache store unavailable" in r.getMessage()]
    assert len(outages) == 1
    assert "wrong" not in caplog.text


def test_readyz_does_not_call_an_unasked_redis_healthy(sandbox: Sandbox) -> None:
    # A port nobody listens on: start-up's check fails, so the state is never a bare "ok".
    with serve_silence() as port:
        pass
    app = create_app(
        load_settings(
            {
                "GATEWAY_CACHE_URL": f"redis://127.0.0.1:{port}/0",
                "GATEWAY_UPSTREAM_URL": sandbox.url,
                "GATEWAY_CACHE_TIMEOUT": "0.2",
            }
        )
    )
    with serve(app) as url:
        cache = httpx.get(f"{url}/readyz").json()["cache"]
    assert cache["status"] == "unavailable"
    assert cache["lastError"] == "ConnectionError"


REDIS_OPTIONS = [
    pytest.param(
        f"redis://:{ENCODED_SECRET}@cache.example:6380/2",
        {"host": "cache.example", "port": 6380, "db": 2, "password": SECRET},
        id="password",
    ),
    pytest.param(
        f"rediss://al%40ice:{ENCODED_SECRET}@cache.example/1",
        {"host": "cache.example", "port": 6379, "db": 1, "username": "al@ice", "password": SECRET},
        id="tls-user",
    ),
    pytest.param(
        "redis://cache.example", {"host": "cache.example", "port": 6379, "db": 0}, id="defaults"
    ),
]


@pytest.mark.parametrize(("url", "expected"), REDIS_OPTIONS)
def test_redis_urls_are_read_as_redis_py_reads_them(url: str, expected: dict[str, Any]) -> None:
    from redis.asyncio.connection import SSLConnection

    options = redis_options(url)

    assert {k: v for k, v in options.items() if k != "connection_class"} == expected
    assert (options.get("connection_class") is SSLConnection) == url.startswith("rediss://")


def test_a_rediss_url_makes_a_tls_connection_pool() -> None:
    from redis.asyncio.connection import SSLConnection

    store = RedisStore(f"rediss://al%40ice:{ENCODED_SECRET}@cache.example:6390/4", timeout=0.1)

    pool = store._cache.client.connection_pool
    assert pool.connection_class is SSLConnection
    assert pool.connection_kwargs["username"] == "al@ice"
    assert pool.connection_kwargs["password"] == SECRET
    assert (pool.connection_kwargs["port"], pool.connection_kwargs["db"]) == (6390, 4)
    asyncio.run(store.close())


def test_create_app_with_a_redis_url_closes_cleanly(redis_url: str, sandbox: Sandbox) -> None:
    app = create_app(
        load_settings({"GATEWAY_CACHE_URL": redis_url, "GATEWAY_UPSTREAM_URL": sandbox.url})
    )
    with serve(app) as url:
        assert httpx.get(f"{url}/readyz").json()["cache"]["backend"] == "redis"
