"""Hostile credential headers: refused with UNAUTHENTICATED, upstream and cache untouched.

Every layer acts on the request's one verdict on the credential headers (`RequestFacts`), so
a request that repeats one (in any spelling) cannot be authenticated upstream as one
caller and cached as another; and no byte in them can raise past the check.
"""

from __future__ import annotations

import asyncio
import base64
import socket

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.credentials import MAX_AUTHORIZATION_BYTES, credentials_from_raw_headers
from gateway.errors import Unauthenticated
from gateway.sandbox import credential_headers
from gateway.upstream.keys import KeyedHashes
from gateway.upstream.routes import calls_path
from tests.conftest import DEMO, SECOND, GatewayFactory, examples
from tests.fakes import FakeUpstream, upstream_call
from tests.inprocess import CALLS_QUERY, assert_healthy, error_codes, in_process, post_graphql

# Account A (the victim) and account B (the attacker), as raw header pairs.
A = [(k.lower().encode(), v.encode()) for k, v in credential_headers(DEMO).items()]
B = [(k.lower().encode(), v.encode()) for k, v in credential_headers(SECOND).items()]
A_AUTH, A_USER = A
B_AUTH, B_USER = B


def basic(raw: bytes) -> bytes:
    return b"Basic " + base64.b64encode(raw)


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    """A's and B's call lists, told apart by their ids."""
    fake_upstream.answer(calls_path(DEMO.user_id), [upstream_call("c-of-a")])
    fake_upstream.answer(calls_path(SECOND.user_id), [upstream_call("c-of-b")])
    return fake_upstream


def ids(response: httpx.Response) -> list[str]:
    return [call["id"] for call in response.json()["data"]["calls"]]


REPEATS = [
    # The issue's input: B's pair first, A's pair second.
    pytest.param([B_AUTH, B_USER, A_AUTH, A_USER], id="b-pair-then-a-pair"),
    pytest.param([B_AUTH, A_AUTH, B_USER, A_USER], id="interleaved"),
    pytest.param([B_AUTH, A_AUTH, A_USER], id="authorization-twice"),
    pytest.param([A_AUTH, B_USER, A_USER], id="user-id-twice"),
    pytest.param([A_AUTH, A_AUTH, A_USER], id="same-authorization-twice"),
    pytest.param(
        [(b"authorization", B_AUTH[1]), (b"AUTHORIZATION", A_AUTH[1]), A_USER],
        id="authorization-in-two-cases",
    ),
    pytest.param(
        [A_AUTH, (b"X-Catapult-User-Id", B_USER[1]), (b"x-catapult-user-id", A_USER[1])],
        id="user-id-in-two-cases",
    ),
    pytest.param([(b"authorization", b""), A_AUTH, A_USER], id="an-empty-one-first"),
]


@pytest.mark.parametrize("headers", REPEATS)
def test_repeated_credential_headers_are_refused_and_never_cached(
    upstream: FakeUpstream, headers: list[tuple[bytes, bytes]]
) -> None:
    async def run() -> None:
        async with in_process(upstream.url, cache_ttl=30) as client:
            refused = await post_graphql(client, headers)
            assert error_codes(refused) == ["UNAUTHENTICATED"]
            assert refused.json()["data"] is None
            assert upstream.requests == []
            readiness = (await client.get("/readyz")).json()["cache"]
            assert (readiness["hits"], readiness["misses"]) == (0, 0)
            await assert_healthy(client)

            # A's next ordinary request (the same bytes) gets A's calls, from the upstream:
            # nothing was kept under A's key.
            mine = await post_graphql(client, A)
            assert ids(mine) == ["c-of-a"]
            assert [r.headers["authorization"] for r in upstream.requests] == [A_AUTH[1].decode()]
            assert upstream.requests[0].path == calls_path(DEMO.user_id)

    asyncio.run(run())


def test_the_issue_sequence_cannot_poison_a_cached_answer(upstream: FakeUpstream) -> None:
    """A's answer cached first, then B's-then-A's pair: still refused, A still gets A's."""

    async def run() -> None:
        async with in_process(upstream.url, cache_ttl=30) as client:
            assert ids(await post_graphql(client, A)) == ["c-of-a"]
            refused = await post_graphql(client, [*B, *A])
            assert error_codes(refused) == ["UNAUTHENTICATED"]
            assert ids(await post_graphql(client, A)) == ["c-of-a"]
            assert ids(await post_graphql(client, B)) == ["c-of-b"]
            assert [r.path for r in upstream.requests] == [
                calls_path(DEMO.user_id),
                calls_path(SECOND.user_id),
            ]
            await assert_healthy(client)

    asyncio.run(run())


VALUES = [
    pytest.param([(b"authorization", b"Basic \xc3\xa9"), A_USER], id="authorization-utf8"),
    pytest.param([(b"authorization", b"Basic \xe9"), A_USER], id="authorization-latin1"),
    pytest.param([(b"authorization", basic(b"t:\xff\xfe")), A_USER], id="decoded-not-utf8"),
    pytest.param([(b"authorization", A_AUTH[1] + b"\x00"), A_USER], id="authorization-nul"),
    pytest.param(
        [(b"authorization", A_AUTH[1] + b"\r\nX-Evil: 1"), A_USER], id="authorization-crlf"
    ),
    pytest.param([(b"authorization", b"Basic\t" + A_AUTH[1][6:]), A_USER], id="tab-after-scheme"),
    pytest.param([(b"authorization", basic(b"t:s\x00")), A_USER], id="decoded-nul"),
    pytest.param([(b"authorization", b"Basic " + b"A" * 100_000), A_USER], id="very-long"),
    pytest.param(
        [(b"authorization", basic(b"t:" + b"s" * MAX_AUTHORIZATION_BYTES)), A_USER],
        id="just-over-the-bound",
    ),
    pytest.param([(b"authorization", b"Basic "), A_USER], id="empty-base64"),
    pytest.param([(b"authorization", b"Basic ===="), A_USER], id="only-padding"),
    pytest.param([(b"authorization", b"Basic"), A_USER], id="scheme-only"),
    pytest.param([(b"authorization", b"Basic" + A_AUTH[1][6:]), A_USER], id="no-space"),
    pytest.param([(b"authorization", b"Bearer " + A_AUTH[1][6:]), A_USER], id="bearer"),
    pytest.param([(b"authorization", basic(b"token-only")), A_USER], id="no-colon"),
    pytest.param([(b"authorization", basic(b":secret")), A_USER], id="empty-token"),
    pytest.param([(b"authorization", basic(b"token:")), A_USER], id="empty-secret"),
    pytest.param([(b"authorization", b"Basic not*base64"), A_USER], id="not-base64"),
    pytest.param([A_USER], id="no-authorization"),
    pytest.param([A_AUTH], id="no-user-id"),
    pytest.param([A_AUTH, (b"x-catapult-user-id", b"u-\xc3\xa9")], id="user-id-utf8"),
    pytest.param([A_AUTH, (b"x-catapult-user-id", b"u-demo\x00")], id="user-id-nul"),
    pytest.param([A_AUTH, (b"x-catapult-user-id", b"u-demo\r\n")], id="user-id-crlf"),
    pytest.param([A_AUTH, (b"x-catapult-user-id", b"u-../x")], id="user-id-path"),
    pytest.param([A_AUTH, (b"x-catapult-user-id", b"u-" + b"a" * 129)], id="user-id-too-long"),
    pytest.param([A_AUTH, (b"x-catapult-user-id", b"")], id="user-id-empty"),
]


@pytest.mark.parametrize("headers", VALUES)
def test_malformed_credential_values_are_unauthenticated(
    upstream: FakeUpstream, headers: list[tuple[bytes, bytes]]
) -> None:
    async def run() -> None:
        async with in_process(upstream.url, cache_ttl=30) as client:
            response = await post_graphql(client, headers)
            assert response.status_code == 200
            assert error_codes(response) == ["UNAUTHENTICATED"]
            assert upstream.requests == []
            await assert_healthy(client)

    asyncio.run(run())


ACCEPTED = [
    pytest.param(A, id="as-sent"),
    pytest.param([(b"authorization", b"basic " + A_AUTH[1][6:]), A_USER], id="lower-case-scheme"),
    pytest.param([(b"authorization", b"BASIC " + A_AUTH[1][6:]), A_USER], id="upper-case-scheme"),
    pytest.param([(b"Authorization", A_AUTH[1]), (b"X-CATAPULT-USER-ID", A_USER[1])],
                 id="names-in-any-case"),
    # RFC 7617: token and secret are UTF-8 once decoded (the header itself stays ASCII).
    pytest.param([(b"authorization", basic("t\u00e9:s".encode())), A_USER], id="utf8-decoded"),
]  # fmt: skip


@pytest.mark.parametrize("headers", ACCEPTED)
def test_legal_spellings_are_read(headers: list[tuple[bytes, bytes]]) -> None:
    credentials = credentials_from_raw_headers(headers)
    assert credentials.user_id == DEMO.user_id
    # Forwarded in the one spelling: `Basic`, one space, the canonical base64.
    sent = {k.lower(): v for k, v in headers}[b"authorization"]
    assert credentials.authorization.encode() == b"Basic " + sent.split()[-1]


# One account in the spellings HTTP allows: the scheme in any case (RFC 9110 11.1),
# several spaces after it, optional whitespace around the value (RFC 9110 5.5).
A_ENCODED = A_AUTH[1].split()[-1]
SPELLING_IDS = {
    "canonical": b"Basic " + A_ENCODED,
    "lower-case-scheme": b"basic " + A_ENCODED,
    "upper-case-scheme": b"BASIC " + A_ENCODED,
    "spaces-after-the-scheme": b"Basic   " + A_ENCODED,
    "trailing-spaces": b"Basic " + A_ENCODED + b"  ",
    "ows-around": b" \tBasic " + A_ENCODED + b"\t",
}
SPELLING_VALUES = list(SPELLING_IDS.values())
SPELLINGS = [pytest.param(value, id=name) for name, value in SPELLING_IDS.items()]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_is_one_caller(spelling: bytes) -> None:
    canonical = credentials_from_raw_headers(A)
    credentials = credentials_from_raw_headers([(b"authorization", spelling), A_USER])
    assert credentials == canonical
    assert credentials.account == canonical.account == DEMO.token
    keys = KeyedHashes(b"k")
    assert keys.account(credentials.account) == keys.account(canonical.account)


def test_the_spellings_of_one_account_share_one_cache_entry(upstream: FakeUpstream) -> None:
    async def run() -> None:
        async with in_process(upstream.url, cache_ttl=30) as client:
            for spelling in SPELLING_VALUES:
                response = await post_graphql(client, [(b"authorization", spelling), A_USER])
                assert ids(response) == ["c-of-a"]
        [only] = upstream.requests
        # Forwarded in the one spelling, whichever the caller used first.
        assert only.headers["authorization"] == "Basic " + A_ENCODED.decode()

    asyncio.run(run())


def test_the_spellings_of_one_account_share_one_pacing_schedule(upstream: FakeUpstream) -> None:
    """Ten seconds between requests, no wait allowed: only the first spelling gets a slot."""

    async def run() -> None:
        async with in_process(
            upstream.url, cache_ttl=0, upstream_rate=0.1, upstream_queue_timeout=0
        ) as client:
            codes = []
            for spelling in SPELLING_VALUES:
                response = await post_graphql(client, [(b"authorization", spelling), A_USER])
                codes.append(error_codes(response))
            # Another account has its own schedule.
            assert ids(await post_graphql(client, B)) == ["c-of-b"]
        assert codes == [[]] + [["RATE_LIMITED"]] * (len(SPELLING_VALUES) - 1)
        assert [r.headers["authorization"] for r in upstream.requests] == [
            A_AUTH[1].decode(),
            B_AUTH[1].decode(),
        ]

    asyncio.run(run())


def test_a_refusal_never_repeats_the_value() -> None:
    secret = basic(b"t-demo:s-\x00-secret")
    with pytest.raises(Unauthenticated) as raised:
        credentials_from_raw_headers([(b"authorization", secret), A_USER])
    assert secret.decode() not in raised.value.message


def test_repeated_headers_over_a_real_socket_are_refused(
    loopback_gateway_factory: GatewayFactory, upstream: FakeUpstream
) -> None:
    """uvicorn in front, the request written byte by byte: B's pair, then A's pair."""
    gateway = loopback_gateway_factory(upstream_url=upstream.url, cache_ttl=30, headers={})
    host, port = gateway.url.removeprefix("http://").split(":")
    body = orjson.dumps({"query": CALLS_QUERY})
    lines = [
        b"POST /graphql HTTP/1.1",
        b"Host: gateway.test",
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Authorization: " + B_AUTH[1],
        b"X-Catapult-User-Id: " + B_USER[1],
        b"authorization: " + A_AUTH[1],
        b"x-catapult-user-id: " + A_USER[1],
        b"Connection: close",
    ]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    errors = orjson.loads(payload)["errors"]
    assert [error["extensions"]["code"] for error in errors] == ["UNAUTHENTICATED"]
    assert upstream.requests == []

    mine = gateway.query(CALLS_QUERY, headers=credential_headers(DEMO))
    assert ids(mine) == ["c-of-a"]
    assert [r.path for r in upstream.requests] == [calls_path(DEMO.user_id)]
    assert gateway.http.get("/healthz").status_code == 200


@settings(max_examples=examples(300), deadline=None, database=None)
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from([b"authorization", b"Authorization", b"x-catapult-user-id", b"x"]),
            st.binary(max_size=80) | st.just(A_AUTH[1]) | st.just(A_USER[1]),
        ),
        max_size=4,
    )
)
def test_any_header_bytes_are_read_or_refused_with_a_code(
    headers: list[tuple[bytes, bytes]],
) -> None:
    try:
        credentials = credentials_from_raw_headers(headers)
    except Unauthenticated:
        return
    names = [name.lower() for name, _ in headers]
    assert names.count(b"authorization") == names.count(b"x-catapult-user-id") == 1
    assert credentials.authorization.isascii()
    assert credentials.authorization.isprintable()
