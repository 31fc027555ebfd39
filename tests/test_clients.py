"""Real clients against a live gateway in front of the sandbox.

Python `gql` and Apollo Client walk a short, filtered list to its end (the walk must return
exactly what one big `calls` page holds, in order). Then Apollo Client (default
`errorPolicy`), urql and gql (validating against the schema) walk the whole seeded history,
`error` calls included, as their users would: any entry in `errors` is a failure to them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from gql import Client, GraphQLRequest, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXTransport
from graphql import GraphQLError

from gateway.sandbox import SandboxOptions, credential_headers
from gateway.sandbox.data import generate_history
from tests.conftest import DEMO, Gateway
from tests.node import node_project, run_node

CLIENT_SCHEMA = Path(__file__).resolve().parent.parent / "schema.client.graphql"


@pytest.fixture
def gateway(loopback_gateway: Gateway) -> Gateway:
    """Real clients reach the gateway the way they would in production: over HTTP."""
    return loopback_gateway


WALK = gql(
    """
    query CallsFrom($from: String!, $first: Int!, $after: String) {
      callsConnection(filter: {from: $from}, first: $first, after: $after) {
        edges { node { id from } }
        pageInfo { hasNextPage endCursor }
      }
    }
    """
)


def test_python_gql_pages_to_the_end(gateway: Gateway, short_list: tuple[str, list[str]]) -> None:
    number, expected = short_list
    transport = HTTPXTransport(url=f"{gateway.url}/graphql", headers=credential_headers(DEMO))
    seen: list[str] = []
    pages = 0
    with Client(transport=transport) as session:
        variables: dict[str, Any] = {"from": number, "first": 3, "after": None}
        while True:
            result = session.execute(GraphQLRequest(WALK, variable_values=variables))
            pages += 1
            connection = result["callsConnection"]
            seen += [edge["node"]["id"] for edge in connection["edges"]]
            if not connection["pageInfo"]["hasNextPage"]:
                break
            variables["after"] = connection["pageInfo"]["endCursor"]

    assert seen == expected
    assert pages == -(-len(expected) // 3)


@pytest.mark.slow  # a real JS client from npm, in its own node process
def test_apollo_client_relay_pagination_with_persisted_queries(
    gateway: Gateway, short_list: tuple[str, list[str]]
) -> None:
    folder = node_project("clients")
    number, expected = short_list
    headers = credential_headers(DEMO)

    out = run_node(
        folder,
        "apollo-client.mjs",
        {
            "GATEWAY_URL": f"{gateway.url}/graphql",
            "AUTHORIZATION": headers["Authorization"],
            "USER_ID": headers["X-Catapult-User-Id"],
            "FROM": number,
            "FIRST": "3",
        },
    )

    # relayStylePagination merged every slice into one list, in order, without duplicates.
    assert out["ids"] == expected
    assert out["froms"] == [number]
    assert out["pages"] == -(-len(expected) // 3)
    # APQ: the first hash-only GET is unknown, the POST with the document registers it,
    # and every later page is a hash-only GET answered from the registered document.
    first, register, *rest = out["exchanges"]
    assert (first["method"], first["hasQuery"], first["codes"]) == (
        "GET",
        False,
        ["PERSISTED_QUERY_NOT_FOUND"],
    )
    assert (register["method"], register["hasQuery"], register["codes"]) == ("POST", True, [])
    assert rest
    assert len(rest) == out["pages"] - 1
    for exchange in rest:
        assert (exchange["method"], exchange["hasQuery"], exchange["codes"]) == ("GET", False, [])
        assert exchange["cacheControl"] == "private, max-age=5"


# -- the whole seeded history, as real clients with their defaults see it --


@pytest.fixture(scope="module")
def history_states() -> Counter[str]:
    """The demo user's calls by state, as the schema names them (the sandbox's own data)."""
    options = SandboxOptions()
    history = generate_history(options.seed, options.calls_per_user).users[DEMO.user_id]
    return Counter(str(call.fields["state"]).upper() for call in history.asc)


def test_the_seeded_history_has_error_calls(history_states: Counter[str]) -> None:
    # What the walks below must get through: 40 of 2,500 calls in the undocumented state.
    assert sum(history_states.values()) == 2500
    assert history_states["ERROR"] == 40


@pytest.mark.slow  # 25 pages of 100 through a JS client, each: tens of seconds
@pytest.mark.parametrize("client", ["apollo", "urql"])
def test_a_js_client_with_its_defaults_walks_the_whole_history(
    gateway: Gateway, history_states: Counter[str], client: str
) -> None:
    folder = node_project("clients")
    headers = credential_headers(DEMO)

    out = run_node(
        folder,
        "history-walk.mjs",
        {
            "CLIENT": client,
            "GATEWAY_URL": f"{gateway.url}/graphql",
            "AUTHORIZATION": headers["Authorization"],
            "USER_ID": headers["X-Catapult-User-Id"],
            "FIRST": "100",
            "CALLS_SIZE": "1000",
        },
        timeout=300,
    )
    print(f"\n{client}: walk {out['walk']}, calls page {out['page']}, error {out['error']}")

    assert out["error"] is None
    walk = out["walk"]
    assert (walk["calls"], walk["distinct"], walk["pages"]) == (2500, 2500, 25)
    assert walk["states"] == dict(history_states)
    assert out["page"]["calls"] == 1000
    assert out["page"]["states"]["ERROR"] > 0


HISTORY_WALK = gql(
    """
    query Walk($first: Int!, $after: String) {
      callsConnection(first: $first, after: $after) {
        edges { node { id state direction startTime endTime } }
        pageInfo { hasNextPage endCursor }
      }
    }
    """
)


@pytest.mark.slow  # 25 pages of 100, each validated against the schema by gql
@pytest.mark.parametrize("schema_from", ["client-schema-file", "introspection"])
def test_python_gql_validating_against_the_schema_walks_the_whole_history(
    gateway: Gateway, history_states: Counter[str], schema_from: str
) -> None:
    transport = HTTPXTransport(
        url=f"{gateway.url}/graphql", headers=credential_headers(DEMO), timeout=60
    )
    schema: dict[str, Any] = (
        {"schema": CLIENT_SCHEMA.read_text()}
        if schema_from == "client-schema-file"
        else {"fetch_schema_from_transport": True}
    )
    states: Counter[str] = Counter()
    ids: set[str] = set()
    pages = 0
    with Client(transport=transport, **schema) as session:
        # The schema is really used: a field it lacks is refused before any request.
        with pytest.raises(GraphQLError, match="durationSeconds"):
            session.execute(gql("{ calls { id durationSeconds } }"))
        variables: dict[str, Any] = {"first": 250, "after": None}
        while True:
            try:
                result = session.execute(GraphQLRequest(HISTORY_WALK, variable_values=variables))
            except TransportQueryError as exc:
                pytest.fail(f"page {pages + 1} raised: {str(exc)[:300]}")
            pages += 1
            connection = result["callsConnection"]
            for edge in connection["edges"]:
                ids.add(edge["node"]["id"])
                states[edge["node"]["state"]] += 1
            if not connection["pageInfo"]["hasNextPage"]:
                break
            variables["after"] = connection["pageInfo"]["endCursor"]
    print(f"\ngql ({schema_from}): {pages} pages, {len(ids)} calls, states {dict(states)}")

    assert (pages, len(ids)) == (10, 2500)
    assert states == history_states
