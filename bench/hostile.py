"""Hostile load: attackers and a hostile upstream at once, while a polite client measures.

A `catapult-gateway serve` process (default settings) runs in front of a hostile fake
upstream (another process, started by this script: the sandbox's normal pages for the
sandbox accounts, bombs for the `u-bomb-*` accounts). For `--seconds` (60) these run at
once, all on loopback:

- slowloris: connections dripping header bytes, and others dripping a declared body;
- header floods: 1 MB header lines and 20,000-header requests, over and over;
- cache stuffing: distinct documents (a comment differs) of 20 aliased 1000-call pages,
  each answer megabytes large;
- an upstream bomb: callers whose upstream answers with a gzip bomb, an endless body or
  a 50 MB JSON page;

while a well-behaved client (the demo account, one request a second) counts its
successes and latency. Then everything stops; `--after` (60) seconds later the gateway's
RSS is measured again. It prints: well-behaved success rate, p99 latency, peak RSS and
RSS after. Targets: 100 %, peak < 300 MB, RSS back within 20 % of its start.

The start is the gateway's RSS after a warm-up that sends every path once, then 15 s
of rest (more than the gateway's 10 s period of garbage collection and heap trimming):
the polite client's three pages, then one request of each attack, one after another
(a slow header and a slow body together, each until its 408; 20,000 headers and a 1 MB
header line, each 431; one stuffing document, refused; one call of each bomb, refused).
So the start is not a cold process: whatever a path takes once (a module imported on
first use, the allocator's first growth) is in it, and what the run adds beyond it is
what the attack leaves. Warm-up and rest take about 50 s; it prints what each request got.

    .venv/bin/python bench/hostile.py                       # 60 s of attack, 60 s after
    .venv/bin/python bench/hostile.py --seconds 20 --after 10

Everything it starts it stops, on loopback only; it never runs longer than
--seconds + --after + about two minutes for start-up, warm-up and shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import itertools
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from compare import Server, upstream_and_gateway
from starlette.types import ASGIApp, Receive, Scope, Send

ROOT = Path(__file__).resolve().parent.parent
GOOD = ("t-demo", "s-demo-secret", "u-demo")
STUFFER = ("t-second", "s-second-secret", "u-second")
BOMBS = [(f"t-bomb-{n}", "s-bomb", f"u-bomb-{n}") for n in range(4)]
FIELDS = (
    "id direction from to state startTime activeTime endTime callbackUrl "
    "chargeableDuration recordingEnabled sipHeaders { name value } eventsUrl"
)


def headers_for(account: tuple[str, str, str]) -> dict[str, str]:
    token, secret, user = account
    basic = base64.b64encode(f"{token}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {basic}", "X-Catapult-User-Id": user}


# -- the hostile upstream (its own process: `hostile.py --upstream PORT`) --


def upstream_app() -> ASGIApp:
    """The sandbox for its own accounts; a bomb for every `u-bomb-*` user, in turn a gzip
    bomb (256 MiB inflated), an endless body and a 50 MB JSON page."""
    from starlette.responses import Response, StreamingResponse

    from gateway.sandbox import create_sandbox_app

    sandbox = create_sandbox_app()
    bomb = gzip.compress(b"[" + b" " * (256 << 20) + b"]", compresslevel=9)
    big = b"[" + b",".join([b'{"id": "c-%s"}' % (b"x" * 10_000)] * 5_000) + b"]"
    turns = itertools.count()

    async def endless() -> AsyncIterator[bytes]:
        chunk = b'[{"id": "' + b"x" * 65_536
        while True:
            yield chunk
            await asyncio.sleep(0)

    def bombs() -> Response:
        turn = next(turns) % 3
        if turn == 0:
            encoded = {"content-encoding": "gzip"}
            return Response(bomb, media_type="application/json", headers=encoded)
        if turn == 1:
            return StreamingResponse(endless(), media_type="application/json")
        return Response(big, media_type="application/json")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/users/u-bomb-"):
            await bombs()(scope, receive, send)
            return
        await sandbox(scope, receive, send)

    return app


def run_upstream(port: int) -> int:
    import uvicorn

    uvicorn.run(upstream_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


# -- attackers --


@dataclass
class Tally:
    """What one kind of attacker did (to show the attack really ran)."""

    sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    def saw(self, what: str) -> None:
        self.sent += 1
        self.statuses[what] = self.statuses.get(what, 0) + 1


ATTACKER_ADDRESS = "127.0.0.2"
# Seconds between the warm-up and the start's RSS: longer than the gateway's 10 s period
# of garbage collection and heap trimming.
SETTLE_SECONDS = 15.0


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    # The raw-socket attackers come from another loopback address than the well-behaved
    # client (127.0.0.1), as an attacker would: GATEWAY_MAX_CONNECTIONS_PER_CLIENT bounds
    # them, not everyone on 127.0.0.1.
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER_ADDRESS, 0))


async def _first_line(reader: asyncio.StreamReader, seconds: float) -> str:
    try:
        line = await asyncio.wait_for(reader.readline(), seconds)
    except (TimeoutError, ConnectionError):
        return "no answer"
    return line.decode("latin-1").split(" ", 2)[1] if line.startswith(b"HTTP/") else "closed"


async def slowloris(
    port: int, until: float, tally: Tally, *, body: bool, once: bool = False
) -> None:
    """One connection at a time dripping a header (or a declared body) byte a second;
    `once`: one connection, until it is answered."""
    while time.monotonic() < until and not (once and tally.sent):
        try:
            reader, writer = await _connect(port)
        except OSError:
            tally.saw("refused")
            await asyncio.sleep(0.5)
            continue
        head = b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        if body:
            writer.write(head + b"Content-Length: 100000\r\n\r\n{")
        else:
            writer.write(head)
        answered = False
        try:
            while time.monotonic() < until and not reader.at_eof():
                writer.write(b" " if body else b"X-A: b\r\n")
                await writer.drain()
                try:
                    line = await asyncio.wait_for(reader.readline(), 1.0)
                except TimeoutError:
                    continue
                tally.saw(line.decode("latin-1").split(" ", 2)[1] if line else "closed")
                answered = True
                break
        except ConnectionError:
            tally.saw("reset")
            answered = True
        if not answered:
            tally.saw("still open at the end")
        writer.close()


async def header_flood(
    port: int, until: float, tally: Tally, n: int, *, once: bool = False
) -> None:
    """Requests with a 1 MB header line, or 20,000 headers, one after another."""
    line = b"X-Big: " + b"a" * (1 << 20) + b"\r\n"
    many = b"X-A: b\r\n" * 20_000
    while time.monotonic() < until and not (once and tally.sent):
        try:
            reader, writer = await _connect(port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + (line if n % 2 else many))
            writer.write(b"\r\n")
            await writer.drain()
        except OSError:
            tally.saw("reset")
            continue
        tally.saw(await _first_line(reader, 5))
        writer.close()


async def cache_stuffer(
    client: httpx.AsyncClient, until: float, tally: Tally, n: int, *, once: bool = False
) -> None:
    """Distinct documents (only a comment differs) with 20 aliased 1000-call pages."""
    aliases = " ".join(f"a{i}: calls(size: 1000) {{ {FIELDS} }}" for i in range(20))
    for count in itertools.count():
        if time.monotonic() >= until or (once and tally.sent):
            return
        query = f"# stuffing {n}-{count}\n{{ {aliases} }}"
        try:
            response = await client.post("/graphql", json={"query": query}, timeout=30)
            tally.saw(str(response.status_code))
        except httpx.HTTPError as exc:
            tally.saw(type(exc).__name__)


async def bomb_caller(
    client: httpx.AsyncClient, until: float, tally: Tally, *, once: bool = False
) -> None:
    """A caller whose upstream answers bombs; distinct pages so nothing is cached."""
    for page in itertools.count():
        if time.monotonic() >= until or (once and tally.sent):
            return
        query = f"{{ calls(page: {page}, size: 1000) {{ id }} }}"
        try:
            response = await client.post("/graphql", json={"query": query}, timeout=30)
            codes = {
                error.get("extensions", {}).get("code")
                for error in response.json().get("errors", [])
            }
            tally.saw(f"{response.status_code} {','.join(sorted(map(str, codes)))}")
        except (httpx.HTTPError, ValueError) as exc:
            tally.saw(type(exc).__name__)
        await asyncio.sleep(0.5)


async def warm_up(url: str) -> list[str]:
    """Every path of the run once, before its start is measured: the polite client's
    pages, then one request of each attack; what each was answered."""
    port = int(url.rsplit(":", 1)[1])
    until = time.monotonic() + 60  # bounds the dripping ones (deadlines: 10 s and 30 s)
    seen: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for page in range(3):
            query = f"{{ calls(page: {page}, size: 25) {{ id state from to }} }}"
            response = await client.post(
                "/graphql", json={"query": query}, headers=headers_for(GOOD)
            )
            seen.append(f"page {page}: {response.status_code}")
        # The two dripping connections at once: each waits for its deadline.
        dripped = {"slow headers": Tally(), "slow body": Tally()}
        await asyncio.gather(
            *(
                slowloris(port, until, tally, body=name == "slow body", once=True)
                for name, tally in dripped.items()
            )
        )
        seen += [f"{name}: {', '.join(tally.statuses)}" for name, tally in dripped.items()]
        for n, name in enumerate(("20,000 headers", "1 MB header line")):
            tally = Tally()
            await header_flood(port, until, tally, n, once=True)
            seen.append(f"{name}: {', '.join(tally.statuses)}")
        tally = Tally()
        client.headers.update(headers_for(STUFFER))
        await cache_stuffer(client, until, tally, -1, once=True)
        seen.append(f"stuffing: {', '.join(tally.statuses)}")
        # The upstream answers its bombs in turn: gzip, endless, a 50 MB page.
        client.headers.update(headers_for(BOMBS[0]))
        for bomb in ("gzip bomb", "endless body", "50 MB page"):
            tally = Tally()
            await bomb_caller(client, until, tally, once=True)
            seen.append(f"{bomb}: {', '.join(tally.statuses)}")
    return seen


# -- the well-behaved client --


@dataclass
class Polite:
    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)


async def polite_client(url: str, until: float, polite: Polite) -> None:
    """The demo account: a 25-call page a second, three pages in turn."""
    async with httpx.AsyncClient(base_url=url, headers=headers_for(GOOD), timeout=30) as client:
        for count in itertools.count():
            started = time.monotonic()
            if started >= until:
                return
            query = f"{{ calls(page: {count % 3}, size: 25) {{ id state from to }} }}"
            why = ""
            try:
                response = await client.post("/graphql", json={"query": query})
                body = response.json()
                if response.status_code != 200 or body.get("errors") or not body.get("data"):
                    why = f"{response.status_code} {str(body.get('errors'))[:80]}"
            except (httpx.HTTPError, ValueError) as exc:
                why = type(exc).__name__
            polite.latencies.append(time.monotonic() - started)
            if why:
                polite.failed += 1
                polite.failures[why] = polite.failures.get(why, 0) + 1
            else:
                polite.ok += 1
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


async def sample_rss(gateway: Server, until: float, samples: list[float]) -> None:
    while time.monotonic() < until:
        samples.append(gateway.rss_mb())
        await asyncio.sleep(0.25)


@dataclass
class Outcome:
    tallies: dict[str, Tally]
    polite: Polite
    rss: list[float]


async def attack(url: str, gateway: Server, args: argparse.Namespace) -> Outcome:
    port = int(url.rsplit(":", 1)[1])
    until = time.monotonic() + args.seconds
    tallies = {
        name: Tally()
        for name in ("slow headers", "slow body", "header flood", "cache stuffing", "bomb")
    }
    polite = Polite()
    rss: list[float] = []
    limits = httpx.Limits(max_connections=100)
    async with (
        httpx.AsyncClient(base_url=url, headers=headers_for(STUFFER), limits=limits) as stuffer,
    ):
        bomb_clients = [
            httpx.AsyncClient(base_url=url, headers=headers_for(account)) for account in BOMBS
        ]
        attacks = set(args.attacks.split(","))
        tasks = [polite_client(url, until, polite), sample_rss(gateway, until, rss)]
        if "slowloris" in attacks:
            tasks += [
                slowloris(port, until, tallies["slow headers"], body=False)
                for _ in range(args.slowloris)
            ]
            tasks += [
                slowloris(port, until, tallies["slow body"], body=True)
                for _ in range(args.slowloris)
            ]
        if "headers" in attacks:
            tasks += [header_flood(port, until, tallies["header flood"], n) for n in range(4)]
        if "stuffing" in attacks:
            tasks += [cache_stuffer(stuffer, until, tallies["cache stuffing"], n) for n in range(4)]
        if "bomb" in attacks:
            tasks += [bomb_caller(client, until, tallies["bomb"]) for client in bomb_clients]
        try:
            await asyncio.gather(*tasks)
        finally:
            for client in bomb_clients:
                await client.aclose()
    return Outcome(tallies, polite, rss)


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100)[98]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="attack duration")
    parser.add_argument("--after", type=float, default=60.0, help="wait before the last RSS")
    parser.add_argument(
        "--slowloris", type=int, default=200, help="dripping connections of each kind"
    )
    parser.add_argument(
        "--attacks",
        default="slowloris,headers,stuffing,bomb",
        help="comma-separated attacks to run (default: all four)",
    )
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream is not None:
        return run_upstream(args.upstream)
    if not 0 < args.seconds <= 600 or not 0 <= args.after <= 600:
        parser.error("--seconds must be in (0, 600] and --after in [0, 600]")

    with upstream_and_gateway("hostile", __file__) as (_, gateway):
        warm = asyncio.run(warm_up(gateway.url))
        # The gateway collects garbage and trims its heap every 10 s
        # (gateway.app.CYCLE_COLLECTION_SECONDS): the start is measured after a trim, as
        # the RSS after the attack is, not with the warm-up's bombs still in the heap.
        time.sleep(SETTLE_SECONDS)
        before = gateway.rss_mb()
        outcome = asyncio.run(attack(gateway.url, gateway, args))
        time.sleep(args.after)
        after = gateway.rss_mb()
        alive = httpx.get(gateway.url + "/healthz", timeout=5).status_code

    polite, tallies, rss = outcome.polite, outcome.tallies, outcome.rss
    total = polite.ok + polite.failed
    print(
        f"attack: {args.attacks} for {args.seconds:g} s; "
        f"RSS measured again {args.after:g} s after it ended"
    )
    for name, tally in tallies.items():
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items()))
        print(f"  {name:15} {tally.sent:6} attempts  ({shown})")
    print(
        f"well-behaved success rate: {100 * polite.ok / max(total, 1):.1f}% ({polite.ok}/{total})"
    )
    for why, count in sorted(polite.failures.items()):
        print(f"  failed {count}x: {why}")
    print(f"well-behaved p99 latency: {1000 * p99(polite.latencies):.0f} ms")
    print(f"warm-up before the start (every path once): {', '.join(warm)}")
    print(f"RSS at start: {before:.0f} MB")
    print(f"peak RSS: {max(rss, default=before):.0f} MB")
    print(f"RSS {args.after:g} s after: {after:.0f} MB ({100 * (after - before) / before:+.0f}%)")
    print(f"/healthz after: {alive}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
