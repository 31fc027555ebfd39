"""Client examples that run: Python `gql` and Apollo Client paging through `callsConnection`.

Both talk HTTP to a live gateway in front of the sandbox and walk a short, filtered list
to its end; the walk must return exactly what one big `calls` page holds, in order.
"""

from __future__ import annotations

from typing import Any

from gql import Client, GraphQLRequest, gql
from gql.transport.httpx import HTTPXTransport

from gateway.app import credential_headers
from tests.conftest import DEMO, Gateway
from tests.node import node_project, run_node

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
