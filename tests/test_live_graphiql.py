"""GraphiQL in headless Chromium runs the pre-filled subscription against the live demo.

`serve --sandbox` with the live sandbox: the tab's second example, `WatchCalls`, runs over
a WebSocket (graphql-transport-ws, GraphiQL's bundled graphql-ws client) with the headers
editor's credentials in `connection_init`; the response pane shows the first page and
then a change; the stop button ends it. Offline, as the other GraphiQL test: the browser
reaches nothing but loopback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from gateway.app import create_app
from gateway.config import load_settings
from gateway.sandbox import credential_headers
from tests.live_servers import DEMO
from tests.servers import free_port, serve
from tests.test_graphiql_browser import OUTPUT, offline_page

if TYPE_CHECKING:
    from playwright.sync_api import WebSocket


@dataclass
class Watched:
    """What the browser showed and sent while the subscription ran."""

    first: str = ""
    later: str = ""
    sockets: list[str] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def live_demo() -> Iterator[str]:
    port = free_port()
    settings = load_settings(
        {
            "GATEWAY_SANDBOX": "true",
            "GATEWAY_PORT": str(port),
            "GATEWAY_SANDBOX_LIVE_INTERVAL": "1",
            "GATEWAY_LIVE_INTERVAL": "1",
            "GATEWAY_CACHE_TTL": "1",
        }
    )
    with serve(create_app(settings), port=port) as url:
        yield url


def watch_in_graphiql(url: str) -> Watched:
    watched = Watched()

    def on_socket(socket: WebSocket) -> None:
        watched.sockets.append(socket.url)
        socket.on("framesent", lambda payload: watched.sent.append(json.loads(payload)))
        socket.on("close", lambda closed: watched.closed.append(closed.url))

    # The editor's whole text: its innerText holds only the lines scrolled into view.
    response_text = (
        "() => document.querySelector('.graphiql-response .CodeMirror')?.CodeMirror?.getValue()"
        " ?? ''"
    )
    with offline_page(blocked=watched.blocked, errors=watched.errors) as page:
        page.on("websocket", on_socket)
        page.goto(f"{url}/graphql", wait_until="load")
        # Ctrl-Enter runs the operation under the cursor: put it in the subscription.
        page.locator(".graphiql-query-editor .CodeMirror").get_by_text(
            "WatchCalls", exact=True
        ).click(timeout=20_000)
        page.keyboard.press("Control+Enter")
        page.wait_for_function(
            f"() => ({response_text})().includes('callsUpdated')", timeout=20_000
        )
        watched.first = page.evaluate(response_text)
        # The pane shows each update in turn: wait for the next one.
        page.wait_for_function(
            f"(first) => {{ const now = ({response_text})(); "
            "return now.includes('callsUpdated') && now !== first; }",
            arg=watched.first,
            timeout=20_000,
        )
        watched.later = page.evaluate(response_text)
        page.screenshot(path=str(OUTPUT / "graphiql-subscription.png"))
        page.locator(".graphiql-execute-button").click()  # now the stop button
        page.wait_for_timeout(1000)
    return watched


def update_in(text: str) -> dict[str, Any]:
    update: dict[str, Any] = json.loads(text)["data"]["callsUpdated"]
    return update


@pytest.mark.slow  # a real browser runs GraphiQL and waits on 1 s polls for a change
def test_graphiql_runs_the_prefilled_subscription_and_shows_it_change(live_demo: str) -> None:
    watched = watch_in_graphiql(live_demo)

    first, later = update_in(watched.first), update_in(watched.later)
    assert "errors" not in watched.first
    assert "errors" not in watched.later
    assert len(first["calls"]) == 5
    assert sorted(first["changed"]) == sorted(call["id"] for call in first["calls"])
    assert later["at"] > first["at"]
    assert later["changed"] or later["removed"]
    # Over a WebSocket to the gateway itself, with the headers editor's credentials in
    # connection_init (a browser cannot put headers on a WebSocket).
    assert watched.sockets == [f"{live_demo.replace('http', 'ws', 1)}/graphql"]
    init = watched.sent[0]
    assert init["type"] == "connection_init"
    assert init["payload"] == credential_headers(DEMO)
    subscribe = next(m for m in watched.sent if m["type"] == "subscribe")
    assert "WatchCalls" in subscribe["payload"]["query"]
    # The stop button ends the subscription (graphql-ws then closes its socket).
    assert {"type": "complete", "id": subscribe["id"]} in watched.sent
    assert watched.closed == watched.sockets
    assert watched.blocked == []
    assert watched.errors == []
