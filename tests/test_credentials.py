"""The one reader of the credential headers: every spelling it accepts, every refusal.

tests/test_hostile_credentials.py attacks it through the gateway; this is the table of
what `request_credentials` makes of a request's raw header list.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gateway.credentials import MAX_AUTHORIZATION_BYTES, Credentials, request_credentials
from gateway.errors import Unauthenticated

CANONICAL = "Basic " + base64.b64encode(b"t-demo:s-secret").decode()
USER = (b"x-catapult-user-id", b"u-demo")


def basic(raw: bytes, scheme: bytes = b"Basic", space: bytes = b" ") -> bytes:
    return scheme + space + base64.b64encode(raw)


def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "headers": list(headers)}


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
    credentials = request_credentials(scope(*headers))

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
    with pytest.raises(Unauthenticated) as refused:
        request_credentials(scope(*headers))

    assert refused.value.code == "UNAUTHENTICATED"
    assert says in refused.value.message
    for _, value in headers:
        if len(value) >= 8:
            assert value.decode("latin-1") not in refused.value.message


def test_the_verdict_is_read_once_per_request() -> None:
    # Every layer acts on the same caller: a later reader gets the first verdict even if
    # the header list changed in between.
    request = scope((b"authorization", basic(b"t-demo:s-secret")), USER)
    first = request_credentials(request)
    request["headers"] = [(b"authorization", basic(b"t-other:s-other")), USER]

    assert request_credentials(request) is first


def test_a_refusal_is_kept_too_and_raised_anew_each_time() -> None:
    request = scope(USER)
    with pytest.raises(Unauthenticated) as first:
        request_credentials(request)
    request["headers"] = [(b"authorization", basic(b"t-demo:s-secret")), USER]
    with pytest.raises(Unauthenticated) as second:
        request_credentials(request)

    assert second.value is not first.value
    assert second.value.message == first.value.message


def test_the_authorization_value_never_shows_in_repr() -> None:
    credentials = request_credentials(scope((b"authorization", basic(b"t-demo:s-secret")), USER))

    assert "u-demo" in repr(credentials)
    for secret in (CANONICAL, "t-demo", "s-secret"):
        assert secret not in repr(credentials)
