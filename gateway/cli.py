"""The `catapult-gateway` command: serve, sandbox, export-schema."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import quote

import uvicorn
from pydantic import SecretStr
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

# Neither gateway.app nor gateway.observability.metrics is imported here: uvicorn imports
# the app in each worker, through the factory string the config names, and the CLI
# process sets MULTIPROC_ENV before prometheus-client is first imported.
from gateway.config import (
    SandboxSettings,
    Settings,
    SettingsError,
    env_name,
    load_sandbox_settings,
    load_settings,
    unknown_variables,
)
from gateway.observability import MULTIPROC_ENV
from gateway.observability.logging import configure_logging
from gateway.server import ConnectionLimits, GatewayConfig, fit_descriptor_limit

log = logging.getLogger("gateway.cli")
uvicorn_log = logging.getLogger("uvicorn.error")


def distribution_version() -> str:
    """The installed distribution's version (the package's own when run from a checkout)."""
    try:
        return version("catapult-gateway")
    except PackageNotFoundError:
        from gateway import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; flags default to None so the environment can fill them."""
    parser = argparse.ArgumentParser(
        prog="catapult-gateway",
        description="A GraphQL gateway for the Bandwidth Catapult v1 call-history API.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {distribution_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="interface to listen on [GATEWAY_HOST, 127.0.0.1]")
    serve.add_argument("--port", help="port to listen on [GATEWAY_PORT, 8000]")
    serve.add_argument("--workers", help="worker processes [GATEWAY_WORKERS, 1]")
    serve.add_argument(
        "--upstream-url",
        help="Catapult API base URL [GATEWAY_UPSTREAM_URL, https://api.catapult.inetwork.com]",
    )
    serve.add_argument(
        "--sandbox",
        action="store_const",
        const="true",
        help="serve in front of the built-in sandbox upstream [GATEWAY_SANDBOX]",
    )

    sandbox = commands.add_parser("sandbox", help="run the sandbox upstream alone")
    sandbox.add_argument("--host", help="interface [GATEWAY_SANDBOX_HOST, 127.0.0.1]")
    sandbox.add_argument("--port", help="port [GATEWAY_SANDBOX_PORT, 8001]")
    sandbox.add_argument("--latency-ms", help="delay every answer [GATEWAY_SANDBOX_LATENCY_MS, 0]")
    sandbox.add_argument(
        "--rate-limit",
        action="store_const",
        const="true",
        help="enforce 1 request/s per account [GATEWAY_SANDBOX_RATE_LIMIT]",
    )
    sandbox.add_argument(
        "--live-interval",
        help="seconds between live steps, 0 for a still history [GATEWAY_SANDBOX_LIVE_INTERVAL, 3]",
    )

    export = commands.add_parser("export-schema", help="print the GraphQL SDL")
    export.add_argument(
        "--client",
        action="store_true",
        help="the SDL for client tools (schema.client.graphql): no federation directives "
        "or types; without it, the subgraph SDL for routers (schema.graphql)",
    )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    if args.command == "export-schema":
        from gateway.schema import build_schema, print_client_sdl, print_sdl

        printer = print_client_sdl if args.client else print_sdl
        sys.stdout.write(printer(build_schema()))
        return 0
    # Said once, by the process that reads the settings first (workers read them again).
    warnings = unknown_variables(environ)
    try:
        if args.command == "sandbox":
            sandbox_settings = load_sandbox_settings(
                environ,
                host=args.host,
                port=args.port,
                latency_ms=args.latency_ms,
                rate_limit=args.rate_limit,
                live_interval=args.live_interval,
            )
        else:
            settings = load_settings(
                environ,
                host=args.host,
                port=args.port,
                workers=args.workers,
                upstream_url=args.upstream_url,
                sandbox=args.sandbox,
            )
    except SettingsError as exc:
        print(f"catapult-gateway: {exc}", file=sys.stderr)
        return 2
    if args.command == "sandbox":
        return _run_sandbox(sandbox_settings, warnings)
    return _serve(settings, warnings)


def _warn(warnings: Sequence[str]) -> None:
    for warning in warnings:
        log.warning(warning)


def _serve(settings: Settings, warnings: Sequence[str] = ()) -> int:
    configure_logging(settings.log_level, settings.log_format, batch=True)
    _warn(warnings)
    # Workers are separate processes: they rebuild the settings from the environment,
    # so the effective values (flags included) travel there. Keys drawn here are shared
    # by all workers: a cursor stays good whichever worker answers next, and the workers
    # agree on every cache and pacing key (an account is one account in all of them).
    if settings.cursor_key is None:
        settings = settings.model_copy(update={"cursor_key": SecretStr(secrets.token_urlsafe(32))})
    if settings.cache_key is None:
        if not settings.cache_url.startswith("memory:"):
            log.warning(
                "GATEWAY_CACHE_URL is Redis but GATEWAY_CACHE_KEY is unset: this server's "
                "workers share a key drawn at start-up, but other replicas will not share "
                "cache entries or pacing with them"
            )
        if settings.pacing_file is not None:
            # Accounts are keyed in the file by an HMAC under this key: another process
            # with a key of its own writes other entries and paces every account alone.
            log.warning(
                "GATEWAY_PACING_FILE is set but GATEWAY_CACHE_KEY is unset: this server's "
                "workers share the file, but other processes using it will not share "
                "pacing with them"
            )
        settings = settings.model_copy(update={"cache_key": SecretStr(secrets.token_urlsafe(32))})
    with _worker_directory(settings.workers) as directory:
        if directory is not None and settings.pacing_file is None:
            # Without Redis the workers pace each account together through this file.
            pacing_file = os.path.join(directory, "pacing")
            settings = settings.model_copy(update={"pacing_file": pacing_file})
        os.environ.update(settings_environment(settings))
        config = GatewayConfig(
            "gateway.app:app_from_environment",
            limits=fit_descriptor_limit(
                connection_limits(settings), settings.upstream_max_connections
            ),
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=settings.shutdown_timeout,
            # A WebSocket message is a request body too (uvicorn's default is 16 MiB).
            ws_max_size=settings.max_body_bytes,
        )
        banner = (lambda: _print_sandbox_banner(settings)) if settings.sandbox else None
        return _run(config, on_bound=banner, where=("--host/GATEWAY_HOST", "--port/GATEWAY_PORT"))


def _run(
    config: uvicorn.Config,
    on_bound: Callable[[], None] | None = None,
    *,
    where: tuple[str, str],
) -> int:
    """Bind, call `on_bound`, serve until SIGTERM/SIGINT; 0 after a graceful stop.

    What `uvicorn.run` does, with the socket bound first, so that a banner saying where
    the server listens is printed only once the port is really ours (a taken port ends
    here with uvicorn's own error line and status 1, before any banner).
    """
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully, which
    # would end the process with "killed by SIGTERM" (143); a graceful stop exits 0.
    signal.signal(signal.SIGTERM, _exit_zero)
    try:
        sock = _bind(config)
    except OSError as exc:
        host_setting, port_setting = where
        log.error(
            "cannot listen on %s port %d: %s; choose another with %s or %s",
            config.host,
            config.port,
            exc.strerror or exc,
            port_setting,
            host_setting,
        )
        return STARTUP_FAILURE
    try:
        if on_bound is not None:
            on_bound()
        # SIGTERM/SIGINT: uvicorn stops accepting, gives in-flight requests up to
        # timeout_graceful_shutdown to finish, then runs the lifespan's shutdown.
        if config.workers > 1:
            Multiprocess(config, sockets=[sock]).run()
            return 0
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
        return 0 if server.started else STARTUP_FAILURE
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close()


def _bind(config: uvicorn.Config) -> socket.socket:
    """uvicorn's `Config.bind_socket` for a host and port, raising instead of exiting.

    uvicorn logs a bare `[Errno 98] Address already in use` and exits; the caller here
    names the host, the port and the settings that change them.
    """
    ipv6 = ":" in config.host
    sock = socket.socket(family=socket.AF_INET6 if ipv6 else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
        # Listening now, not when the server starts seconds later: a connection made
        # once the line below is printed waits in the backlog instead of being refused.
        sock.listen(config.backlog)
    except OSError:
        sock.close()
        raise
    host = f"[{config.host}]" if ipv6 else config.host
    uvicorn_log.info(
        "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", host, sock.getsockname()[1]
    )
    sock.set_inheritable(True)
    return sock


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The per-connection bounds the HTTP server enforces, from their settings."""
    return ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        max_header_line_bytes=settings.max_header_line_bytes,
        max_headers=settings.max_headers,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        send_timeout=settings.send_timeout,
        max_connections=settings.max_connections,
        max_connections_per_client=settings.max_connections_per_client,
    )


def _exit_zero(signum: int, frame: object) -> None:
    raise SystemExit(0)


@contextmanager
def _worker_directory(workers: int) -> Iterator[str | None]:
    """With several workers, a fresh private directory they all share, removed at exit.

    It holds the metrics every worker writes (`metrics/`) and the pacing schedule they
    share without Redis (`pacing`). Fresh on every start: samples left by an earlier run
    would be counted again. MULTIPROC_ENV is set before any worker starts
    (prometheus-client reads it when first imported).
    """
    if workers == 1:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="catapult-gateway-workers-") as directory:
        metrics = os.path.join(directory, "metrics")
        os.mkdir(metrics)
        os.environ[MULTIPROC_ENV] = metrics
        try:
            yield directory
        finally:
            del os.environ[MULTIPROC_ENV]


def settings_environment(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce `settings` (unset ones are left out)."""
    values = settings.model_dump(mode="json")
    # model_dump masks secrets; the environment needs their values.
    for name in Settings.model_fields:
        secret = getattr(settings, name)
        if isinstance(secret, SecretStr):
            values[name] = secret.get_secret_value()
    return {
        env_name(name): _environment_value(value)
        for name, value in values.items()
        if value is not None
    }


def _environment_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(item) for item in value)  # GATEWAY_CORS_ORIGINS, ..._ALLOW_HEADERS
    if isinstance(value, dict):
        # OTEL_RESOURCE_ATTRIBUTES, in the form config.py reads back (values percent-encoded)
        return ",".join(f"{key}={quote(str(item), safe='')}" for key, item in value.items())
    return str(value)


def _print_sandbox_banner(settings: Settings) -> None:
    from gateway.sandbox import ACCOUNTS, credential_headers

    lines = [
        "catapult-gateway is serving the built-in sandbox upstream (seeded demo data).",
        f"  GraphiQL:  {settings.local_url}/graphql  (headers pre-filled)",
        "  Sandbox credentials (send both headers):",
    ]
    for account in ACCOUNTS:
        headers = credential_headers(account)
        lines.append(
            f"    token {account.token} / secret {account.secret} / user {account.user_id}: "
            f"Authorization: {headers['Authorization']}  X-Catapult-User-Id: {account.user_id}"
        )
    print("\n".join(lines), flush=True)


def _run_sandbox(settings: SandboxSettings, warnings: Sequence[str] = ()) -> int:
    from gateway.sandbox import SandboxOptions, create_sandbox_app

    configure_logging("info")
    _warn(warnings)
    app = create_sandbox_app(
        SandboxOptions(
            latency_ms=settings.latency_ms,
            rate_limit=settings.rate_limit,
            live_interval=settings.live_interval,
        )
    )
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False
    )
    return _run(config, where=("--host/GATEWAY_SANDBOX_HOST", "--port/GATEWAY_SANDBOX_PORT"))
