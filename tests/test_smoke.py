from __future__ import annotations

from tests.conftest import Gateway, Sandbox


def test_a_query_reaches_the_sandbox_with_the_callers_credentials(
    gateway: Gateway, sandbox: Sandbox
) -> None:
    response = gateway.query("{ calls(size: 3) { id state } }")

    assert response.status_code == 200
    calls = response.json()["data"]["calls"]
    assert len(calls) == 3
    [request] = sandbox.requests()
    assert request["authorization"] == gateway.http.headers["authorization"]
    assert request["query"] == "page=0&size=3&sortOrder=desc"
