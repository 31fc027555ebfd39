"""The sandbox over real HTTP: the API as docs/upstream.md describes it, and the test
controls."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from gateway.app import create_app
from gateway.config import load_settings
from gateway.sandbox import ACCOUNTS, Account, SandboxOptions, create_sandbox_app
from tests.servers import free_port, serve

DEMO, SECOND = ACCOUNTS[0], ACCOUNTS[1]
CALLS = "/v1/users/u-demo/calls"

ClientFactory = Callable[..., httpx.Client]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(create_sandbox_app()) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[ClientFactory]:
    """Clients on a sandbox (the shared one by default), authenticated as an account or not.

    Clients are reused across tests: building one costs more than most of these tests.
    """
    made: dict[tuple[str | None, str], httpx.Client] = {}

    def make(account: Account | None = DEMO, url: str | None = None) -> httpx.Client:
        key = (account.token if account else None, url or base_url)
        if key not in made:
            auth = (account.token, account.secret) if account else None
            made[key] = httpx.Client(base_url=key[1], auth=auth, timeout=5)
        return made[key]

    yield make
    for each in made.values():
        each.close()


@pytest.fixture(scope="module")
def control(client: ClientFactory) -> httpx.Client:
    """An unauthenticated client for the `/__sandbox` controls of the shared sandbox."""
    return client(None)


@pytest.fixture(autouse=True)
def _reset(control: httpx.Client) -> None:
    control.post("/__sandbox/reset").raise_for_status()


@pytest.fixture(scope="module")
def all_calls(base_url: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=base_url, auth=(DEMO.token, DEMO.secret)) as http:
        calls: list[dict[str, Any]] = []
        for page in range(3):
            params: dict[str, int | str] = {"size": 1000, "page": page, "sortOrder": "asc"}
            calls += http.get(CALLS, params=params).json()
    return calls


def links(response: httpx.Response) -> dict[str, str]:
    """The `Link` header as {rel: url}, tolerant of either separator."""
    found = re.findall(r'<([^>]*)>;\s*rel="([^"]+)"', response.headers.get("link", ""))
    return {rel: url for url, rel in found}


def instant(call: dict[str, Any]) -> tuple[float, str]:
    return datetime.fromisoformat(call["startTime"]).timestamp(), call["id"]


def assert_error_shape(body: dict[str, Any], category: str, code: str) -> None:
    assert set(body) == {"category", "code", "message", "details"}
    assert (body["category"], body["code"]) == (category, code)
    names = [detail["name"] for detail in body["details"]]
    assert names[:3] == ["requestMethod", "remoteAddress", "requestPath"]
    assert body["details"][0]["value"] == "GET"
    assert body["details"][1]["value"] == "127.0.0.1"


# -- listing --


def test_list_is_a_bare_array_with_defaults(client: ClientFactory, base_url: str) -> None:
    response = client().get(CALLS)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    calls = response.json()
    assert isinstance(calls, list)
    assert len(calls) == 25
    assert [instant(c) for c in calls] == sorted((instant(c) for c in calls), reverse=True)
    first = calls[0]
    assert first["events"] == f"{base_url}{CALLS}/{first['id']}/events"
    assert set(links(response)) == {"first", "next"}


@pytest.mark.parametrize(
    ("params", "message_part"),
    [
        ({"size": "0"}, "size"),
        ({"size": "1001"}, "size"),
        ({"size": "x"}, "integer"),
        ({"page": "y"}, "integer"),
        ({"page": "-1"}, "page"),
        ({"sortOrder": "sideways"}, "sortOrder"),
    ],
    ids=["size-0", "size-1001", "size-x", "page-y", "page-negative", "sort-bad"],
)
def test_invalid_parameters(
    client: ClientFactory, params: dict[str, str], message_part: str
) -> None:
    response = client().get(CALLS, params=params)
    assert response.status_code == 400
    body = response.json()
    assert_error_shape(body, "validation-error", "invalid-parameter")
    assert message_part in body["message"]
    assert body["details"][2]["value"] == "users/u-demo/calls"


@pytest.mark.parametrize("size", [1, 1000], ids=["min", "max"])
def test_size_bounds_accepted(client: ClientFactory, size: int) -> None:
    assert len(client().get(CALLS, params={"size": size}).json()) == size


def test_page_past_the_end_is_empty(client: ClientFactory) -> None:
    response = client().get(CALLS, params={"page": 500, "size": 10})
    assert response.status_code == 200
    assert response.json() == []
    assert set(links(response)) == {"first", "previous"}


def test_unknown_parameters_are_ignored(client: ClientFactory) -> None:
    http = client()
    assert http.get(CALLS, params={"bogus": "1"}).json() == http.get(CALLS).json()


@pytest.mark.parametrize(
    ("sort_order", "descending"),
    [("desc", True), ("Desc", True), ("asc", False), ("ASC", False)],
    ids=["desc", "Desc", "asc", "ASC"],
)
def test_sort_order_is_case_insensitive_and_by_instant(
    client: ClientFactory, sort_order: str, descending: bool
) -> None:
    calls = client().get(CALLS, params={"size": 1000, "sortOrder": sort_order}).json()
    keys = [datetime.fromisoformat(c["startTime"]) for c in calls]
    assert keys == sorted(keys, reverse=descending)


def test_order_compares_instants_across_timestamp_variants(all_calls: list[dict[str, Any]]) -> None:
    keys = [instant(c) for c in all_calls]
    assert keys == sorted(keys)
    # A lexical sort would disagree somewhere, since offsets and precisions are mixed.
    assert [c["startTime"] for c in all_calls] != sorted(c["startTime"] for c in all_calls)


@pytest.mark.parametrize(
    ("field", "pick"),
    [
        ("from", lambda v: v.startswith("+")),
        ("to", lambda v: v.startswith("+")),
        ("from", lambda v: v.startswith("sip:")),
        ("to", lambda v: v.startswith("sip:")),
    ],
    ids=["from-e164", "to-e164", "from-sip", "to-sip"],
)
def test_number_filters(
    client: ClientFactory,
    all_calls: list[dict[str, Any]],
    field: str,
    pick: Callable[[str], bool],
) -> None:
    value = next(c[field] for c in all_calls if pick(c[field]))
    expected = {c["id"] for c in all_calls if c[field] == value}
    assert len(expected) > 1
    calls = client().get(CALLS, params={field: value, "size": 1000}).json()
    assert {c["id"] for c in calls} == expected


def test_encoded_plus_in_raw_query(client: ClientFactory, all_calls: list[dict[str, Any]]) -> None:
    number = next(c["from"] for c in all_calls if c["from"].startswith("+"))
    response = client().get(f"{CALLS}?from=%2B{number[1:]}&size=1000")
    assert response.json()
    assert all(c["from"] == number for c in response.json())


@pytest.mark.parametrize("field", ["bridgeId", "conferenceId"])
def test_bridge_and_conference_return_every_match(
    client: ClientFactory, all_calls: list[dict[str, Any]], field: str
) -> None:
    value = next(c[field] for c in all_calls if field in c)
    expected = {c["id"] for c in all_calls if c.get(field) == value}
    assert len(expected) > 1
    response = client().get(CALLS, params={field: value, "size": 1, "page": 0})
    assert {c["id"] for c in response.json()} == expected
    assert "next" not in links(response)


@pytest.mark.parametrize(
    "params",
    [{"size": 97}, {"size": 7, "from": "sip:alice@example.com", "sortOrder": "ASC"}],
    ids=["all", "filtered"],
)
def test_following_next_visits_every_call_once(
    client: ClientFactory, all_calls: list[dict[str, Any]], params: dict[str, Any]
) -> None:
    http = client()
    wanted = params.get("from")
    expected = sorted(c["id"] for c in all_calls if wanted in (None, c["from"]))
    seen: list[str] = []
    url: str | None = f"{CALLS}?{httpx.QueryParams(params)}"
    while url is not None:
        response = http.get(url)
        seen += [c["id"] for c in response.json()]
        found = links(response)
        assert "first" in found
        assert ("previous" in found) == (len(seen) > params["size"])
        url = found.get("next")
        if url is not None and wanted is not None:
            assert parse_qs(urlsplit(url).query)["from"] == [wanted]
            assert "from=sip%3Aalice%40example.com" in url
    assert sorted(seen) == expected
    assert len(seen) == len(set(seen))


def test_link_header_carries_filters_encoded(
    client: ClientFactory, all_calls: list[dict[str, Any]]
) -> None:
    number = next(c["to"] for c in all_calls if c["to"].startswith("+"))
    response = client().get(CALLS, params={"to": number, "size": 1, "page": 1})
    header = response.headers["link"]
    assert f"to=%2B{number[1:]}" in header
    assert "sortOrder=desc" in header
    # Both separators docs/upstream.md allows appear, so clients must cope with either.
    assert '", <' in header
    assert '",<' in header


@pytest.mark.parametrize("path", [CALLS, f"{CALLS}/"], ids=["bare", "trailing-slash"])
def test_both_list_paths(client: ClientFactory, base_url: str, path: str) -> None:
    response = client().get(path, params={"size": 2})
    assert len(response.json()) == 2
    assert links(response)["next"].startswith(f"{base_url}{path}?")


# -- one call and its events --


def test_get_one_call(
    client: ClientFactory, all_calls: list[dict[str, Any]], base_url: str
) -> None:
    listed = all_calls[42]
    call = client().get(f"{CALLS}/{listed['id']}").json()
    own = f"{base_url}{CALLS}/{listed['id']}"
    assert {k: v for k, v in call.items() if k in listed} == {**listed, "events": f"{own}/events"}
    assert isinstance(call["callTimeout"], int)
    assert call["recordings"] == f"{own}/recordings"
    assert call["transcriptions"] == f"{own}/transcriptions"


@pytest.mark.parametrize("suffix", ["", "/events"], ids=["call", "events"])
def test_unknown_call(client: ClientFactory, suffix: str) -> None:
    response = client().get(f"{CALLS}/c-missing{suffix}")
    assert response.status_code == 404
    body = response.json()
    assert_error_shape(body, "not-found", "call-not-found")
    assert body["message"] == "The call c-missing could not be found"
    assert body["details"][2]["value"] == f"users/u-demo/calls/c-missing{suffix}"


def test_events(client: ClientFactory, all_calls: list[dict[str, Any]]) -> None:
    completed = next(c for c in all_calls if c["state"] == "completed")
    events = client().get(f"{CALLS}/{completed['id']}/events").json()
    assert [e["name"] for e in events][:2] == ["create", "answer"]
    assert events[-1]["name"] == "hangup"
    for event in events:
        assert set(event) <= {"id", "time", "name", "data"}
        assert re.fullmatch(r"ce-[a-z0-9]{23}", event["id"])
        # The list writes instants as the documented list examples: ISO, ms, Z.
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["time"])
        assert isinstance(event.get("data", ""), str)
    assert datetime.fromisoformat(events[0]["time"]) == datetime.fromisoformat(
        completed["startTime"]
    )


def test_one_event_by_id_has_epoch_ms_time(
    client: ClientFactory, all_calls: list[dict[str, Any]]
) -> None:
    completed = next(c for c in all_calls if c["state"] == "completed")
    listed = client().get(f"{CALLS}/{completed['id']}/events").json()

    for event in listed:
        one = client().get(f"{CALLS}/{completed['id']}/events/{event['id']}")
        assert one.status_code == 200
        body = one.json()
        assert {k: v for k, v in body.items() if k != "time"} == {
            k: v for k, v in event.items() if k != "time"
        }
        assert type(body["time"]) is int
        assert body["time"] == int(datetime.fromisoformat(event["time"]).timestamp() * 1000)


@pytest.mark.parametrize(
    ("path", "code", "message"),
    [
        pytest.param(
            "{call}/events/ce-missing",
            "resource-not-found",
            "The call event ce-missing could not be found",
            id="unknown-event",
        ),
        pytest.param(
            "c-missing/events/ce-x",
            "call-not-found",
            "The call c-missing could not be found",
            id="unknown-call",
        ),
    ],
)
def test_unknown_event(
    client: ClientFactory, all_calls: list[dict[str, Any]], path: str, code: str, message: str
) -> None:
    response = client().get(f"{CALLS}/{path.format(call=all_calls[0]['id'])}")

    assert response.status_code == 404
    assert_error_shape(response.json(), "not-found", code)
    assert response.json()["message"] == message


def test_one_event_needs_the_accounts_credentials(
    client: ClientFactory, all_calls: list[dict[str, Any]]
) -> None:
    call = all_calls[0]["id"]
    event = client().get(f"{CALLS}/{call}/events").json()[0]["id"]

    assert client(None).get(f"{CALLS}/{call}/events/{event}").status_code == 401
    assert client(SECOND).get(f"{CALLS}/{call}/events/{event}").status_code == 401


# -- auth --


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic " + base64.b64encode(b"t-demo:wrong").decode(),
        "Basic !!!not-base64",
        "Basic dC1ub2JvZHk6eA==",
        "Bearer t-demo",
    ],
    ids=["missing", "bad-secret", "undecodable", "unknown-token", "not-basic"],
)
def test_bad_credentials(client: ClientFactory, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client(None).get(CALLS, headers=headers)
    assert response.status_code == 401
    assert_error_shape(response.json(), "authentication", "authentication-failed")


def test_another_existing_user_is_denied(client: ClientFactory) -> None:
    response = client(SECOND).get(CALLS)
    assert response.status_code == 401
    body = response.json()
    assert_error_shape(body, "authentication", "user-access-denied")
    assert body["message"] == "User u-second does not have permission to access user u-demo"


def test_unknown_user(client: ClientFactory) -> None:
    response = client().get("/v1/users/u-nobody/calls")
    assert response.status_code == 404
    assert_error_shape(response.json(), "not-found", "user-not-found")


# -- rate limit --


def assert_rate_limited(response: httpx.Response) -> int:
    assert response.status_code == 429
    reset = int(response.headers["x-ratelimit-reset"])
    assert reset > time.time() * 1000
    assert "retry-after" not in response.headers
    body = response.json()
    assert set(body) == {"category", "code", "details"}
    assert (body["category"], body["code"]) == ("too-many-requests", "rate-limit-reached")
    assert {"name": "rateLimitResetTime", "value": str(reset)} in body["details"]
    return reset


def test_rate_limit_option(client: ClientFactory) -> None:
    options = SandboxOptions(rate_limit=True, rate_limit_interval_ms=200, calls_per_user=30)
    with serve(create_sandbox_app(options)) as url:
        http, other = client(DEMO, url), client(SECOND, url)
        assert http.get(CALLS).status_code == 200
        reset = assert_rate_limited(http.get(CALLS))
        # Refused requests leave the clock where it was.
        assert assert_rate_limited(http.get(CALLS)) == reset
        assert other.get("/v1/users/u-second/calls").status_code == 200
        time.sleep(max(0.0, reset / 1000 - time.time()) + 0.01)
        assert http.get(CALLS).status_code == 200


def test_rate_limit_fault_overrides_option(client: ClientFactory, control: httpx.Client) -> None:
    faults = {"rate_limit": True, "rate_limit_interval_ms": 150}
    control.put("/__sandbox/faults", json=faults).raise_for_status()
    http = client()
    assert http.get(CALLS).status_code == 200
    assert_rate_limited(http.get(CALLS))
    time.sleep(0.2)
    assert http.get(CALLS).status_code == 200


# -- faults --


def put_faults(control: httpx.Client, faults: object) -> httpx.Response:
    return control.put("/__sandbox/faults", json=faults)


@pytest.mark.parametrize(
    ("status", "category"),
    [
        (500, "backend"),
        (502, "backend"),
        (503, "unavailable"),
        (504, "unavailable"),
        (400, "bad-request"),
        (401, "authentication"),
        (403, "forbidden"),
        (404, "not-found"),
    ],
    ids=lambda value: str(value),
)
def test_fail_status_with_count(
    client: ClientFactory, control: httpx.Client, status: int, category: str
) -> None:
    put_faults(control, {"fail_status": status, "fail_count": 2}).raise_for_status()
    http = client()
    for _ in range(2):
        response = http.get(CALLS)
        assert response.status_code == status
        body = response.json()
        assert body["category"] == category
        assert set(body) == {"category", "code", "message", "details"}
    assert http.get(CALLS).status_code == 200
    assert control.get("/__sandbox/faults").json()["fail_status"] is None


def test_fail_rate_is_partial_and_repeatable(client: ClientFactory, control: httpx.Client) -> None:
    http = client()
    runs = []
    for _ in range(2):
        put_faults(control, {"fail_status": 503, "fail_rate": 0.5}).raise_for_status()
        runs.append([http.get(CALLS, params={"size": 1}).status_code for _ in range(30)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 503}


def test_garbage_alternates_html_and_wrong_shape(
    client: ClientFactory, control: httpx.Client
) -> None:
    put_faults(control, {"garbage_rate": 1}).raise_for_status()
    http = client()
    first, second = http.get(CALLS), http.get(CALLS)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.text == "<html>oops"
    assert second.json() == {"not": "a list"}


def test_drop_breaks_the_connection(client: ClientFactory, control: httpx.Client) -> None:
    put_faults(control, {"drop_rate": 1.0}).raise_for_status()
    with pytest.raises(httpx.TransportError):
        client().get(CALLS)
    control.delete("/__sandbox/faults").raise_for_status()
    assert client().get(CALLS).status_code == 200


@pytest.mark.parametrize(
    "faults",
    [{"latency_ms": 150}, {"latency_spike_ms": 150, "latency_spike_rate": 1}],
    ids=["latency", "spike"],
)
def test_latency(client: ClientFactory, control: httpx.Client, faults: dict[str, float]) -> None:
    put_faults(control, faults).raise_for_status()
    http = client()
    started = time.monotonic()
    assert http.get(CALLS).status_code == 200
    assert time.monotonic() - started >= 0.15


def test_latency_option(client: ClientFactory) -> None:
    # Ordering, not a wall-clock bound: the health check must finish while a delayed API
    # request is still waiting (the latency applies to the API only).
    with serve(create_sandbox_app(SandboxOptions(latency_ms=1500, calls_per_user=10))) as url:
        http = client(DEMO, url)
        with ThreadPoolExecutor(max_workers=1) as pool:
            started = time.monotonic()
            delayed = pool.submit(http.get, CALLS)
            assert httpx.get(f"{url}/__health").json() == {"status": "ok"}
            assert not delayed.done()
            assert delayed.result().status_code == 200
            assert time.monotonic() - started >= 1.5


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"explode": true}',
        b'{"fail_rate": 2}',
        b'{"fail_status": "500"}',
        b'{"fail_status": 200}',
        b'{"fail_count": 0}',
        b'{"latency_ms": -1}',
        b'{"latency_ms": true}',
        b'{"rate_limit": "yes"}',
        b'{"rate_limit_interval_ms": 1.5}',
    ],
    ids=[
        "not-json",
        "not-object",
        "unknown-key",
        "rate-range",
        "status-type",
        "status-range",
        "count-zero",
        "negative-latency",
        "bool-latency",
        "rate-limit-type",
        "interval-type",
    ],
)
def test_bad_faults_are_refused(control: httpx.Client, body: bytes) -> None:
    put_faults(control, {"latency_ms": 5}).raise_for_status()
    response = control.put("/__sandbox/faults", content=body)
    assert response.status_code == 400
    assert response.json()["category"] == "validation-error"
    assert control.get("/__sandbox/faults").json()["latency_ms"] == 5


# -- recording, stats, reset --


def test_requests_are_recorded_raw(client: ClientFactory, control: httpx.Client) -> None:
    http = client()
    http.get(f"{CALLS}/?from=%2B19195550000&size=2", headers={"X-Trace": "abc"})
    client(None).get(CALLS)
    control.get("/__health")
    recorded = control.get("/__sandbox/requests").json()
    assert len(recorded) == 2
    first, second = recorded
    assert first["method"] == "GET"
    assert first["path"] == f"{CALLS}/"
    assert first["query"] == "from=%2B19195550000&size=2"
    assert (first["authorization"], first["account"]) == ("Basic [redacted]", DEMO.user_id)
    assert first["headers"]["authorization"] == "Basic [redacted]"
    assert first["headers"]["x-trace"] == "abc"
    assert all(name == name.lower() for name in first["headers"])
    assert first["status"] == 200
    assert (second["authorization"], second["account"], second["status"]) == (None, None, 401)
    assert control.get("/__sandbox/stats").json() == {"requests": 2}
    assert control.delete("/__sandbox/requests").status_code == 204
    assert control.get("/__sandbox/requests").json() == []
    assert control.get("/__sandbox/stats").json() == {"requests": 2}


def _basic(token: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{token}:{secret}".encode()).decode()


@pytest.mark.parametrize(
    ("authorization", "shown", "account"),
    [
        pytest.param(_basic(DEMO.token, DEMO.secret), "Basic [redacted]", "u-demo", id="valid"),
        pytest.param(_basic(DEMO.token, "a-wrong-secret"), "Basic [redacted]", None, id="wrong"),
        pytest.param("bearer a-bearer-secret", "bearer [redacted]", None, id="bearer"),
        pytest.param("a-bare-secret", "[redacted]", None, id="no-scheme"),
        pytest.param("a-secret with-a-space", "[redacted]", None, id="not-a-scheme"),
    ],
)
def test_recorded_requests_never_show_credentials(
    base_url: str, control: httpx.Client, authorization: str, shown: str, account: str | None
) -> None:
    httpx.get(base_url + CALLS, headers={"Authorization": authorization})

    recording = control.get("/__sandbox/requests")
    [request] = recording.json()
    assert (request["authorization"], request["account"]) == (shown, account)
    assert request["headers"]["authorization"] == shown
    for secret in (DEMO.secret, "a-wrong-secret", "a-bearer-secret", "a-bare-secret"):
        assert secret not in recording.text
    assert authorization.split()[-1] not in recording.text


def test_reset_clears_everything(client: ClientFactory, control: httpx.Client) -> None:
    put_faults(control, {"fail_status": 500, "rate_limit": True}).raise_for_status()
    assert client().get(CALLS).status_code == 500
    assert control.post("/__sandbox/reset").status_code == 204
    assert control.get("/__sandbox/requests").json() == []
    assert control.get("/__sandbox/stats").json() == {"requests": 0}
    assert control.get("/__sandbox/faults").json()["fail_status"] is None
    assert client().get(CALLS).status_code == 200


def test_health(control: httpx.Client) -> None:
    assert control.get("/__health").json() == {"status": "ok"}


# -- the sandbox that `serve --sandbox` mounts: no controls --

CONTROLS = [
    ("GET", "/__sandbox/requests"),
    ("DELETE", "/__sandbox/requests"),
    ("GET", "/__sandbox/stats"),
    ("GET", "/__sandbox/faults"),
    ("PUT", "/__sandbox/faults"),
    ("DELETE", "/__sandbox/faults"),
    ("POST", "/__sandbox/reset"),
]


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    """`serve --sandbox` (the demo, which may be published on every interface)."""
    port = free_port()
    settings = load_settings({"GATEWAY_SANDBOX": "true", "GATEWAY_PORT": str(port)})
    with serve(create_app(settings), port=port) as url:
        yield url


@pytest.mark.parametrize(("method", "path"), CONTROLS, ids=[" ".join(c) for c in CONTROLS])
def test_the_demo_sandbox_has_no_controls(demo: str, method: str, path: str) -> None:
    auth = (DEMO.token, DEMO.secret)
    calls = httpx.get(f"{demo}/sandbox{CALLS}", params={"size": 1}, auth=auth)
    body = {"fail_status": 500} if method == "PUT" else None

    control = httpx.request(method, f"{demo}/sandbox{path}", json=body, auth=auth)

    assert calls.status_code == 200  # the sandbox is there
    assert control.status_code == 404
    assert "authorization" not in control.text.lower()
    # Nothing was changed: the demo's sandbox still answers.
    assert httpx.get(f"{demo}/sandbox{CALLS}", params={"size": 1}, auth=auth).status_code == 200


def test_the_standalone_sandbox_has_the_controls(control: httpx.Client) -> None:
    for method, path in CONTROLS:
        body: dict[str, Any] | None = {} if method == "PUT" else None
        assert control.request(method, path, json=body).status_code < 400, (method, path)
