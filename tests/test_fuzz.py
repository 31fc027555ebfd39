"""Fuzzing: schemathesis against the gateway, hypothesis over validation and parsing.

Whatever comes in, the answer is a 2xx/4xx with coded errors, never a 5xx or a
traceback, and the pure functions either return or raise a coded `GatewayError`.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import schemathesis
from graphql import StringValueNode, get_introspection_query
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok

from gateway.calls import (
    CALL_FIELDS,
    MAX_PAGE_SIZE,
    WIRE_KEYS,
    BadRecord,
    CallField,
    CallRecord,
    ListQuery,
    Odd,
    parse_call,
    parse_call_list,
    validate_id,
    validate_number,
)
from gateway.credentials import credentials_from_raw_headers
from gateway.errors import ERROR_CODES, BadUserInput, GatewayError, UpstreamBadResponse
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
# The fields the parser reads (from its one table), and two it must ignore.
call_keys = st.sampled_from([*WIRE_KEYS, "bridge", "conference"])
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


# Independent oracles for the validators: what a Catapult id and a number are, written
# out as plain checks rather than the validators' regular expressions.
ID_CHARS = frozenset(string.ascii_letters + string.digits + "-_.~")
SIP_USER_CHARS = frozenset(string.ascii_letters + string.digits + "._~!$&'()*+,=%-")
SIP_HOST_CHARS = frozenset(string.ascii_letters + string.digits + ".-")
SIP_PARAM_CHARS = frozenset(string.ascii_letters + string.digits + "._=-")


def is_catapult_id(value: str) -> bool:
    return (
        1 <= len(value) <= 128
        and set(value) <= ID_CHARS
        and value[0] not in ".~"  # the first character: letters, digits, `-`, `_`
        and ".." not in value
    )


def _ascii_digits(text: str) -> bool:
    return bool(text) and set(text) <= set(string.digits)


def is_e164(value: str) -> bool:
    digits = value.removeprefix("+")
    return (
        value.startswith("+")
        and 2 <= len(digits) <= 15
        and _ascii_digits(digits)
        and (digits[0] != "0")
    )


def is_sip_uri(value: str) -> bool:
    scheme, colon, rest = value.partition(":")
    user, at, after = rest.partition("@")
    host_port, *params = after.split(";")
    host, has_port, port = host_port.partition(":")
    return (
        scheme in ("sip", "sips")
        and bool(colon and at)
        and 1 <= len(user) <= 128
        and set(user) <= SIP_USER_CHARS
        and 1 <= len(host) <= 253
        and set(host) <= SIP_HOST_CHARS
        and (not has_port or (_ascii_digits(port) and len(port) <= 5))
        and len(params) <= 8
        and all(1 <= len(param) <= 64 and set(param) <= SIP_PARAM_CHARS for param in params)
    )


def is_number(value: str) -> bool:
    return is_e164(value) or is_sip_uri(value)


# Plain text is rarely a valid id or number: mix in candidates that often are, and often
# are only just not (a leading dot, one digit too many, a port of six digits).
id_candidates = st.text(max_size=140) | st.text(sorted(ID_CHARS), min_size=1, max_size=130)
sip_uris = st.builds(
    lambda scheme, user, host, port, params: f"{scheme}:{user}@{host}{port}{params}",
    st.sampled_from(["sip", "sips", "tel", "SIP"]),
    st.text(sorted(SIP_USER_CHARS | {"@", ":"}), max_size=10),
    st.text(sorted(SIP_HOST_CHARS | {":"}), max_size=10),
    st.sampled_from(["", ":5060", ":", ":123456", ":5x"]),
    st.lists(st.text(sorted(SIP_PARAM_CHARS | {":"}), max_size=6), max_size=9).map(
        lambda params: "".join(f";{param}" for param in params)
    ),
)
number_candidates = (
    st.text(max_size=40)
    | st.text(string.digits, max_size=17).map(lambda digits: "+" + digits)
    | sip_uris
)


@BOUNDED
@given(
    bridge_id=st.none() | id_candidates,
    from_=st.none() | number_candidates,
    page=st.integers(min_value=-(2**40), max_value=2**40) | st.integers(-2, 3),
    size=st.integers(min_value=-(2**40), max_value=2**40) | st.integers(-1, MAX_PAGE_SIZE + 1),
    sort_order=st.sampled_from(["asc", "desc"]),
)
def test_list_queries_are_built_as_given_or_refused_naming_the_first_bad_argument(
    bridge_id: str | None, from_: str | None, page: int, size: int, sort_order: Any
) -> None:
    error = refusal(
        ListQuery.create, bridge_id=bridge_id, from_=from_, page=page, size=size,
        sort_order=sort_order,
    )  # fmt: skip

    bad = [
        argument
        for argument, is_bad in [
            ("size", not 1 <= size <= MAX_PAGE_SIZE),
            ("page", page < 0),
            ("filter.bridgeId", bridge_id is not None and not is_catapult_id(bridge_id)),
            ("filter.from", from_ is not None and not is_number(from_)),
        ]
        if is_bad
    ]
    if bad:
        assert isinstance(error, BadUserInput)
        assert error.extensions["argument"] == bad[0]
        assert bad[0].removeprefix("filter.") in error.message
    else:
        assert error is None
        query = ListQuery.create(
            bridge_id=bridge_id, from_=from_, page=page, size=size, sort_order=sort_order
        )
        assert query == ListQuery(
            bridge_id=bridge_id, from_=from_, page=page, size=size, sort_order=sort_order
        )


@BOUNDED
@given(value=id_candidates | number_candidates)
def test_ids_and_numbers_are_accepted_exactly_when_valid(value: str) -> None:
    for validate, valid in [(validate_id, is_catapult_id), (validate_number, is_number)]:
        error = refusal(validate, value, "it")
        if valid(value):
            assert error is None
            assert validate(value, "it") == value
        else:
            assert isinstance(error, BadUserInput)
            assert error.extensions == {"code": "BAD_USER_INPUT", "argument": "it"}
            assert "`it`" in error.message


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


# Per field kind, values the parser reads, each with what it reads it as, and values it
# must keep as `Odd` (served as null or UNKNOWN with a warning). ABSENT leaves the key out.
ABSENT = object()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT32 = st.integers(-(2**31), 2**31 - 1)
_letters = st.text(string.ascii_letters, min_size=1, max_size=8)
_containers = st.lists(st.integers(), max_size=2) | st.dictionaries(
    _letters, st.integers(), max_size=2
)
_offsets = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
_instants = st.datetimes(datetime(1970, 1, 1), datetime(2100, 1, 1), timezones=_offsets)


def _any_case(text: str) -> st.SearchStrategy[str]:
    return st.sampled_from([text, text.lower(), text.upper(), text.capitalize()])


def _read(kind: str, choices: frozenset[str]) -> st.SearchStrategy[tuple[Any, Any]]:
    """(raw, parsed) pairs of values the parser reads as a value of `kind`."""
    if kind in ("id", "text"):
        return st.text(max_size=20).map(lambda text: (text, text))
    if kind == "choice":
        return st.sampled_from(sorted(choices)).flatmap(
            lambda choice: _any_case(choice).map(lambda raw: (raw, choice))
        )
    if kind == "instant":
        return _instants.map(lambda instant: (instant.isoformat(), instant)) | st.integers(
            0, 4_000_000_000
        ).map(lambda seconds: (seconds * 1000, _EPOCH + timedelta(seconds=seconds)))
    if kind == "integer":
        return _INT32.flatmap(
            lambda number: st.sampled_from([number, float(number), str(number)]).map(
                lambda raw: (raw, number)
            )
        )
    if kind == "boolean":
        return st.booleans().flatmap(
            lambda flag: st.sampled_from([flag, str(flag).lower(), str(flag).upper()]).map(
                lambda raw: (raw, flag)
            )
        )
    assert kind == "headers"
    return st.dictionaries(_letters, st.text(max_size=8) | _INT32, max_size=5).map(
        lambda headers: (headers, tuple((name, str(value)) for name, value in headers.items()))
    )


def _odd(kind: str, choices: frozenset[str]) -> st.SearchStrategy[Any]:
    """Values the parser must keep as `Odd` for a field of `kind`."""
    others: st.SearchStrategy[Any] = st.booleans() | _containers
    if kind in ("id", "text"):
        return others | st.integers()
    if kind == "choice":
        return (
            others
            | st.integers()
            | _letters.filter(
                lambda text: text.lower() not in choices and text.upper() not in choices
            )
        )
    if kind == "instant":
        return others | _letters
    if kind == "integer":
        return (
            others
            | _letters
            | st.integers().filter(lambda number: not -(2**31) <= number < 2**31)
            | st.floats(allow_nan=False, allow_infinity=False).filter(
                lambda number: not number.is_integer()
            )
        )
    if kind == "boolean":
        return (
            _containers
            | st.integers()
            | _letters.filter(lambda text: text.lower() not in ("true", "false"))
        )
    assert kind == "headers"
    return (
        st.booleans()
        | st.integers()
        | _letters
        | st.lists(st.integers(), max_size=2)
        | (st.dictionaries(_letters, st.none() | _containers, min_size=1, max_size=2))
    )


def _absent(field: CallField) -> Any:
    if field.kind == "headers":
        return ()
    return Odd(None) if field.kind == "choice" and field.required else None


def field_value(field: CallField) -> st.SearchStrategy[tuple[Any, Any]]:
    """(raw, parsed) for one field of an otherwise readable record."""
    if field.required and field.kind in ("id", "text"):
        # Without these the record is a BadRecord (the test above); here they are there.
        return st.text(min_size=1, max_size=20).map(lambda text: (text, text))
    read = _read(field.kind, field.choices)
    odd = _odd(field.kind, field.choices).map(lambda raw: (raw, Odd(raw)))
    return read | odd | st.sampled_from([(ABSENT, _absent(field)), (None, _absent(field))])


# One (raw, parsed) pair per field of the parser's table, in its order.
readable_records = st.tuples(*(field_value(field) for field in CALL_FIELDS))


@BOUNDED
@given(
    values=readable_records,
    unknown=st.dictionaries(st.sampled_from(["bridge", "conference", "x"]), json_values),
)
def test_every_field_is_read_as_generated_or_kept_odd(
    values: tuple[tuple[Any, Any], ...], unknown: dict[str, Any]
) -> None:
    fields = list(zip(CALL_FIELDS, values, strict=True))
    record = {**unknown, **{field.wire: raw for field, (raw, _) in fields if raw is not ABSENT}}

    parsed = parse_call(record)

    assert isinstance(parsed, CallRecord)
    assert {field.name: getattr(parsed, field.attribute) for field, _ in fields} == {
        field.name: expected for field, (_, expected) in fields
    }


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
