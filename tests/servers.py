"""Real servers for tests: an ASGI app served by uvicorn on a loopback port.

Each server runs its own event loop in a thread, so a test can talk to it over real
HTTP with any client (sync or async) and the server's lifespan runs for real.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import httpx
import uvicorn
from starlette.types import ASGIApp

from gateway.server import ConnectionLimits, GatewayConfig


@contextmanager
def serve(
    app: ASGIApp,
    *,
    lifespan: Literal["auto", "on", "off"] = "on",
    port: int = 0,
    limits: ConnectionLimits | None = None,
) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 and `port` (a free one by default); yields its base URL.

    It runs under the gateway's own guarded HTTP protocol, as `serve` does, with `limits`
    (the defaults unless given).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    config = GatewayConfig(
        app,
        limits=limits or ConnectionLimits(),
        lifespan=lifespan,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def free_port() -> int:
    """A loopback port nothing listens on (free now; a test binding it later may race)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def gateway_process(
    *args: str, env: dict[str, str], capture: bool = False, descriptors: int | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`catapult-gateway serve ARGS` in its own process, yielded once /readyz answers.

    Only `env`'s GATEWAY_* settings apply (the test run's own are dropped). With
    `capture`, stdout and stderr are kept for the test to read with `communicate()`.
    With `descriptors`, the process may open no more files than that (`ulimit -n`).
    """
    with gateway_processes(*args, env=env, count=1, capture=capture, descriptors=descriptors) as [
        started
    ]:
        yield started


@contextmanager
def gateway_processes(
    *args: str,
    env: dict[str, str],
    count: int,
    capture: bool = False,
    descriptors: int | None = None,
) -> Iterator[list[tuple[subprocess.Popen[str], str]]]:
    """`count` processes as `gateway_process` runs one, started side by side (each takes
    seconds to import and start on a loaded machine), yielded once all are ready."""

    def limit_descriptors() -> None:
        if descriptors is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors, descriptors))

    started: list[tuple[subprocess.Popen[str], str]] = []
    try:
        for _ in range(count):
            port = free_port()
            environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
            environ.update(env, GATEWAY_PORT=str(port))
            output = subprocess.PIPE if capture else subprocess.DEVNULL
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "catapult-gateway"), "serve", *args],
                env=environ,
                stdout=output,
                stderr=output,
                text=True,
                preexec_fn=limit_descriptors,
            )
            started.append((process, f"http://127.0.0.1:{port}"))
        # Only a guard against a process that never starts: on a machine loaded by other
        # test processes a start of two workers took over 20 s (CI, load 8 on 2 cores).
        deadline = time.monotonic() + 60
        for process, url in started:
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    detail = process.communicate()[1] if capture else ""
                    raise RuntimeError(f"the gateway process did not start {detail}")
                time.sleep(0.05)
        yield started
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.kill()
                process.communicate()
