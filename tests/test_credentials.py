"""The one reader of the credential headers: every spelling it accepts, every refusal.

tests/test_hostile_credentials.py attacks it through the gateway; this is the table of
what `credentials_verdict` makes of a request's raw header list.
"""

from __future__ import annotations

import base64

import pytest

from gateway.credentials import (
    MAX_AUTHORIZATION_BYTES,
    Credentials,
    caller,
    credentials_verdict,
)
from gateway.errors import Unauthenticated

CANONICAL = "Basic " + base64.b64encode(b"t-demo:s-secret").decode()
USER = (b"x-catapult-user-id", b"u-demo")


def basic(raw: bytes, scheme: bytes = b"Basic", space: bytes = b" ") -> bytes:
    return scheme + space + base64.b64encode(raw)


ACCEPTED = [
    pytest.param([(b"authorization", basic(b"t-demo:s-secret")), USER], id="canonical"),
    pytest.param(
        [(b"Authorization", basic(b"t-demo:s-secret")), (b"X-Catapult-User-Id", b"u-demo")],
        id="header-names-in-any-case",
    ),
    pytest.param([(b"authorization", basic(b"t-demo:s-secret", b"bAsIc")), USER], id="scheme-case"),
    pytest.param(
        [(b"authorization", basic(b"t-demo:s-secret", space=b"   ")), USER],
        id="spaces-after-the-scheme",
    ),
    pytest.param(
        [(b"authorization", b" \t" + basic(b"t-demo:s-secret") + b"\t "), (USER[0], b" u-demo\t")],
        id="optional-whitespace-around-values",
    ),
    pytest.param(
        [(b"accept", b"*/*"), USER, (b"authorization", basic(b"t-demo:s-secret"))],
        id="other-headers-and-any-order",
    ),
]


@pytest.mark.parametrize("headers", ACCEPTED)
def test_accepted_spellings_are_one_caller(headers: list[tuple[bytes, bytes]]) -> None:
    credentials = credentials_verdict(headers)

    # One normalised form, whatever the spelling: the cache and pacing keys depend on it.
    assert credentials == Credentials(authorization=CANONICAL, user_id="u-demo", token="t-demo")
    assert credentials.account == "t-demo"


REFUSED = [
    pytest.param([USER], "Send your Catapult API token", id="no-authorization"),
    pytest.param([(b"authorization", b""), USER], "Send your Catapult API token", id="empty"),
    pytest.param(
        [(b"authorization", basic(b"t-demo:s-secret"))], "Send your Catapult user id", id="no-user"
    ),
    pytest.param(
        [(b"authorization", basic(b"t-demo:s-secret")), (USER[0], b"  ")],
        "Send your Catapult user id",
        id="blank-user",
    ),
    pytest.param(
        [(b"authorization", basic(b"t-a:s-a")), (b"Authorization", basic(b"t-b:s-b")), USER],
        "once each",
        id="authorization-twice",
    ),
    pytest.param(
        [(b"authorization", basic(b"t-demo:s-secret")), USER, (b"X-Catapult-User-Id", b"u-x")],
        "once each",
        id="user-twice",
    ),
    pytest.param([(b"authorization", b"Bearer abc"), USER], "must be `Basic", id="another-scheme"),
    pytest.param([(b"authorization", b"Basic"), USER], "must be `Basic", id="scheme-only"),
    pytest.param([(b"authorization", b"Basic !!!"), USER], "must be `Basic", id="not-base64"),
    pytest.param([(b"authorization", basic(b"no-colon")), USER], "must be `Basic", id="no-colon"),
    pytest.param([(b"authorization", basic(b":s-secret")), USER], "must be `Basic", id="no-token"),
    pytest.param([(b"authorization", basic(b"t-demo:")), USER], "must be `Basic", id="no-secret"),
    pytest.param(
        [(b"authorization", basic(b"t-\xff:s-secret")), USER], "must be `Basic", id="not-utf8"
    ),
    pytest.param(
        [(b"authorization", basic(b"t-\x00:s-secret")), USER], "must be `Basic", id="nul-decoded"
    ),
    pytest.param(
        [(b"authorization", basic(b"t-demo:s-secret") + b"\r\nX: y"), USER],
        "must be `Basic",
        id="cr-lf-in-the-value",
    ),
    pytest.param(
        [(b"authorization", basic(b"t:" + b"s" * MAX_AUTHORIZATION_BYTES)), USER],
        "must be `Basic",
        id="over-the-length-bound",
    ),
    pytest.param(
        [(b"authorization", basic(b"t-demo:s-secret")), (USER[0], b"demo")],
        "must be a Catapult user id",
        id="user-without-u-prefix",
    ),
    pytest.param(
        [(b"authorization", basic(b"t-demo:s-secret")), (USER[0], b"u-../admin")],
        "must be a Catapult user id",
        id="user-leaving-its-path-segment",
    ),
    pytest.param(
        [(b"authorization", basic(b"t-demo:s-secret")), (USER[0], b"u-" + b"a" * 129)],
        "must be a Catapult user id",
        id="user-too-long",
    ),
]


@pytest.mark.parametrize(("headers", "says"), REFUSED)
def test_refusals_say_what_to_send_and_never_echo_it(
    headers: list[tuple[bytes, bytes]], says: str
) -> None:
    refused = credentials_verdict(headers)

    assert isinstance(refused, Unauthenticated)
    assert refused.code == "UNAUTHENTICATED"
    assert says in refused.message
    for _, value in headers:
        if len(value) >= 8:
            assert value.decode("latin-1") not in refused.message


def test_the_caller_of_a_verdict_is_its_credentials() -> None:
    credentials = credentials_verdict([(b"authorization", basic(b"t-demo:s-secret")), USER])

    assert caller(credentials) is credentials


def test_a_refusal_is_raised_anew_each_time() -> None:
    # One exception raised twice would grow its traceback at each raise.
    refusal = credentials_verdict([USER])
    with pytest.raises(Unauthenticated) as first:
        caller(refusal)
    with pytest.raises(Unauthenticated) as second:
        caller(refusal)

    assert refusal not in (first.value, second.value)
    assert second.value is not first.value
    assert first.value.message == second.value.message == str(refusal)


def test_the_authorization_value_never_shows_in_repr() -> None:
    credentials = credentials_verdict([(b"authorization", basic(b"t-demo:s-secret")), USER])

    assert "u-demo" in repr(credentials)
    for secret in (CANONICAL, "t-demo", "s-secret"):
        assert secret not in repr(credentials)
