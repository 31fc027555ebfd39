"""The call domain without HTTP: list-query validation tables and tolerant record parsing."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from gateway.calls import (
    CALL_FIELDS,
    BadRecord,
    CallRecord,
    ListQuery,
    Odd,
    parse_call,
    parse_call_list,
    parse_timestamp,
)
from gateway.errors import BadUserInput, UpstreamBadResponse
from tests.fakes import ABSENT, upstream_call

INSTANT = datetime(2013, 2, 8, 13, 15, 47, 587000, tzinfo=UTC)


def create(**arguments: Any) -> ListQuery:
    """`ListQuery.create` with arguments chosen by a table."""
    return ListQuery.create(**arguments)


# -- ListQuery validation -----------------------------------------------------------------

VALID_NUMBERS = [
    pytest.param("+19195551212", id="e164-us"),
    pytest.param("+12", id="e164-shortest"),
    pytest.param("+123456789012345", id="e164-15-digits"),
    pytest.param("sip:someone@example.com", id="sip"),
    pytest.param("sips:someone@example.com", id="sips"),
    pytest.param("sip:+19195551212@gw.example.com:5060", id="sip-number-and-port"),
    pytest.param("sip:bob@pbx.example.net;transport=tls;user=phone", id="sip-params"),
    pytest.param("sip:a.b_c~d!e$f&g'h(i)j*k+l,m=n%20o@x", id="sip-user-punctuation"),
]
INVALID_NUMBERS = [
    pytest.param("19195551212", id="no-plus"),
    pytest.param("+0123", id="leading-zero"),
    pytest.param("+1", id="one-digit"),
    pytest.param("+1234567890123456", id="16-digits"),
    pytest.param("+1 919 555", id="spaces"),
    pytest.param("+1919555121a", id="letter"),
    pytest.param("", id="empty"),
    pytest.param("sip:", id="sip-empty"),
    pytest.param("sip:nohost", id="sip-no-at"),
    pytest.param("sip:@host", id="sip-no-user"),
    pytest.param("sip:a@host/path", id="sip-slash"),
    pytest.param("sip:a@host?x=1", id="sip-query"),
    pytest.param("sip:a@host#frag", id="sip-fragment"),
    pytest.param("tel:+19195551212", id="tel"),
    pytest.param("sip:a b@host", id="sip-space"),
    pytest.param("+19195551212\n", id="trailing-newline"),
]
VALID_IDS = [
    pytest.param("c-abc123", id="call-id"),
    pytest.param("brg-XYZ_09", id="underscore"),
    pytest.param("a.b~c", id="dot-tilde"),
    pytest.param("a" * 128, id="128-chars"),
    pytest.param("0", id="one-char"),
]
INVALID_IDS = [
    pytest.param("", id="empty"),
    pytest.param("..", id="dot-dot"),
    pytest.param("../x", id="dot-dot-slash"),
    pytest.param("a..b", id="inner-dot-dot"),
    pytest.param(".x", id="leading-dot"),
    pytest.param("a/b", id="slash"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("a?b", id="question-mark"),
    pytest.param("a#b", id="hash"),
    pytest.param("%2e%2e", id="percent"),
    pytest.param("a&b=c", id="ampersand"),
    pytest.param(" a", id="leading-space"),
    pytest.param("a\n", id="newline"),
    pytest.param("caf\u00e9", id="non-ascii"),
    pytest.param("a" * 129, id="129-chars"),
]


@pytest.mark.parametrize("number", VALID_NUMBERS)
@pytest.mark.parametrize("argument", ["from_", "to"])
def test_valid_numbers_are_accepted(argument: str, number: str) -> None:
    query = create(**{argument: number})

    assert getattr(query, argument) == number


@pytest.mark.parametrize("number", INVALID_NUMBERS)
@pytest.mark.parametrize(("argument", "name"), [("from_", "filter.from"), ("to", "filter.to")])
def test_invalid_numbers_are_bad_user_input(argument: str, name: str, number: str) -> None:
    with pytest.raises(BadUserInput) as raised:
        create(**{argument: number})

    assert raised.value.extensions == {"code": "BAD_USER_INPUT", "argument": name}


@pytest.mark.parametrize("value", VALID_IDS)
@pytest.mark.parametrize("argument", ["bridge_id", "conference_id"])
def test_valid_ids_are_accepted(argument: str, value: str) -> None:
    assert getattr(create(**{argument: value}), argument) == value


@pytest.mark.parametrize("value", INVALID_IDS)
@pytest.mark.parametrize(
    ("argument", "name"),
    [("bridge_id", "filter.bridgeId"), ("conference_id", "filter.conferenceId")],
)
def test_invalid_ids_are_bad_user_input(argument: str, name: str, value: str) -> None:
    with pytest.raises(BadUserInput) as raised:
        create(**{argument: value})

    assert raised.value.extra == {"argument": name}


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        pytest.param({"size": 0}, "size", id="size-0"),
        pytest.param({"size": 1001}, "size", id="size-1001"),
        pytest.param({"size": -1}, "size", id="size-negative"),
        pytest.param({"page": -1}, "page", id="page-negative"),
    ],
)
def test_out_of_range_paging_is_bad_user_input(arguments: dict[str, int], name: str) -> None:
    with pytest.raises(BadUserInput) as raised:
        create(**arguments)

    assert raised.value.extra == {"argument": name}


# -- parse_timestamp --------------------------------------------------------------------------

TIMESTAMPS = [
    pytest.param("2013-02-08T13:15:47.587Z", INSTANT, id="ms-z"),
    pytest.param("2013-02-08T13:15:47Z", INSTANT.replace(microsecond=0), id="seconds-z"),
    pytest.param("2013-02-08T11:15:47.587-02", INSTANT, id="hour-only-offset"),
    pytest.param("2013-02-08T11:15:47-02", INSTANT.replace(microsecond=0), id="seconds-offset"),
    pytest.param("2013-02-08T14:15:47.587+01:00", INSTANT, id="full-offset"),
    pytest.param("2013-02-08T13:15:47.587", INSTANT, id="naive-is-utc"),
    pytest.param("2013-02-08T13:15:47.587123Z", INSTANT.replace(microsecond=587123), id="us"),
    pytest.param(" 2013-02-08T13:15:47.587Z ", INSTANT, id="padded"),
    pytest.param(1360329347587, INSTANT, id="epoch-ms-int"),
    pytest.param(1360329347587.0, INSTANT, id="epoch-ms-float"),
    pytest.param("1360329347587", INSTANT, id="epoch-ms-string"),
    pytest.param(None, None, id="missing"),
    # RFC 3339 section 5.6: `T` and `Z` may be lower case; a space may separate date and time.
    pytest.param("2013-02-08t13:15:47.587z", INSTANT, id="lower-case-t-z"),
    pytest.param("2013-02-08 13:15:47.587Z", INSTANT, id="space-separator"),
    pytest.param("2013-02-08T13:15:47.587+00:00", INSTANT, id="zero-offset"),
    pytest.param("2013-02-08T13:15:47.587-00:00", INSTANT, id="unknown-local-offset"),
    pytest.param("2013-02-08T11:15:47.587-0200", INSTANT, id="offset-without-colon"),
    pytest.param("2013-02-08T13:15:47,587Z", INSTANT, id="comma-decimal"),
    pytest.param("2013-02-08T13:15:47.587123456Z", INSTANT.replace(microsecond=587123), id="ns"),
    pytest.param("2016-12-31T23:59:60Z", datetime(2017, 1, 1, tzinfo=UTC), id="leap-second"),
    pytest.param(
        "2016-12-31t23:59:60.5z",
        datetime(2017, 1, 1, 0, 0, 0, 500000, tzinfo=UTC),
        id="leap-second-lower-case",
    ),
]
ODD_TIMESTAMPS = [
    pytest.param("yesterday", id="words"),
    pytest.param("", id="empty"),
    pytest.param("2013-13-45T99:00:00Z", id="impossible-date"),
    pytest.param(True, id="bool"),
    pytest.param([1360329347587], id="list"),
    pytest.param({"ms": 1}, id="object"),
    pytest.param(10**30, id="epoch-overflow"),
    pytest.param(float("nan"), id="nan"),
    pytest.param("2013-02-08T13:15:61Z", id="second-61"),
    pytest.param("2013-02-08T13:15:47.587\u00a0Z", id="non-ascii"),
]


@pytest.mark.parametrize(("raw", "expected"), TIMESTAMPS)
def test_every_timestamp_variant_is_one_instant(raw: Any, expected: datetime | None) -> None:
    parsed = parse_timestamp(raw)

    assert parsed == expected
    if isinstance(parsed, datetime):
        assert parsed.tzinfo is not None


def test_an_hour_only_offset_keeps_its_offset() -> None:
    parsed = parse_timestamp("2013-02-08T11:15:47-02")

    assert isinstance(parsed, datetime)
    assert parsed.utcoffset() == timezone(timedelta(hours=-2)).utcoffset(None)


@pytest.mark.parametrize("raw", ODD_TIMESTAMPS)
def test_an_unreadable_timestamp_is_odd(raw: Any) -> None:
    assert isinstance(parse_timestamp(raw), Odd)


# -- parse_call ----------------------------------------------------------------------------------


def test_the_field_table_lists_the_record_attributes_in_order() -> None:
    # `parse_call` fills a `CallRecord` positionally, in the table's order.
    assert [field.attribute for field in CALL_FIELDS] == [
        field.name for field in dataclasses.fields(CallRecord)
    ]


def test_a_minimal_call_has_every_optional_field_empty() -> None:
    assert parse_call(upstream_call(startTime=ABSENT)) == CallRecord(
        id="c-1", direction="out", from_="+19195550100", to="+19195550101", state="completed"
    )


def test_a_full_call_maps_every_field() -> None:
    record = parse_call(
        upstream_call(
            startTime="2013-02-08T13:15:47.587Z",
            activeTime="2013-02-08T13:15:50Z",
            endTime="2013-02-08T11:16:50-02",
            callbackUrl="https://cb.example.com",
            callbackHttpMethod="post",
            callbackTimeout=15000,
            fallbackUrl="https://fb.example.com",
            bridgeId="brg-1",
            conferenceId="conf-1",
            chargeableDuration=60,
            recordingEnabled=True,
            recordingFileFormat="MP3",
            transcriptionEnabled=False,
            sipHeaders={"X-A": "1", "X-B": "two"},
            events="https://api/v1/users/u/calls/c-1/events",
            unknownField="ignored",
        )
    )

    assert record == CallRecord(
        id="c-1",
        direction="out",
        from_="+19195550100",
        to="+19195550101",
        state="completed",
        start_time=INSTANT,
        active_time=datetime(2013, 2, 8, 13, 15, 50, tzinfo=UTC),
        end_time=datetime(2013, 2, 8, 13, 16, 50, tzinfo=UTC),
        callback_url="https://cb.example.com",
        callback_http_method="POST",
        callback_timeout=15000,
        fallback_url="https://fb.example.com",
        bridge_id="brg-1",
        conference_id="conf-1",
        chargeable_duration=60,
        recording_enabled=True,
        recording_file_format="mp3",
        transcription_enabled=False,
        sip_headers=(("X-A", "1"), ("X-B", "two")),
        events_url="https://api/v1/users/u/calls/c-1/events",
    )


TOLERATED = [
    pytest.param({"direction": "IN"}, "direction", "in", id="direction-upper"),
    pytest.param({"direction": "Out"}, "direction", "out", id="direction-mixed"),
    pytest.param({"state": "ACTIVE"}, "state", "active", id="state-upper"),
    pytest.param({"callbackHttpMethod": "get"}, "callback_http_method", "GET", id="get-lower"),
    pytest.param({"callbackHttpMethod": "Post"}, "callback_http_method", "POST", id="post-mixed"),
    pytest.param({"callbackHttpMethod": "PUT"}, "callback_http_method", Odd("PUT"), id="put"),
    pytest.param({"callbackHttpMethod": 1}, "callback_http_method", Odd(1), id="method-int"),
    pytest.param({"recordingFileFormat": "WAV"}, "recording_file_format", "wav", id="wav-upper"),
    pytest.param(
        {"recordingFileFormat": "ogg"}, "recording_file_format", Odd("ogg"), id="format-ogg"
    ),
    pytest.param({"callbackTimeout": "30"}, "callback_timeout", 30, id="timeout-string"),
    pytest.param({"callbackTimeout": 30.0}, "callback_timeout", 30, id="timeout-float"),
    pytest.param({"callbackTimeout": 30.5}, "callback_timeout", Odd(30.5), id="timeout-frac"),
    pytest.param({"callbackTimeout": True}, "callback_timeout", Odd(True), id="timeout-bool"),
    pytest.param(
        {"callbackTimeout": "\u00b2"}, "callback_timeout", Odd("\u00b2"), id="timeout-superscript"
    ),
    pytest.param(
        {"callbackTimeout": "--1"}, "callback_timeout", Odd("--1"), id="timeout-two-signs"
    ),
    pytest.param({"chargeableDuration": "x"}, "chargeable_duration", Odd("x"), id="duration-str"),
    pytest.param({"recordingEnabled": "true"}, "recording_enabled", True, id="bool-string"),
    pytest.param({"recordingEnabled": "FALSE"}, "recording_enabled", False, id="bool-upper"),
    pytest.param({"recordingEnabled": 1}, "recording_enabled", Odd(1), id="bool-int"),
    pytest.param({"callbackUrl": ""}, "callback_url", "", id="url-empty"),
    pytest.param({"callbackUrl": 5}, "callback_url", Odd(5), id="url-int"),
    pytest.param({"bridgeId": ["b"]}, "bridge_id", Odd(["b"]), id="bridge-list"),
    pytest.param({"events": {"x": 1}}, "events_url", Odd({"x": 1}), id="events-object"),
    pytest.param({"startTime": "soon"}, "start_time", Odd("soon"), id="start-odd"),
    pytest.param({"endTime": 1360329347587}, "end_time", INSTANT, id="end-epoch-ms"),
    pytest.param({"sipHeaders": {}}, "sip_headers", (), id="sip-empty"),
    pytest.param(
        {"sipHeaders": {"X-N": 5, "X-B": True}},
        "sip_headers",
        (("X-N", "5"), ("X-B", "true")),
        id="sip-scalar-values",
    ),
]


@pytest.mark.parametrize(("fields", "attribute", "expected"), TOLERATED)
def test_optional_fields_are_tolerated(
    fields: dict[str, Any], attribute: str, expected: Any
) -> None:
    record = parse_call(upstream_call(**fields))

    assert isinstance(record, CallRecord)
    assert getattr(record, attribute) == expected


BAD_RECORDS = [
    pytest.param(42, None, "not an object", id="number"),
    pytest.param(None, None, "not an object", id="null"),
    pytest.param(["c-1"], None, "not an object", id="list"),
    pytest.param(upstream_call(id=ABSENT), None, "without an id", id="no-id"),
    pytest.param(upstream_call(id=7), None, "without an id", id="id-number"),
    pytest.param(upstream_call(id=""), None, "without an id", id="id-empty"),
    pytest.param(upstream_call(**{"from": ABSENT}), "c-1", "without `from`", id="no-from"),
    pytest.param(upstream_call(to=3), "c-1", "without `to`", id="to-number"),
]
# A call all the same: served, with what was off as `Odd` (UNKNOWN, null or [] in the schema).
ODD_BUT_CALLS = [
    pytest.param(upstream_call(state=ABSENT), "state", Odd(None), id="no-state"),
    pytest.param(upstream_call(direction=ABSENT), "direction", Odd(None), id="no-direction"),
    pytest.param(upstream_call(state="exploded"), "state", Odd("exploded"), id="state-unknown"),
    pytest.param(upstream_call(direction="sideways"), "direction", Odd("sideways"), id="direction"),
    pytest.param(upstream_call(state="error"), "state", "error", id="state-error-is-known"),
    pytest.param(upstream_call(state="Error"), "state", "error", id="state-error-any-case"),
    pytest.param(upstream_call(sipHeaders="X-A: 1"), "sip_headers", Odd("X-A: 1"), id="sip-string"),
    pytest.param(
        upstream_call(sipHeaders=[{"name": "X-A", "value": "1"}]),
        "sip_headers",
        Odd([{"name": "X-A", "value": "1"}]),
        id="sip-list",
    ),
    pytest.param(
        upstream_call(sipHeaders={"X-A": None}),
        "sip_headers",
        Odd({"X-A": None}),
        id="sip-null-value",
    ),
    pytest.param(
        upstream_call(sipHeaders={"X-A": {"v": 1}}),
        "sip_headers",
        Odd({"X-A": {"v": 1}}),
        id="sip-nested",
    ),
    pytest.param(upstream_call(callbackHttpMethod="get"), "callback_http_method", "GET", id="get"),
    pytest.param(
        upstream_call(callbackHttpMethod="post"), "callback_http_method", "POST", id="post"
    ),
]


@pytest.mark.parametrize(("raw", "attribute", "expected"), ODD_BUT_CALLS)
def test_an_odd_record_with_an_id_is_still_a_call(raw: Any, attribute: str, expected: Any) -> None:
    record = parse_call(raw)

    assert isinstance(record, CallRecord)
    assert getattr(record, attribute) == expected


@pytest.mark.parametrize(("raw", "call_id", "reason"), BAD_RECORDS)
def test_a_record_that_cannot_be_a_call_is_a_bad_record(
    raw: Any, call_id: str | None, reason: str
) -> None:
    bad = parse_call(raw)

    assert isinstance(bad, BadRecord)
    assert bad.call_id == call_id
    assert reason in bad.reason


def test_a_bad_record_does_not_blank_the_list() -> None:
    records, bad = parse_call_list(
        [
            upstream_call(id="c-1"),
            upstream_call(id="c-2", to=ABSENT),
            5,
            upstream_call(id="c-3"),
            [],
        ]
    )

    assert [record.id for record in records] == ["c-1", "c-3"]
    # Each knows how many calls came before it, so a slice reports only its own.
    assert [(entry.call_id, entry.before) for entry in bad] == [("c-2", 1), (None, 1), (None, 2)]


@pytest.mark.parametrize("body", [{}, "[]", None, 3], ids=repr)
def test_a_list_body_that_is_not_an_array_is_a_bad_response(body: Any) -> None:
    with pytest.raises(UpstreamBadResponse):
        parse_call_list(body)


def test_odd_values_describe_themselves_briefly() -> None:
    assert Odd("x" * 200).describe() == '"' + "x" * 76 + "..."
    assert Odd(None).describe() == "null"
    assert Odd(5).describe() == "5"


@pytest.mark.parametrize(
    ("query", "sent"),
    [
        pytest.param(create(page=3, size=7), create(page=3, size=7), id="paginated-as-asked"),
        pytest.param(
            create(bridge_id="b-1", page=3, size=7),
            create(bridge_id="b-1", page=0, size=1000),
            id="bridge-without-page-or-size",
        ),
        pytest.param(
            create(conference_id="f-1", page=1, size=2, sort_order="asc"),
            create(conference_id="f-1", page=0, size=1000, sort_order="asc"),
            id="conference-keeps-its-order",
        ),
    ],
)
def test_a_query_as_sent_drops_what_the_upstream_ignores(query: ListQuery, sent: ListQuery) -> None:
    assert query.as_sent() == sent
