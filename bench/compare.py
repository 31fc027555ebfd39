"""Side-by-side benchmark: the gateway against the bare upstream and a bare ASGI endpoint.

One command starts everything on 127.0.0.1 (the sandbox upstream, the gateway twice: cache
off and cache on, and a bare Starlette endpoint answering the gateway's own bytes), drives
each with wrk in the same run, and prints requests/s, latency, gateway CPU per request and
the ratios the performance targets are stated in:

    .venv/bin/python bench/compare.py [--duration 10] [--connections 32] [--delay-ms 0]

Load comes from wrk (Debian: apt-get install wrk) with bench/load.lua; without wrk, from
a small closed-loop Python client (`pyload` below) that applies the same checks, which is
slower than wrk and takes CPU from the servers, so its numbers are lower: the output says
which one ran. bench/peers.py runs the Node.js gateways through the same functions.
Nothing here is a test: numbers are for people.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOKEN, SECRET, USER = "t-demo", "s-demo-secret", "u-demo"
AUTH = "Basic " + base64.b64encode(f"{TOKEN}:{SECRET}".encode()).decode()
QUERY = (
    "query Calls($filter: CallFilter, $page: Int = 0, $size: Int = 25, "
    "$sortOrder: SortOrder = DESC) { calls(filter: $filter, page: $page, size: $size, "
    "sortOrder: $sortOrder) { id direction from to state startTime activeTime endTime "
    "callbackUrl chargeableDuration recordingEnabled sipHeaders { name value } eventsUrl "
    "bridgeId conferenceId } }"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        """utime + stime of the server and its children (workers)."""
        ticks = 0
        for pid in _tree(self.process.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])
        return ticks / CLK_TCK

    def rss_mb(self) -> float:
        total = 0
        for pid in _tree(self.process.pid):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total / 1024


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def start(
    name: str, argv: list[str], port: int, env: dict[str, str], ready: str
) -> Iterator[Server]:
    log = open(tempfile.gettempdir() + f"/bench-{name}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        argv,
        # The caller's own GATEWAY_* settings stay out: a bench run measures the settings
        # it names, whatever the shell that started it exports.
        env={**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + ready, timeout=1).read()  # noqa: S310
            break
        except urllib.error.HTTPError:
            break  # it answers HTTP: up
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start; see {log.name}") from None
            time.sleep(0.1)
    try:
        yield Server(name, url, process)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@contextmanager
def upstream_and_gateway(
    name: str, script: str, **settings: str
) -> Iterator[tuple[Server, Server]]:
    """`script --upstream PORT` (a bench script's own upstream) and `catapult-gateway serve`
    in front of it, each on a fresh loopback port; `settings` are GATEWAY_* values on top of
    the loopback address, the upstream and warning-level logs."""
    python = sys.executable
    upstream_port, gateway_port = free_port(), free_port()
    env = {
        "PYTHONPATH": str(HERE),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(gateway_port),
        "GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}",
        "GATEWAY_LOG_LEVEL": "warning",
        **settings,
    }
    upstream_argv = [python, script, "--upstream", str(upstream_port)]
    gateway_argv = [str(Path(python).parent / "catapult-gateway"), "serve"]
    with (
        start(f"{name}-upstream", upstream_argv, upstream_port, env, "/__health") as upstream,
        start(f"{name}-gateway", gateway_argv, gateway_port, env, "/readyz") as gateway,
    ):
        yield upstream, gateway


def graphql_line(page: int, size: int, order: str) -> str:
    body = {"query": QUERY, "variables": {"page": page, "size": size, "sortOrder": order}}
    return "POST\t/graphql\t" + json.dumps(body, separators=(",", ":"))


def rest_line(page: int, size: int, order: str) -> str:
    return f"GET\t/v1/users/{USER}/calls/?page={page}&size={size}&sortOrder={order.lower()}\t"


def load_generator() -> str:
    return "wrk" if shutil.which("wrk") else "python"


def load(url: str, lines: list[str], args: argparse.Namespace, seconds: float) -> dict[str, float]:
    """One run of closed-loop load from `args.connections` connections; wrk when present."""
    if load_generator() == "wrk":
        return wrk(url, lines, args, seconds)
    return asyncio.run(pyload(url, lines, args, seconds))


def wrk(url: str, lines: list[str], args: argparse.Namespace, seconds: float) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as file:
        file.write("\n".join(lines) + "\n")
    env = {**os.environ, "BENCH_REQUESTS": file.name, "BENCH_AUTH": AUTH, "BENCH_USER_ID": USER}
    if getattr(args, "strict", False):
        env["BENCH_STRICT"] = "1"
    command = [
        "wrk",
        "-t1",
        f"-c{args.connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(HERE / "load.lua"),
        url,
    ]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    os.unlink(file.name)
    line = next(x for x in output.splitlines() if x.startswith("BENCH_JSON "))
    result: dict[str, float] = json.loads(line.removeprefix("BENCH_JSON "))
    return result


async def pyload(
    url: str, lines: list[str], args: argparse.Namespace, seconds: float
) -> dict[str, float]:
    """wrk's job without wrk: the same request lines, checks and summary, in Python."""
    import aiohttp  # the gateway's own dependency; only this fallback needs it

    base = {"Authorization": AUTH, "X-Catapult-User-Id": USER}
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    requests = []
    for line in lines:
        method, path, body = [*line.split("\t", 2), ""][:3]
        headers = {**base, "Content-Type": "application/json"} if body else base
        # As with wrk, the line's path replaces the URL's.
        requests.append((method, f"{origin}{path}", body, headers))
    strict = getattr(args, "strict", False)
    latencies: list[float] = []
    counts = {"failures": 0, "socket_errors": 0}
    counter = 0
    start_time = time.monotonic()
    deadline = start_time + seconds

    async def connection(session: aiohttp.ClientSession) -> None:
        nonlocal counter
        while time.monotonic() < deadline:
            counter += 1
            method, target, body, headers = requests[counter % len(requests)]
            began = time.monotonic()
            try:
                async with session.request(
                    method, target, data=body or None, headers=headers
                ) as answer:
                    text = await answer.read()
            except (aiohttp.ClientError, TimeoutError):
                counts["socket_errors"] += 1
                continue
            latencies.append(time.monotonic() - began)
            if answer.status != 200 or (
                text[:1] == b"{" and (b'"calls"' not in text or (strict and b'"errors"' in text))
            ):
                counts["failures"] += 1

    connector = aiohttp.TCPConnector(limit=args.connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(connection(session) for _ in range(args.connections)))
    elapsed = time.monotonic() - start_time
    latencies.sort()

    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e6

    return {
        "requests": len(latencies),
        "duration_us": elapsed * 1e6,
        **counts,
        "p50_us": percentile(50) if latencies else 0,
        "p99_us": percentile(99) if latencies else 0,
    }


def measure(
    server: Server,
    path: str,
    lines: list[str],
    args: argparse.Namespace,
    upstream_requests: Callable[[], float] | None = None,
) -> dict[str, float]:
    """Warm up, then one measured run; with `upstream_requests` (a counter read from the
    upstream), also the upstream requests per request sent."""
    load(server.url + path, lines, args, args.warmup)
    cpu_before = server.cpu_seconds()
    upstream_before = upstream_requests() if upstream_requests else 0.0
    result = load(server.url + path, lines, args, args.duration)
    cpu = server.cpu_seconds() - cpu_before
    seconds = result["duration_us"] / 1e6
    extra = {}
    if upstream_requests:
        sent = max(result["requests"], 1)
        extra["upstream_per_request"] = (upstream_requests() - upstream_before) / sent
    return {
        **extra,
        "rps": result["requests"] / seconds,
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "failures": result["failures"] + result["socket_errors"],
        "cpu_ms": 1000 * cpu / max(result["requests"], 1),
        "rss_mb": server.rss_mb(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3, help="unmeasured seconds before each")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=0, help="upstream latency")
    parser.add_argument("--scenarios", default="d25,a,b,bare,c,d1000")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="repetitions of the plan, alternately forward and reversed (ABBA); medians shown",
    )
    args = parser.parse_args()
    if load_generator() != "wrk":
        print("no wrk here (Debian: apt-get install wrk): using the Python client", file=sys.stderr)
    cli = [sys.executable, "-m", "gateway"]
    scenarios = args.scenarios.split(",")
    pages25 = [graphql_line(p, 25, o) for o in ("DESC", "ASC") for p in range(100)]
    pages1000 = [graphql_line(p, 1000, o) for o in ("DESC", "ASC") for p in range(2)]
    results: dict[str, dict[str, float]] = {}
    with ExitStack() as stack:
        up_port = free_port()
        # A still history: runs compare byte-identical data.
        sandbox = [*cli, "sandbox", "--port", str(up_port), "--latency-ms", str(args.delay_ms)]
        sandbox += ["--live-interval", "0"]
        upstream = stack.enter_context(start("sandbox", sandbox, up_port, {}, "/__health"))
        # Production defaults (info logs, one line per request), except pacing: the
        # sandbox here has no rate limit, and pacing would measure the limit, not us.
        common = {"GATEWAY_UPSTREAM_URL": upstream.url, "GATEWAY_UPSTREAM_RATE": "0"}
        miss_port, hit_port, bare_port = free_port(), free_port(), free_port()
        miss = stack.enter_context(
            start(
                "gateway-miss",
                [*cli, "serve", "--port", str(miss_port)],
                miss_port,
                {**common, "GATEWAY_CACHE_TTL": "0"},
                "/healthz",
            )
        )
        hit = stack.enter_context(
            start(
                "gateway-cache",
                [*cli, "serve", "--port", str(hit_port)],
                hit_port,
                {**common, "GATEWAY_CACHE_TTL": "5"},
                "/healthz",
            )
        )
        # The bare endpoint answers exactly the bytes the gateway answers in scenario b.
        request = urllib.request.Request(  # noqa: S310
            hit.url + "/graphql",
            data=pages25[0].split("\t", 2)[2].encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": AUTH,
                "X-Catapult-User-Id": USER,
            },
        )
        captured = urllib.request.urlopen(request).read()  # noqa: S310
        with tempfile.NamedTemporaryFile(delete=False) as file:
            file.write(captured)
        bare = stack.enter_context(
            start(
                "bare",
                [sys.executable, str(HERE / "bare.py"), file.name],
                bare_port,
                {"PORT": str(bare_port)},
                "/nothing-here",
            )
        )
        rest = f"/v1/users/{USER}/calls/"
        rest25 = [rest_line(p, 25, o) for o in ("DESC", "ASC") for p in range(100)]
        rest1000 = [rest_line(p, 1000, o) for o in ("DESC", "ASC") for p in range(2)]
        plan = {
            "d25": (upstream, rest, rest25),
            "a": (miss, "/graphql", pages25),
            "b": (hit, "/graphql", pages25[:1]),
            "bare": (bare, "/graphql", pages25[:1]),
            "c": (miss, "/graphql", pages1000),
            "d1000": (upstream, rest, rest1000),
        }
        runs: dict[str, list[dict[str, float]]] = {key: [] for key in scenarios}
        for repeat in range(args.repeats):
            # A shared machine drifts: alternating the order spreads the drift evenly.
            for key in scenarios if repeat % 2 == 0 else scenarios[::-1]:
                server, path, lines = plan[key]
                runs[key].append(measure(server, path, lines, args))
                print(f"{repeat + 1} {key:6} {runs[key][-1]}", file=sys.stderr, flush=True)
        results = {key: _median(runs[key]) for key in scenarios}
    print(report(results, args))
    return 1 if any(r["failures"] for r in results.values()) else 0


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


LABELS = {
    "d25": "(d) direct upstream, size 25",
    "a": "(a) gateway, size 25, cache off",
    "b": "(b) gateway, size 25, cache hits",
    "bare": "bare Starlette, same bytes as (b)",
    "c": "(c) gateway, size 1000, cache off",
    "d1000": "(d) direct upstream, size 1000",
}
RATIOS = (("a", "d25"), ("b", "bare"), ("c", "d1000"))


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    rows = [
        f"upstream delay {args.delay_ms:g} ms, {args.connections} connections, "
        f"{args.duration:g} s per run, one gateway worker, median of {args.repeats} runs, "
        f"load from {load_generator()}",
        "",
        "| scenario | req/s | p50 ms | p99 ms | gw CPU ms/req | RSS MB | failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        cpu = "-" if key.startswith("d") or key == "bare" else f"{r['cpu_ms']:.2f}"
        rows.append(
            f"| {LABELS[key]} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {cpu} "
            f"| {r['rss_mb']:.0f} | {r['failures']:.0f} |"
        )
    rows.append("")
    for top, bottom in RATIOS:
        if top in results and bottom in results:
            ratio = results[top]["rps"] / results[bottom]["rps"]
            rows.append(f"- {LABELS[top]} / {LABELS[bottom]}: {ratio:.3f}")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
