"""The schema end to end: a gateway under uvicorn in front of the sandbox, queried over HTTP.

Translation of arguments into upstream requests (checked on the raw query string the
sandbox received), the mapping of every `Call` field against the sandbox's own JSON,
`call` and federation `_entities`, one upstream request per distinct request per
operation, and every error code the gateway has so far.
"""

from __future__ import annotations

import base64
import logging
import re
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from gateway.sandbox import ACCOUNTS, credential_headers
from tests.conftest import Gateway, GatewayFactory, Sandbox
from tests.fakes import FakeUpstream, upstream_call
from tests.servers import free_port

DEMO, SECOND = ACCOUNTS[0], ACCOUNTS[1]
LIST_PATH = "/v1/users/u-demo/calls/"
CALL_FIELDS = """
    id direction from to state startTime activeTime endTime callbackUrl callbackHttpMethod
    callbackTimeout fallbackUrl bridgeId conferenceId chargeableDuration recordingEnabled
    recordingFileFormat transcriptionEnabled sipHeaders { name value } eventsUrl
"""
DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
DOCUMENTED_STATES = {"started", "rejected", "active", "completed", "transferring"}
CALL_BY_ID = "query($id: ID!) { call(id: $id) { id state } }"
ENTITIES = "query($r: [_Any!]!) { _entities(representations: $r) { ... on Call { id state } } }"


@pytest.fixture
def gateway(shared_gateway: Gateway, sandbox: Sandbox) -> Gateway:
    """This module's tests share one gateway (caching off); the sandbox is reset per test."""
    return shared_gateway


def codes(response: httpx.Response) -> list[str]:
    return [error["extensions"]["code"] for error in response.json().get("errors", [])]


def basic(token: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{token}:{secret}".encode()).decode()


def sandbox_json(sandbox: Sandbox, path: str, **params: Any) -> Any:
    """What the sandbox itself answers the demo account (not through the gateway)."""
    response = httpx.get(
        sandbox.url + path, params=params, auth=(DEMO.token, DEMO.secret), timeout=10
    )
    response.raise_for_status()
    return response.json()


def instant(text: str | None) -> str | None:
    """The DateTime the gateway must show for an upstream timestamp: UTC, ms, `Z`."""
    if text is None:
        return None
    moment = datetime.fromisoformat(text).astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def expected_call(raw: dict[str, Any]) -> dict[str, Any]:
    """The GraphQL `Call` that one upstream call object must become."""

    def upper(key: str) -> str | None:
        value = raw.get(key)
        return None if value is None else str(value).upper()

    return {
        "id": raw["id"],
        "direction": raw["direction"].upper(),
        "from": raw["from"],
        "to": raw["to"],
        "state": raw["state"].upper(),
        "startTime": instant(raw.get("startTime")),
        "activeTime": instant(raw.get("activeTime")),
        "endTime": instant(raw.get("endTime")),
        "callbackUrl": raw.get("callbackUrl"),
        "callbackHttpMethod": upper("callbackHttpMethod"),
        "callbackTimeout": raw.get("callbackTimeout"),
        "fallbackUrl": raw.get("fallbackUrl"),
        "bridgeId": raw.get("bridgeId"),
        "conferenceId": raw.get("conferenceId"),
        "chargeableDuration": raw.get("chargeableDuration"),
        "recordingEnabled": raw.get("recordingEnabled"),
        "recordingFileFormat": upper("recordingFileFormat"),
        "transcriptionEnabled": raw.get("transcriptionEnabled"),
        "sipHeaders": [
            {"name": name, "value": value} for name, value in raw.get("sipHeaders", {}).items()
        ],
        "eventsUrl": raw["events"],
    }


# -- translation: GraphQL arguments -> the upstream's query string --------------------

TRANSLATIONS = [
    pytest.param("calls", "page=0&size=25&sortOrder=desc", id="defaults"),
    pytest.param("calls(page: 3, size: 7)", "page=3&size=7&sortOrder=desc", id="page-and-size"),
    pytest.param("calls(sortOrder: ASC)", "page=0&size=25&sortOrder=asc", id="sort-asc"),
    pytest.param("calls(sortOrder: DESC)", "page=0&size=25&sortOrder=desc", id="sort-desc"),
    pytest.param(
        'calls(filter: {from: "+19195550100"})',
        "from=%2B19195550100&page=0&size=25&sortOrder=desc",
        id="from-e164-plus-encoded",
    ),
    pytest.param(
        'calls(filter: {to: "+442071838750"}, size: 1)',
        "to=%2B442071838750&page=0&size=1&sortOrder=desc",
        id="to-e164",
    ),
    pytest.param(
        'calls(filter: {from: "sip:alice@example.com"})',
        "from=sip%3Aalice%40example.com&page=0&size=25&sortOrder=desc",
        id="from-sip-uri",
    ),
    pytest.param(
        'calls(filter: {to: "sip:bob@pbx.example.net:5061;transport=tls"})',
        "to=sip%3Abob%40pbx.example.net%3A5061%3Btransport%3Dtls&page=0&size=25&sortOrder=desc",
        id="to-sip-uri-port-and-params",
    ),
    pytest.param(
        'calls(filter: {bridgeId: "brg-abc"}, page: 4, size: 9)',
        "bridgeId=brg-abc&sortOrder=desc",
        id="bridge-drops-page-and-size",
    ),
    pytest.param(
        'calls(filter: {conferenceId: "conf-abc"}, page: 2, sortOrder: ASC)',
        "conferenceId=conf-abc&sortOrder=asc",
        id="conference-drops-page-and-size",
    ),
    pytest.param(
        'calls(filter: {bridgeId: "b-1", conferenceId: "c_2", from: "+1919", to: "sip:x@y"})',
        "bridgeId=b-1&conferenceId=c_2&from=%2B1919&to=sip%3Ax%40y&sortOrder=desc",
        id="every-filter",
    ),
    pytest.param(
        'calls(filter: {from: "+19195550100", to: "+19195550101"}, page: 1, size: 1000)',
        "from=%2B19195550100&to=%2B19195550101&page=1&size=1000&sortOrder=desc",
        id="numbers-and-paging",
    ),
]


@pytest.mark.parametrize(("field", "query_string"), TRANSLATIONS)
def test_arguments_become_the_upstream_query_string(
    gateway: Gateway, sandbox: Sandbox, field: str, query_string: str
) -> None:
    response = gateway.query(f"{{ {field} {{ id }} }}")

    assert response.status_code == 200
    assert "errors" not in response.json()
    [request] = sandbox.requests()
    assert request["method"] == "GET"
    assert request["path"] == LIST_PATH
    assert request["query"] == query_string


def test_variables_translate_like_literals(gateway: Gateway, sandbox: Sandbox) -> None:
    response = gateway.query(
        "query($f: CallFilter, $o: SortOrder!) { calls(filter: $f, sortOrder: $o) { id } }",
        {"f": {"from": "+19195550100"}, "o": "ASC"},
    )

    assert response.json()["data"] == {"calls": []}
    [request] = sandbox.requests()
    assert request["query"] == "from=%2B19195550100&page=0&size=25&sortOrder=asc"


@pytest.mark.parametrize("account", ACCOUNTS, ids=lambda account: account.user_id)
def test_credentials_are_forwarded_unchanged(
    gateway: Gateway, sandbox: Sandbox, account: Any
) -> None:
    gateway = gateway.as_caller(credential_headers(account))
    first = gateway.query("{ calls(size: 1) { id } }").json()["data"]["calls"][0]["id"]

    gateway.query(CALL_BY_ID, {"id": first})
    gateway.query(ENTITIES, {"r": [{"__typename": "Call", "id": first}]})

    requests = sandbox.requests()
    assert [r["path"] for r in requests] == [
        f"/v1/users/{account.user_id}/calls/",
        f"/v1/users/{account.user_id}/calls/{first}",
        f"/v1/users/{account.user_id}/calls/{first}",
    ]
    # The sandbox records no credentials, only whose they were: the caller's, every time.
    assert {r["account"] for r in requests} == {account.user_id}
    assert {r["authorization"] for r in requests} == {"Basic [redacted]"}


# -- every field's mapping, against the sandbox's own JSON ---------------------------


def test_every_call_field_maps_from_the_upstream_json(gateway: Gateway, sandbox: Sandbox) -> None:
    raw_page = sandbox_json(sandbox, LIST_PATH, page=0, size=1000, sortOrder="desc")

    response = gateway.query(f"{{ calls(size: 1000) {{ {CALL_FIELDS} }} }}")

    body = response.json()
    # Every call is served, those in the `error` state too (ERROR is a known state, not a
    # problem): nothing in `errors`, no warning.
    assert body["data"]["calls"] == [expected_call(raw) for raw in raw_page]
    assert "errors" not in body
    assert "extensions" not in body
    assert {raw["state"] for raw in raw_page} == DOCUMENTED_STATES | {"error"}
    assert {raw.get("callbackHttpMethod") for raw in raw_page} >= {"get", "POST", None}
    assert any(raw.get("sipHeaders") for raw in raw_page)
    assert any("recordingFileFormat" not in raw for raw in raw_page)
    stamps = [raw["startTime"] for raw in raw_page]
    assert any(s.endswith("Z") and "." in s for s in stamps)
    assert any(s.endswith("Z") and "." not in s for s in stamps)
    assert any(not s.endswith("Z") for s in stamps)
    for call in body["data"]["calls"]:
        for field in ("startTime", "activeTime", "endTime"):
            assert call[field] is None or DATETIME.fullmatch(call[field]), call[field]


def test_call_by_id_maps_the_get_one_answer(gateway: Gateway, sandbox: Sandbox) -> None:
    [listed] = sandbox_json(sandbox, LIST_PATH, size=1, sortOrder="asc")
    raw = sandbox_json(sandbox, LIST_PATH + listed["id"])
    sandbox.reset()

    response = gateway.query(
        f"query($id: ID!) {{ call(id: $id) {{ {CALL_FIELDS} }} }}", {"id": raw["id"]}
    )

    assert response.json() == {"data": {"call": expected_call(raw)}}
    [request] = sandbox.requests()
    assert request["path"] == LIST_PATH + raw["id"]
    assert request["query"] == ""


def test_an_unknown_call_is_null_not_an_error(gateway: Gateway, sandbox: Sandbox) -> None:
    response = gateway.query(CALL_BY_ID, {"id": "c-doesnotexist"})

    assert response.json() == {"data": {"call": None}}
    [request] = sandbox.requests()
    assert request["path"] == LIST_PATH + "c-doesnotexist"
    assert request["status"] == 404


def test_the_longest_valid_id_is_sent(gateway: Gateway, sandbox: Sandbox) -> None:
    response = gateway.query(CALL_BY_ID, {"id": "a" * 128})

    assert response.json() == {"data": {"call": None}}
    assert [r["path"] for r in sandbox.requests()] == [LIST_PATH + "a" * 128]


PATH_INJECTIONS = [
    pytest.param("../x", id="dot-dot-slash"),
    pytest.param("..", id="dot-dot"),
    pytest.param(".hidden", id="leading-dot"),
    pytest.param("a/b", id="slash"),
    pytest.param("a?b", id="question-mark"),
    pytest.param("%2e%2e", id="percent-encoded-dots"),
    pytest.param("a%2Fb", id="percent-encoded-slash"),
    pytest.param("a#b", id="hash"),
    pytest.param(" a", id="leading-space"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("", id="empty"),
    pytest.param("a" * 129, id="129-chars"),
]


@pytest.mark.parametrize("call_id", PATH_INJECTIONS)
@pytest.mark.parametrize("query", [CALL_BY_ID, ENTITIES], ids=["call", "_entities"])
def test_an_id_that_could_leave_its_path_segment_is_refused_before_the_upstream(
    gateway: Gateway, sandbox: Sandbox, call_id: str, query: str
) -> None:
    variables = (
        {"id": call_id} if query is CALL_BY_ID else {"r": [{"__typename": "Call", "id": call_id}]}
    )

    response = gateway.query(query, variables)

    assert codes(response) == ["BAD_USER_INPUT"]
    assert sandbox.requests() == []


# -- federation -----------------------------------------------------------------------


def test_entities_resolve_calls_by_id(gateway: Gateway, sandbox: Sandbox) -> None:
    raw_page = sandbox_json(sandbox, LIST_PATH, size=2)
    sandbox.reset()
    representations = [{"__typename": "Call", "id": raw["id"]} for raw in raw_page]

    response = gateway.query(
        ENTITIES, {"r": [*representations, {"__typename": "Call", "id": "c-unknown"}]}
    )

    assert response.json() == {
        "data": {
            "_entities": [
                *({"id": raw["id"], "state": raw["state"].upper()} for raw in raw_page),
                None,
            ]
        }
    }
    # Three cold ids: one newest page of 1,000 holds the two known ones; only the id it
    # lacks is asked for alone (see gateway/loaders.py).
    requested = sandbox.requests()
    assert [(r["path"], r["query"]) for r in requested] == [
        (LIST_PATH, "page=0&size=1000&sortOrder=desc"),
        (LIST_PATH + "c-unknown", ""),
    ]


def test_the_service_sdl_declares_call_as_an_entity(gateway: Gateway) -> None:
    sdl = gateway.query("{ _service { sdl } }").json()["data"]["_service"]["sdl"]

    assert 'type Call @key(fields: "id")' in sdl


# -- one upstream request per distinct request per operation --------------------------

DEDUPE = [
    pytest.param(
        "{ a: calls(size: 2) { id } b: calls(size: 2) { state } }", 1, id="aliases-same-args"
    ),
    pytest.param(
        "{ a: calls(size: 2) { id } b: calls(size: 2) { id } c: calls(size: 2) { id } }",
        1,
        id="three-aliases",
    ),
    pytest.param("{ a: calls(size: 2) { id } b: calls(size: 3) { id } }", 2, id="different-size"),
    pytest.param(
        "{ a: calls { id } b: calls(sortOrder: ASC) { id } }", 2, id="different-sort-order"
    ),
    pytest.param('{ a: call(id: "c-x") { id } b: call(id: "c-x") { state } }', 1, id="call-twice"),
    pytest.param(
        '{ call(id: "c-x") { id } _entities(representations: [{__typename: "Call", id: "c-x"}])'
        " { ... on Call { id } } }",
        1,
        id="call-and-entities-same-id",
    ),
    pytest.param(
        '{ a: call(id: "c-x") { id } b: call(id: "c-y") { id } }', 2, id="call-different-ids"
    ),
]


@pytest.mark.parametrize(("query", "upstream_requests"), DEDUPE)
def test_the_same_upstream_request_is_made_once_per_operation(
    gateway: Gateway, sandbox: Sandbox, query: str, upstream_requests: int
) -> None:
    # The shared gateway has caching off: the dedupe must hold without it.
    response = gateway.query(query)

    assert "errors" not in response.json()
    assert len(sandbox.requests()) == upstream_requests


def test_each_operation_makes_its_own_request_with_caching_off(
    gateway: Gateway, sandbox: Sandbox
) -> None:
    gateway.query("{ calls(size: 2) { id } }")
    gateway.query("{ calls(size: 2) { id } }")

    assert len(sandbox.requests()) == 2


# -- errors -----------------------------------------------------------------------------

BAD_INPUT = [
    pytest.param("calls(size: 0)", "size", id="size-0"),
    pytest.param("calls(size: 1001)", "size", id="size-1001"),
    pytest.param("calls(size: -5)", "size", id="size-negative"),
    pytest.param("calls(page: -1)", "page", id="page-negative"),
    pytest.param('calls(filter: {from: "19195550100"})', "filter.from", id="from-without-plus"),
    pytest.param('calls(filter: {from: "+0123"})', "filter.from", id="from-leading-zero"),
    pytest.param('calls(filter: {from: "+1234567890123456"})', "filter.from", id="from-16-digits"),
    pytest.param('calls(filter: {to: "sip:nohost"})', "filter.to", id="to-sip-without-host"),
    pytest.param('calls(filter: {to: "http://x@y"})', "filter.to", id="to-other-scheme"),
    pytest.param('calls(filter: {to: "+1919&size=1"})', "filter.to", id="to-query-injection"),
    pytest.param('calls(filter: {bridgeId: "../x"})', "filter.bridgeId", id="bridge-dot-dot"),
    pytest.param(
        'calls(filter: {conferenceId: "a/b"})', "filter.conferenceId", id="conference-slash"
    ),
    pytest.param('call(id: "a?b")', "id", id="call-id-question-mark"),
]


@pytest.mark.parametrize(("field", "argument"), BAD_INPUT)
def test_bad_arguments_are_bad_user_input_without_an_upstream_request(
    gateway: Gateway, sandbox: Sandbox, field: str, argument: str
) -> None:
    response = gateway.query(f"{{ {field} {{ id }} }}")

    assert response.status_code == 200
    [error] = response.json()["errors"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "argument": argument}
    assert sandbox.requests() == []


def test_a_variable_of_the_wrong_type_is_bad_user_input(gateway: Gateway, sandbox: Sandbox) -> None:
    response = gateway.query("query($s: Int!) { calls(size: $s) { id } }", {"s": "ten"})

    assert codes(response) == ["BAD_USER_INPUT"]
    assert "data" not in response.json()
    assert sandbox.requests() == []


DEMO_AUTHORIZATION = basic(DEMO.token, DEMO.secret)
BAD_CREDENTIALS = [
    pytest.param({}, id="no-headers"),
    pytest.param({"X-Catapult-User-Id": "u-demo"}, id="no-authorization"),
    pytest.param({"Authorization": DEMO_AUTHORIZATION}, id="no-user-id"),
    pytest.param({"Authorization": "Bearer abc", "X-Catapult-User-Id": "u-demo"}, id="bearer"),
    pytest.param({"Authorization": "Basic", "X-Catapult-User-Id": "u-demo"}, id="basic-empty"),
    pytest.param(
        {"Authorization": "Basic !!notbase64", "X-Catapult-User-Id": "u-demo"}, id="not-base64"
    ),
    pytest.param(
        {"Authorization": basic("t-demo", ""), "X-Catapult-User-Id": "u-demo"}, id="empty-secret"
    ),
    pytest.param(
        {"Authorization": basic("", "s-demo-secret"), "X-Catapult-User-Id": "u-demo"},
        id="empty-token",
    ),
    pytest.param(
        {
            "Authorization": "Basic " + base64.b64encode(b"no-colon").decode(),
            "X-Catapult-User-Id": "u-demo",
        },
        id="no-colon",
    ),
    pytest.param(
        {"Authorization": DEMO_AUTHORIZATION, "X-Catapult-User-Id": "demo"}, id="user-no-u"
    ),
    pytest.param(
        {"Authorization": DEMO_AUTHORIZATION, "X-Catapult-User-Id": "u-../x"}, id="user-dot-dot"
    ),
    pytest.param(
        {"Authorization": DEMO_AUTHORIZATION, "X-Catapult-User-Id": "u-a/b"}, id="user-slash"
    ),
    pytest.param(
        {"Authorization": DEMO_AUTHORIZATION, "X-Catapult-User-Id": "u-a%2Fb"}, id="user-percent"
    ),
]


@pytest.mark.parametrize("headers", BAD_CREDENTIALS)
@pytest.mark.parametrize(
    "query", ["{ calls { id } }", '{ call(id: "c-x") { id } }'], ids=["calls", "call"]
)
def test_missing_or_malformed_credentials_are_unauthenticated_without_an_upstream_request(
    gateway: Gateway, sandbox: Sandbox, headers: dict[str, str], query: str
) -> None:
    response = gateway.as_caller(headers).query(query)

    assert codes(response) == ["UNAUTHENTICATED"]
    assert sandbox.requests() == []


UPSTREAM_REFUSALS = [
    pytest.param(
        {"Authorization": basic("t-demo", "wrong"), "X-Catapult-User-Id": "u-demo"},
        "UNAUTHENTICATED",
        "authentication-failed",
        id="wrong-secret-401",
    ),
    pytest.param(
        {"Authorization": basic("t-nobody", "secret"), "X-Catapult-User-Id": "u-demo"},
        "UNAUTHENTICATED",
        "authentication-failed",
        id="unknown-token-401",
    ),
    pytest.param(
        {"Authorization": DEMO_AUTHORIZATION, "X-Catapult-User-Id": SECOND.user_id},
        "UNAUTHENTICATED",
        "user-access-denied",
        id="someone-elses-user-401",
    ),
    pytest.param(
        {"Authorization": DEMO_AUTHORIZATION, "X-Catapult-User-Id": "u-nobody"},
        "NOT_FOUND",
        "user-not-found",
        id="unknown-user-404",
    ),
]


@pytest.mark.parametrize(("headers", "code", "upstream_code"), UPSTREAM_REFUSALS)
@pytest.mark.parametrize(
    "query", ["{ calls { id } }", '{ call(id: "c-x") { id } }'], ids=["calls", "call"]
)
def test_upstream_refusals_keep_their_meaning(
    gateway_factory: GatewayFactory,
    sandbox: Sandbox,
    headers: dict[str, str],
    code: str,
    upstream_code: str,
    query: str,
) -> None:
    # A gateway of its own: a pair refused with 401 is then refused by the gateway
    # itself for a while (upstream/lanes.py), without the upstream request asserted here.
    response = gateway_factory().as_caller(headers).query(query)

    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == code
    assert error["extensions"]["upstreamCode"] == upstream_code
    [request] = sandbox.requests()
    # The caller's credentials reached the upstream (which records only whose they were).
    assert request["authorization"] == "Basic [redacted]"
    valid = headers["Authorization"] == DEMO_AUTHORIZATION
    assert request["account"] == (DEMO.user_id if valid else None)
    # The upstream's details (the caller's address, the path) never reach the caller.
    assert "127.0.0.1" not in response.text
    assert "details" not in error["extensions"]


def test_upstream_403_is_forbidden(gateway: Gateway, sandbox: Sandbox) -> None:
    sandbox.faults(fail_status=403)

    response = gateway.query("{ calls { id } }")

    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "FORBIDDEN"
    assert error["extensions"]["upstreamStatus"] == 403
    assert error["message"] == "Access to this resource is forbidden"
    assert len(sandbox.requests()) == 1


def test_upstream_429_is_rate_limited_with_retry_after_from_the_reset_header(
    gateway: Gateway, sandbox: Sandbox
) -> None:
    # The shared gateway has caching and (once it exists) pacing off: see `pacing_off`.
    sandbox.faults(rate_limit=True, rate_limit_interval_ms=3000)

    first = gateway.query("{ calls(size: 1) { id } }")
    second = gateway.query("{ calls(size: 2) { id } }")

    assert "errors" not in first.json()
    [error] = second.json()["errors"]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert error["extensions"]["upstreamStatus"] == 429
    assert 1 <= error["extensions"]["retryAfter"] <= 3
    assert second.json()["data"] is None
    assert [r["status"] for r in sandbox.requests()] == [200, 429]


def test_upstream_timeout(gateway_factory: GatewayFactory, sandbox: Sandbox) -> None:
    gateway = gateway_factory(upstream_timeout=0.3, request_timeout=2)
    sandbox.faults(latency_ms=1500)

    response = gateway.query("{ calls(size: 1) { id } }")

    assert codes(response) == ["UPSTREAM_TIMEOUT"]
    # A read timeout is not retried: the upstream may still be working on the first one.
    assert len(sandbox.requests()) == 1


def test_upstream_unavailable_when_nothing_listens(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    gateway = gateway_factory(upstream_url=f"http://127.0.0.1:{free_port()}")

    response = gateway.query("{ calls(size: 1) { id } }")

    assert codes(response) == ["UPSTREAM_UNAVAILABLE"]


def test_a_dropped_connection_is_retried_then_unavailable(
    gateway: Gateway, sandbox: Sandbox
) -> None:
    sandbox.faults(drop_rate=1)

    response = gateway.query("{ calls(size: 1) { id } }")

    assert codes(response) == ["UPSTREAM_UNAVAILABLE"]
    assert len(sandbox.requests()) == 3


def test_upstream_500_is_an_upstream_error_without_retry(
    gateway: Gateway, sandbox: Sandbox
) -> None:
    sandbox.faults(fail_status=500)

    response = gateway.query("{ calls(size: 1) { id } }")

    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "UPSTREAM_ERROR"
    assert error["extensions"]["upstreamStatus"] == 500
    assert len(sandbox.requests()) == 1


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_passing_gateway_failure_is_retried(
    gateway: Gateway, sandbox: Sandbox, status: int
) -> None:
    sandbox.faults(fail_status=status, fail_count=1)

    response = gateway.query("{ calls(size: 2) { id } }")

    assert len(response.json()["data"]["calls"]) == 2
    assert "errors" not in response.json()
    assert [r["status"] for r in sandbox.requests()] == [status, 200]


@pytest.mark.parametrize("status", [502, 503])
def test_a_lasting_gateway_failure_is_an_upstream_error_after_three_attempts(
    gateway: Gateway, sandbox: Sandbox, status: int
) -> None:
    sandbox.faults(fail_status=status, fail_count=5)

    response = gateway.query("{ calls(size: 2) { id } }")

    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "UPSTREAM_ERROR"
    assert error["extensions"]["upstreamStatus"] == status
    assert [r["status"] for r in sandbox.requests()] == [status] * 3


def test_garbage_from_the_upstream_is_a_bad_response(gateway: Gateway, sandbox: Sandbox) -> None:
    sandbox.faults(garbage_rate=1)

    html = gateway.query("{ calls(size: 1) { id } }")
    not_a_list = gateway.query("{ calls(size: 2) { id } }")
    not_a_call = gateway.query('{ call(id: "c-x") { id } }')

    assert codes(html) == ["UPSTREAM_BAD_RESPONSE"]
    assert codes(not_a_list) == ["UPSTREAM_BAD_RESPONSE"]
    assert codes(not_a_call) == ["UPSTREAM_BAD_RESPONSE"]
    assert len(sandbox.requests()) == 3


# -- one bad upstream record never blanks the page -------------------------------------


def test_odd_records_are_warnings_and_the_rest_of_the_page_is_kept(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.answer(
        LIST_PATH,
        [
            upstream_call("c-1"),
            upstream_call("c-odd-state", state="exploded"),
            42,
            upstream_call("c-2", startTime="yesterday"),
            upstream_call("c-odd-direction", direction="sideways"),
            {"state": "completed"},
            upstream_call("c-3", sipHeaders="X-A: b"),
            upstream_call("c-4", callbackHttpMethod="put", startTime=1360329347587),
        ],
    )
    gateway = gateway_factory(upstream_url=fake_upstream.url)

    response = gateway.query("{ calls { id state direction startTime callbackHttpMethod } }")

    body = response.json()
    plain = {"state": "COMPLETED", "direction": "OUT", "callbackHttpMethod": None}
    at_start = "2013-02-08T13:15:47.587Z"
    assert body["data"]["calls"] == [
        {"id": "c-1", **plain, "startTime": at_start},
        {"id": "c-odd-state", **plain, "state": "UNKNOWN", "startTime": at_start},
        {"id": "c-2", **plain, "startTime": None},
        {"id": "c-odd-direction", **plain, "direction": "UNKNOWN", "startTime": at_start},
        {"id": "c-3", **plain, "startTime": at_start},
        {"id": "c-4", **plain, "startTime": at_start},
    ]
    # Nothing a client must act on: no `errors`, so Apollo Client keeps the page.
    assert "errors" not in body
    reported = [
        (tuple(w["path"]), w.get("callId"), w["code"]) for w in body["extensions"]["warnings"]
    ]
    assert reported == [
        (("calls",), None, "UPSTREAM_BAD_RESPONSE"),  # 42
        (("calls",), None, "UPSTREAM_BAD_RESPONSE"),  # the record without an id
        (("calls", 1, "state"), "c-odd-state", "UPSTREAM_BAD_RESPONSE"),
        (("calls", 2, "startTime"), "c-2", "UPSTREAM_BAD_RESPONSE"),
        (("calls", 3, "direction"), "c-odd-direction", "UPSTREAM_BAD_RESPONSE"),
        (("calls", 5, "callbackHttpMethod"), "c-4", "UPSTREAM_BAD_RESPONSE"),
    ]
    # sipHeaders was not selected, so its odd value is not this answer's concern.
    assert all("sipHeaders" not in w["message"] for w in body["extensions"]["warnings"])
    [request] = fake_upstream.requests
    assert request.path == LIST_PATH
    assert request.query == "page=0&size=25&sortOrder=desc"
    assert request.headers["authorization"] == DEMO_AUTHORIZATION


def test_a_single_odd_call_is_a_warning_at_its_field(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.answer(LIST_PATH + "c-odd", upstream_call("c-odd", state="exploded"))
    fake_upstream.answer(LIST_PATH + "c-no-from", upstream_call("c-no-from", **{"from": None}))
    fake_upstream.answer(LIST_PATH + "c-array", [upstream_call("c-array")])
    gateway = gateway_factory(upstream_url=fake_upstream.url)

    odd = gateway.query('{ call(id: "c-odd") { id state } }').json()
    no_from = gateway.query('{ call(id: "c-no-from") { id } }').json()
    array = gateway.query('{ call(id: "c-array") { id } }').json()

    assert odd == {
        "data": {"call": {"id": "c-odd", "state": "UNKNOWN"}},
        "extensions": {
            "warnings": [
                {
                    "message": "The upstream sent call c-odd with an unexpected `state` "
                    '("exploded"); it is served as UNKNOWN.',
                    "path": ["call", "state"],
                    "callId": "c-odd",
                    "code": "UPSTREAM_BAD_RESPONSE",
                }
            ]
        },
    }
    assert no_from["data"] == {"call": None}
    assert "errors" not in no_from
    assert [(w["path"], w["callId"]) for w in no_from["extensions"]["warnings"]] == [
        (["call"], "c-no-from")
    ]
    # A body that is not a call object at all is not a record: the answer is broken.
    assert array["data"] == {"call": None}
    assert [e["extensions"]["code"] for e in array["errors"]] == ["UPSTREAM_BAD_RESPONSE"]


def test_warnings_are_capped_per_response_and_logged_once_per_kind_and_field(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, caplog: Any
) -> None:
    # 300 calls with two odd fields each: 600 warnings, twice over with an alias.
    fake_upstream.answer(
        LIST_PATH,
        [upstream_call(f"c-{n}", state="exploded", direction="sideways") for n in range(300)],
    )
    gateway = gateway_factory(upstream_url=fake_upstream.url)

    with caplog.at_level(logging.WARNING, logger="gateway.upstream"):
        body = gateway.query(
            "{ a: calls(size: 300) { id state direction } b: calls(size: 300) { state } }"
        ).json()

    assert "errors" not in body
    assert len(body["data"]["a"]) == 300
    warnings = body["extensions"]["warnings"]
    assert len(warnings) == 101
    assert warnings[-1]["leftOut"] == 900 - 100
    assert str(900 - 100) in warnings[-1]["message"]
    logged = [r for r in caplog.records if r.name == "gateway.upstream"]
    assert sorted((r.kind, r.path.rsplit(".", 1)[-1], r.count) for r in logged) == [
        ("unknown_value", "direction", 300),
        ("unknown_value", "state", 600),
    ]


REPRESENTATIONS = [
    # Extra keys are what a router sends for @requires/@provides: ignored, as Apollo does.
    pytest.param({"x": 1}, "c-1", id="extra-key"),
    pytest.param({"state": "ACTIVE", "note": {"a": [1]}}, "c-1", id="extra-fields"),
    pytest.param({"cls": 1, "info": 2}, "c-1", id="keys-named-like-parameters"),
]


@pytest.mark.parametrize(("extra", "expected"), REPRESENTATIONS)
def test_a_representation_with_extra_keys_resolves_by_its_id(
    gateway: Gateway, sandbox: Sandbox, extra: dict[str, Any], expected: str
) -> None:
    call_id = sandbox_json(sandbox, LIST_PATH, size=1)[0]["id"]
    representation = {"__typename": "Call", "id": call_id, **extra}

    body = gateway.query(ENTITIES, {"r": [representation]}).json()

    assert "errors" not in body
    assert body["data"]["_entities"][0]["id"] == call_id


BAD_REPRESENTATIONS = [
    pytest.param({"__typename": "Call", "id": 1}, id="number-id"),
    pytest.param({"__typename": "Call", "id": None}, id="null-id"),
    pytest.param({"__typename": "Call", "id": ["c-1"]}, id="list-id"),
    pytest.param({"__typename": "Call"}, id="no-id"),
    pytest.param({"__typename": "Call", "ID": "c-1"}, id="id-in-another-case"),
]


@pytest.mark.parametrize("representation", BAD_REPRESENTATIONS)
def test_a_representation_without_a_string_id_is_bad_user_input(
    gateway: Gateway, sandbox: Sandbox, representation: dict[str, Any]
) -> None:
    sandbox.reset()
    body = gateway.query(ENTITIES, {"r": [representation]}).json()

    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]
    assert body["data"] == {"_entities": [None]}
    assert sandbox.requests() == []
