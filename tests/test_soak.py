"""A fault soak: hundreds of concurrent clients against a gateway in front of a faulty upstream.

The gateway runs as its own `catapult-gateway serve` process (so its memory can be read
from /proc), in front of the sandbox told to inject latency spikes, 5xx, dropped
connections, garbage bodies and 429s. Every request must finish within its deadline with
data or coded errors, never a 5xx; memory must come back to the warmed-up baseline; and
the gateway must serve normally once the faults stop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.sandbox import ACCOUNTS, credential_headers
from tests.conftest import Sandbox, leaks
from tests.servers import free_port

CLIENTS = 250
# 20 s by default: each of the five failing statuses gets a phase (PHASE_SECONDS), about
# 2,500 requests in all; a longer soak (GATEWAY_SOAK_SECONDS) finds slower leaks.
SOAK_SECONDS = float(os.environ.get("GATEWAY_SOAK_SECONDS", "20"))
REQUEST_TIMEOUT = 8.0  # the gateway's deadline for a whole request
# The gateway's own deadline is checked in its log; clients allow as much again for
# queueing on a loaded (often shared, two-CPU) machine.
CLIENT_DEADLINE = 2 * REQUEST_TIMEOUT
UPSTREAM_FAULT_CODES = frozenset(
    {
        "UPSTREAM_ERROR",
        "UPSTREAM_TIMEOUT",
        "UPSTREAM_UNAVAILABLE",
        "UPSTREAM_BAD_RESPONSE",
        "RATE_LIMITED",
    }
)
# Every phase injects spikes, drops and garbage; the failing status rotates.
BASE_FAULTS = {
    "latency_spike_rate": 0.03,
    "latency_spike_ms": 5000,
    "drop_rate": 0.04,
    "garbage_rate": 0.04,
    "fail_rate": 0.12,
}
FAIL_STATUSES = (500, 503, 429, 502, 504)
PHASE_SECONDS = 4.0
# One TLS context for all clients (plain HTTP here, but httpx builds one per client).
_TLS = ssl.create_default_context()


Started = Callable[[], int]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@contextmanager
def process(args: list[str], port: int, log: Path, **environ: str) -> Iterator[Started]:
    """Start `python -m gateway ARGS`; yields a wait for its /healthz (or /__health), which
    answers its pid: both processes start side by side (seconds each, on a loaded machine)."""
    with log.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args, "--port", str(port)],
            env={**os.environ, **environ}, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip

        def started() -> int:
            deadline = time.monotonic() + 20
            while not _answers(port):
                assert child.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"{args[0]} did not start"
                time.sleep(0.1)
            return child.pid

        try:
            yield started
        finally:
            child.terminate()
            child.wait(timeout=15)


def _answers(port: int) -> bool:
    for path in ("/healthz", "/__health"):
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            return False
    return False


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[str, int, Path, Sandbox]]:
    """A sandbox process and a gateway process in front of it (each on its own CPU share)."""
    sandbox_port, gateway_port = free_port(), free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    gateway_log = tmp_path / "gateway.log"
    with (
        process(["sandbox"], sandbox_port, tmp_path / "sandbox.log") as sandbox_started,
        process(
            ["serve", "--upstream-url", sandbox_url], gateway_port, gateway_log,
            GATEWAY_REQUEST_TIMEOUT=str(REQUEST_TIMEOUT), GATEWAY_UPSTREAM_TIMEOUT="3",
            GATEWAY_UPSTREAM_MAX_CONNECTIONS="128", GATEWAY_LOG_LEVEL="info",
            # The sandbox here has no rate limit: paced at 1/s, nearly every request of
            # the soak would be the gateway's own RATE_LIMITED instead of a fault.
            GATEWAY_UPSTREAM_RATE="0",
            # All 250 clients share one loopback address, as clients behind a proxy do.
            GATEWAY_MAX_CONNECTIONS_PER_CLIENT="1000",
        ) as gateway_started,
        httpx.Client(base_url=sandbox_url) as control,
    ):  # fmt: skip
        sandbox_started()
        pid = gateway_started()
        yield f"http://127.0.0.1:{gateway_port}", pid, gateway_log, Sandbox(sandbox_url, control)


def random_query(rng: random.Random) -> dict[str, Any]:
    if rng.random() < 0.7:
        page, size = rng.randrange(0, 40), rng.choice((5, 10, 25))
        return {"query": f"{{ calls(page: {page}, size: {size}) {{ id from to state }} }}"}
    call_id = f"c-soak-{rng.randrange(1000)}"
    return {"query": f'{{ call(id: "{call_id}") {{ id }} }}'}


async def client(url: str, number: int, stop_at: float, tally: Tally) -> None:
    # Each client has its own connection, as separate callers would; one shared pool of
    # hundreds of connections would make the test's own client the bottleneck.
    rng = random.Random(number)
    headers = credential_headers(ACCOUNTS[number % len(ACCOUNTS)])
    # A client must drop an idle connection before the server's keep-alive timeout (5 s)
    # does, or a request sent as the server closes it fails with ReadError; with think
    # times up to 3 s and a busy event loop, that race is common on a loaded machine.
    limits = httpx.Limits(keepalive_expiry=2.0)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=CLIENT_DEADLINE, verify=_TLS, limits=limits
    ) as http:
        while time.monotonic() < stop_at:
            # Think time, as people and pages have: about 125 requests a second in all,
            # which a two-CPU machine serves; more would measure overload, not faults.
            await asyncio.sleep(rng.uniform(1, 3))
            if time.monotonic() >= stop_at:
                break  # a request after the phase would only lengthen its tail
            started = time.monotonic()
            try:
                response = await asyncio.wait_for(
                    http.post("/graphql", json=random_query(rng)), CLIENT_DEADLINE
                )
            except TimeoutError:
                tally.outcomes["client deadline passed"] += 1
                tally.problems.append("a request passed its deadline")
                continue
            except httpx.TransportError as exc:
                tally.outcomes["transport error"] += 1
                tally.problems.append(f"transport error {exc!r}")
                continue
            tally.latencies.append(time.monotonic() - started)
            classify(response, tally)


def classify(response: httpx.Response, tally: Tally) -> None:
    if response.status_code >= 500:
        tally.problems.append(f"{response.status_code}: {response.text[:200]}")
    body = response.json()
    errors = body.get("errors", [])
    codes = {error.get("extensions", {}).get("code") for error in errors}
    if body.get("data") is not None and codes <= {"UPSTREAM_BAD_RESPONSE"}:
        # Data; odd upstream records come as `extensions.warnings`, never as errors.
        tally.outcomes["data"] += 1
        return
    for code in codes:
        tally.outcomes[str(code)] += 1
    unexpected = codes - UPSTREAM_FAULT_CODES
    if unexpected or not codes:
        tally.problems.append(f"unexpected outcome {body}"[:300])


async def load(url: str, seconds: float, tally: Tally, sandbox: Sandbox | None = None) -> None:
    stop_at = time.monotonic() + seconds
    clients = [asyncio.create_task(client(url, n, stop_at, tally)) for n in range(CLIENTS)]
    if sandbox is not None:
        # A connection per phase: one kept idle for a phase may be closed by the sandbox's
        # keep-alive timeout (5 s) just as the next phase's request goes out (ReadError).
        no_keepalive = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=sandbox.url, limits=no_keepalive) as control:
            for status in itertools.cycle(FAIL_STATUSES):
                if time.monotonic() >= stop_at:
                    break
                faults = {**BASE_FAULTS, "fail_status": status}
                (await control.put("/__sandbox/faults", json=faults)).raise_for_status()
                await asyncio.sleep(min(PHASE_SECONDS, max(0.0, stop_at - time.monotonic())))
            (await control.delete("/__sandbox/faults")).raise_for_status()
    await asyncio.gather(*clients)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


@pytest.mark.slow
@pytest.mark.serial  # 250 clients' latencies and the RSS of one process
def test_the_gateway_rides_out_a_faulty_upstream(
    servers: tuple[str, int, Path, Sandbox],
) -> None:
    url, pid, log, sandbox = servers
    warm_up = Tally()
    asyncio.run(load(url, 5, warm_up))
    assert warm_up.problems == []
    baseline = rss_kib(pid)
    sandbox.reset()

    soak = Tally()
    asyncio.run(load(url, SOAK_SECONDS, soak, sandbox))
    upstream = sandbox.requests()
    time.sleep(2)
    after = rss_kib(pid)

    statuses = Counter(str(entry["status"]) for entry in upstream)
    durations = [
        entry["duration_ms"] / 1000
        for entry in map(json.loads, log.read_text().splitlines())
        if entry.get("message") == "graphql request"
    ]
    served = sum(soak.outcomes.values())
    print(
        f"\nfault soak: {CLIENTS} clients for {SOAK_SECONDS:.0f} s, "
        f"{len(soak.latencies)} requests answered, p99 latency {p99(soak.latencies):.3f} s "
        f"at the clients, {p99(durations):.3f} s in the gateway (max {max(durations):.3f} s)\n"
        f"  upstream requests {len(upstream)} by status {dict(sorted(statuses.items()))}\n"
        f"  faults injected: {sum(statuses[str(s)] for s in FAIL_STATUSES)} failing "
        f"statuses (counted above), and about "
        f"{BASE_FAULTS['drop_rate'] * len(upstream):.0f} drops, "
        f"{BASE_FAULTS['garbage_rate'] * len(upstream):.0f} garbage bodies, "
        f"{BASE_FAULTS['latency_spike_rate'] * len(upstream):.0f} latency spikes "
        f"of {BASE_FAULTS['latency_spike_ms']} ms (rates x requests)\n"
        f"  outcomes by code {dict(soak.outcomes.most_common())} ({served} in all)\n"
        f"  RSS baseline {baseline / 1024:.1f} MiB after warm-up "
        f"({len(warm_up.latencies)} requests), {after / 1024:.1f} MiB after the soak"
    )  # fmt: skip
    assert soak.problems == []
    assert max(durations) <= REQUEST_TIMEOUT + 1.0  # the gateway keeps its own deadline
    assert soak.outcomes["data"] > 0
    assert len(set(soak.outcomes) & UPSTREAM_FAULT_CODES) >= 4
    # Memory comes back: no leak per request or per fault (allocator slack allowed: -0.5
    # to +3 MiB seen over 20 s). A leak of 20 KiB a request grew it 27 MiB over the 20 s
    # soak's 1,400-2,200 requests, and fails here, as it failed the 64 MiB bound of the
    # 50 s soak.
    assert after - baseline < max(16 * 1024, baseline // 8)

    # Serves normally once the faults stop.
    for account in ACCOUNTS:
        body = httpx.post(
            f"{url}/graphql",
            json={"query": "{ calls(size: 3) { id } }"},
            headers=credential_headers(account),
            timeout=10,
        ).json()
        assert "errors" not in body
        assert len(body["data"]["calls"]) == 3
    assert leaks(log.read_text().splitlines()) == []
