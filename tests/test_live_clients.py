"""The reference subscription clients against a live gateway in front of the live sandbox.

graphql-ws (the `graphql-transport-ws` protocol, credentials in `connection_init` as a
browser sends them), graphql-sse (distinct connections mode) and Apollo Client's
`GraphQLWsLink`, each from npm at a pinned version (tests/js/live): subscribe, see the
first update and then a change, unsubscribe, subscribe again on a new connection.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.sandbox import credential_headers
from tests.live_servers import DEMO, LiveSandbox, live_gateways, live_sandbox
from tests.node import node_project, run_node

# Real JavaScript clients from npm, each waiting on 1 s polls for a page and a change.
pytestmark = pytest.mark.slow

INTERVAL = 1.0


@pytest.fixture(scope="module")
def sandbox() -> Iterator[LiveSandbox]:
    with live_sandbox(interval=INTERVAL) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def gateway_url(sandbox: LiveSandbox) -> Iterator[str]:
    # Polls every second, at the pacing's 1 request/s per account: a change shows soon.
    with live_gateways(sandbox.url, live_interval=INTERVAL, cache_ttl=INTERVAL) as [url]:
        yield url


def watch(kind: str, gateway_url: str, size: int = 5) -> dict[str, Any]:
    headers = credential_headers(DEMO)
    out: dict[str, Any] = run_node(
        node_project("live"),
        "subscribe.mjs",
        {
            "CLIENT": kind,
            "GATEWAY_URL": gateway_url,
            "AUTHORIZATION": headers["Authorization"],
            "USER_ID": headers["X-Catapult-User-Id"],
            "SIZE": str(size),
            "WAIT_MS": "30000",
        },
        timeout=120,
    )
    return out


def updates(session: dict[str, Any]) -> list[dict[str, Any]]:
    assert session["errors"] == [], session["errors"]
    found = []
    for update in session["updates"]:
        result = update["result"]
        assert "errors" not in result, result
        found.append(result["data"]["callsUpdated"])
    return found


def assert_consistent(seen: list[dict[str, Any]], size: int) -> None:
    """Each update is a whole page; `changed` and `removed` describe it against the last."""
    first = seen[0]
    ids = [call["id"] for call in first["calls"]]
    assert len(ids) == size
    assert sorted(first["changed"]) == sorted(ids)  # everything is new in the first update
    assert first["removed"] == []
    for before, after in itertools.pairwise(seen):
        old = {call["id"]: call for call in before["calls"]}
        new = {call["id"]: call for call in after["calls"]}
        assert len(new) == size
        assert set(after["removed"]) == set(old) - set(new)
        assert set(after["changed"]) <= set(new)
        assert set(new) - set(old) <= set(after["changed"])
        for call_id in set(old) & set(new):
            if old[call_id] != new[call_id]:
                assert call_id in after["changed"], (old[call_id], new[call_id])
        # An update is sent when the page changed, never for nothing.
        assert after["changed"] or after["removed"]
        starts = [call["startTime"] for call in after["calls"]]
        assert starts == sorted(starts, reverse=True)  # DESC, as `calls` answers


@pytest.mark.parametrize(
    "kind", ["ws", "sse", "apollo"], ids=["graphql-ws", "graphql-sse", "apollo"]
)
def test_a_reference_client_sees_the_page_then_a_change_and_reconnects(
    kind: str, gateway_url: str, sandbox: LiveSandbox
) -> None:
    sandbox.reset()
    out = watch(kind, gateway_url)

    first = updates(out["first"])
    assert len(first) >= 2, "no change arrived"
    assert_consistent(first, 5)
    assert out["first"]["unsubscribed"]
    second = updates(out["second"])
    assert second
    assert_consistent(second, 5)
    if kind != "sse":
        # graphql-ws closed its socket once the last subscription ended (1000: normal),
        # and the second subscription had to connect again.
        assert out["eventsAfterFirst"] == ["connected", "closed:1000"]
        assert out["events"][:3] == ["connected", "closed:1000", "connected"]
    # Once everyone left, the poller stops: the upstream hears nothing more of it.
    time.sleep(3 * INTERVAL)
    settled = len(sandbox.list_requests())
    time.sleep(3 * INTERVAL)
    assert len(sandbox.list_requests()) == settled
