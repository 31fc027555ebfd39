"""The upstream client through a recording `httpx.MockTransport`: the status and transport
error mapping (complete, like httpx's own test of its exception map), retries, headers."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import orjson
import pytest

from gateway.credentials import Credentials
from gateway.errors import ERROR_CODES, GatewayError
from gateway.upstream.client import (
    UpstreamAnswer,
    parse_link_header,
    retry_after_seconds,
)
from gateway.upstream.routes import UpstreamRequest
from gateway.upstream.tally import UpstreamTally
from tests.conftest import GatewayFactory, Sandbox, leaks
from tests.fakes import upstream_client
from tests.servers import free_port

CREDENTIALS = Credentials(authorization="Basic dDpz", user_id="u-demo")
REQUEST = UpstreamRequest("/v1/users/u-demo/calls/", (("from", "+1919"), ("size", "2")))
# Codes raised elsewhere than at the upstream boundary (the endpoint, later the limits).
NOT_FROM_UPSTREAM = {
    "INTERNAL_SERVER_ERROR",
    "BAD_REQUEST",
    "OPERATION_TOO_COMPLEX",
    "PERSISTED_QUERY_NOT_FOUND",
}


class RecordingUpstream:
    """A MockTransport handler that answers from a script and records every request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def fetch(
    upstream: RecordingUpstream,
    *,
    retries: int = 2,
    deadline_in: float = 10,
    tally: UpstreamTally | None = None,
) -> UpstreamAnswer:
    async def run() -> UpstreamAnswer:
        client = upstream_client(httpx.MockTransport(upstream), retries=retries)
        return await client.fetch(
            CREDENTIALS,
            REQUEST,
            deadline=time.monotonic() + deadline_in,
            tally=UpstreamTally() if tally is None else tally,
        )

    return asyncio.run(run())


def error_body(code: str, message: str = "upstream says no") -> dict[str, Any]:
    return {
        "category": "x",
        "code": code,
        "message": message,
        "details": [
            {"name": "remoteAddress", "value": "203.0.113.77"},
            {"name": "requestPath", "value": "users/u-demo/calls"},
        ],
    }


OUTCOMES = [
    pytest.param(httpx.Response(400, json=error_body("bad")), "BAD_USER_INPUT", id="400"),
    pytest.param(httpx.Response(401, json=error_body("auth")), "UNAUTHENTICATED", id="401"),
    pytest.param(httpx.Response(403, json=error_body("no")), "FORBIDDEN", id="403"),
    pytest.param(httpx.Response(404, json=error_body("user-not-found")), "NOT_FOUND", id="404"),
    pytest.param(httpx.Response(429, headers={"X-RateLimit-Reset": "1"}), "RATE_LIMITED", id="429"),
    pytest.param(httpx.Response(418, text="teapot"), "UPSTREAM_ERROR", id="418-other"),
    pytest.param(httpx.Response(500, json=error_body("boom")), "UPSTREAM_ERROR", id="500"),
    pytest.param(httpx.Response(503), "UPSTREAM_ERROR", id="503-after-retries"),
    pytest.param(httpx.Response(200, text="<html>"), "UPSTREAM_BAD_RESPONSE", id="200-not-json"),
    pytest.param(httpx.ConnectError("refused"), "UPSTREAM_UNAVAILABLE", id="connect-error"),
    pytest.param(httpx.ConnectTimeout("slow"), "UPSTREAM_UNAVAILABLE", id="connect-timeout"),
    pytest.param(httpx.RemoteProtocolError("cut"), "UPSTREAM_UNAVAILABLE", id="protocol-error"),
    pytest.param(httpx.ReadError("reset"), "UPSTREAM_UNAVAILABLE", id="read-error"),
    pytest.param(httpx.WriteError("pipe"), "UPSTREAM_UNAVAILABLE", id="write-error"),
    pytest.param(httpx.ReadTimeout("slow"), "UPSTREAM_TIMEOUT", id="read-timeout"),
    pytest.param(httpx.PoolTimeout("full"), "UPSTREAM_TIMEOUT", id="pool-timeout"),
]


@pytest.mark.parametrize(("answer", "code"), OUTCOMES)
def test_each_upstream_outcome_has_its_code(answer: httpx.Response | Exception, code: str) -> None:
    with pytest.raises(GatewayError) as raised:
        fetch(RecordingUpstream(answer))

    assert raised.value.code == code


def test_the_mapping_reaches_every_upstream_error_code() -> None:
    reached = {param.values[1] for param in OUTCOMES}

    assert reached == set(ERROR_CODES) - NOT_FROM_UPSTREAM
    assert len(set(ERROR_CODES)) == len(ERROR_CODES)


def test_a_passed_deadline_is_a_timeout_without_a_request() -> None:
    upstream = RecordingUpstream(httpx.Response(200, json=[]))
    tally = UpstreamTally()

    with pytest.raises(GatewayError) as raised:
        fetch(upstream, deadline_in=-1, tally=tally)

    assert raised.value.code == "UPSTREAM_TIMEOUT"
    assert upstream.requests == []
    assert tally.requests == 0


RETRIES = [
    pytest.param([httpx.Response(503), httpx.Response(200, json=[])], 2, True, id="503-once"),
    pytest.param([httpx.Response(502)] * 2 + [httpx.Response(200, json=[])], 3, True, id="502x2"),
    pytest.param([httpx.Response(504)] * 3, 3, False, id="504-lasting"),
    pytest.param([httpx.ConnectError("no")] * 3, 3, False, id="connect-lasting"),
    pytest.param([httpx.ConnectError("no"), httpx.Response(200, json=[])], 2, True, id="connect"),
    pytest.param([httpx.Response(500)], 1, False, id="500-not-retried"),
    pytest.param([httpx.Response(429)], 1, False, id="429-not-retried"),
    pytest.param([httpx.ReadTimeout("slow")], 1, False, id="read-timeout-not-retried"),
]


@pytest.mark.parametrize(("answers", "attempts", "succeeds"), RETRIES)
def test_idempotent_gets_are_retried_at_most_twice(
    answers: list[httpx.Response | Exception], attempts: int, succeeds: bool
) -> None:
    upstream = RecordingUpstream(*answers)  # the last answer repeats
    tally = UpstreamTally()

    try:
        fetch(upstream, tally=tally)
        succeeded = True
    except GatewayError:
        succeeded = False

    assert succeeded is succeeds
    assert len(upstream.requests) == attempts
    # The operation's tally counts every attempt sent, retries included (its log line's
    # `upstream_requests`), and nothing else counts into it.
    assert (tally.requests, tally.cache) == (attempts, {})


def test_no_retries_when_turned_off() -> None:
    upstream = RecordingUpstream(httpx.Response(503), httpx.Response(200, json=[]))

    with pytest.raises(GatewayError):
        fetch(upstream, retries=0)

    assert len(upstream.requests) == 1


def test_the_request_carries_the_credentials_and_an_encoded_query() -> None:
    upstream = RecordingUpstream(
        httpx.Response(200, json=[], headers={"Link": '<http://u/next>; rel="next"'})
    )

    answer = fetch(upstream)

    [request] = upstream.requests
    assert request.method == "GET"
    assert request.url.raw_path == b"/v1/users/u-demo/calls/?from=%2B1919&size=2"
    assert request.headers["authorization"] == "Basic dDpz"
    assert answer == UpstreamAnswer(body=[], links={"next": "http://u/next"})


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500])
def test_upstream_details_never_reach_the_error(status: int) -> None:
    upstream = RecordingUpstream(httpx.Response(status, json=error_body("some-code")))

    with pytest.raises(GatewayError) as raised:
        fetch(upstream)

    shown = orjson.dumps([raised.value.message, raised.value.extensions]).decode()
    assert "203.0.113.77" not in shown
    assert "requestPath" not in shown
    assert "remoteAddress" not in shown
    assert raised.value.extensions["upstreamStatus"] == status
    assert raised.value.extensions["upstreamCode"] == "some-code"


def test_the_upstream_message_is_kept() -> None:
    upstream = RecordingUpstream(httpx.Response(403, json=error_body("x", "No access to calls")))

    with pytest.raises(GatewayError) as raised:
        fetch(upstream)

    assert raised.value.message == "No access to calls"


# -- retry_after_seconds ------------------------------------------------------------------

NOW = 1_700_000_000.0
RETRY_AFTER = [
    pytest.param({"X-RateLimit-Reset": str(int((NOW + 2.5) * 1000))}, 3, id="reset-epoch-ms"),
    pytest.param({"X-RateLimit-Reset": str(int(NOW + 4))}, 4, id="reset-epoch-seconds"),
    pytest.param({"X-RateLimit-Reset": str(int((NOW - 5) * 1000))}, 1, id="reset-in-the-past"),
    pytest.param({"Retry-After": "7"}, 7, id="retry-after-seconds"),
    pytest.param({"Retry-After": "0"}, 1, id="retry-after-zero"),
    pytest.param(
        {"Retry-After": email.utils.formatdate(NOW + 10, usegmt=True)}, 10, id="retry-after-date"
    ),
    pytest.param({"Retry-After": "soon"}, 1, id="retry-after-garbage"),
    pytest.param(
        {"X-RateLimit-Reset": str(int((NOW + 2) * 1000)), "Retry-After": "30"},
        2,
        id="reset-wins",
    ),
    pytest.param({"X-RateLimit-Reset": "-5"}, 1, id="reset-garbage"),
    # str.isdigit() says yes to "²" (0xB2 read as Latin-1), int() says no: found by fuzzing.
    pytest.param({"X-RateLimit-Reset": b"\xb2"}, 1, id="reset-superscript-digit"),
    pytest.param({"Retry-After": b"\xb2"}, 1, id="retry-after-superscript-digit"),
    pytest.param({}, 1, id="no-header"),
]


@pytest.mark.parametrize(("headers", "seconds"), RETRY_AFTER)
def test_retry_after_seconds(headers: dict[str, str | bytes], seconds: int) -> None:
    raw = [(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in headers.items()]
    assert retry_after_seconds(httpx.Headers(raw), now=NOW) == seconds


def test_rate_limited_carries_retry_after() -> None:
    reset = str(int((time.time() + 2.2) * 1000))
    upstream = RecordingUpstream(httpx.Response(429, headers={"X-RateLimit-Reset": reset}))

    with pytest.raises(GatewayError) as raised:
        fetch(upstream)

    assert raised.value.extensions["code"] == "RATE_LIMITED"
    assert raised.value.extensions["retryAfter"] in {2, 3}


# -- parse_link_header -----------------------------------------------------------------------

LINKS = [
    pytest.param(
        '<https://a/p?page=0>; rel="first", <https://a/p?page=2>; rel="next"',
        {"first": "https://a/p?page=0", "next": "https://a/p?page=2"},
        id="space-after-comma",
    ),
    pytest.param(
        '<https://a/p?page=0>; rel="first",<https://a/p?page=2>; rel="next"',
        {"first": "https://a/p?page=0", "next": "https://a/p?page=2"},
        id="no-space-after-comma",
    ),
    pytest.param(
        '<https://a/1>;rel=previous,<https://a/3>;rel="next"',
        {"previous": "https://a/1", "next": "https://a/3"},
        id="unquoted-and-no-spaces",
    ),
    pytest.param('<https://a/3>; REL="Next"', {"next": "https://a/3"}, id="upper-case"),
    pytest.param(
        '<https://a/3>; title="x"; rel="next last"',
        {"next": "https://a/3", "last": "https://a/3"},
        id="several-relations-and-params",
    ),
    pytest.param(
        '<https://a/1>; rel="next", <https://a/2>; rel="next"',
        {"next": "https://a/1"},
        id="first-wins",
    ),
    pytest.param('https://a/3; rel="next", <https://a/0>', {}, id="malformed-skipped"),
    pytest.param("", {}, id="empty"),
    # What the hand-written parser got wrong (issue 13): RFC 8288 quoting and targets.
    pytest.param(
        '<https://a/p?page=1>; title="next page, please"; rel="next"',
        {"next": "https://a/p?page=1"},
        id="comma-in-quoted-param",
    ),
    pytest.param(
        '<https://a/p?page=1>; title="a; b"; rel="next", <https://a/p?page=0>; rel=first',
        {"next": "https://a/p?page=1", "first": "https://a/p?page=0"},
        id="semicolon-in-quoted-param",
    ),
    pytest.param(
        '<https://a/p?from=sip:ann,bob@example.com&page=1>; rel="next"',
        {"next": "https://a/p?from=sip:ann,bob@example.com&page=1"},
        id="comma-in-target",
    ),
    pytest.param(
        '</v1/users/u-demo/calls?page=1>; rel="next"',
        {"next": "https://u.example/v1/users/u-demo/calls?page=1"},
        id="relative-to-the-request",
    ),
    pytest.param(
        '<?page=1&size=3>; rel="next"',
        {"next": "https://u.example/v1/users/u-demo/calls/?page=1&size=3"},
        id="query-only-reference",
    ),
    pytest.param(
        '  <https://a/3>  ;  rel = "next"  ,  <https://a/0> ; rel = first  ',
        {"next": "https://a/3", "first": "https://a/0"},
        id="extra-whitespace",
    ),
    pytest.param(
        ['<https://a/0>; rel="first"', '<https://a/3>; rel="next"'],
        {"first": "https://a/0", "next": "https://a/3"},
        id="several-header-lines",
    ),
    pytest.param(
        ['<https://a/0>; title="unclosed', '<https://a/3>; rel="next"'],
        {"next": "https://a/3"},
        id="a-broken-line-does-not-hide-the-next",
    ),
]
REQUEST_URL = "https://u.example/v1/users/u-demo/calls/?page=0&size=3"


@pytest.mark.parametrize(("header", "links"), LINKS)
def test_parse_link_header(header: str | list[str], links: dict[str, str]) -> None:
    assert parse_link_header(header, base=REQUEST_URL) == links


# A hostile upstream's Link header: 120 lines (under aiohttp's 128 headers) of 100 links
# each (under its 8,190 bytes a line), 900 KB with quoted commas and semicolons.
LINK_FLOOD = [
    ", ".join([f'<https://a/p?page={line}>; rel="next"; title="a,b;c"'] * 100)
    for line in range(120)
]


def test_a_flood_of_links_is_read_only_up_to_its_bound() -> None:
    # Before: every link was parsed and resolved, 2.1 s of one event loop per answer
    # (/healthz stalled 1.5 s by one such answer, 3.4 s by four); a legitimate header
    # holds four links. A `next` link past the bound is never read; what fits still is.
    past_the_bound = [*LINK_FLOOD, '<https://a/p?page=9>; rel="last next"']

    assert parse_link_header(LINK_FLOOD, base=REQUEST_URL) == {"next": "https://a/p?page=0"}
    assert parse_link_header(past_the_bound, base=REQUEST_URL).get("last") is None


# -- why the upstream is unreachable: the cause is logged, once per failing attempt --


@pytest.fixture
def plain_http_port(sandbox: Sandbox) -> int:
    """The sandbox's port, which speaks plain HTTP: a TLS handshake with it fails."""
    return int(sandbox.url.rsplit(":", 1)[1])


UNREACHABLE = [
    pytest.param(
        lambda port: f"http://127.0.0.1:{free_port()}",
        "ClientConnectorError",
        "ConnectionRefusedError",
        "Connect call failed",
        id="refused",
    ),
    pytest.param(
        lambda port: "http://catapult-upstream.invalid",
        "ClientConnectorDNSError",
        "gaierror",
        "catapult-upstream.invalid",
        id="dns",
    ),
    pytest.param(
        lambda port: f"https://127.0.0.1:{port}",
        "ClientConnectorSSLError",
        "SSLError",
        "SSL",
        id="tls-to-plain-http",
    ),
]


@pytest.mark.parametrize(("upstream", "cause", "root", "detail"), UNREACHABLE)
def test_an_unreachable_upstream_logs_the_cause_of_every_attempt(
    gateway_factory: GatewayFactory,
    plain_http_port: int,
    caplog: Any,
    upstream: Callable[[int], str],
    cause: str,
    root: str,
    detail: str,
) -> None:
    gateway = gateway_factory(upstream_url=upstream(plain_http_port), upstream_retries=1)

    with caplog.at_level(logging.WARNING, logger="gateway.upstream"):
        body = gateway.query("{ calls(size: 1) { id } }").json()

    assert [e["extensions"]["code"] for e in body["errors"]] == ["UPSTREAM_UNAVAILABLE"]
    attempts = [r for r in caplog.records if r.name == "gateway.upstream"]
    assert len(attempts) == 2  # the first attempt and its one retry
    for record in attempts:
        message = record.getMessage()
        assert message.startswith(f"upstream attempt failed: {cause}: "), message
        assert detail in message
        assert (record.cause, record.root_cause) == (cause, root)
        assert record.upstream.startswith(upstream(plain_http_port).split(":")[0])
    assert not leaks(caplog.text.splitlines())


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(
            "400, message='Invalid header', url='http://upstream:8080/v1/users/u-x/calls/"
            "?from=%2B19195550100&size=2'",
            id="aiohttp-url",
        ),
        pytest.param(
            "Invalid header value: b'Link: <http://upstream/v1/users/u-x/calls/?to=%2B1919>'",
            id="header-bytes",
        ),
        pytest.param("http://upstream/v1/users/u-x/calls/?from=+19195550100", id="bare-url"),
    ],
)
def test_a_failed_attempt_logs_no_path_query_or_header_bytes(caplog: Any, message: str) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        try:
            raise aiohttp.ClientError(message)
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc

    client = upstream_client(httpx.MockTransport(broken))
    with caplog.at_level(logging.WARNING, logger="gateway.upstream"), pytest.raises(GatewayError):
        asyncio.run(
            client.fetch(CREDENTIALS, REQUEST, deadline=time.monotonic() + 5, tally=UpstreamTally())
        )

    [record] = [r for r in caplog.records if r.name == "gateway.upstream"]
    logged = record.getMessage()
    assert logged.startswith("upstream attempt failed: ClientError: "), logged
    for secret in ("u-x", "1919", "Link", "/v1/", "?"):
        assert secret not in logged, logged
    assert "http://upstream" in logged or "<bytes>" in logged
