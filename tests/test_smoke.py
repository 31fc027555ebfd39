from __future__ import annotations

from tests.conftest import DEMO, Gateway, Sandbox


def test_a_query_reaches_the_sandbox_with_the_callers_credentials(
    gateway: Gateway, sandbox: Sandbox
) -> None:
    response = gateway.query("{ calls(size: 3) { id state } }")

    assert response.status_code == 200
    calls = response.json()["data"]["calls"]
    assert len(calls) == 3
    [request] = sandbox.requests()
    # The sandbox records whose credentials came, never the credentials.
    assert (request["account"], request["authorization"]) == (DEMO.user_id, "Basic [redacted]")
    assert request["query"] == "page=0&size=3&sortOrder=desc"
