"""The entity view: calls already fetched answer `call(id)` and `_entities` by themselves."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.sandbox import SandboxOptions, create_sandbox_app, credential_headers
from tests.conftest import DEMO, GatewayFactory, Sandbox
from tests.servers import serve

ENTITIES = "query($r: [_Any!]!) { _entities(representations: $r) { ... on Call { id state } } }"
LIST_PATH = f"/v1/users/{DEMO.user_id}/calls/"


def representations(ids: list[str]) -> dict[str, Any]:
    return {"r": [{"__typename": "Call", "id": call_id} for call_id in ids]}


@pytest.fixture(params=["memory", "redis"])
def cache_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("redis_url"))


@pytest.mark.parametrize(
    "listing",
    [
        pytest.param("{ calls(size: 25) { id state } }", id="list-page"),
        pytest.param(
            "{ callsConnection(first: 25) { edges { node { id state } } } }", id="connection"
        ),
    ],
)
def test_calls_that_were_listed_are_served_without_the_upstream(
    gateway_factory: GatewayFactory, sandbox: Sandbox, cache_url: str, listing: str
) -> None:
    # One upstream request allowed per operation: entity hits do not count against it.
    # A TTL no slow machine outlasts between the two operations.
    gateway = gateway_factory(cache_url=cache_url, max_upstream_requests=1, cache_ttl=300)
    data = gateway.query(listing).json()["data"]
    listed = (
        data["calls"] if "calls" in data else [e["node"] for e in data["callsConnection"]["edges"]]
    )
    ids = [call["id"] for call in listed][:20]
    sandbox.reset()

    entities = gateway.query(ENTITIES, representations(ids)).json()
    single = gateway.query(f'{{ call(id: "{ids[0]}") {{ id state }} }}').json()

    assert entities == {
        "data": {"_entities": [{"id": c["id"], "state": c["state"]} for c in listed[:20]]}
    }
    assert single == {"data": {"call": listed[0]}}
    assert sandbox.requests() == []


def test_a_single_call_answer_is_kept_too(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    gateway = gateway_factory()
    call_id = gateway.query("{ calls(size: 1) { id } }").json()["data"]["calls"][0]["id"]
    fresh = gateway_factory()  # empty caches
    fresh.query(f'{{ call(id: "{call_id}") {{ id }} }}')
    sandbox.reset()

    answer = fresh.query(ENTITIES, representations([call_id])).json()

    assert answer == {
        "data": {"_entities": [{"id": call_id, "state": answer["data"]["_entities"][0]["state"]}]}
    }
    assert sandbox.requests() == []


def test_other_credentials_never_see_the_view(
    gateway_factory: GatewayFactory, sandbox: Sandbox, cache_url: str
) -> None:
    gateway = gateway_factory(cache_url=cache_url)
    ids = [c["id"] for c in gateway.query("{ calls(size: 5) { id } }").json()["data"]["calls"]]
    sandbox.reset()
    wrong = base64.b64encode(f"{DEMO.token}:not-the-secret".encode()).decode()
    headers = {"Authorization": f"Basic {wrong}", "X-Catapult-User-Id": DEMO.user_id}

    answer = gateway.query(ENTITIES, representations(ids), headers=headers).json()

    assert answer["data"] == {"_entities": [None] * 5}
    assert {e["extensions"]["code"] for e in answer["errors"]} == {"UNAUTHENTICATED"}
    assert [r["status"] for r in sandbox.requests()] == [401]


def test_no_cache_skips_the_view(gateway_factory: GatewayFactory, sandbox: Sandbox) -> None:
    gateway = gateway_factory()
    call_id = gateway.query("{ calls(size: 1) { id } }").json()["data"]["calls"][0]["id"]
    sandbox.reset()

    gateway.query(
        f'{{ call(id: "{call_id}") {{ id }} }}',
        headers={**credential_headers(DEMO), "Cache-Control": "no-cache"},
    )

    assert [r["path"] for r in sandbox.requests()] == [LIST_PATH + call_id]


def test_ttl_zero_keeps_no_view(gateway_factory: GatewayFactory, sandbox: Sandbox) -> None:
    gateway = gateway_factory(cache_ttl=0)
    call_id = gateway.query("{ calls(size: 1) { id } }").json()["data"]["calls"][0]["id"]
    sandbox.reset()

    gateway.query(f'{{ call(id: "{call_id}") {{ id }} }}')

    assert [r["path"] for r in sandbox.requests()] == [LIST_PATH + call_id]


@pytest.mark.parametrize(
    "representation",
    [
        pytest.param({"__typename": "Nope", "id": "c-1"}, id="unknown-type"),
        pytest.param({"id": "c-1"}, id="no-typename"),
        pytest.param({"__typename": 5, "id": "c-1"}, id="typename-not-a-string"),
        pytest.param({"__typename": "SipHeader", "name": "a"}, id="a-type-that-is-no-entity"),
        pytest.param({"__typename": "Query"}, id="a-root-type"),
        pytest.param("Call", id="not-an-object"),
    ],
)
def test_a_representation_that_names_no_entity_is_bad_user_input_at_its_index(
    gateway_factory: GatewayFactory, sandbox: Sandbox, representation: Any
) -> None:
    gateway = gateway_factory()
    call_id = gateway.query("{ calls(size: 1) { id } }").json()["data"]["calls"][0]["id"]
    sandbox.reset()

    answer = gateway.query(
        ENTITIES, {"r": [representation, {"__typename": "Call", "id": call_id}]}
    ).json()

    assert answer["data"]["_entities"][0] is None
    assert answer["data"]["_entities"][1]["id"] == call_id
    assert [(e["path"], e["extensions"]["code"]) for e in answer["errors"]] == [
        (["_entities", 0], "BAD_USER_INPUT")
    ]
    assert sandbox.requests() == []


@pytest.fixture
def small_history() -> Iterator[Sandbox]:
    """A sandbox whose accounts have 40 calls each: one newest page holds them all."""
    with (
        serve(create_sandbox_app(SandboxOptions(calls_per_user=40))) as url,
        httpx.Client(base_url=url) as control,
    ):
        yield Sandbox(url, control)


def test_ids_a_fresh_whole_history_lacks_are_null_without_a_get_each(
    gateway_factory: GatewayFactory, small_history: Sandbox
) -> None:
    # Default pacing (1/s): twenty GETs would be RATE_LIMITED, one page is not.
    gateway = gateway_factory(upstream_url=small_history.url, upstream_rate=1)
    missing = [f"c-missing-{n}" for n in range(20)]

    answer = gateway.query(ENTITIES, representations(missing)).json()

    assert answer == {"data": {"_entities": [None] * 20}}
    assert [r["path"] for r in small_history.requests()] == [LIST_PATH]


def test_a_cached_whole_history_proves_nothing_about_calls_made_since(
    gateway_factory: GatewayFactory, small_history: Sandbox
) -> None:
    gateway = gateway_factory(upstream_url=small_history.url, cache_ttl=300)
    gateway.query("{ calls(size: 1000) { id } }")  # the newest page, now in the cache
    small_history.reset()
    missing = [f"c-missing-{n}" for n in range(3)]

    answer = gateway.query(ENTITIES, representations(missing)).json()

    assert answer == {"data": {"_entities": [None] * 3}}
    assert sorted(r["path"] for r in small_history.requests()) == [
        f"{LIST_PATH}{call_id}" for call_id in missing
    ]


def test_a_thousand_unknown_ids_are_one_refusal_not_one_each(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    # The sandbox's history is longer than a page, so each id past the newest page
    # needs a GET of its own, and the operation's upstream-request limit (10) ends them:
    # before, every id past it was an OPERATION_TOO_COMPLEX of its own (210 KB).
    gateway = gateway_factory()
    missing = [f"c-missing-{n}" for n in range(1000)]

    answer = gateway.query(ENTITIES, representations(missing)).json()

    assert answer["data"]["_entities"] == [None] * 1000
    assert [e["extensions"]["code"] for e in answer["errors"]] == ["OPERATION_TOO_COMPLEX"]
    assert len(sandbox.requests()) == 10
