"""Automatic persisted queries (Apollo's protocol) and the cache headers of GET answers."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from gateway.bounded import ENTRY_OVERHEAD
from gateway.persisted_queries import PersistedQueries
from tests.conftest import Gateway, GatewayFactory, Sandbox

QUERY = "query Latest { calls(size: 2) { id state } }"
HASH = hashlib.sha256(QUERY.encode()).hexdigest()
VARY = {"accept", "authorization", "x-catapult-user-id"}


def extension(digest: str = HASH) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": digest}}


def get(gateway: Gateway, **params: Any) -> Any:
    encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    # The hash-only GET an Apollo Client sends with `useGETForHashedQueries`.
    return gateway.http.get(
        "/graphql", params=encoded, headers={"apollo-require-preflight": "true"}
    )


def test_unknown_hash_then_register_then_get_by_hash(gateway: Gateway, sandbox: Sandbox) -> None:
    missing = get(gateway, extensions=extension())
    assert missing.status_code == 200
    assert missing.json() == {
        "errors": [
            {
                "message": "PersistedQueryNotFound",
                "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"},
            }
        ]
    }
    assert missing.headers["cache-control"] == "no-store"
    assert sandbox.requests() == []

    registered = gateway.http.post("/graphql", json={"query": QUERY, "extensions": extension()})
    assert len(registered.json()["data"]["calls"]) == 2

    by_hash = get(gateway, extensions=extension())
    assert by_hash.status_code == 200
    assert by_hash.json() == registered.json()
    assert by_hash.headers["cache-control"] == "private, max-age=5"
    assert {v.strip().lower() for v in by_hash.headers["vary"].split(",")} == VARY


def test_hash_with_variables_over_post(gateway: Gateway) -> None:
    query = "query One($n: Int!) { calls(size: $n) { id } }"
    digest = hashlib.sha256(query.encode()).hexdigest()
    body = {"variables": {"n": 1}, "extensions": extension(digest)}

    first = gateway.http.post("/graphql", json=body).json()
    gateway.http.post("/graphql", json={**body, "query": query})
    second = gateway.http.post("/graphql", json=body).json()

    assert first["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    assert len(second["data"]["calls"]) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(
            {"query": "{ calls { id } }", "extensions": extension()},
            "provided sha does not match query",
            id="hash-mismatch",
        ),
        pytest.param(
            {"extensions": {"persistedQuery": {"version": 2, "sha256Hash": HASH}}},
            "version 1",
            id="version-2",
        ),
        pytest.param({"extensions": extension("xyz")}, "64 hex digits", id="bad-hash"),
    ],
)
def test_bad_persisted_query_extensions_are_400(
    gateway: Gateway, sandbox: Sandbox, body: dict[str, Any], message: str
) -> None:
    response = gateway.http.post("/graphql", json=body)
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert message in error["message"]
    assert error["extensions"] == {"code": "BAD_REQUEST"}
    assert sandbox.requests() == []


def test_a_mismatched_hash_registers_nothing(gateway: Gateway) -> None:
    gateway.http.post("/graphql", json={"query": "{ calls { id } }", "extensions": extension()})
    answer = gateway.http.post("/graphql", json={"extensions": extension()}).json()
    assert answer["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"


def test_get_answers_with_errors_are_not_stored(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(headers={})
    response = get(gateway, query=QUERY)
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert response.headers["cache-control"] == "no-store"
    assert {v.strip().lower() for v in response.headers["vary"].split(",")} == VARY


def test_the_ttl_setting_is_the_max_age(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(cache_ttl=30)
    assert get(gateway, query=QUERY).headers["cache-control"] == "private, max-age=30"


def test_the_store_is_bounded_least_recently_used_first() -> None:
    store = PersistedQueries(max_entries=2, max_bytes=10_000)
    documents = [f"{{ calls(size: {n}) {{ id }} }}" for n in range(1, 4)]
    digests = [hashlib.sha256(d.encode()).hexdigest() for d in documents]
    store.resolve(documents[0], extension(digests[0]))
    store.resolve(documents[1], extension(digests[1]))
    store.resolve(None, extension(digests[0]))  # used: now the most recent
    store.resolve(documents[2], extension(digests[2]))

    assert len(store) == 2
    assert store.resolve(None, extension(digests[0])) == documents[0]
    with pytest.raises(Exception, match="PersistedQueryNotFound"):
        store.resolve(None, extension(digests[1]))

    # Each entry is charged its bytes and ENTRY_OVERHEAD: 3 x (25 + overhead) would not fit.
    small = PersistedQueries(max_entries=100, max_bytes=2 * (25 + ENTRY_OVERHEAD) + 20)
    for document, digest in zip(documents, digests, strict=True):
        small.resolve(document, extension(digest))
    assert len(small) == 2
