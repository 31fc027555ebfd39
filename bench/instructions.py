"""The gateway's own cost per request, in process: the cache-miss and the cache-hit path.

The app is called over ASGI directly (no HTTP server, no load generator, one request at
a time), in front of a sandbox upstream process, with the same all-fields size-25 query
as `compare.py`. On a shared machine, wall-clock numbers drift by tens of percent from
one run to the next; `--callgrind` counts the instructions the gateway's process
executes instead (valgrind), which repeat to within a fraction of a percent, to tell
whether a change made a path cheaper:

    .venv/bin/python bench/instructions.py               # CPU microseconds per request
    .venv/bin/python bench/instructions.py --callgrind   # instructions per request (minutes)

With `--callgrind`, each path runs twice under valgrind, with N and 3N requests; the
difference divided by 2N leaves out start-up and the first request's planning.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

from starlette.types import Message

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare import AUTH, USER, free_port, graphql_line, start  # noqa: E402

BODY = graphql_line(0, 25, "DESC").split("\t", 2)[2].encode()
HEADERS = [
    (b"host", b"127.0.0.1"),
    (b"content-type", b"application/json"),
    (b"authorization", AUTH.encode()),
    (b"x-catapult-user-id", USER.encode()),
    (b"content-length", str(len(BODY)).encode()),
]


Requester = Callable[[], Awaitable[None]]


async def requester(upstream: str, path: str) -> tuple[Requester, AsyncExitStack]:
    """A function sending one request to a fresh gateway app, and what closes the app."""
    from gateway.app import create_app, tune_garbage_collector
    from gateway.config import load_settings
    from gateway.observability.logging import configure_logging

    # A server's set-up: info logs through the batching JSON handler (to nowhere here).
    configure_logging("info", "json", open(os.devnull, "w"), batch=True)  # noqa: SIM115, ASYNC230
    ttl = "0" if path == "miss" else "60"
    environ = {
        "GATEWAY_UPSTREAM_URL": upstream,
        "GATEWAY_UPSTREAM_RATE": "0",
        "GATEWAY_CACHE_TTL": ttl,
    }
    app = create_app(load_settings(environ))
    stack = AsyncExitStack()
    state = await stack.enter_async_context(app.router.lifespan_context(app))
    tune_garbage_collector()

    async def receive() -> Message:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def one() -> None:
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 80),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": "POST",
            "root_path": "",
            "path": "/graphql",
            "raw_path": b"/graphql",
            "query_string": b"",
            "headers": list(HEADERS),
            "state": dict(state or {}),
        }
        await app(scope, receive, send)
        body: bytes = sent[-1]["body"]
        if b'"errors"' in body:
            raise SystemExit(f"the gateway answered with errors: {body[:300]!r}")

    return one, stack


async def run(upstream: str, path: str, requests: int, repeats: int) -> list[float]:
    """Seconds of process CPU per request, once per repeat (after one unmeasured round)."""
    one, stack = await requester(upstream, path)
    async with stack:
        per_request = []
        for round_ in range(repeats + 1):
            started = time.process_time()
            for _ in range(requests):
                await one()
            if round_:
                per_request.append((time.process_time() - started) / requests)
        return per_request


def event_loop_run(coroutine: Awaitable[list[float]]) -> list[float]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    return uvloop.run(coroutine)  # type: ignore[arg-type]


def instructions(upstream: str, path: str, requests: int) -> int:
    """Instructions the process executes for `requests` requests, start-up included."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--child",
        upstream,
        "--path",
        path,
        "--requests",
        str(requests),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{done.stderr}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", choices=("miss", "hit", "both"), default="both")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--child", metavar="UPSTREAM", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # Under valgrind: exactly N requests, nothing measured here.
        event_loop_run(run(args.child, args.path, args.requests, 0))
        return 0
    paths = ("miss", "hit") if args.path == "both" else (args.path,)
    with ExitStack() as stack:
        port = free_port()
        sandbox = [sys.executable, "-m", "gateway", "sandbox", "--port", str(port)]
        sandbox += ["--live-interval", "0"]  # a still history: runs compare the same data
        upstream = stack.enter_context(start("sandbox", sandbox, port, {}, "/__health")).url
        for path in paths:
            if args.callgrind:
                n = args.requests
                few, many = instructions(upstream, path, n), instructions(upstream, path, 3 * n)
                print(f"{path}: {(many - few) / (2 * n) / 1e6:.3f} M instructions per request")
            else:
                seconds = event_loop_run(run(upstream, path, args.requests, args.repeats))
                print(
                    f"{path}: {min(seconds) * 1e6:.0f} us CPU per request "
                    f"(min of {args.repeats}; median {statistics.median(seconds) * 1e6:.0f})"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
