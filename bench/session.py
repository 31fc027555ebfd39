"""Upstream requests per 100 client requests for a scripted frontend session.

Two browser tabs of one account open the call list, page forward twice and back twice
(a short pause between views), then poll the first page every 2 s for a minute. The
session runs against a `catapult-gateway serve` process in front of a `catapult-gateway
sandbox` process, once with the cache (the default TTL) and once without it (TTL 0),
and the sandbox counts what reached it.

    .venv/bin/python bench/session.py               # the real session: about 2.5 minutes
    .venv/bin/python bench/session.py --speed 10    # every delay and the TTL 10x shorter

`--speed` divides the pauses, the poll interval and the TTL alike, so the ratio stays the
real session's. `--paced` turns on the sandbox's 1 request/s limit and the gateway's
pacing (scaled by `--speed` too) and also reports the requests refused as RATE_LIMITED.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from compare import free_port

AUTH = ("t-demo", "s-demo-secret")
USER = "u-demo"
NAVIGATION = (0, 1, 2, 1, 0)
THINK_SECONDS = 1.5
POLL_SECONDS = 2.0
POLL_FOR_SECONDS = 60.0
TAB_OFFSET_SECONDS = 0.7
DEFAULT_TTL = 5.0


@dataclass
class Outcome:
    client_requests: int
    upstream_requests: int
    rate_limited: int
    # Answered by the upstream cache (the rest of the saving is the whole-response cache
    # in front of the endpoint, which answers repeated identical requests first).
    upstream_cache_hits: int
    shared_flights: int

    @property
    def per_100(self) -> float:
        return 100 * self.upstream_requests / self.client_requests


@contextmanager
def process(args: list[str], env: dict[str, str], ready_url: str) -> Iterator[None]:
    child = subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"catapult-gateway {args[0]} did not start")
            time.sleep(0.05)
        yield
    finally:
        child.terminate()
        child.wait(timeout=10)


async def tab(client: httpx.AsyncClient, offset: float, speed: float) -> tuple[int, int]:
    """One browser tab; returns (requests made, requests refused as RATE_LIMITED)."""
    made = refused = 0

    async def view(page: int) -> None:
        nonlocal made, refused
        query = f"{{ calls(page: {page}, size: 25) {{ id state from to startTime }} }}"
        response = await client.post("/graphql", json={"query": query})
        made += 1
        errors = response.json().get("errors", [])
        if any(e.get("extensions", {}).get("code") == "RATE_LIMITED" for e in errors):
            refused += 1
        elif errors:
            raise RuntimeError(f"unexpected errors: {errors}")

    await asyncio.sleep(offset / speed)
    for page in NAVIGATION:
        await view(page)
        await asyncio.sleep(THINK_SECONDS / speed)
    for _ in range(round(POLL_FOR_SECONDS / POLL_SECONDS)):
        await view(0)
        await asyncio.sleep(POLL_SECONDS / speed)
    return made, refused


async def session(url: str, speed: float) -> tuple[int, int]:
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=_headers()) as client:
        results = await asyncio.gather(
            tab(client, 0, speed), tab(client, TAB_OFFSET_SECONDS, speed)
        )
    return sum(r[0] for r in results), sum(r[1] for r in results)


def _headers() -> dict[str, str]:
    token = base64.b64encode(":".join(AUTH).encode()).decode()
    return {"Authorization": f"Basic {token}", "X-Catapult-User-Id": USER}


def run(sandbox_url: str, ttl: float, speed: float, paced: bool) -> Outcome:
    control = httpx.Client(base_url=sandbox_url)
    control.post("/__sandbox/reset").raise_for_status()
    if paced:
        control.put("/__sandbox/faults", json={"rate_limit": True}).raise_for_status()
    port = free_port()
    env = {
        "GATEWAY_UPSTREAM_URL": sandbox_url,
        "GATEWAY_CACHE_TTL": str(ttl / speed),
        "GATEWAY_UPSTREAM_RATE": str(speed) if paced else "0",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    url = f"http://127.0.0.1:{port}"
    with process(["serve", "--port", str(port)], env, f"{url}/readyz"):
        made, refused = asyncio.run(session(url, speed))
        cache = httpx.get(f"{url}/readyz").json().get("cache", {})
    upstream = control.get("/__sandbox/stats").json()["requests"]
    control.close()
    return Outcome(made, upstream, refused, cache.get("hits", 0), cache.get("sharedFlights", 0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=1.0, help="compress time by this factor")
    parser.add_argument(
        "--paced", action="store_true", help="sandbox enforces 1 req/s; gateway paces"
    )
    args = parser.parse_args()
    port = free_port()
    sandbox_url = f"http://127.0.0.1:{port}"
    # A still history: the session counts requests for pages that do not change.
    env = {"GATEWAY_SANDBOX_PORT": str(port), "GATEWAY_SANDBOX_LIVE_INTERVAL": "0"}
    minutes = POLL_FOR_SECONDS / 60
    print(
        f"session: 2 tabs, pages {list(NAVIGATION)} ({THINK_SECONDS:g} s apart), then a poll "
        f"every {POLL_SECONDS:g} s for {minutes:g} min; speed x{args.speed:g}"
        + (", paced at 1 req/s" if args.paced else "")
    )
    with process(["sandbox"], env, f"{sandbox_url}/__health"):
        for label, ttl in (("cache on (TTL 5 s)", DEFAULT_TTL), ("cache off (TTL 0)", 0.0)):
            outcome = run(sandbox_url, ttl, args.speed, args.paced)
            line = (
                f"{label:20} client requests {outcome.client_requests:4}  upstream requests "
                f"{outcome.upstream_requests:4}  = {outcome.per_100:5.1f} per 100 client requests"
            )
            line += (
                f"  (upstream-cache hits {outcome.upstream_cache_hits}, "
                f"shared in-flight {outcome.shared_flights})"
            )
            if args.paced:
                line += f"  RATE_LIMITED {outcome.rate_limited}"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
