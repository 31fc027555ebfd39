"""Live updates at scale: 1,000 `callsUpdated` subscriptions over 10 accounts for a minute.

A `catapult-gateway serve` process (default settings: one poll per account and arguments
every GATEWAY_LIVE_INTERVAL = 5 s, paced at 1 request/s per account) runs in front of the
live sandbox (another process, started by this script, with 10 accounts of its own whose
calls start, are answered and end every 3 s). Each account gets 100 subscribers with the
same arguments: 90 on 10 graphql-ws connections and 10 on graphql-sse streams, made by
the reference clients (tests/js/live/hold.mjs, node). It prints:

- upstream requests per account per minute (counted by the sandbox; ~13 is one poll per
  interval plus the first),
- the p95 delay from an upstream change to its delivery (target: within one interval
  plus 1 s). The live sandbox stamps each change with the instant it began to show it
  (startTime / activeTime / endTime), so the client measures the delay from the data;
- the RSS the gateway added for the 1,000 subscriptions (target: under 100 MB);
- the coded errors the subscribers received (every `errors` entry of a `next` payload, by
  code), beside what the gateway's metrics say of its upstream requests (by status or
  transport error, and retries): an upstream failure a retry absorbed shows there only.

    .venv/bin/python bench/live.py                  # 60 s
    .venv/bin/python bench/live.py --seconds 20

Loopback only; everything it starts it stops; it never runs longer than --seconds plus
about a minute for start-up, installing the pinned node packages aside.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from compare import Server, upstream_and_gateway

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ROOT / "tests" / "js" / "live"
ACCOUNT_COUNT = 10
INTERVAL = 5.0  # GATEWAY_LIVE_INTERVAL's default, which the gateway here runs with
SANDBOX_STEP = 3.0  # GATEWAY_SANDBOX_LIVE_INTERVAL's default


def accounts() -> list[tuple[str, str, str]]:
    """(token, secret, user id) of the benchmark's own sandbox accounts."""
    return [(f"t-bench-{n}", f"s-bench-{n}-secret", f"u-bench-{n}") for n in range(ACCOUNT_COUNT)]


def authorization(token: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{token}:{secret}".encode()).decode()


# -- the live sandbox with the benchmark's accounts (its own process: `--upstream PORT`) --


def run_upstream(port: int) -> int:
    import uvicorn

    from gateway.sandbox import Account, SandboxOptions, create_sandbox_app

    options = SandboxOptions(
        live_interval=SANDBOX_STEP,
        calls_per_user=500,
        accounts=tuple(Account(user, token, secret) for token, secret, user in accounts()),
    )
    app = create_sandbox_app(options)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


# -- the clients --


def hold(url: str, args: argparse.Namespace) -> dict[str, Any]:
    environ = {
        **os.environ,
        "GATEWAY_URLS": f"{url}/graphql",
        "ACCOUNTS": json.dumps([[authorization(t, s), u] for t, s, u in accounts()]),
        "WS_CONNECTIONS": str(args.ws_connections),
        "WS_SUBSCRIPTIONS": str(args.per_connection),
        "SSE_STREAMS": str(args.sse),
        "SECONDS": str(args.seconds),
        "SIZE": "25",
    }
    done = subprocess.run(
        ["node", "hold.mjs"],
        cwd=CLIENTS,
        env=environ,
        capture_output=True,
        text=True,
        timeout=args.seconds + 120,
    )
    if done.returncode != 0:
        raise SystemExit(f"hold.mjs failed:\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


class RssSampler:
    """The gateway's RSS every half second while the subscriptions are held."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append(self.server.rss_mb())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def upstream_metrics(exposition: str) -> dict[str, float]:
    """The gateway's upstream requests by status or transport error, and its retries."""
    found: dict[str, float] = {}
    for line in exposition.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("gateway_upstream_requests_total{"):
            label = name.split('status="', 1)[1].split('"', 1)[0]
            found[label] = found.get(label, 0) + float(value)
        elif name == "gateway_upstream_retries_total":
            found["retries"] = float(value)
    return found


def by_count(counts: dict[str, float]) -> str:
    """`CODE n, ...`, the most frequent first."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{name} {value:g}" for name, value in ordered if value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="how long to hold them")
    parser.add_argument("--ws-connections", type=int, default=10, help="per account")
    parser.add_argument("--per-connection", type=int, default=9, help="subscriptions each")
    parser.add_argument("--sse", type=int, default=10, help="graphql-sse streams per account")
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream is not None:
        return run_upstream(args.upstream)
    if not 0 < args.seconds <= 600:
        parser.error("--seconds must be in (0, 600]")
    # tests/ is read from the checkout (it is not installed): one `npm ci` helper for both.
    sys.path.insert(0, str(ROOT))
    from tests.node import install_locked

    install_locked(CLIENTS)

    # Every client here comes from 127.0.0.1, as clients behind one proxy do.
    many_clients = {"GATEWAY_MAX_CONNECTIONS_PER_CLIENT": "10000"}
    with (
        upstream_and_gateway("live", __file__, **many_clients) as (upstream, gateway),
        httpx.Client(base_url=upstream.url, timeout=30) as control,
    ):
        # Warm up (the schema, one page per account), then the baseline RSS.
        for token, secret, user in accounts():
            httpx.post(
                gateway.url + "/graphql",
                json={"query": "{ calls(size: 25) { id state } }"},
                headers={"Authorization": authorization(token, secret), "X-Catapult-User-Id": user},
                timeout=30,
            ).raise_for_status()
        time.sleep(1)
        before = gateway.rss_mb()
        control.post("/__sandbox/reset").raise_for_status()
        started = time.monotonic()
        cpu_before = gateway.cpu_seconds()
        clients_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with RssSampler(gateway) as rss:
            out = hold(gateway.url, args)
        held = time.monotonic() - started
        gateway_cpu = gateway.cpu_seconds() - cpu_before
        clients = resource.getrusage(resource.RUSAGE_CHILDREN)
        clients_cpu = (clients.ru_utime + clients.ru_stime) - (
            clients_before.ru_utime + clients_before.ru_stime
        )
        recorded = control.get("/__sandbox/requests").json()
        alive = httpx.get(gateway.url + "/healthz", timeout=5).status_code
        upstream_outcomes = upstream_metrics(httpx.get(gateway.url + "/metrics", timeout=5).text)

    per_account = Counter(
        r["account"] for r in recorded if r["path"].rstrip("/").endswith("/calls")
    )
    minutes = held / 60
    rates = [per_account.get(user, 0) / minutes for _, _, user in accounts()]
    subscriptions = out["subscribers"]
    peak = max(rss.samples, default=before)
    steady = statistics.median(rss.samples[len(rss.samples) // 2 :]) if rss.samples else before
    delays = out["delays"]
    print(
        f"live: {subscriptions} subscriptions over {ACCOUNT_COUNT} accounts "
        f"({args.ws_connections} graphql-ws connections x {args.per_connection} + "
        f"{args.sse} graphql-sse streams each) for {held:.0f} s; poll interval {INTERVAL:g} s, "
        f"sandbox step {SANDBOX_STEP:g} s"
    )
    print(
        f"held to the end: {out['liveAtEnd']}/{subscriptions}; updates delivered: "
        f"{out['updates']} (per subscriber {out['minUpdates']}..{out['maxUpdates']})"
    )
    print(
        f"errors the subscribers received, by code: {by_count(out['errorCodes']) or 'none'}; "
        f"the gateway's upstream requests: {by_count(upstream_outcomes) or 'none'}"
    )
    print(
        f"upstream requests per account per minute: mean {statistics.mean(rates):.1f}, "
        f"max {max(rates):.1f} (one poll per interval: {60 / INTERVAL:.0f})"
    )
    p95 = delays["p95"]
    target = (INTERVAL + 1) * 1000
    verdict = "met" if p95 is not None and p95 <= target else "MISSED"
    print(
        f"delay from an upstream change to its delivery: p50 {delays['p50']} ms, "
        f"p95 {p95} ms, max {delays['max']} ms over {delays['count']} changes "
        f"(target p95 <= {target:.0f} ms: {verdict})"
    )
    added = (peak - before) * 1000 / max(subscriptions, 1)
    print(
        f"gateway RSS: {before:.0f} MB before, {steady:.0f} MB steady, {peak:.0f} MB peak; "
        f"added per 1,000 subscriptions: {added:.0f} MB "
        f"(target < 100 MB: {'met' if added < 100 else 'MISSED'})"
    )
    print(
        f"CPU: gateway {gateway_cpu:.1f} s ({100 * gateway_cpu / held:.0f}% of a core), "
        f"the clients (node) {clients_cpu:.1f} s ({100 * clients_cpu / held:.0f}%); the delays "
        "include the clients' own: one node process reads all 1,000"
    )
    print(f"first update within {out['firstUpdateMaxMs']} ms; /healthz after: {alive}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
