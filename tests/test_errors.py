"""The error tree: one stable code per class, and what a caller sees of each.

The upstream's answers are mapped to these classes in the upstream client (its tests
check that mapping); here, that the tree is what the module says it is and that an
error raised below the endpoint reaches the caller as a GraphQL error with its code and
extensions, and nothing else.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

import gateway.errors
from gateway.errors import (
    ERROR_CODES,
    BadRequest,
    BadUserInput,
    Forbidden,
    GatewayError,
    NotFound,
    OperationTooComplex,
    PersistedQueryNotFound,
    RateLimited,
    Unauthenticated,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tests.conftest import DEMO, GatewayFactory
from tests.fakes import FakeUpstream

TREE = [
    pytest.param(GatewayError, "INTERNAL_SERVER_ERROR", Exception, id="GatewayError"),
    pytest.param(BadRequest, "BAD_REQUEST", GatewayError, id="BadRequest"),
    pytest.param(BadUserInput, "BAD_USER_INPUT", GatewayError, id="BadUserInput"),
    pytest.param(Unauthenticated, "UNAUTHENTICATED", GatewayError, id="Unauthenticated"),
    pytest.param(Forbidden, "FORBIDDEN", GatewayError, id="Forbidden"),
    pytest.param(NotFound, "NOT_FOUND", GatewayError, id="NotFound"),
    pytest.param(RateLimited, "RATE_LIMITED", GatewayError, id="RateLimited"),
    pytest.param(
        OperationTooComplex, "OPERATION_TOO_COMPLEX", GatewayError, id="OperationTooComplex"
    ),
    pytest.param(
        PersistedQueryNotFound,
        "PERSISTED_QUERY_NOT_FOUND",
        GatewayError,
        id="PersistedQueryNotFound",
    ),
    pytest.param(UpstreamError, "UPSTREAM_ERROR", GatewayError, id="UpstreamError"),
    pytest.param(UpstreamTimeout, "UPSTREAM_TIMEOUT", UpstreamError, id="UpstreamTimeout"),
    pytest.param(
        UpstreamUnavailable, "UPSTREAM_UNAVAILABLE", UpstreamError, id="UpstreamUnavailable"
    ),
    pytest.param(
        UpstreamBadResponse, "UPSTREAM_BAD_RESPONSE", UpstreamError, id="UpstreamBadResponse"
    ),
]


@pytest.mark.parametrize(("cls", "code", "parent"), TREE)
def test_each_error_has_its_code_and_place_in_the_tree(
    cls: type[GatewayError], code: str, parent: type[Exception]
) -> None:
    error = (
        cls("Said to the caller.", retry_after=3)
        if cls is RateLimited
        else cls("Said to the caller.")
    )

    assert cls.__bases__ == (parent,)
    assert error.code == code
    assert error.extensions["code"] == code
    assert error.message == str(error) == "Said to the caller."
    assert drawn_tree()[cls.__name__] == code


def drawn_tree() -> dict[str, str]:
    """The classes and codes the module docstring draws, one per line."""
    drawn: dict[str, str] = {}
    for line in (gateway.errors.__doc__ or "").splitlines():
        words = line.strip(" │├└─").split()
        if len(words) >= 2 and words[0].isidentifier() and re.fullmatch(r"[A-Z_]+", words[1]):
            drawn[words[0]] = words[1]
    return drawn


def _subclasses(cls: type[GatewayError]) -> list[type[GatewayError]]:
    found: list[type[GatewayError]] = []
    for sub in cls.__subclasses__():
        if sub.__module__ == "gateway.errors":
            found += [sub, *_subclasses(sub)]
    return found


def test_the_table_error_codes_and_the_tree_are_complete() -> None:
    # A new class must join the table above and ERROR_CODES (which the fuzz and schema
    # tests accept as the only codes an answer may carry).
    tabled = [param.values[0] for param in TREE]
    assert set(tabled) == {GatewayError, *_subclasses(GatewayError)}
    assert tuple(param.values[1] for param in TREE) == ERROR_CODES
    assert len(drawn_tree()) == len(TREE)


def test_a_bad_request_carries_its_http_status_and_headers_outside_its_extensions() -> None:
    error = BadRequest("Use GET or POST.", status=405, headers={"allow": "GET, POST"})

    assert (error.status, error.headers) == (405, {"allow": "GET, POST"})
    assert error.extensions == {"code": "BAD_REQUEST"}
    assert BadRequest("Not JSON.").status == 400


def test_extensions_carry_the_code_and_whatever_the_raiser_added() -> None:
    error = UpstreamError("Upstream failed.", upstreamStatus=502, upstreamCode="boom")

    assert error.extensions == {
        "code": "UPSTREAM_ERROR",
        "upstreamStatus": 502,
        "upstreamCode": "boom",
    }


def test_rate_limited_says_when_to_retry() -> None:
    error = RateLimited("Slow down.", retry_after=7)

    assert error.retry_after == 7
    assert error.extensions == {"code": "RATE_LIMITED", "retryAfter": 7}


# -- the boundary: an error raised below the endpoint, as the caller gets it --

UPSTREAM_ERROR_BODY = {"category": "x", "code": "upstream-code", "message": "Said upstream."}

AT_THE_BOUNDARY = [
    pytest.param(
        400, {}, {"code": "BAD_USER_INPUT", "upstreamStatus": 400}, id="400-bad-user-input"
    ),
    pytest.param(
        401, {}, {"code": "UNAUTHENTICATED", "upstreamStatus": 401}, id="401-unauthenticated"
    ),
    pytest.param(403, {}, {"code": "FORBIDDEN", "upstreamStatus": 403}, id="403-forbidden"),
    pytest.param(404, {}, {"code": "NOT_FOUND", "upstreamStatus": 404}, id="404-not-found"),
    pytest.param(
        429,
        {"Retry-After": "9"},
        {"code": "RATE_LIMITED", "upstreamStatus": 429, "retryAfter": 9},
        id="429-rate-limited",
    ),
    pytest.param(
        500, {}, {"code": "UPSTREAM_ERROR", "upstreamStatus": 500}, id="500-upstream-error"
    ),
]


@pytest.mark.parametrize(("status", "headers", "extensions"), AT_THE_BOUNDARY)
def test_a_gateway_error_reaches_the_caller_with_its_code_and_extensions(
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
    status: int,
    headers: dict[str, str],
    extensions: dict[str, Any],
) -> None:
    fake_upstream.answer(
        f"/v1/users/{DEMO.user_id}/calls/",
        UPSTREAM_ERROR_BODY,
        status=status,
        header_lines=tuple(headers.items()),
    )
    gateway = gateway_factory(upstream_url=fake_upstream.url, upstream_retries=0, cache_ttl=0)

    answer = gateway.query("{ calls { id } }").json()

    assert answer["data"] is None
    [error] = answer["errors"]
    assert error["extensions"] == {**extensions, "upstreamCode": "upstream-code"}
    assert error["message"] == "Said upstream."
    assert error["path"] == ["calls"]


def test_an_upstream_answer_that_is_not_json_is_a_bad_response(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.answer(f"/v1/users/{DEMO.user_id}/calls/", b"<html>oops")
    gateway = gateway_factory(upstream_url=fake_upstream.url, upstream_retries=0, cache_ttl=0)

    [error] = gateway.query("{ calls { id } }").json()["errors"]

    assert error["extensions"] == {"code": "UPSTREAM_BAD_RESPONSE"}
    assert "<html>" not in error["message"]
