"""The gateway beside the Node.js gateways, over one fake upstream, with one query.

One command starts, on 127.0.0.1 only: the fake Catapult v1 upstream
(`bench/peers/upstream.mjs`, node's http module, 5,000 seeded calls), and each gateway
twice, cache off (TTL 0) and cache on (TTL 5 s):

- catapult-gateway (this repository, one worker, pacing off: the fake upstream has no limit),
- apollo-rest: Apollo Server 5 + @apollo/datasource-rest (`bench/peers/apollo-rest/`),
- hive-gateway: GraphQL Mesh composition + Hive Gateway (`bench/peers/hive-gateway/`).

It installs the peers' pinned packages (`npm ci` from each folder's package-lock.json)
when node_modules is missing, checks that every gateway returns the upstream's calls for
the query, then drives each with the same request mix through bench/compare.py's load and
measurement functions and prints a Markdown table:

    .venv/bin/python bench/peers.py [--duration 10] [--repeats 2] [--only apollo-rest,...]

Everything it starts it stops, by process group; `--max-seconds` bounds the whole run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from compare import (
    AUTH,
    QUERY,
    SECRET,
    TOKEN,
    USER,
    Server,
    _median,
    free_port,
    graphql_line,
    load_generator,
    measure,
    rest_line,
    start,
)

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
GATEWAYS = ("catapult-gateway", "apollo-rest", "hive-gateway")
SCENARIOS = {
    "d25": "(d) direct upstream, size 25",
    "a": "(a) size 25, cache off",
    "b": "(b) size 25, cache hits",
    "c": "(c) size 1000, cache off",
    "d1000": "(d) direct upstream, size 1000",
}


def install_peers() -> None:
    """`npm ci` (exact locked versions) where node_modules is missing; Mesh composition."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/peers.py needs {tool} (Node.js 20+)")
    for folder in (PEERS / "apollo-rest", PEERS / "hive-gateway"):
        if not (folder / "node_modules").is_dir():
            print(f"npm ci in {folder.relative_to(HERE.parent)}", file=sys.stderr)
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=folder,
                check=True,
                timeout=900,
            )
    if not (PEERS / "hive-gateway" / "supergraph.graphql").exists():
        subprocess.run([str(PEERS / "hive-gateway" / "prepare.sh")], check=True, timeout=300)


def command(name: str, port: int) -> list[str]:
    if name == "catapult-gateway":
        return [sys.executable, "-m", "gateway", "serve", "--port", str(port)]
    if name == "apollo-rest":
        return ["node", str(PEERS / "apollo-rest" / "server.mjs")]
    return [str(PEERS / "hive-gateway" / "start.sh")]


def start_gateway(stack: ExitStack, name: str, upstream: str, ttl: int) -> Server:
    """One instance with the environment every gateway of the comparison gets."""
    port = free_port()
    env = {
        "CATAPULT_API_URL": upstream,
        "GATEWAY_UPSTREAM_URL": upstream,
        "CATAPULT_USER_ID": USER,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_CACHE_TTL": str(ttl),
        "GATEWAY_UPSTREAM_RATE": "0",
    }
    ready = "/healthz" if name == "catapult-gateway" else "/graphql"
    label = f"{name}-ttl{ttl}"
    return stack.enter_context(start(label, command(name, port), port, env, ready))


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(  # noqa: S310
        url,
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": AUTH,
            "X-Catapult-User-Id": USER,
        },
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
        result: dict[str, object] = json.loads(answer.read())
        return result


def check_parity(server: Server, upstream: Server) -> None:
    """The gateway's answer holds the upstream's calls, in the upstream's order, no errors."""
    for size, order in ((25, "DESC"), (1000, "ASC")):
        path = rest_line(1, size, order).split("\t")[1]
        request = urllib.request.Request(upstream.url + path, headers={"Authorization": AUTH})  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            expected = [call["id"] for call in json.loads(answer.read())]
        variables = {"page": 1, "size": size, "sortOrder": order}
        body = post(server.url + "/graphql", {"query": QUERY, "variables": variables})
        data = body.get("data")
        got = [c["id"] for c in data["calls"]] if isinstance(data, dict) else None
        if "errors" in body or got != expected:
            raise SystemExit(f"{server.name} does not answer like the upstream: {body}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3, help="unmeasured seconds before each")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=0, help="upstream latency")
    parser.add_argument("--repeats", type=int, default=2, help="ABBA repetitions; medians shown")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--only", default=",".join(GATEWAYS), help="gateways to run")
    parser.add_argument("--max-seconds", type=float, default=1800, help="bound of the whole run")
    args = parser.parse_args()
    args.strict = True  # the fake upstream has only documented data: any "errors" is a failure
    names = [n for n in args.only.split(",") if n]
    scenarios = args.scenarios.split(",")

    def out_of_time(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(f"bench/peers.py: over --max-seconds {args.max_seconds:g}")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(max(1, round(args.max_seconds)))
    if {"apollo-rest", "hive-gateway"} & set(names):
        install_peers()
    if load_generator() != "wrk":
        print("no wrk here (Debian: apt-get install wrk): using the Python client", file=sys.stderr)

    pages25 = [graphql_line(p, 25, o) for o in ("DESC", "ASC") for p in range(100)]
    pages1000 = [graphql_line(p, 1000, o) for o in ("DESC", "ASC") for p in range(2)]
    rest = f"/v1/users/{USER}/calls/"
    rest25 = [rest_line(p, 25, o) for o in ("DESC", "ASC") for p in range(100)]
    rest1000 = [rest_line(p, 1000, o) for o in ("DESC", "ASC") for p in range(2)]
    with ExitStack() as stack:
        up_port = free_port()
        upstream = stack.enter_context(
            start(
                "fake-upstream",
                ["node", str(PEERS / "upstream.mjs")],
                up_port,
                {
                    "UPSTREAM_PORT": str(up_port),
                    "UPSTREAM_DELAY_MS": f"{args.delay_ms:g}",
                    "UPSTREAM_USER_ID": USER,
                    "UPSTREAM_AUTH_USER": TOKEN,
                    "UPSTREAM_AUTH_PASSWORD": SECRET,
                },
                "/__health",
            )
        )

        def upstream_requests() -> float:
            with urllib.request.urlopen(upstream.url + "/__stats", timeout=10) as answer:  # noqa: S310
                return float(json.loads(answer.read())["requests"])

        plan: list[tuple[str, str, Server, str, list[str]]] = []
        for key in scenarios:
            if key == "d25":
                plan.append((key, "upstream (direct)", upstream, rest, rest25))
            elif key == "d1000":
                plan.append((key, "upstream (direct)", upstream, rest, rest1000))
        for name in names:
            miss = start_gateway(stack, name, upstream.url, 0)
            hit = start_gateway(stack, name, upstream.url, 5)
            for server in (miss, hit):
                check_parity(server, upstream)
            targets = {"a": (miss, pages25), "b": (hit, pages25[:1]), "c": (miss, pages1000)}
            for key, (server, lines) in targets.items():
                if key in scenarios:
                    plan.append((key, name, server, "/graphql", lines))
        plan.sort(key=lambda row: list(SCENARIOS).index(row[0]))
        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        for repeat in range(args.repeats):
            # A shared machine drifts: alternating the order spreads the drift evenly.
            for key, name, server, path, lines in plan if repeat % 2 == 0 else plan[::-1]:
                result = measure(server, path, lines, args, upstream_requests)
                runs.setdefault((key, name), []).append(result)
                print(f"{repeat + 1} {key:5} {name:18} {result}", file=sys.stderr, flush=True)
    signal.alarm(0)
    results = {row: _median(values) for row, values in runs.items()}
    print(report(results, args))
    return 1 if any(r["failures"] for r in results.values()) else 0


def report(results: dict[tuple[str, str], dict[str, float]], args: argparse.Namespace) -> str:
    rows = [
        f"upstream delay {args.delay_ms:g} ms, {args.connections} connections, "
        f"{args.duration:g} s per run after {args.warmup:g} s warm-up, median of "
        f"{args.repeats} runs (ABBA), load from {load_generator()}",
        "",
        "| scenario | target | req/s | p50 ms | p99 ms | vs direct | upstream req/req "
        "| gw CPU ms/req | RSS MB | failures |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    direct = {key: r for (key, name), r in results.items() if name == "upstream (direct)"}
    for (key, name), r in results.items():
        base = direct.get("d1000" if key == "c" else "d25")
        versus = "-" if key.startswith("d") or base is None else f"{r['rps'] / base['rps']:.3f}"
        cpu = "-" if key.startswith("d") else f"{r['cpu_ms']:.2f}"
        rows.append(
            f"| {SCENARIOS[key]} | {name} | {r['rps']:.0f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {versus} | {r['upstream_per_request']:.3f} | {cpu} | "
            f"{r['rss_mb']:.0f} | {r['failures']:.0f} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
