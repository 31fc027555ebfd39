"""A live sandbox and gateways in front of it, for the subscription tests with real clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.app import create_app
from gateway.config import load_settings
from gateway.sandbox import ACCOUNTS, Account, SandboxOptions, create_sandbox_app
from tests.servers import free_port, serve

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


@dataclass
class GatewayProcess:
    """`catapult-gateway serve` in a process of its own, its log in a file."""

    url: str  # its /graphql URL
    log: Path
    pid: int
    process: subprocess.Popen[bytes]

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    @property
    def base(self) -> str:
        return self.url.removesuffix("/graphql")

    def server_errors(self) -> list[str]:
        """Log lines of errors or 5xx answers (the gateway logs JSON lines)."""
        found = []
        for line in self.log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                found.append(line)  # not the gateway's own format: a traceback or a crash
                continue
            status = entry.get("status")
            if entry.get("level") in ("error", "critical") or (
                isinstance(status, int) and status >= 500
            ):
                found.append(line)
        return found


@contextmanager
def gateway_process(upstream: str, log: Path, **settings: Any) -> Iterator[GatewayProcess]:
    """A gateway in its own process, so that the clients a test runs do not share its CPU
    time (the GIL) and what the test measures is the gateway's own responsiveness."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environ.update(
        {
            "GATEWAY_UPSTREAM_URL": upstream,
            "GATEWAY_PORT": str(port),
            "GATEWAY_LOG_FORMAT": "json",
            **{f"GATEWAY_{k.upper()}": str(v) for k, v in settings.items()},
        }
    )
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "catapult-gateway"), "serve"],
            env=environ,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not start: {log.read_text()[-2000:]}")
                time.sleep(0.05)
            yield GatewayProcess(f"{base}/graphql", log, process.pid, process)
        finally:
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
