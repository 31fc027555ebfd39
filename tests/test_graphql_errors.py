"""How GraphQL errors leave the gateway: the gateway's own keep their code, the caller's
input is BAD_USER_INPUT, anything else is masked with the request id and logged."""

from __future__ import annotations

import logging

import pytest
from graphql import GraphQLError

from gateway.errors import (
    BadRequest,
    GatewayError,
    PersistedQueryNotFound,
    RateLimited,
    UpstreamTimeout,
)
from gateway.graphql_errors import coded, format_error, internal_error, refusal, refusal_body


@pytest.mark.parametrize(
    ("error", "extensions"),
    [
        pytest.param(BadRequest("Use GET or POST.", status=405), {"code": "BAD_REQUEST"}, id="bad"),
        pytest.param(
            PersistedQueryNotFound("PersistedQueryNotFound"),
            {"code": "PERSISTED_QUERY_NOT_FOUND"},
            id="persisted-query",
        ),
        pytest.param(
            RateLimited("complete one first", retry_after=1),
            {"code": "RATE_LIMITED", "retryAfter": 1},
            id="too-many-operations",
        ),
    ],
)
def test_a_refused_request_is_one_error_with_its_code_and_no_data(
    error: GatewayError, extensions: dict[str, object]
) -> None:
    # What the endpoint answers, and the live transports send, for a request refused
    # before any execution: the message and code, nothing graphql-core would add.
    assert refusal(error) == {"message": error.message, "extensions": extensions}
    assert refusal_body(error) == {"errors": [refusal(error)]}


def test_coded_adds_the_code_and_keeps_the_other_extensions() -> None:
    error = GraphQLError("Syntax Error: Unexpected Name", extensions={"hint": "a brace"})

    assert coded(error, "GRAPHQL_PARSE_FAILED") == {
        "message": "Syntax Error: Unexpected Name",
        "extensions": {"code": "GRAPHQL_PARSE_FAILED", "hint": "a brace"},
    }


@pytest.mark.parametrize(
    ("original", "extensions"),
    [
        pytest.param(UpstreamTimeout("no answer"), {"code": "UPSTREAM_TIMEOUT"}, id="plain"),
        pytest.param(
            RateLimited("slow down", retry_after=3),
            {"code": "RATE_LIMITED", "retryAfter": 3},
            id="with-extensions",
        ),
    ],
)
def test_a_gateway_error_is_passed_on_as_raised(
    original: Exception, extensions: dict[str, object]
) -> None:
    error = GraphQLError(str(original), path=["calls"], original_error=original)

    assert format_error(error, "r-1") == {
        "message": str(original),
        "path": ["calls"],
        "extensions": extensions,
    }


@pytest.mark.parametrize(
    "original",
    [None, GraphQLError("Int cannot represent non-integer value: 'x'")],
    ids=["worded-by-graphql-core", "the-scalars-own-error"],
)
def test_a_variable_that_cannot_be_coerced_is_bad_user_input(
    original: GraphQLError | None,
) -> None:
    error = GraphQLError("Variable '$size' got invalid value 'x'", original_error=original)

    rendered = format_error(error, "r-1")

    assert rendered["extensions"] == {"code": "BAD_USER_INPUT"}
    assert rendered["message"] == "Variable '$size' got invalid value 'x'"


@pytest.mark.server_errors  # the logged error is the point
def test_anything_else_is_masked_with_the_request_id_and_the_detail_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "token s3cret in a bug's message"
    error = GraphQLError(secret, path=["calls", 0, "state"], original_error=KeyError(secret))

    with caplog.at_level(logging.ERROR, logger="gateway.request"):
        rendered = format_error(error, "r-7")

    assert rendered == {
        "message": "Internal server error (request id r-7).",
        "path": ["calls", 0, "state"],
        "extensions": {"code": "INTERNAL_SERVER_ERROR", "requestId": "r-7"},
    }
    assert secret not in str(rendered)
    [record] = caplog.records
    assert record.getMessage() == "unexpected error in calls.0.state (request id r-7)"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], KeyError)


def test_the_masked_error_names_only_the_request_id() -> None:
    assert internal_error("r-9") == {
        "message": "Internal server error (request id r-9).",
        "extensions": {"code": "INTERNAL_SERVER_ERROR", "requestId": "r-9"},
    }
