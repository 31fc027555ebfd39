"""The entity view: calls already fetched answer `call(id)` and `_entities` by themselves."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gateway.app import credential_headers
from tests.conftest import DEMO, GatewayFactory, Sandbox

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
    gateway = gateway_factory(cache_url=cache_url, max_upstream_requests=1)
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
