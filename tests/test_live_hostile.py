"""Hostile subscribers: every one is bounded, answered with a code, never a 500, and the
gateway stays responsive (`/healthz` within 1 s) while they run.

- a subscription flood from one WebSocket connection;
- consumers that never read (WebSocket and Server-Sent Events) beside a polite one;
- connections that never send `connection_init`;
- a WebSocket upgrade from a foreign `Origin` (cross-site WebSocket hijacking).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import websockets.asyncio.client
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin, Subprotocol

from gateway.sandbox import credential_headers
from tests.fakes import FakeUpstream
from tests.live.helpers import CALLS_PATH, call, initialised, live_app, websocket
from tests.live_servers import DEMO, GatewayProcess, LiveSandbox, gateway_process, live_sandbox

# /healthz within 1 s while the attacks run, RSS growth, pacing against the time taken:
# run alone (see `serial` in pyproject.toml).
pytestmark = pytest.mark.serial

PROTOCOL = Subprotocol("graphql-transport-ws")
SMALL_WINDOW = 8192
WATCHED = "id state startTime activeTime endTime chargeableDuration callbackUrl"
SUBSCRIBE = {"query": "subscription { callsUpdated(size: 1) { changed } }"}
INTERVAL = 1.0
ALLOWED_ORIGIN = "https://calls.example.com"


def subscription(size: int = 5, fields: str = "id state") -> dict[str, Any]:
    selection = f"at changed calls {{ {fields} }}"
    return {"query": f"subscription {{ callsUpdated(size: {size}) {{ {selection} }} }}"}


def ws_url(http_url: str) -> str:
    return "ws" + http_url.removeprefix("http")


@contextmanager
def open_ws(
    url: str,
    *,
    origin: str | None = None,
    max_queue: int | None = 16,
    init: bool = True,
    ping_interval: float | None = 20,
    receive_buffer: int | None = None,
    compression: str | None = "deflate",
    close_timeout: float = 10,
) -> Iterator[ClientConnection]:
    sock = None
    if receive_buffer is not None:
        # A small receive window: a consumer that stops reading stalls the gateway's
        # writes after a few messages instead of after megabytes of kernel buffers.
        address = urlsplit(url)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.connect((address.hostname, address.port))
    with connect(
        ws_url(url),
        sock=sock,
        compression=compression,
        subprotocols=[PROTOCOL],
        origin=Origin(origin) if origin else None,
        proxy=None,
        open_timeout=5,
        max_queue=max_queue,
        max_size=None,
        ping_interval=ping_interval,
        close_timeout=close_timeout,
    ) as ws:
        if init:
            ws.send(json.dumps({"type": "connection_init", "payload": credential_headers(DEMO)}))
            assert json.loads(ws.recv(timeout=5))["type"] == "connection_ack"
        yield ws


def never_reading_ws(
    url: str, close_timeout: float
) -> contextlib.AbstractContextManager[ClientConnection]:
    """A consumer that stops reading after one frame: no pings (their answers would wait
    behind the unread frames), no compression (the unread bytes are as many as the
    gateway writes), a small receive window; `close_timeout` bounds the wait for the
    gateway's closing frame, which waits behind the frames it never reads."""
    return open_ws(
        url,
        max_queue=1,
        ping_interval=None,
        receive_buffer=SMALL_WINDOW,
        compression=None,
        close_timeout=close_timeout,
    )


def subscribe(ws: ClientConnection, op_id: str, size: int = 5) -> None:
    ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": subscription(size)}))


def health_latency(base: str) -> float:
    started = time.monotonic()
    response = httpx.get(f"{base}/healthz", timeout=5)
    assert response.status_code == 200
    return time.monotonic() - started


# Asks /healthz every 0.2 s until stdin closes, then prints the latencies (JSON). A process
# of its own: in the test's process it would wait for the attackers' threads (the GIL)
# and measure them instead of the gateway.
_PROBE = """
import http.client, json, sys, threading, time
host, port = sys.argv[1], int(sys.argv[2])
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
latencies = []
while not done.is_set():
    started = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.request("GET", "/healthz")
    status = connection.getresponse().status
    connection.close()
    latencies.append(time.monotonic() - started if status == 200 else float(status))
    done.wait(0.2)
print(json.dumps(latencies))
"""


class HealthWatch:
    """Asks `/healthz` from another process while an attack runs: always within 1 s."""

    def __init__(self, base: str) -> None:
        address = urlsplit(base)
        self._argv = [sys.executable, "-c", _PROBE, str(address.hostname), str(address.port)]
        self.latencies: list[float] = []

    def __enter__(self) -> HealthWatch:
        self._probe = subprocess.Popen(
            self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        return self

    def __exit__(self, *exc: object) -> None:
        output, _ = self._probe.communicate(input="", timeout=30)
        self.latencies = json.loads(output)
        assert self.latencies, "/healthz was never asked"
        assert max(self.latencies) < 1.0, f"/healthz took {max(self.latencies):.2f} s"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[LiveSandbox]:
    with live_sandbox(interval=INTERVAL) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def gateway_process_(
    sandbox: LiveSandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway polling every second, with an allowed browser origin, in its own process:
    the attackers here run in the test's process and must not slow it down themselves."""
    log = tmp_path_factory.mktemp("hostile") / "gateway.log"
    with gateway_process(
        sandbox.url,
        log,
        live_interval=INTERVAL,
        cache_ttl=INTERVAL,
        live_init_timeout=2,
        cors_origins=ALLOWED_ORIGIN,
        log_level="warning",
    ) as served:
        yield served


@pytest.fixture
def gateway(gateway_process_: GatewayProcess) -> Iterator[str]:
    """The gateway's /graphql URL; the test fails if the gateway logged a server error."""
    seen = len(gateway_process_.server_errors())
    yield gateway_process_.url
    new = gateway_process_.server_errors()[seen:]
    assert new == [], f"the gateway logged {len(new)} server error(s): {new[:3]}"


def base_of(graphql_url: str) -> str:
    return graphql_url.removesuffix("/graphql")


def read_until(
    ws: ClientConnection, seconds: float, stop: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            message = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        except TimeoutError:
            break
        messages.append(message)
        if stop(message):
            break
    return messages


def test_a_subscription_flood_from_one_connection_is_bounded(
    gateway: str, sandbox: LiveSandbox
) -> None:
    sandbox.reset()
    flood = 500
    started = time.monotonic()
    with HealthWatch(base_of(gateway)), open_ws(gateway) as ws:
        # Every one a different page: each accepted one is a poller of its own.
        for n in range(flood):
            subscribe(ws, f"s{n}", size=1 + n)
        answered: dict[str, str] = {}
        codes: set[str] = set()
        close_code: int | None = None
        deadline = time.monotonic() + 15

        def settled() -> bool:
            # Every refusal is in and a page served: the other accepted pages' first
            # answers would only wait for the account's pacing, a second each.
            kinds = list(answered.values())
            return kinds.count("error") >= flood - 10 and "next" in kinds

        try:
            while not settled() and time.monotonic() < deadline:
                message = json.loads(ws.recv(timeout=deadline - time.monotonic()))
                op_id = message.get("id")
                if op_id is not None and op_id not in answered:
                    answered[op_id] = message["type"]
                if message["type"] == "error":
                    codes |= {e.get("extensions", {}).get("code") for e in message["payload"]}
        except ConnectionClosed as closed:
            close_code = closed.rcvd.code if closed.rcvd else None
        except TimeoutError:
            pass
    elapsed = time.monotonic() - started

    served = [op_id for op_id, kind in answered.items() if kind == "next"]
    refused = [op_id for op_id, kind in answered.items() if kind == "error"]
    # Every page a distinct request: at most GATEWAY_LIVE_MAX_DOCUMENTS_PER_ACCOUNT (10)
    # run, below GATEWAY_LIVE_MAX_PER_CONNECTION (100); the rest are told why, or the
    # connection is closed with a protocol code.
    assert 0 < len(served) <= 10
    if close_code is None:
        # Each accepted page is a poller of its own, and the account's pacing lets one
        # poll a second through: not all of them have sent their first page yet.
        assert len(refused) == flood - 10
        assert codes == {"RATE_LIMITED"}
    else:
        assert 4400 <= close_code < 4500
    # Each accepted page is polled through the account's pacing: about one request a
    # second, whatever the flood asked for.
    assert len(sandbox.list_requests()) <= elapsed * 1 + 3


def test_consumers_that_never_read_do_not_hold_up_the_others(
    gateway_process_: GatewayProcess, gateway: str
) -> None:
    # Each page here is ~30 kB of JSON; the consumers below read the first frame, then
    # nothing. The gateway keeps only the newest update per subscriber, so what they do
    # not read waits in the kernel's socket buffers, never in the gateway's memory.
    page = subscription(200, fields=WATCHED)
    with ExitStack() as stack:
        for _ in range(5):
            # Waiting the default 10 s for the closing frame would only stall the
            # test's teardown, 5 times over.
            ws = stack.enter_context(never_reading_ws(gateway, close_timeout=0.1))
            ws.send(json.dumps({"id": "big", "type": "subscribe", "payload": page}))
        # Server-Sent Events streams whose body is never read.
        small = [(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_WINDOW)]
        transport = httpx.HTTPTransport(socket_options=small)
        client = stack.enter_context(httpx.Client(timeout=10, transport=transport))
        for _ in range(3):
            request = client.build_request(
                "POST",
                gateway,
                json=page,
                headers={**credential_headers(DEMO), "accept": "text/event-stream"},
            )
            response = client.send(request, stream=True)
            stack.callback(response.close)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
        time.sleep(3)
        before = gateway_process_.rss_mb()
        with HealthWatch(base_of(gateway)), open_ws(gateway) as polite:
            subscribe(polite, "polite")
            # Until the fourth update (12 s at most): the page changes about every second.
            seen = itertools.count(1)
            nexts = read_until(polite, 12, lambda m: m["type"] == "next" and next(seen) == 4)
        grown = gateway_process_.rss_mb() - before
    updates = [m for m in nexts if m["type"] == "next"]
    # The polite page changes about every second (the sandbox's step) and is polled as often.
    assert len(updates) >= 4
    assert all("errors" not in m["payload"] for m in updates)
    assert grown < 20, f"the gateway grew {grown:.0f} MB while nobody read"


def test_a_connection_that_never_sends_connection_init_is_closed_with_4408(gateway: str) -> None:
    with HealthWatch(base_of(gateway)), ExitStack() as stack:
        silent = [stack.enter_context(open_ws(gateway, init=False)) for _ in range(20)]
        started = time.monotonic()
        codes = []
        for ws in silent:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
            codes.append(closed.value.rcvd.code if closed.value.rcvd else None)
        waited = time.monotonic() - started

    # GATEWAY_LIVE_INIT_TIMEOUT is 2 s here: `4408: Connection initialisation timeout`.
    assert codes == [4408] * len(silent)
    assert waited < 4


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        pytest.param("https://evil.example", False, id="foreign"),
        pytest.param("null", False, id="opaque"),
        pytest.param(ALLOWED_ORIGIN, True, id="allowed"),
        pytest.param(None, True, id="no-origin-not-a-browser"),
    ],
)
def test_a_websocket_from_a_foreign_origin_is_refused(
    gateway: str, origin: str | None, accepted: bool
) -> None:
    # A page on another site may open a WebSocket to the gateway with the victim's
    # cookies; the browser says where the page came from, and only GATEWAY_CORS_ORIGINS
    # may connect.
    if accepted:
        with open_ws(gateway, origin=origin) as ws:
            subscribe(ws, "one")
            assert json.loads(ws.recv(timeout=10))["type"] == "next"
        return
    assert refusal(gateway, origin) in {"HTTP 403", "close 4403"}
    assert health_latency(base_of(gateway)) < 1.0


def refusal(gateway: str, origin: str | None) -> str:
    """How the gateway turned the upgrade away: a 403 answer, or a 4403 close after it."""
    try:
        with open_ws(gateway, origin=origin, init=False) as ws:
            try:
                ws.send(json.dumps({"type": "connection_init", "payload": {}}))
                message = ws.recv(timeout=5)
            except ConnectionClosed as closed:
                return f"close {closed.rcvd.code if closed.rcvd else None}"
    except InvalidStatus as refused:
        return f"HTTP {refused.response.status_code}"
    return f"accepted: {message!r}"


def test_a_buffered_flood_is_taken_a_message_at_a_time(fake_upstream: FakeUpstream) -> None:
    # The flood above delayed /healthz by seconds: buffered messages were received without
    # a pause, so one connection's 500 subscribes were all handled (and their operations
    # queued to start) before any other connection got a turn.
    fake_upstream.answer(CALLS_PATH, [call("c-1")])

    async def body() -> list[int]:
        async with live_app(fake_upstream.url) as app, websocket(app) as ws:
            await initialised(ws)
            for n in range(100):
                await ws.send_json({"id": f"s{n}", "type": "subscribe", "payload": SUBSCRIBE})
            # Sending only queued them; now watch the backlog drain, one loop turn at a time.
            backlog = [ws._to_app.qsize()]
            while backlog[-1] and len(backlog) < 1000:
                await asyncio.sleep(0)
                backlog.append(ws._to_app.qsize())
            return backlog

    backlog = asyncio.run(body())
    taken = [before - after for before, after in itertools.pairwise(backlog)]
    assert backlog[-1] == 0
    assert max(taken) <= 2, f"{max(taken)} messages handled in one turn of the loop"


SHUTDOWN_TIMEOUT = 5
# The reviewer's selection: every field of a big page, so that unread frames fill the
# socket buffers within a few updates.
EVERY_FIELD = "id from to state startTime endTime callbackUrl sipHeaders { name value }"


def test_shutdown_ends_within_its_timeout_when_consumers_never_read(
    sandbox: LiveSandbox, tmp_path: Path
) -> None:
    # A send to a consumer that never reads waits for room in the socket buffer for ever;
    # the old gateway's 1012 close waited behind it, uvicorn cancelled the connections at
    # GATEWAY_SHUTDOWN_TIMEOUT (each an "Exception in ASGI application" in the log), and
    # the process still took ten seconds more to exit.
    sandbox.reset()
    log = tmp_path / "gateway.log"
    with (
        gateway_process(
            sandbox.url,
            log,
            live_interval=INTERVAL,
            cache_ttl=INTERVAL,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            log_level="warning",
        ) as served,
        ExitStack() as stack,
    ):
        page = subscription(1000, fields=EVERY_FIELD)
        for _ in range(3):
            # The client stopped reading too: it would not see the server go.
            ws = stack.enter_context(never_reading_ws(served.url, close_timeout=0.1))
            for n in range(100):
                ws.send(json.dumps({"id": f"s{n}", "type": "subscribe", "payload": page}))
        body = json.dumps(page).encode()
        for _ in range(3):
            # Raw sockets: the event stream's request is sent, its answer never read.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_WINDOW)
            stack.callback(sock.close)
            address = urlsplit(served.url)
            sock.connect((address.hostname, address.port))
            headers = "".join(f"{k}: {v}\r\n" for k, v in credential_headers(DEMO).items())
            sock.sendall(
                f"POST /graphql HTTP/1.1\r\nhost: {address.netloc}\r\n{headers}"
                "accept: text/event-stream\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
        # Long enough for the unread updates to fill every buffer on the way.
        time.sleep(2)
        started = time.monotonic()
        served.process.terminate()
        served.process.wait(timeout=30)
        stopped = time.monotonic() - started
        errors = served.server_errors()
    assert stopped < SHUTDOWN_TIMEOUT, f"the gateway took {stopped:.1f} s to stop"
    assert errors == [], f"the gateway logged {len(errors)} error(s): {errors[:3]}"


def test_a_websocket_paused_on_default_buffers_is_closed_within_the_shutdown_timeout(
    sandbox: LiveSandbox, tmp_path: Path
) -> None:
    # A client that stops reading (asyncio's pause_reading) on the kernel's default
    # buffers: the gateway's writes need not be paused when shutdown begins, so the stall
    # guard never fired; the 1012 close went out and its closing handshake waited for a
    # client that never reads, past the timeout (5.2 s against 5 s, and uvicorn's
    # "timeout graceful shutdown exceeded" at error level).
    sandbox.reset()
    log = tmp_path / "gateway.log"
    with gateway_process(
        sandbox.url,
        log,
        live_interval=INTERVAL,
        cache_ttl=INTERVAL,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        log_level="warning",
    ) as served:

        async def hold_then_stop() -> float:
            # Reading paused, the client never sees the server go: its own closing
            # handshake would wait the default 10 s after the test's measure is taken.
            async with websockets.asyncio.client.connect(
                ws_url(served.url), subprotocols=[PROTOCOL], max_size=None, close_timeout=0.1
            ) as ws:
                init = {"type": "connection_init", "payload": credential_headers(DEMO)}
                await ws.send(json.dumps(init))
                assert json.loads(await ws.recv())["type"] == "connection_ack"
                page = subscription(1000, fields="id state from to startTime")
                for n in range(20):
                    await ws.send(json.dumps({"id": f"s{n}", "type": "subscribe", "payload": page}))
                ws.transport.pause_reading()
                await asyncio.sleep(6 * INTERVAL)
                started = time.monotonic()
                served.process.terminate()
                await asyncio.to_thread(served.process.wait, 30)
                return time.monotonic() - started

        stopped = asyncio.run(hold_then_stop())
        errors = served.server_errors()
    assert stopped < SHUTDOWN_TIMEOUT, f"the gateway took {stopped:.1f} s to stop"
    assert errors == [], f"the gateway logged {len(errors)} error(s): {errors[:3]}"


def live_subscriptions(base: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith("gateway_live_subscriptions "):
            return float(line.split()[1])
    raise AssertionError("no gateway_live_subscriptions")


def test_a_consumer_that_never_reads_is_dropped_after_the_send_deadline(
    sandbox: LiveSandbox, tmp_path: Path
) -> None:
    # Before: its sends waited for room in the socket buffer for as long as the client
    # kept the connection, and so did its subscriptions (and their pollers).
    sandbox.reset()
    send_timeout = 1
    with (
        gateway_process(
            sandbox.url,
            tmp_path / "gateway.log",
            live_interval=INTERVAL,
            cache_ttl=INTERVAL,
            send_timeout=send_timeout,
            log_level="warning",
        ) as served,
        never_reading_ws(served.url, close_timeout=0.1) as ws,
    ):
        page = subscription(1000, fields=EVERY_FIELD)
        for n in range(20):
            ws.send(json.dumps({"id": f"s{n}", "type": "subscribe", "payload": page}))
        deadline = time.monotonic() + 4 * send_timeout + 5
        while live_subscriptions(served.base) > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        held = live_subscriptions(served.base)
        errors = served.server_errors()
    assert held == 0, "a consumer that never reads still holds its subscriptions"
    assert errors == [], f"the gateway logged {len(errors)} error(s): {errors[:3]}"


def test_distinct_aliases_on_a_large_page_keep_the_gateway_responsive(
    gateway: str, sandbox: LiveSandbox
) -> None:
    # Before: each alias was one more synchronous execution of the whole page per update,
    # back to back on the event loop (/healthz waited 1.8 s with 20 of them).
    sandbox.reset()
    distinct = 40
    fields = "id state from to startTime endTime chargeableDuration direction"
    answered: dict[str, str] = {}
    codes: set[str] = set()
    with HealthWatch(base_of(gateway)), open_ws(gateway) as ws:
        for n in range(distinct):
            selection = f"calls {{ {fields} }} changed"
            query = f"subscription {{ a{n}: callsUpdated(size: 1000) {{ {selection} }} }}"
            ws.send(json.dumps({"id": f"s{n}", "type": "subscribe", "payload": {"query": query}}))
        updates = 0

        def take(message: dict[str, Any]) -> bool:
            nonlocal updates, codes
            op_id = message.get("id")
            if op_id is not None:
                answered.setdefault(op_id, message["type"])
            if message["type"] == "error":
                codes |= {e.get("extensions", {}).get("code") for e in message["payload"]}
            updates += message["type"] == "next"
            # Every one answered, and three updates of the 10 that run (each alias's
            # render of the page) made while /healthz is asked.
            return len(answered) == distinct and updates >= 30

        read_until(ws, 6 * INTERVAL + 4, take)
    # GATEWAY_LIVE_MAX_DOCUMENTS_PER_ACCOUNT (10) run; the rest are told why.
    assert sorted(answered.values()).count("next") == 10
    assert sorted(answered.values()).count("error") == distinct - 10
    assert codes == {"RATE_LIMITED"}
