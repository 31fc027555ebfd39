"""Hostile clients against the real server: header bounds, read deadlines, connection cap,
request bodies (lying lengths, endless chunks, encodings, bombs).

Every test talks raw HTTP over a socket to a gateway under the guarded uvicorn protocol
with short deadlines, asserts the answer, and then that `/healthz` still answers within a
second.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import time
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import httpx
import orjson
import pytest

from gateway.app import create_app
from gateway.cli import connection_limits
from gateway.config import load_settings
from gateway.sandbox import credential_headers
from tests.conftest import DEMO, Sandbox
from tests.servers import gateway_process, serve

# Every test holds the server to deadlines of 0.5-3 s and /healthz to 1 s: run alone (see
# `serial` in pyproject.toml).
pytestmark = pytest.mark.serial

LIMITS = {
    "GATEWAY_HEADER_TIMEOUT": "0.5",
    "GATEWAY_BODY_TIMEOUT": "0.5",
    "GATEWAY_KEEPALIVE_TIMEOUT": "0.5",
    "GATEWAY_SEND_TIMEOUT": "1",
    "GATEWAY_MAX_CONNECTIONS": "20",
    "GATEWAY_MAX_HEADERS": "50",
    "GATEWAY_MAX_HEADER_BYTES": "16384",
    "GATEWAY_MAX_HEADER_LINE_BYTES": "8192",
    "GATEWAY_MAX_BODY_BYTES": "65536",
    # The slow-read test needs an answer of megabytes (`BIG_ANSWER`: 20 pages of 1000).
    "GATEWAY_MAX_CALLS_PER_OPERATION": "20000",
}
CREDENTIALS = "".join(f"{name}: {value}\r\n" for name, value in credential_headers(DEMO).items())
QUERY = orjson.dumps({"query": "{ calls(size: 1) { id } }"})


@dataclass
class Server:
    url: str
    port: int

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def healthy(self) -> bool:
        """`/healthz` answers 200 within a second (a 503 while the server is still closing
        connections the test just dropped is asked again within that second)."""
        until = time.monotonic() + 1
        while True:
            left = max(0.05, until - time.monotonic())
            if httpx.get(f"{self.url}/healthz", timeout=left).status_code == 200:
                return True
            if time.monotonic() >= until:
                return False
            time.sleep(0.05)


@contextmanager
def guarded_gateway(upstream: str, **settings: str) -> Iterator[Server]:
    """A gateway under the guarded server with the short `LIMITS`, or these settings."""
    environ = {
        "GATEWAY_UPSTREAM_URL": upstream,
        "GATEWAY_UPSTREAM_RATE": "0",
        **LIMITS,
        **{f"GATEWAY_{name.upper()}": value for name, value in settings.items()},
    }
    loaded = load_settings(environ)
    with serve(create_app(loaded), limits=connection_limits(loaded)) as url:
        yield Server(url, int(url.rsplit(":", 1)[1]))


@pytest.fixture(scope="module", params=["5", "0"], ids=["answer-cache-on", "answer-cache-off"])
def guarded(request: pytest.FixtureRequest, sandbox_server: Sandbox) -> Iterator[Server]:
    """A gateway with short deadlines, with and without the answer cache (which reads
    the body first when it is on), for the whole module: uvicorn takes 0.2 s to stop a
    server, and the tests below each close what they open. Tests ask for `server`."""
    with guarded_gateway(sandbox_server.url, cache_ttl=request.param) as server:
        yield server


@pytest.fixture
def server(guarded: Server, sandbox: Sandbox) -> Server:
    """The module's gateway, in front of the sandbox reset for this test."""
    return guarded


def read_all(sock: socket.socket, seconds: float = 3) -> bytes:
    """Everything the server sends until it closes, which it must within `seconds` (the
    test deadlines are 0.5 s; uvicorn's own keep-alive timeout would be 5 s)."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open; it sent {data[:200]!r}")
    return data


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def post(body: bytes, *headers: str, length: int | None = None) -> bytes:
    extra = "".join(f"{header}\r\n" for header in headers)
    size = len(body) if length is None else length
    return (
        f"POST /graphql HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"{CREDENTIALS}{extra}Content-Length: {size}\r\n\r\n"
    ).encode() + body


def drip(sock: socket.socket, byte: bytes, seconds: float) -> None:
    """Send `byte` every 50 ms for up to `seconds`, stopping when the server closes."""
    until = time.monotonic() + seconds
    try:
        while time.monotonic() < until:
            sock.sendall(byte)
            time.sleep(0.05)
    except (BrokenPipeError, ConnectionResetError):
        pass


# -- header bounds --


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"X-Big: " + b"a" * 9000 + b"\r\n\r\n", id="header-line-too-long"),
        pytest.param(b"".join(b"X-%d: 1\r\n" % n for n in range(60)) + b"\r\n", id="too-many"),
        pytest.param(
            b"".join(b"X-%d: %s\r\n" % (n, b"a" * 4000) for n in range(5)) + b"\r\n",
            id="too-many-bytes-in-all",
        ),
        pytest.param(b"X-Endless: " + b"a" * 400_000, id="endless-header-line"),
        pytest.param(b"X-A: 1\r\n" * 20_000, id="endless-headers"),
    ],
)
def test_oversized_headers_get_431(server: Server, head: bytes) -> None:
    with server.connect() as sock:
        # Cut off mid-send or not, the answer is waiting.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + head)
        answer = read_all(sock)

    assert status(answer) == 431
    assert b"connection: close" in answer.lower()
    assert server.healthy()


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(b"".join(b"X-%d: 1\r\n" % n for n in range(51)), id="one-too-many"),
        # A field is complete once the next one begins (it could continue on the next line).
        pytest.param(b"X-Big: " + b"a" * 9000 + b"\r\nX-Next: 1\r\n", id="one-line-too-long"),
    ],
)
def test_a_header_field_over_a_bound_is_refused_before_the_headers_end(
    server: Server, fields: bytes
) -> None:
    # Not kept until the end of the headers (or their deadline: 408): a flood of fields
    # would be held all at once, each a few small objects.
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + fields)
        answer = read_all(sock)

    assert status(answer) == 431
    assert server.healthy()


def test_headers_at_the_bounds_are_accepted(server: Server) -> None:
    head = b"".join(b"X-%d: %s\r\n" % (n, b"a" * 100) for n in range(45))
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + head + b"\r\n")
        assert status(read_all(sock)) == 200


# -- read deadlines --


def test_headers_dripped_slower_than_the_deadline_get_408(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        drip(sock, b"X-Slow: 1\r\n", seconds=3)
        answer = read_all(sock)

    assert status(answer) == 408
    assert server.healthy()


@pytest.mark.parametrize(
    "request_head",
    [
        pytest.param(post(b'{"query": "{', length=len(QUERY)), id="content-length-lies-high"),
        pytest.param(
            post(b"", "Transfer-Encoding: chunked").replace(b"Content-Length: 0\r\n", b"")
            + b"1\r\n{\r\n",
            id="chunked-body-that-never-ends",
        ),
    ],
)
def test_a_body_dripped_or_never_finished_gets_408(server: Server, request_head: bytes) -> None:
    with server.connect() as sock:
        sock.sendall(request_head)
        drip(sock, b" ", seconds=3) if b"chunked" not in request_head else drip(
            sock, b"1\r\n \r\n", seconds=3
        )
        answer = read_all(sock)

    assert status(answer) == 408
    assert server.healthy()


def test_a_body_that_stops_arriving_gets_408(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(post(QUERY[:10], length=len(QUERY)))
        answer = read_all(sock)

    assert status(answer) == 408
    assert server.healthy()


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = read_all(sock)  # the answer, then the close after the keep-alive timeout

    assert status(answer) == 200
    assert answer.count(b"HTTP/1.1") == 1
    assert server.healthy()


BIG_ANSWER = orjson.dumps(
    {
        "query": "{ "
        + " ".join(
            f"a{n}: calls(size: 1000) {{ id direction from to state startTime endTime "
            "callbackUrl eventsUrl chargeableDuration sipHeaders { name value } }"
            for n in range(20)
        )
        + " }"
    }
)


@pytest.mark.parametrize("guarded", ["0"], indirect=True, ids=["answer-cache-off"])
def test_an_answer_the_client_does_not_read_is_dropped_after_the_send_deadline(
    server: Server,
) -> None:
    # A slow-read attack: the answer (~10 MB) is written to the socket, the client never
    # reads it, and it stays in the server's write buffer. Before: for as long as the
    # client kept the connection (4 such connections held +262 MB for 45 s and more;
    # the keep-alive close waits for the buffer to drain); after GATEWAY_SEND_TIMEOUT
    # the connection is aborted and the answer dropped.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(post(BIG_ANSWER))
        time.sleep(3)  # the answer is written (~1 s) and not read past the deadline

        received = read_all(sock, seconds=10)

    head, _, body = received.partition(b"\r\n\r\n")
    declared = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    assert declared > 8_000_000
    assert len(body) < declared, "the whole answer was kept for a client that did not read"
    assert server.healthy()


def test_a_connection_that_never_speaks_is_closed_without_an_answer(server: Server) -> None:
    with server.connect() as sock:
        assert read_all(sock) == b""
    assert server.healthy()


def test_one_connection_over_the_limit_gets_503_at_once(sandbox: Sandbox) -> None:
    # Idle connections held for longer than the test takes on a busy machine.
    with (
        guarded_gateway(sandbox.url, header_timeout="10") as server,
        ExitStack() as stack,
    ):
        idle = [stack.enter_context(server.connect()) for _ in range(20)]
        with server.connect() as extra:
            answer = read_all(extra)
        for sock in idle:
            sock.close()

        assert status(answer) == 503
        assert b"retry-after: 1" in answer.lower()
        assert server.healthy()


def connect_from(server: Server, source: str) -> socket.socket:
    """A connection to `server` from the loopback address `source` (127.0.0.0/8)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.port))
    return sock


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"max_connections_per_client": "5"}, id="per-client-cap"),
        # One address may take every slot but the reserved ones.
        pytest.param({"max_connections_per_client": "100"}, id="reserved-slot"),
    ],
)
def test_one_address_holding_what_it_may_cannot_stop_another_addresses_healthz(
    sandbox: Sandbox, settings: dict[str, str]
) -> None:
    # As the flood did: many connections from one address, each sending only a request
    # line and holding it under the header deadline.
    with (
        guarded_gateway(sandbox.url, header_timeout="10", **settings) as server,
        ExitStack() as stack,
    ):
        refused = []
        for _ in range(30):
            sock = stack.enter_context(connect_from(server, "127.0.0.1"))
            with contextlib.suppress(OSError):
                sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            refused.append(sock)
        with connect_from(server, "127.0.0.2") as probe:
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            answer = read_all(probe)
        # The ones over the limit read their 503 (the request they sent is read and
        # dropped, so the close is no reset that could discard the answer).
        answers = []
        for sock in refused:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                if sock.recv(1, socket.MSG_PEEK):
                    sock.setblocking(True)
                    answers.append(read_all(sock))

        assert status(answer) == 200
        assert answers
        assert all(status(refusal) == 503 for refusal in answers)


# -- request bodies --


def test_a_declared_100_mb_body_gets_413_before_any_of_it_is_sent(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(post(b"", length=100_000_000))
        answer = read_all(sock, seconds=2)

    assert status(answer) == 413
    assert b"connection: close" in answer.lower()
    assert server.healthy()


def test_a_100_mb_body_expecting_continue_gets_413_and_no_continue(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(post(b"", "Expect: 100-continue", length=100_000_000))
        answer = read_all(sock, seconds=2)

    assert status(answer) == 413
    assert server.healthy()


def test_a_chunked_body_over_the_limit_gets_413(server: Server) -> None:
    chunk = b"a" * 8192
    with server.connect() as sock:
        sock.sendall(post(b"", "Transfer-Encoding: chunked").replace(b"Content-Length: 0\r\n", b""))
        try:
            for _ in range(20):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock)

    assert status(answer) == 413
    assert server.healthy()


def test_content_length_lower_than_the_body_parses_the_rest_as_a_bad_request(
    server: Server,
) -> None:
    with server.connect() as sock:
        sock.sendall(post(QUERY, length=10))
        answer = read_all(sock)

    # The first ten bytes are the body (not JSON: 400); the rest is no request (400, close).
    assert status(answer) == 400
    assert b"not valid JSON" in answer
    assert server.healthy()


def _raw_deflate(body: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        pytest.param("gzip", gzip.compress, id="gzip"),
        pytest.param("x-gzip", gzip.compress, id="x-gzip"),
        pytest.param("deflate", zlib.compress, id="deflate"),
        pytest.param("identity", lambda body: body, id="identity"),
        # RFC 1952: a gzip body may be several members, decoded one after the other.
        pytest.param(
            "gzip",
            lambda body: b"".join(gzip.compress(body[i : i + 7]) for i in range(0, len(body), 7)),
            id="gzip-multi-member",
        ),
        # Raw deflate (RFC 1951, no zlib header), as some clients send `deflate`.
        pytest.param("deflate", lambda body: _raw_deflate(body), id="deflate-raw"),
    ],
)
def test_gzip_and_deflate_bodies_are_decoded(server: Server, coding: str, encode: object) -> None:
    assert callable(encode)
    response = httpx.post(
        f"{server.url}/graphql",
        content=encode(QUERY),
        headers={
            **credential_headers(DEMO),
            "Content-Type": "application/json",
            "Content-Encoding": coding,
        },
    )

    assert response.status_code == 200, response.text
    assert len(response.json()["data"]["calls"]) == 1
    assert server.healthy()


@pytest.mark.parametrize(
    ("coding", "body", "expected"),
    [
        pytest.param("br", QUERY, 415, id="brotli-is-unsupported"),
        pytest.param("gzip, gzip", gzip.compress(gzip.compress(QUERY)), 415, id="two-codings"),
        pytest.param("gzip", QUERY, 400, id="not-gzip-at-all"),
        pytest.param("gzip", gzip.compress(QUERY)[:-12], 400, id="truncated-gzip"),
        # 10 KB that inflate to 10 MB: under the limit as sent, refused once 64 KB are
        # inflated.
        pytest.param("gzip", gzip.compress(b"\0" * 10_000_000), 413, id="gzip-bomb"),
        pytest.param("deflate", zlib.compress(b" " * 10_000_000), 413, id="deflate-bomb"),
        pytest.param("gzip", gzip.compress(QUERY) + b"garbage", 400, id="gzip-then-garbage"),
        pytest.param("gzip", gzip.compress(QUERY) + b"\0\0", 400, id="gzip-then-zeros"),
        pytest.param("gzip", gzip.compress(QUERY) + b"\x1f", 400, id="gzip-then-half-member"),
        pytest.param("deflate", zlib.compress(QUERY) + b"x", 400, id="deflate-then-garbage"),
        pytest.param("deflate", _raw_deflate(QUERY) + b"xy", 400, id="raw-deflate-then-garbage"),
        pytest.param("deflate", _raw_deflate(QUERY)[:-3], 400, id="raw-deflate-truncated"),
        # Each member is small; together they inflate past the limit.
        pytest.param(
            "gzip", gzip.compress(b" " * 40_000) * 4, 413, id="gzip-members-over-the-limit"
        ),
    ],
)
def test_bad_or_oversized_encoded_bodies_are_refused(
    server: Server, coding: str, body: bytes, expected: int
) -> None:
    response = httpx.post(
        f"{server.url}/graphql",
        content=body,
        headers={
            **credential_headers(DEMO),
            "Content-Type": "application/json",
            "Content-Encoding": coding,
        },
    )

    assert response.status_code == expected, response.text
    assert server.healthy()


def chunked(body: bytes, trailers: bytes, *headers: str) -> bytes:
    """A chunked POST to /graphql: `body` in one chunk, then the last chunk, `trailers`
    (whole lines) and the end."""
    extra = "".join(f"{header}\r\n" for header in headers)
    return (
        f"POST /graphql HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"{extra}Transfer-Encoding: chunked\r\n\r\n"
    ).encode() + b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(body), body, trailers)


def send_all(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


@pytest.mark.parametrize(
    "request_bytes",
    [
        # The flood seen: 8 KB trailer lines without end (here 2,000 of them, 16 MB).
        pytest.param(
            chunked(QUERY, b"X-T: " + b"a" * 8000 + b"\r\n", CREDENTIALS.rstrip()),
            id="trailer-flood",
        ),
        pytest.param(chunked(QUERY, b"X-T%d: 1\r\n", CREDENTIALS.rstrip()), id="too-many-trailers"),
    ],
)
def test_trailers_count_against_the_header_bounds(server: Server, request_bytes: bytes) -> None:
    head, _, trailer = request_bytes.rpartition(b"0\r\n")
    line = trailer[: -len(b"\r\n")]
    with server.connect() as sock:
        send_all(sock, head + b"0\r\n")
        for n in range(2000):
            try:
                sock.sendall(line.replace(b"%d", b"%d" % n))
            except (BrokenPipeError, ConnectionResetError):
                break
        send_all(sock, b"\r\n")
        answer = read_all(sock)

    assert status(answer) == 431
    assert server.healthy()


def test_an_endless_trailer_line_is_cut_off(server: Server) -> None:
    with server.connect() as sock:
        send_all(sock, chunked(QUERY, b"", CREDENTIALS.rstrip())[: -len(b"\r\n")])
        send_all(sock, b"X-Endless: ")
        for _ in range(50):
            try:
                sock.sendall(b"a" * 8192)
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = read_all(sock)

    assert status(answer) == 431
    assert server.healthy()


def test_credentials_sent_only_as_trailers_are_not_credentials(server: Server) -> None:
    trailers = CREDENTIALS.encode()
    with server.connect() as sock:
        sock.sendall(chunked(QUERY, trailers, "Connection: close"))
        answer = read_all(sock)

    _, _, body = answer.partition(b"\r\n\r\n")
    assert orjson.loads(body)["data"] is None
    assert orjson.loads(body)["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert server.healthy()


@pytest.mark.parametrize(
    "trailers",
    [
        pytest.param(b"Accept: text/html\r\n", id="accept"),
        pytest.param(b"X-Catapult-User-Id: u-second\r\n", id="a-second-user-id"),
        pytest.param(b"X-Note: 1\r\n", id="harmless"),
    ],
)
def test_trailers_are_dropped_and_change_nothing(server: Server, trailers: bytes) -> None:
    with server.connect() as sock:
        sock.sendall(chunked(QUERY, trailers, CREDENTIALS.rstrip(), "Connection: close"))
        answer = read_all(sock)

    assert status(answer) == 200, answer[:300]
    assert b"content-type: application/json" in answer.lower()
    _, _, body = answer.partition(b"\r\n\r\n")
    assert len(orjson.loads(body)["data"]["calls"]) == 1
    assert server.healthy()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_serve_command_runs_the_guard_with_its_settings(sandbox: Sandbox, workers: str) -> None:
    # The CLI's own server, workers included (the limits travel in the pickled config).
    env = {"GATEWAY_UPSTREAM_URL": sandbox.url, "GATEWAY_MAX_HEADERS": "10"}
    with gateway_process("--workers", workers, env=env) as (_, url):
        server = Server(url, int(url.rsplit(":", 1)[1]))
        with server.connect() as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-A: 1\r\n" * 11 + b"\r\n")
            assert status(read_all(sock)) == 431
        with server.connect() as sock:
            sock.sendall(post(b"", length=100_000_000))
            assert status(read_all(sock, seconds=2)) == 413
        assert server.healthy()


def test_with_few_file_descriptors_the_cap_answers_503_before_accept_fails(
    sandbox: Sandbox,
) -> None:
    # 200 descriptors: the cap is lowered to 200 - 8 (upstream pool) - 64 = 128 at start,
    # so the 129th connection is answered 503 instead of waiting for an `accept` that
    # fails for want of a descriptor.
    env = {
        "GATEWAY_UPSTREAM_URL": sandbox.url,
        "GATEWAY_UPSTREAM_MAX_CONNECTIONS": "8",
        "GATEWAY_HEADER_TIMEOUT": "2",
    }
    with gateway_process(env=env, descriptors=200) as (_, url), ExitStack() as stack:
        server = Server(url, int(url.rsplit(":", 1)[1]))
        for _ in range(250):
            stack.enter_context(server.connect())
        with server.connect() as extra:
            answer = read_all(extra, seconds=1.5)
        stack.close()

        assert status(answer) == 503
        assert server.healthy()
