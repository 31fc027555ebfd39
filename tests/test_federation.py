"""Apollo Federation through two real routers (tests/js/federation).

Our SDL (as `export-schema` prints it) is composed with a second subgraph that references
`Call` by id (notes.mjs), and a router runs the supergraph with header propagation:
@apollo/composition and @apollo/gateway (federation.mjs), then
@theguild/federation-composition and Hive Gateway (hive-gateway.mjs). Through either, a
query crossing both subgraphs must come back complete, fetched from the upstream with the
caller's own credentials.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import credential_headers
from gateway.schema import build_schema, print_sdl
from tests.conftest import DEMO, Gateway, Sandbox
from tests.node import node_project, run_node

# The third note refers to a call that does not exist: `_entities` answers null for it
# and both routers make that note's `call` null. Hive Gateway also reports the null it met
# at the non-null `Call.state` (as GraphQL's null propagation says); Apollo Gateway does not.
ROUTERS = [
    pytest.param("federation.mjs", 'join__type(graph: CALLS, key: "id")', [], id="apollo-gateway"),
    pytest.param(
        "hive-gateway.mjs",
        '@join__type(graph: CALLS, key: "id")',
        [["notes", 2, "call", "state"]],
        id="hive-gateway",
    ),
]


@pytest.mark.parametrize(("script", "joined", "error_paths"), ROUTERS)
def test_a_query_across_two_subgraphs_through_a_router(
    gateway: Gateway,
    sandbox: Sandbox,
    tmp_path: Path,
    script: str,
    joined: str,
    error_paths: list[list[str | int]],
) -> None:
    folder = node_project("federation")
    calls = gateway.query("{ calls(size: 2) { id state from } }").json()["data"]["calls"]
    ids = [call["id"] for call in calls] + ["c-unknown"]
    sdl = tmp_path / "calls.graphql"
    sdl.write_text(print_sdl(build_schema()))
    headers = credential_headers(DEMO)
    sandbox.reset()

    out = run_node(
        folder,
        script,
        {
            "CALLS_URL": f"{gateway.url}/graphql",
            "CALLS_SDL_FILE": str(sdl),
            "CALL_IDS": ",".join(ids),
            "AUTHORIZATION": headers["Authorization"],
            "USER_ID": headers["X-Catapult-User-Id"],
        },
    )

    assert out["status"] == 200, out
    assert [e["path"] for e in out["result"].get("errors", [])] == error_paths, out["result"]
    notes = out["result"]["data"]["notes"]
    assert [note["text"] for note in notes] == ["note 1", "note 2", "note 3"]
    assert [note["call"] and note["call"]["id"] for note in notes] == [*ids[:2], None]
    assert [note["call"]["state"] for note in notes[:2]] == [c["state"] for c in calls]
    assert [note["call"]["from"] for note in notes[:2]] == [c["from"] for c in calls]
    assert joined in out["supergraphSdl"]
    assert out["notesHeaders"]
    assert {h["authorization"] for h in out["notesHeaders"]} == {headers["Authorization"]}
    # The router propagated the caller's headers: every upstream request carried them.
    upstream = sandbox.requests()
    assert {r["path"].rstrip("/").rsplit("/", 1)[-1] for r in upstream} == set(ids)
    assert {r["authorization"] for r in upstream} == {headers["Authorization"]}
    assert all(r["path"].startswith("/v1/users/u-demo/calls/") for r in upstream)
