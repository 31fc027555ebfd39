"""Fuzzing: schemathesis against the gateway, hypothesis over validation and parsing.

Whatever comes in, the answer is a 2xx/4xx with coded errors, never a 5xx or a
traceback, and the pure functions either return or raise a coded `GatewayError`.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from graphql import StringValueNode, get_introspection_query
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok

from gateway.calls import (
    BadRecord,
    CallRecord,
    ListQuery,
    parse_call,
    parse_call_list,
    validate_id,
    validate_number,
)
from gateway.credentials import credentials_from_raw_headers
from gateway.errors import ERROR_CODES, GatewayError, UpstreamBadResponse
from gateway.upstream.client import parse_link_header, retry_after_seconds
from tests.conftest import Gateway, examples

BOUNDED = settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
call_keys = st.sampled_from(
    ["id", "direction", "from", "to", "state", "startTime", "endTime", "activeTime",
     "callbackTimeout", "chargeableDuration", "recordingEnabled", "recordingFileFormat",
     "sipHeaders", "callbackHttpMethod", "bridge", "conference", "events"]
)  # fmt: skip
call_like = st.dictionaries(call_keys, json_values | st.text(string.printable, max_size=40))


def refusal(function: Callable[..., Any], *args: Any, **kwargs: Any) -> GatewayError | None:
    """The coded error `function` raised, or None; any other exception fails the test."""
    try:
        function(*args, **kwargs)
    except GatewayError as error:
        return error
    return None


def returns_or_raises_coded(function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    error = refusal(function, *args, **kwargs)
    if error is not None:
        assert error.code in ERROR_CODES
        assert error.message


@BOUNDED
@given(
    bridge_id=st.none() | st.text(max_size=140),
    from_=st.none() | st.text(max_size=40),
    page=st.integers(min_value=-(2**40), max_value=2**40),
    size=st.integers(min_value=-(2**40), max_value=2**40),
    sort_order=st.sampled_from(["asc", "desc"]),
)
def test_list_queries_validate_or_refuse_with_a_code(
    bridge_id: str | None, from_: str | None, page: int, size: int, sort_order: Any
) -> None:
    returns_or_raises_coded(
        ListQuery.create, bridge_id=bridge_id, from_=from_, page=page, size=size,
        sort_order=sort_order,
    )  # fmt: skip


@BOUNDED
@given(value=st.text())
def test_ids_and_numbers_validate_or_refuse_with_a_code(value: str) -> None:
    returns_or_raises_coded(validate_id, value, "id")
    returns_or_raises_coded(validate_number, value, "from")


def _required(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) and value else None


def _readable_id(raw: Any) -> str | None:
    """The id of an entry that has what a Call cannot do without (id, `from`, `to`)."""
    if not isinstance(raw, dict):
        return None
    id_, from_, to = (_required(raw, key) for key in ("id", "from", "to"))
    return id_ if from_ and to else None


@BOUNDED
@given(body=json_values | st.lists(call_like | json_values, max_size=5))
def test_upstream_bodies_parse_or_raise_a_code(body: Any) -> None:
    error = refusal(parse_call_list, body)
    if not isinstance(body, list):
        assert isinstance(error, UpstreamBadResponse)
        return
    assert error is None
    records, bad = parse_call_list(body)
    # Every entry is accounted for: a call, or a bad record that says how many came before.
    assert [record.id for record in records] == [
        id_ for id_ in map(_readable_id, body) if id_ is not None
    ]
    assert len(bad) == len(body) - len(records)
    assert all(0 <= entry.before <= len(records) for entry in bad)


@BOUNDED
@given(record=call_like)
def test_call_records_parse_to_a_record_or_a_bad_record(record: dict[str, Any]) -> None:
    # parse_call never raises (any exception fails this test); what it returns depends
    # on the three fields a Call cannot do without, and only on them.
    parsed = parse_call(record)

    id_, from_, to = (_required(record, key) for key in ("id", "from", "to"))
    if id_ and from_ and to:
        assert isinstance(parsed, CallRecord)
        assert (parsed.id, parsed.from_, parsed.to) == (id_, from_, to)
    else:
        assert isinstance(parsed, BadRecord)
        assert parsed.call_id == id_
        assert parsed.reason


@BOUNDED
@given(
    authorization=st.none() | st.text(max_size=80) | st.binary(max_size=60).map(
        lambda raw: "Basic " + __import__("base64").b64encode(raw).decode()
    ),
    user_id=st.none() | st.text(max_size=40) | st.from_regex(r"u-[\w-]{1,20}", fullmatch=True),
)  # fmt: skip
def test_credentials_validate_or_refuse_with_a_code(
    authorization: str | None, user_id: str | None
) -> None:
    headers = [
        (key, value.encode())
        for key, value in ((b"authorization", authorization), (b"x-catapult-user-id", user_id))
        if value is not None
    ]
    error = refusal(credentials_from_raw_headers, headers)
    if error is None:
        credentials = credentials_from_raw_headers(headers)
        assert credentials.authorization not in repr(credentials)
    else:
        assert error.code == "UNAUTHENTICATED"
        # The refusal never repeats what was sent.
        assert not authorization or len(authorization) < 8 or authorization not in error.message


@BOUNDED
@given(link=st.text(max_size=200), reset=st.text(max_size=30), retry=st.text(max_size=40))
def test_response_headers_never_crash_the_parsers(link: str, reset: str, retry: str) -> None:
    assert isinstance(parse_link_header(link, base="https://u.example/v1/calls"), dict)
    assert retry_after_seconds({"x-ratelimit-reset": reset, "retry-after": retry}) >= 1


# -- schemathesis: generated GraphQL operations against the live gateway --


def _datetime_literals() -> st.SearchStrategy[StringValueNode]:
    return st.sampled_from(["2020-01-01T00:00:00Z", "not a date", ""]).map(
        lambda value: StringValueNode(value=value)
    )


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_generated_operations_never_get_a_5xx(
    gateway: Gateway, mode: schemathesis.GenerationMode
) -> None:
    schemathesis.graphql.scalar("DateTime", _datetime_literals())
    introspection = gateway.http.post("/graphql", json={"query": get_introspection_query()})
    schema = schemathesis.graphql.from_dict(introspection.json())
    operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    assert {"Query.calls", "Query.call"} <= {op.label for op in operations}
    seen: list[int] = []

    for operation in operations:

        @settings(
            max_examples=examples(25),
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            response = gateway.http.post("/graphql", json={"query": case.body})
            seen.append(response.status_code)
            assert response.status_code < 500, response.text
            assert "Traceback" not in response.text
            body = response.json()
            for error in body.get("errors", []):
                assert error["extensions"]["code"] in (*ERROR_CODES, "GRAPHQL_PARSE_FAILED",
                    "GRAPHQL_VALIDATION_FAILED")  # fmt: skip
                assert error["extensions"]["code"] != "INTERNAL_SERVER_ERROR", error

        check()

    assert len(seen) >= examples(25)
