"""Hostile numbers from the upstream: parsed without raising, held to documented ranges.

A 429 whose reset is 40 digits long used to overflow the JSON encoder (a 500), and
values that fit reached callers unclamped; a call field of 5,000 digits raised from
int(). Each input here is served by the recording fake upstream to a gateway in
process, which must answer with a code (never INTERNAL_SERVER_ERROR) and still answer
/healthz afterwards.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sandbox import credential_headers
from gateway.upstream.client import MAX_RETRY_AFTER, MIN_RETRY_AFTER, retry_after_seconds
from gateway.upstream.routes import calls_path
from tests.conftest import DEMO, examples
from tests.fakes import FakeUpstream
from tests.inprocess import assert_healthy, in_process

HEADERS = [(k.lower().encode(), v.encode()) for k, v in credential_headers(DEMO).items()]
PATH = calls_path(DEMO.user_id)
FIELDS = "id chargeableDuration callbackTimeout startTime endTime activeTime"


def post(client: httpx.AsyncClient, query: str) -> Any:
    return client.post("/graphql", json={"query": query}, headers=HEADERS)


def later(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


HUGE = "9" * 40
RATE_LIMITS = [
    # The inputs: a 40-digit reset, and a value that fits JSON but not reason.
    pytest.param({"X-RateLimit-Reset": HUGE}, MAX_RETRY_AFTER, id="reset-40-digits"),
    pytest.param({"Retry-After": HUGE}, MAX_RETRY_AFTER, id="retry-after-40-digits"),
    pytest.param({"Retry-After": "1000000000000"}, MAX_RETRY_AFTER, id="retry-after-1e12"),
    pytest.param({"X-RateLimit-Reset": "9" * 5000}, MAX_RETRY_AFTER, id="reset-5000-digits"),
    pytest.param({"Retry-After": "9" * 5000}, MAX_RETRY_AFTER, id="retry-after-5000-digits"),
    pytest.param({"Retry-After": "3601"}, MAX_RETRY_AFTER, id="retry-after-just-over"),
    pytest.param({"Retry-After": "3600"}, MAX_RETRY_AFTER, id="retry-after-at-the-bound"),
    pytest.param({"Retry-After": "0"}, MIN_RETRY_AFTER, id="retry-after-zero"),
    pytest.param({"Retry-After": "-5"}, MIN_RETRY_AFTER, id="retry-after-negative"),
    pytest.param({"Retry-After": "1e9"}, MIN_RETRY_AFTER, id="retry-after-exponent"),
    pytest.param({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, MAX_RETRY_AFTER,
                 id="retry-after-date-year-9999"),
    pytest.param({"Retry-After": "Sat, 01 Jan 0001 00:00:00 -0000"}, MIN_RETRY_AFTER,
                 id="retry-after-date-year-1"),
    pytest.param({"Retry-After": "Sun, 06 Nov 1994 08:49:37 GMT"}, MIN_RETRY_AFTER,
                 id="retry-after-date-past"),
    pytest.param({"Retry-After": "Fri, 31 Dec 99999 23:59:59 GMT"}, MIN_RETRY_AFTER,
                 id="retry-after-date-year-99999"),
    pytest.param({"Retry-After": "Mon, 32 Foo 2020 25:61:61 GMT"}, MIN_RETRY_AFTER,
                 id="retry-after-date-garbage"),
    pytest.param({"Retry-After": "x" * 4000}, MIN_RETRY_AFTER, id="retry-after-long-text"),
    pytest.param({"X-RateLimit-Reset": str(10**17)}, MAX_RETRY_AFTER, id="reset-far-future-ms"),
    pytest.param({"X-RateLimit-Reset": "0"}, MIN_RETRY_AFTER, id="reset-zero"),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "expected"), RATE_LIMITS)
def test_a_rate_limit_answer_is_clamped(
    fake_upstream: FakeUpstream, headers: dict[str, str], expected: int
) -> None:
    fake_upstream.answer(
        PATH,
        {"category": "too-many-requests", "code": "rate-limit", "message": "Slow down"},
        status=429,
        header_lines=tuple(headers.items()),
    )

    async def run() -> None:
        async with in_process(fake_upstream.url, cache_ttl=0) as client:
            response = await post(client, "{ calls { id } }")
            assert response.status_code == 200
            [error] = response.json()["errors"]
            assert error["extensions"]["code"] == "RATE_LIMITED"
            assert error["extensions"]["retryAfter"] == expected
            assert len(fake_upstream.requests) == 1
            await assert_healthy(client)

    asyncio.run(run())


def test_an_http_date_an_hour_and_more_away_is_an_hour() -> None:
    assert retry_after_seconds({"retry-after": later(7200)}) == MAX_RETRY_AFTER
    assert 1 <= retry_after_seconds({"retry-after": later(30)}) <= 31


RECORD = {"id": "c-1", "direction": "out", "from": "+19195550100", "to": "+19195550101",
          "state": "completed"}  # fmt: skip
FIELD_VALUES = [
    pytest.param("chargeableDuration", "9" * 5000, id="duration-5000-digit-string"),
    pytest.param("chargeableDuration", 1e40, id="duration-1e40"),
    pytest.param("chargeableDuration", 2**31, id="duration-just-over-int32"),
    pytest.param("chargeableDuration", -(2**31) - 1, id="duration-just-under-int32"),
    pytest.param("chargeableDuration", 1.5, id="duration-fraction"),
    pytest.param("callbackTimeout", "-" + "9" * 5000, id="timeout-negative-5000-digits"),
    pytest.param("callbackTimeout", 1.7976931348623157e308, id="timeout-max-double"),
    pytest.param("startTime", "9" * 5000, id="start-5000-digit-string"),
    pytest.param("startTime", 1e300, id="start-1e300-ms"),
    pytest.param("endTime", -1e300, id="end-minus-1e300-ms"),
    pytest.param("activeTime", "9" * 19, id="active-19-digit-string"),
    pytest.param("activeTime", 253402300800000, id="active-year-10000"),
]


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "executor"])
@pytest.mark.parametrize(("field", "value"), FIELD_VALUES)
def test_an_out_of_range_call_number_is_null_and_reported(
    fake_upstream: FakeUpstream, field: str, value: Any, fast_path: bool
) -> None:
    fake_upstream.answer(PATH, [{**RECORD, field: value}])

    async def run() -> None:
        async with in_process(fake_upstream.url, cache_ttl=0, fast_path=fast_path) as client:
            response = await post(client, f"{{ calls {{ {FIELDS} }} }}")
            assert response.status_code == 200
            body = response.json()
            [call] = body["data"]["calls"]
            assert call["id"] == "c-1"
            assert call[field] is None
            # A tolerated oddity: a warning beside the data, never an error or a crash.
            assert "errors" not in body
            warnings = body["extensions"]["warnings"]
            assert [w["code"] for w in warnings] == ["UPSTREAM_BAD_RESPONSE"]
            assert [w["callId"] for w in warnings] == ["c-1"]
            assert all(len(w["message"]) < 400 for w in warnings)
            await assert_healthy(client)

    asyncio.run(run())


@pytest.mark.parametrize("status", [299, 418, 599])
def test_an_unexpected_status_is_an_upstream_error(
    fake_upstream: FakeUpstream, status: int
) -> None:
    fake_upstream.answer(PATH, {"message": "odd"}, status=status)

    async def run() -> None:
        async with in_process(fake_upstream.url, cache_ttl=0, upstream_retries=0) as client:
            response = await post(client, "{ calls { id } }")
            [error] = response.json()["errors"]
            assert error["extensions"]["code"] == "UPSTREAM_ERROR"
            assert error["extensions"]["upstreamStatus"] == status
            await assert_healthy(client)

    asyncio.run(run())


@settings(max_examples=examples(300), deadline=None, database=None)
@given(
    reset=st.text(max_size=60) | st.integers(min_value=0).map(str),
    retry=st.text(max_size=60) | st.integers().map(str),
)
def test_retry_after_is_always_within_its_range(reset: str, retry: str) -> None:
    for headers in ({"x-ratelimit-reset": reset}, {"retry-after": retry}, {}):
        assert MIN_RETRY_AFTER <= retry_after_seconds(headers) <= MAX_RETRY_AFTER
