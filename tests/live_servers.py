"""A live sandbox and gateways in front of it, for the subscription tests with real clients."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.app import create_app
from gateway.config import load_settings
from gateway.sandbox import ACCOUNTS, Account, SandboxOptions, create_sandbox_app
from tests.servers import serve

DEMO = ACCOUNTS[0]


@dataclass
class LiveSandbox:
    """A standalone sandbox whose calls move, with its test controls."""

    url: str
    control: httpx.Client

    def list_requests(self, account: Account = DEMO) -> list[dict[str, Any]]:
        """The list-calls requests made for `account` since the last reset."""
        recorded: list[dict[str, Any]] = self.control.get("/__sandbox/requests").json()
        path = f"/v1/users/{account.user_id}/calls"
        return [r for r in recorded if r["path"].rstrip("/") == path]

    def reset(self) -> None:
        self.control.post("/__sandbox/reset").raise_for_status()


@contextmanager
def live_sandbox(
    interval: float, accounts: tuple[Account, ...] = ACCOUNTS, calls_per_user: int = 300
) -> Iterator[LiveSandbox]:
    options = SandboxOptions(
        live_interval=interval, accounts=accounts, calls_per_user=calls_per_user
    )
    with serve(create_sandbox_app(options)) as url, httpx.Client(base_url=url) as control:
        yield LiveSandbox(url, control)


@contextmanager
def live_gateways(upstream: str, count: int = 1, **settings: Any) -> Iterator[list[str]]:
    """`count` gateways in front of `upstream` (one process, each its own server); their
    `/graphql` URLs. Keyword arguments are settings (`live_interval=1` for
    GATEWAY_LIVE_INTERVAL)."""
    environ = {
        "GATEWAY_UPSTREAM_URL": upstream,
        **{f"GATEWAY_{k.upper()}": str(v) for k, v in settings.items()},
    }
    with ExitStack() as stack:
        urls = [
            stack.enter_context(serve(create_app(load_settings(environ)))) for _ in range(count)
        ]
        yield [f"{url}/graphql" for url in urls]
