"""Hostile shapes from the upstream: deep nesting and numbers orjson will not hold.

orjson reads 1024 levels of nesting but writes only 254, so a record with a deep unknown
field used to pass the read and fail the cache's write (a plain-text 500). And orjson
refuses a whole body for one number outside a double's range (`1e400`, 5000 digits),
which blanked the page. Each input is served by the recording fake upstream to a gateway
in process, with the cache on (so every answer makes the JSON round trip), on the fast
path and on the standard executor.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from gateway.calls import slim_body
from gateway.sandbox import credential_headers
from gateway.upstream.routes import calls_path
from tests.conftest import DEMO
from tests.fakes import FakeUpstream
from tests.inprocess import assert_healthy, in_process

HEADERS = [(k.lower().encode(), v.encode()) for k, v in credential_headers(DEMO).items()]
PATH = calls_path(DEMO.user_id)
RECORD = (
    b'{"id":"c-nest2","direction":"in","from":"+19195551234","to":"+19195554321",'
    b'"state":"completed"'
)
FAST = pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "executor"])


def nested(depth: int, opener: bytes = b'{"a":', closer: bytes = b"}") -> bytes:
    return opener * depth + b"1" + closer * depth


def post(client: httpx.AsyncClient, query: str) -> Any:
    return client.post("/graphql", json={"query": query}, headers=HEADERS)


DEPTHS = [100, 300, 1000]


@FAST
@pytest.mark.parametrize("depth", DEPTHS, ids=[f"depth-{d}" for d in DEPTHS])
def test_a_deep_unknown_field_is_dropped(
    fake_upstream: FakeUpstream, depth: int, fast_path: bool
) -> None:
    body = b"[" + RECORD + b',"extra":' + nested(depth) + b"}]"
    fake_upstream.answer(PATH, body)

    async def run() -> None:
        async with in_process(fake_upstream.url, fast_path=fast_path) as client:
            for _ in range(2):  # a miss, then the cached answer
                response = await post(client, "{ calls(size: 2) { id } }")
                assert response.status_code == 200
                assert response.json() == {"data": {"calls": [{"id": "c-nest2"}]}}
            await assert_healthy(client)

    asyncio.run(run())


@FAST
@pytest.mark.parametrize("depth", DEPTHS, ids=[f"depth-{d}" for d in DEPTHS])
@pytest.mark.parametrize("shape", ["object", "array"])
def test_a_deep_known_field_is_null_and_reported(
    fake_upstream: FakeUpstream, depth: int, fast_path: bool, shape: str
) -> None:
    value = nested(depth) if shape == "object" else nested(depth, b"[", b"]")
    good = b'{"id":"c-2","direction":"out","from":"+1","to":"+2","state":"active"}'
    fake_upstream.answer(PATH, b"[" + RECORD + b',"callbackUrl":' + value + b"}," + good + b"]")

    async def run() -> None:
        async with in_process(fake_upstream.url, fast_path=fast_path) as client:
            for _ in range(2):
                response = await post(client, "{ calls(size: 2) { id callbackUrl } }")
                assert response.status_code == 200
                body = response.json()
                assert body["data"]["calls"] == [
                    {"id": "c-nest2", "callbackUrl": None},
                    {"id": "c-2", "callbackUrl": None},
                ]
                assert "errors" not in body
                [warning] = body["extensions"]["warnings"]
                assert warning["code"] == "UPSTREAM_BAD_RESPONSE"
                assert warning["callId"] == "c-nest2"
            await assert_healthy(client)

    asyncio.run(run())


@FAST
@pytest.mark.parametrize("depth", DEPTHS, ids=[f"depth-{d}" for d in DEPTHS])
def test_a_deep_list_entry_is_left_out_with_a_warning(
    fake_upstream: FakeUpstream, depth: int, fast_path: bool
) -> None:
    # `[` x depth `]` x depth: the body's one entry is a list, not a call.
    fake_upstream.answer(PATH, nested(depth, b"[", b"]"))

    async def run() -> None:
        async with in_process(fake_upstream.url, fast_path=fast_path) as client:
            for _ in range(2):
                response = await post(client, "{ calls(size: 2) { id } }")
                assert response.status_code == 200
                body = response.json()
                assert body["data"] == {"calls": []}
                assert "errors" not in body
                [warning] = body["extensions"]["warnings"]
                assert warning["code"] == "UPSTREAM_BAD_RESPONSE"
            await assert_healthy(client)

    asyncio.run(run())


def test_a_slimmed_body_keeps_only_known_fields_and_can_be_written() -> None:
    raw = orjson.loads(b"[" + RECORD + b',"extra":' + nested(1000) + b',"state2":1}]')
    slim = slim_body(raw)
    assert slim == [
        {"id": "c-nest2", "direction": "in", "from": "+19195551234", "to": "+19195554321",
         "state": "completed"}
    ]  # fmt: skip
    orjson.dumps(slim)


@pytest.mark.server_errors
def test_an_unexpected_fast_path_failure_is_coded(
    fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.fastpath

    def explode(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway.fastpath, "_project_page", explode)
    fake_upstream.answer(PATH, [orjson.loads(RECORD + b"}")])

    async def run() -> None:
        async with in_process(fake_upstream.url) as client:
            response = await post(client, "{ calls(size: 2) { id } }")
            assert response.status_code == 200
            body = response.json()
            assert body["data"] is None
            [error] = body["errors"]
            assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
            assert error["extensions"]["requestId"] == response.headers["x-request-id"]
            assert "a bug" not in response.text
            await assert_healthy(client)

    asyncio.run(run())


NUMBERS = [
    pytest.param(b"1e400", id="1e400"),
    pytest.param(b"-1e400", id="minus-1e400"),
    pytest.param(b"9" * 5000, id="5000-digit-integer"),
    pytest.param(b"-" + b"9" * 5000, id="minus-5000-digit-integer"),
    pytest.param(b"1." + b"9" * 5000 + b"e999", id="5000-digit-fraction-e999"),
]


@FAST
@pytest.mark.parametrize("field", ["chargeableDuration", "callbackUrl", "startTime"])
@pytest.mark.parametrize("number", NUMBERS)
def test_one_number_out_of_range_does_not_blank_the_page(
    fake_upstream: FakeUpstream, number: bytes, field: str, fast_path: bool
) -> None:
    good = b'{"id":"c-2","direction":"out","from":"+1","to":"+2","state":"active"}'
    odd = RECORD + b',"' + field.encode() + b'":' + number + b',"unknown":' + number + b"}"
    fake_upstream.answer(PATH, b"[" + odd + b"," + good + b"]")

    async def run() -> None:
        async with in_process(fake_upstream.url, fast_path=fast_path) as client:
            for _ in range(2):
                response = await post(client, f"{{ calls(size: 2) {{ id {field} }} }}")
                assert response.status_code == 200
                body = response.json()
                assert body["data"]["calls"] == [
                    {"id": "c-nest2", field: None},
                    {"id": "c-2", field: None},
                ]
                assert "errors" not in body
                [warning] = body["extensions"]["warnings"]
                assert warning["code"] == "UPSTREAM_BAD_RESPONSE"
                assert warning["callId"] == "c-nest2"
            await assert_healthy(client)

    asyncio.run(run())


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[1e400, NaN]", id="nan-beside"),
        pytest.param(b"[1e400, ", id="truncated"),
        pytest.param(b'[1e400, "\\ud800"]', id="lone-surrogate"),
    ],
)
def test_a_body_that_is_not_json_beside_a_big_number_is_still_refused(
    fake_upstream: FakeUpstream, body: bytes
) -> None:
    fake_upstream.answer(PATH, body)

    async def run() -> None:
        async with in_process(fake_upstream.url) as client:
            response = await post(client, "{ calls(size: 2) { id } }")
            [error] = response.json()["errors"]
            assert error["extensions"]["code"] == "UPSTREAM_BAD_RESPONSE"
            await assert_healthy(client)

    asyncio.run(run())


# What the upstream's text may carry that must reach no caller and no log: NUL and the
# other C0/C1 controls, bidi overrides and isolates (Cf), zero-width characters.
HIDDEN = "\x00\x1b\x85\u202e\u2066\u200b\ufeff"


def shown(text: str) -> bool:
    """Nothing of HIDDEN is in `text`, and the replacement character is."""
    return not any(ch in text for ch in HIDDEN) and "\ufffd" in text


@pytest.mark.parametrize(
    ("status", "code"),
    [
        pytest.param(400, "BAD_USER_INPUT", id="400"),
        pytest.param(401, "UNAUTHENTICATED", id="401"),
        pytest.param(404, "NOT_FOUND", id="404"),
        pytest.param(429, "RATE_LIMITED", id="429"),
        pytest.param(500, "UPSTREAM_ERROR", id="500"),
    ],
)
def test_upstream_error_text_reaches_callers_without_control_or_bidi_characters(
    fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture, status: int, code: str
) -> None:
    body = {"message": f"evil{HIDDEN}txt.exe\tend", "code": f"c{HIDDEN}"}
    fake_upstream.answer(PATH, orjson.dumps(body), status=status)

    async def run() -> dict[str, Any]:
        async with in_process(fake_upstream.url, upstream_retries=0) as client:
            answer: dict[str, Any] = (await post(client, "{ calls { id } }")).json()
            return answer

    [error] = asyncio.run(run())["errors"]
    assert error["extensions"]["code"] == code
    assert shown(error["message"])
    assert error["message"].endswith("txt.exe\tend")
    assert shown(error["extensions"]["upstreamCode"])
    assert not any(ch in record.getMessage() for record in caplog.records for ch in HIDDEN)


@FAST
def test_warnings_carry_upstream_ids_without_control_or_bidi_characters(
    fake_upstream: FakeUpstream, fast_path: bool
) -> None:
    odd_id = f"c-{HIDDEN}"
    page = [
        {"id": odd_id, "direction": "in", "from": "+1", "state": "completed"},  # no `to`
        {"id": odd_id, "direction": "in", "from": "+1", "to": "+2", "state": "completed",
         "callbackTimeout": f"x{HIDDEN}"},
    ]  # fmt: skip
    fake_upstream.answer(PATH, orjson.dumps(page))

    async def run() -> dict[str, Any]:
        async with in_process(fake_upstream.url, fast_path=fast_path) as client:
            answer: dict[str, Any] = (await post(client, "{ calls { id callbackTimeout } }")).json()
            return answer

    warnings = asyncio.run(run())["extensions"]["warnings"]
    assert len(warnings) == 2
    for warning in warnings:
        assert shown(warning["message"])
        assert shown(warning["callId"])
