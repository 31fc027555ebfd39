"""The composition root: `create_app(settings)` builds the whole gateway."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import anyio
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from gateway.body_budget import BodyBudget
from gateway.config import Settings
from gateway.context_factory import ContextFactory
from gateway.endpoint import GraphQLEndpoint
from gateway.execution import GraphQLExecution
from gateway.graphiql import GraphiQLAssets, GraphiQLPage
from gateway.health import Readiness, healthz
from gateway.limits import OperationLimits
from gateway.live.hub import LiveHub
from gateway.live.metrics import LiveMetrics
from gateway.live.operations import Operations
from gateway.live.renders import Renders
from gateway.live.sharing import RedisSharing
from gateway.live.source import page_source
from gateway.live.sse import EventStreams
from gateway.live.ws import GraphQLWebSocket
from gateway.middleware.answer_cache import AnswerCacheMiddleware
from gateway.middleware.shutdown import ShutdownMiddleware
from gateway.observability import MULTIPROC_ENV
from gateway.observability.logging import configure_logging
from gateway.observability.metrics import Metrics, MetricsEndpoint
from gateway.observability.telemetry import Telemetry
from gateway.observability.transport import InstrumentedTransport
from gateway.pagination import CursorCodec
from gateway.persisted_queries import PersistedQueries
from gateway.sandbox import ACCOUNTS, SandboxOptions, create_sandbox_app, credential_headers
from gateway.schema import build_schema, graphql_core_schema
from gateway.upstream.client import CatapultClient
from gateway.upstream.pacing import MonotonicClock
from gateway.upstream.service import CatapultService, create_upstream
from gateway.upstream.transport import create_transport

SANDBOX_PATH = "/sandbox"
# How often cyclic garbage is collected on a clock, besides after allocations.
CYCLE_COLLECTION_SECONDS = 10.0


def sandbox_upstream_url(settings: Settings) -> AnyHttpUrl:
    """Where `serve --sandbox` finds its in-process sandbox."""
    return AnyHttpUrl(settings.local_url + SANDBOX_PATH)


def create_app(settings: Settings, *, metrics_dir: str | None = None) -> Starlette:
    """Build the gateway from settings; nothing is created at import time.

    `metrics_dir`: where the worker processes of one server share their metrics (see
    `Metrics`); None for a single process.
    """

    telemetry = create_telemetry(settings, metrics_dir)
    metrics = telemetry.metrics
    # Read once, before anything is built: under `serve --sandbox` the client goes to the
    # sandbox mounted in this very app, reached over loopback HTTP, so the demo exercises
    # the same client, pool and retries as production does.
    upstream_base = (
        str(sandbox_upstream_url(settings)).rstrip("/")
        if settings.sandbox
        else settings.upstream_base
    )
    # The process-wide collaborators, built here and handed to what uses them; none
    # connects before its first use, and the lifespan opens and closes them.
    transport = InstrumentedTransport(
        create_transport(
            max_connections=settings.upstream_max_connections,
            max_body_bytes=settings.upstream_max_body_bytes,
        ),
        telemetry,
    )
    catapult = CatapultClient(
        transport,
        base_url=upstream_base,
        retries=settings.upstream_retries,
        upstream_timeout=settings.upstream_timeout,
        body_budget=BodyBudget(settings.upstream_body_budget_bytes),
        connect_timeout=settings.upstream_connect_timeout,
        on_retry=metrics.upstream_retry,
    )
    secret = settings.cache_key
    upstream = create_upstream(
        catapult,
        telemetry,
        cache_url=settings.cache_url,
        cache_key=None if secret is None else secret.get_secret_value().encode(),
        cache_ttl=settings.cache_ttl,
        cache_max_entries=settings.cache_max_entries,
        cache_max_bytes=settings.cache_max_bytes,
        cache_timeout=settings.cache_timeout,
        rate=settings.upstream_rate,
        queue_timeout=settings.upstream_queue_timeout,
        pacing_file=settings.pacing_file,
        clock=MonotonicClock(),
    )
    sharing = create_sharing(settings)
    hub = create_hub(settings, upstream, LiveMetrics(metrics.registry), sharing)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        metrics.process_started()
        collector = asyncio.get_running_loop().create_task(
            collect_cycles(CYCLE_COLLECTION_SECONDS, heap_trimmer())
        )
        try:
            # Closing the transport closes the upstream connection pool, last.
            async with transport:
                await upstream.open()
                try:
                    yield
                finally:
                    # The connections are gone by now (uvicorn closed the sockets).
                    await hub.close()
                    if sharing is not None:
                        await sharing.close()
                    await upstream.close()
        finally:
            # After the last in-flight request (uvicorn drains them before the lifespan ends).
            collector.cancel()
            if telemetry.tracing is not None:
                await anyio.to_thread.run_sync(telemetry.tracing.shutdown)
            metrics.process_exited()

    # A random key per process when none is configured: cursors then only work on the
    # process that issued them (the CLI shares one key between its workers).
    cursor_key = (
        settings.cursor_key.get_secret_value().encode()
        if settings.cursor_key is not None
        else secrets.token_bytes(32)
    )

    default_headers = None
    routes: list[BaseRoute] = []
    if settings.sandbox:
        default_headers = credential_headers(ACCOUNTS[0])
        # Without its test controls: the demo may listen on every interface.
        live = SandboxOptions(live_interval=settings.sandbox_live_interval)
        routes.append(Mount(SANDBOX_PATH, app=create_sandbox_app(live, controls=False)))

    graphiql = GraphiQLPage(endpoint="/graphql", default_headers=default_headers)
    contexts = ContextFactory(
        upstream,
        cursors=CursorCodec(cursor_key),
        request_timeout=settings.request_timeout,
        max_upstream_requests=settings.max_upstream_requests,
        max_calls_per_operation=settings.max_calls_per_operation,
        max_entities=settings.max_entities,
    )
    schema = graphql_core_schema(build_schema())
    limits = OperationLimits(
        max_depth=settings.max_depth,
        max_aliases=settings.max_aliases,
        max_tokens=settings.max_tokens,
        max_query_bytes=settings.max_query_bytes,
        max_root_fields=settings.max_root_fields,
        max_upstream_requests=settings.max_upstream_requests,
        max_calls=settings.max_calls_per_operation,
    )
    # One execution for every transport (its caches too), built first: the live
    # operations run on it, the event streams on them, and the endpoint hands event-stream
    # requests to those streams, so each is built before what uses it.
    execution = GraphQLExecution(
        schema,
        report_warnings=telemetry.upstream_warnings,
        persisted_queries=PersistedQueries(),
        limits=limits,
        fast_path=settings.fast_path,
        introspection=settings.introspection,
        suggestions=settings.field_suggestions,
    )
    operations = Operations(
        execution,
        contexts,
        hub=hub,
        telemetry=telemetry,
        renders=Renders(
            max_documents=settings.live_max_documents_per_account,
            retry_after=max(1, round(settings.live_interval)),
        ),
    )
    streams = EventStreams(operations, keepalive=settings.live_keepalive)
    endpoint = GraphQLEndpoint(
        execution,
        contexts,
        graphiql=graphiql,
        telemetry=telemetry,
        get_max_age=int(settings.cache_ttl),
        max_body_bytes=settings.max_body_bytes,
        csrf_prevention=settings.csrf_prevention,
        event_streams=streams,
    )
    websocket = GraphQLWebSocket(
        operations,
        allowed_origins=settings.cors_origins,
        init_timeout=settings.live_init_timeout,
        max_operations=settings.live_max_per_connection,
        # A message is a request as a body is: one bound for both, whatever the server.
        max_message_bytes=settings.max_body_bytes,
    )

    routes += [
        Route("/graphql", endpoint),
        WebSocketRoute("/graphql", websocket),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", Readiness(catapult, upstream).readyz, methods=["GET"]),
        Route("/metrics", MetricsEndpoint(metrics), methods=["GET"]),
        Route(GraphiQLAssets.ROUTE, GraphiQLAssets(graphiql), methods=["GET"]),
    ]
    # The answer cache is middleware rather than part of the route, so a hit skips
    # routing and exception handling; it sits inside CORS, whose headers are per request.
    answer_cache = Middleware(
        AnswerCacheMiddleware,
        path="/graphql",
        ttl=settings.cache_ttl,
        telemetry=telemetry,
        max_body_bytes=settings.max_body_bytes,
        max_entries=settings.response_cache_max_entries,
        max_bytes=settings.response_cache_max_bytes,
        max_answer_bytes=settings.response_cache_max_answer_bytes,
    )
    # Outermost: whatever a shutdown cancels inside is answered with a code.
    return Starlette(
        routes=routes,
        middleware=[Middleware(ShutdownMiddleware), *_cors(settings), answer_cache],
        lifespan=lifespan,
    )


# Request headers a browser may send cross-origin: the credential headers and the
# preflight-forcing ones of the gateway's own, then those real GraphQL clients add on
# their own (Apollo Client's client awareness, W3C Trace Context and Baggage from browser
# OpenTelemetry, which the gateway continues). GATEWAY_CORS_ALLOW_HEADERS adds more.
CORS_ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "x-catapult-user-id",
    "apollo-require-preflight",
    "x-apollo-operation-name",
    "x-request-id",
    "cache-control",
    "apollographql-client-name",
    "apollographql-client-version",
    "traceparent",
    "tracestate",
    "baggage",
)


def _cors(settings: Settings) -> list[Middleware]:
    """CORS for the allow-listed origins only; none by default, so browsers stay same-origin."""
    if not settings.cors_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=list(dict.fromkeys((*CORS_ALLOW_HEADERS, *settings.cors_allow_headers))),
            allow_credentials=True,
            expose_headers=["x-request-id"],
            max_age=600,
        )
    ]


def create_sharing(settings: Settings) -> RedisSharing | None:
    """With a Redis cache, the replicas share each live poller through that Redis.

    Its own client on the same URL, not the cache store's guarded one
    (`gateway.upstream.redis`), for two reasons. The store answers None both for "no
    value" and for "Redis could not be asked", which is right for a cache (either way the
    request goes to the upstream) but not for a lease: "another replica holds it" must be
    told from "Redis is down" (then this replica polls on its own). And pub/sub holds a
    connection in subscribe mode for the life of the process, which would be one fewer
    in the cache's pool, read under a timeout meant for one-shot commands.
    """
    if settings.cache_url.startswith("memory:"):
        return None
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = redis.asyncio.Redis.from_url(
        settings.cache_url,
        socket_timeout=settings.cache_timeout,
        socket_connect_timeout=settings.cache_timeout,
        # One retry (a pooled connection gone stale after a Redis restart), not redis-py's
        # default of three with backoff: seconds a new subscriber would wait in an outage.
        retry=Retry(NoBackoff(), 1),
    )
    return RedisSharing(client, interval=settings.live_interval)


def create_hub(
    settings: Settings,
    upstream: CatapultService,
    metrics: LiveMetrics,
    sharing: RedisSharing | None,
) -> LiveHub:
    """The live pollers of this process, polling through `upstream`'s cache and pacing."""
    return LiveHub(
        page_source(upstream.list_calls, timeout=settings.request_timeout),
        upstream.list_key,
        upstream.identity_key,
        interval=settings.live_interval,
        max_per_account=settings.live_max_per_account,
        metrics=metrics,
        sharing=sharing,
    )


def create_telemetry(settings: Settings, metrics_dir: str | None) -> Telemetry:
    """Metrics always; traces only with an OTLP endpoint (and only then import OpenTelemetry)."""
    metrics = Metrics(multiprocess_dir=metrics_dir)
    if settings.otlp_endpoint is None:
        return Telemetry(metrics, None)
    from gateway.observability.tracing import Tracing

    tracing = Tracing(
        str(settings.otlp_endpoint),
        service_name=settings.otel_service_name,
        resource_attributes=settings.otel_resource_attributes,
    )
    return Telemetry(metrics, tracing)


def app_from_environment() -> Starlette:
    """The uvicorn factory: settings from `GATEWAY_*` variables, read when it is called."""
    import os

    from gateway.config import load_settings

    settings = load_settings(os.environ)
    # Worker processes start with logging unconfigured; this runs in each of them.
    configure_logging(settings.log_level, settings.log_format, batch=True)
    # Set by the CLI for `--workers` (or by whoever runs uvicorn with several workers).
    app = create_app(settings, metrics_dir=os.environ.get(MULTIPROC_ENV) or None)
    tune_garbage_collector()
    return app


def tune_garbage_collector() -> None:
    """Make the cyclic garbage collector cheap for a server process.

    A 1000-call page is ~30,000 new containers, nearly all freed by reference counting;
    at the default thresholds they trigger collections that also walk every module,
    type and schema object, and these cost as much as building the answer. The
    long-lived start-up objects are frozen out of the collector's sight, and young
    collections run every 20,000 allocations instead of every 700.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


async def collect_cycles(interval: float, trim: Callable[[], None]) -> None:
    """Run a full cyclic garbage collection every `interval` seconds, forever, then `trim`.

    `tune_garbage_collector` makes full collections follow allocations only, rarely: the
    reference cycles a burst leaves behind (a failed upstream answer's exception holds its
    traceback, frames and buffers) would stay until the next burst. Collected on a clock,
    they are freed within `interval` of the load stopping, so memory comes back down.
    `trim` then hands the C heap's free pages back to the system (see `heap_trimmer`).
    """
    while True:
        await asyncio.sleep(interval)
        gc.collect()
        trim()


def heap_trimmer() -> Callable[[], None]:
    """glibc's `malloc_trim(0)`, or nothing where the C library has none (musl, macOS).

    Freed memory stays in glibc's heap, resident, until the heap's top is free beyond a
    threshold that glibc raises after every large buffer freed (up to 64 MiB): after a
    burst of large bodies, tens of MB of free pages were kept (measured with
    bench/hostile.py: a heap of 17 MB grew to 37 MB, 19 MB in use; trimmed, 23 MB).
    `malloc_trim(0)` returns every free page, wherever it lies in the heap.
    """
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return partial(malloc_trim, 0)
