"""`catapult-gateway serve` as a real process: graceful shutdown on SIGTERM, and workers."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.sandbox import credential_headers
from tests.conftest import DEMO, Sandbox
from tests.servers import gateway_process

pytestmark = pytest.mark.slow


def query(url: str, size: int) -> httpx.Response:
    # A new connection per request, as separate clients would make.
    return httpx.post(
        f"{url}/graphql",
        json={"query": f"query Slow {{ calls(size: {size}) {{ id }} }}"},
        headers=credential_headers(DEMO),
        timeout=30,
    )


def json_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines()]


def test_sigterm_finishes_in_flight_requests_and_refuses_new_ones(sandbox: Sandbox) -> None:
    sandbox.faults(latency_ms=3000)
    env = {
        "GATEWAY_UPSTREAM_URL": sandbox.url,
        "GATEWAY_SHUTDOWN_TIMEOUT": "20",
        # The sandbox has no rate limit here; paced at 1/s, most of the twenty would be
        # refused as RATE_LIMITED instead of being in flight.
        "GATEWAY_UPSTREAM_RATE": "0",
    }
    with gateway_process(env=env, capture=True) as (process, url), ThreadPoolExecutor(20) as pool:
        # Distinct sizes: twenty different upstream requests, nothing shared or cached.
        futures = [pool.submit(query, url, size) for size in range(1, 21)]
        deadline = time.monotonic() + 20
        while len(sandbox.requests()) < 20:
            assert time.monotonic() < deadline, "the requests did not reach the upstream"
            time.sleep(0.05)

        process.send_signal(signal.SIGTERM)

        refused = False
        while not refused and time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                # Refused outright, or accepted into the kernel's backlog just before the
                # listening socket closed and then reset: either way, not served.
                refused = True
            time.sleep(0.05)
        assert refused
        assert not any(future.done() for future in futures)  # still waiting on the upstream
        responses = [future.result() for future in futures]
        _, stderr = process.communicate(timeout=30)

    assert process.returncode == 0
    assert [r.status_code for r in responses] == [200] * 20
    assert [len(r.json()["data"]["calls"]) for r in responses] == list(range(1, 21))
    lines = json_lines(stderr)  # every line, uvicorn's included, is JSON
    messages = [line["message"] for line in lines if line["logger"] == "uvicorn.error"]
    assert "Shutting down" in messages
    assert "Application shutdown complete." in messages
    assert sum(line["logger"] == "gateway.request" for line in lines) == 20
    assert DEMO.secret not in stderr


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = httpx.get(f"{url}/metrics").text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_two_workers_serve_and_report_metrics_from_both(sandbox: Sandbox, tmp_path: Path) -> None:
    env = {"GATEWAY_UPSTREAM_URL": sandbox.url, "TMPDIR": str(tmp_path)}
    with gateway_process("--workers", "2", env=env) as (process, url):
        deadline = time.monotonic() + 20
        while len(scrape(url).get("gateway_worker_up", [])) < 2:
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.1)
        responses = [query(url, size) for size in range(1, 11)]
        scrapes = [scrape(url) for _ in range(6)]
        [metrics_dir] = tmp_path.iterdir()
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)

    assert process.returncode == 0
    assert [r.status_code for r in responses] == [200] * 10
    for samples in scrapes:
        workers = samples["gateway_worker_up"]
        assert len({labels["pid"] for labels, _ in workers}) == 2
        assert all(up == 1 for _, up in workers)
        [(labels, total)] = samples["gateway_requests_total"]
        assert labels == {"operation": "Slow", "outcome": "OK"}
        assert total == 10
    assert not metrics_dir.exists()  # a fresh directory each start, removed at exit


PAGES = 6


@pytest.mark.serial  # two workers' pacing against the sandbox's 429 window
def test_two_workers_keep_one_account_under_the_upstreams_limit_without_redis(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # The upstream's real limit: one request per second per account, 429 past it.
    sandbox.faults(rate_limit=True, rate_limit_interval_ms=1000)
    env = {"GATEWAY_UPSTREAM_URL": sandbox.url, "TMPDIR": str(tmp_path)}
    with gateway_process("--workers", "2", env=env) as (process, url):
        deadline = time.monotonic() + 20
        while len(scrape(url).get("gateway_worker_up", [])) < 2:
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.1)
        # One caller paging through six distinct pages (a second each, paced), waiting
        # for each answer; a new connection each time, so the pages are spread over both
        # workers (each worker pacing alone met a 429 at its first page after the other's).
        answers = [
            httpx.post(
                f"{url}/graphql",
                json={"query": f"{{ calls(page: {page}, size: 5) {{ id }} }}"},
                headers=credential_headers(DEMO),
                timeout=30,
            ).json()
            for page in range(PAGES)
        ]
        samples = scrape(url)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)

    assert [answer.get("errors") for answer in answers] == [None] * PAGES
    assert [len(answer["data"]["calls"]) for answer in answers] == [5] * PAGES
    statuses = [r["status"] for r in sandbox.requests()]
    assert statuses == [200] * PAGES  # no upstream 429
    assert len({labels["pid"] for labels, _ in samples["gateway_worker_up"]}) == 2
