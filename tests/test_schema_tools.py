"""Client tooling loads the checked-in client schema file (tests/js/schema-tools).

graphql-inspector validates example operations against `schema.client.graphql` (and
refuses a wrong one) and diffs it; GraphQL Code Generator with `strictScalars: true`
generates types from it. The subgraph SDL (`schema.graphql`) is for routers: these tools
stop at its federation directives and scalars, which is why the client file exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.node import node_project, run_node

ROOT = Path(__file__).resolve().parent.parent

# The real tools from npm: their `npm ci` alone takes tens of seconds on a fresh clone.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client_schema_tools() -> dict[str, Any]:
    folder = node_project("schema-tools")
    out: dict[str, Any] = run_node(
        folder, "schema-tools.mjs", {"SCHEMA_FILE": str(ROOT / "schema.client.graphql")}, 300
    )
    return out


def test_graphql_inspector_validates_operations_against_the_client_schema(
    client_schema_tools: dict[str, Any],
) -> None:
    validate, invalid = client_schema_tools["validate"], client_schema_tools["invalid"]

    assert validate["ok"], validate["output"]
    assert "All documents are valid" in validate["output"]
    assert not invalid["ok"]
    assert "Cannot query field durationSeconds on type Call" in invalid["output"]


def test_graphql_inspector_diffs_the_client_schema(client_schema_tools: dict[str, Any]) -> None:
    diff = client_schema_tools["diff"]

    assert diff["ok"], diff["output"]
    assert "No changes detected" in diff["output"]


def test_codegen_with_strict_scalars_generates_types_from_the_client_schema(
    client_schema_tools: dict[str, Any],
) -> None:
    codegen = client_schema_tools["codegen"]

    assert codegen["ok"], codegen.get("error")
    content = codegen["content"]
    assert "DateTime: { input: string; output: string; }" in content
    for operation in ("CallsPageQuery", "CallsWalkQuery", "OneCallQuery"):
        assert f"export type {operation} " in content
    assert "_Any" not in content
    assert "_FieldSet" not in content
