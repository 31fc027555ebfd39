"""Prometheus metrics: the metric objects and the small API the rest of the gateway records with.

Only Prometheus: what a request's log line says is written by `telemetry`, which calls here.

Labels never hold a credential, a user id, a call id or a path: operation names are the
only caller-chosen label, and they are bounded (`operation_label`). The labels that stand
for a group of names are in parentheses, which no GraphQL name can hold, so that no
operation is ever counted under one of them.

Latency per operation is kept affordable: the whole-request histogram has no operation
label (one set of buckets per process, for quantiles and SLOs), and each operation gets a
summary of two series, count and sum, from which its mean latency follows. A histogram per
operation would cost 15 series per name, 1,500 at the bound, for quantiles nobody reads
per operation; a summary's quantiles are computed per process and cannot be aggregated
across replicas, so it carries none.

`/metrics` negotiates its format with prometheus-client's own `choose_encoder`: the
OpenMetrics text format when the scraper's Accept asks for it (Prometheus does), the
classic text format otherwise. With several worker
processes (`--workers`), the CLI points `PROMETHEUS_MULTIPROC_DIR` at a fresh directory
before the workers start; every process then writes its samples there and `/metrics`
merges them, so a scrape reports all workers whichever one answers it. The directory is
handed in (`multiprocess_dir`): only the app's factory reads the environment.
"""

from __future__ import annotations

import os
import re

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

# At most this many distinct operation names per process; later ones count as OTHER.
# The first names seen keep their label rather than the most frequent ones: a series that
# moved between its name and OTHER as rankings changed would break every rate() over it.
MAX_OPERATIONS = 100
# Labels for groups of names. GraphQL names are [_A-Za-z][_0-9A-Za-z]*: none of these is one.
ANONYMOUS = "(anonymous)"  # an operation without a name
INVALID = "(invalid)"  # a name longer than a label may be
OTHER = "(other)"  # a valid name seen after MAX_OPERATIONS others took their slots
# A name without a slot, on a request that did not validate or carried no usable
# credentials: such a request may not take one of the MAX_OPERATIONS slots.
UNCHECKED = "(unchecked)"
_OPERATION_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
# Seconds; the upstream answers in tens to hundreds of milliseconds, the deadline is 25 s.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25)
CACHE_RESULTS = frozenset({"hit", "miss", "error"})


def _bounded_label(code: str) -> str:
    # Error codes are the gateway's own, but a label is kept short whatever reaches it.
    return code if len(code) <= 64 else INVALID


class Metrics:
    """The gateway's metrics, on a registry of their own (one per app)."""

    def __init__(self, *, multiprocess_dir: str | None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # prometheus-client picks its value store when it is imported, from the variable
        # that names this directory; this only decides how a scrape collects.
        self.multiprocess_dir = multiprocess_dir
        self._operations: set[str] = set()
        self._upstream_statuses: dict[int | str, Counter] = {}
        # Keyed by the bounded label, never the caller's name: see `request_finished`.
        self._finished: dict[tuple[str, str], tuple[Counter, Summary]] = {}
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "GraphQL requests answered, by operation and outcome (OK or the first error code).",
            ["operation", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "gateway_errors",
            "Errors returned to callers, by code (once per code per request).",
            ["code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time to answer a GraphQL request (all operations).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.operation_duration = Summary(
            "gateway_operation_duration_seconds",
            "Time to answer a GraphQL request, by operation (count and sum: the mean).",
            ["operation"],
            registry=r,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "GraphQL requests being answered now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.upstream_requests = Counter(
            "gateway_upstream_requests",
            "HTTP requests sent to the upstream, by status (or the transport error).",
            ["status"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_request_duration_seconds",
            "Time from sending one upstream HTTP request to its response headers.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_warnings = Counter(
            "gateway_upstream_warnings",
            "Tolerated upstream oddities reported in `extensions.warnings`, by kind: "
            "unknown_value, malformed_field, left_out (a record that is not a call), "
            "next_link (a `Link rel=next` that cannot be followed), oversized_page (more "
            "calls than `size`, cut).",
            ["kind"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "gateway_upstream_retries", "Upstream requests retried after a failure.", registry=r
        )
        self.cache = Counter(
            "gateway_cache_requests",
            "Cache look-ups by result: hit, miss or error (the cache was unreachable).",
            ["result"],
            registry=r,
        )
        self.response_hits = Counter(
            "gateway_response_cache_hits",
            "Requests answered with a whole cached answer (no execution, no upstream).",
            registry=r,
        )
        self.singleflight_shares = Counter(
            "gateway_singleflight_shares",
            "Upstream requests that joined an identical one already in flight.",
            registry=r,
        )
        self.pacing_waits = Counter(
            "gateway_pacing_waits",
            "Upstream requests that waited for their account's rate-limit slot.",
            registry=r,
        )
        self.pacing_wait_duration = Histogram(
            "gateway_pacing_wait_seconds",
            "Time upstream requests waited for their account's rate-limit slot.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.pacing_refusals = Counter(
            "gateway_pacing_refusals",
            "Requests refused with RATE_LIMITED because the pacing queue was full.",
            registry=r,
        )
        self.worker_up = Gauge(
            "gateway_worker_up",
            "1 for each running worker process (with a pid label when there are several).",
            registry=r,
            multiprocess_mode="liveall",
        )
        for result in sorted(CACHE_RESULTS):
            self.cache.labels(result)

    # -- the recording API -------------------------------------------------------------

    def operation_label(self, name: str | None, *, checked: bool) -> str:
        """A bounded label for a caller-chosen operation name.

        `checked`: the operation parsed and validated, and the request carried usable
        credentials. Only such a request may give a new name one of the
        `MAX_OPERATIONS` slots; a name that has one keeps it on any request.
        """
        if name is None:
            return ANONYMOUS
        if not _OPERATION_NAME.fullmatch(name):
            return INVALID
        if name not in self._operations:
            if not checked:
                return UNCHECKED
            if len(self._operations) >= MAX_OPERATIONS:
                return OTHER
            self._operations.add(name)
        return name

    def request_finished(
        self, operation: str | None, codes: list[str], duration: float, *, checked: bool
    ) -> None:
        outcome = _bounded_label(codes[0]) if codes else "OK"
        # Label look-ups cost a hit several microseconds each, so the pairs seen are kept
        # (up to a bound of their own), keyed by the label: a name is caller-chosen and
        # may be a megabyte long, a label is at most 64 characters.
        label = self.operation_label(operation, checked=checked)
        children = self._finished.get((label, outcome))
        if children is None:
            children = self.requests.labels(label, outcome), self.operation_duration.labels(label)
            if len(self._finished) < 4 * MAX_OPERATIONS:
                self._finished[(label, outcome)] = children
        count, latency = children
        count.inc()
        latency.observe(duration)
        self.request_duration.observe(duration)
        for code in sorted(set(codes)):
            self.errors.labels(_bounded_label(code)).inc()

    def upstream_request(self, status: int | str, duration: float) -> None:
        """One upstream HTTP attempt: its status code, or a transport error's name."""
        child = self._upstream_statuses.get(status)
        if child is None:
            # Statuses and transport error names are few; an odd status is not kept.
            child = self.upstream_requests.labels(str(status))
            if len(self._upstream_statuses) < 64:
                self._upstream_statuses[status] = child
        child.inc()
        self.upstream_duration.observe(duration)

    def upstream_warning(self, kind: str) -> None:
        self.upstream_warnings.labels(kind).inc()

    def upstream_retry(self) -> None:
        self.upstream_retries.inc()

    def cache_result(self, result: str) -> None:
        """A cache look-up: "hit", "miss" or "error"."""
        if result not in CACHE_RESULTS:
            raise ValueError(f"unknown cache result {result!r}")
        self.cache.labels(result).inc()

    def response_hit(self) -> None:
        """A request answered whole from the answer cache (middleware/answer_cache.py)."""
        self.response_hits.inc()

    def singleflight_share(self) -> None:
        self.singleflight_shares.inc()

    def pacing_wait(self, seconds: float) -> None:
        self.pacing_waits.inc()
        self.pacing_wait_duration.observe(seconds)

    def pacing_refusal(self) -> None:
        self.pacing_refusals.inc()

    # -- exposition --------------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """Every metric (of every worker) in the format `accept` asks for, and its media type.

        OpenMetrics when the Accept header asks for `application/openmetrics-text`, the
        classic Prometheus text format otherwise.
        """
        encoder, media_type = choose_encoder(accept or "")
        if self.multiprocess_dir is None:
            return encoder(self.registry), media_type
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return encoder(merged), media_type

    def process_started(self) -> None:
        self.worker_up.set(1)

    def process_exited(self) -> None:
        """Drop this process's live gauges (in-flight, up) from the shared directory."""
        self.worker_up.set(0)
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]


class MetricsEndpoint:
    """`GET /metrics`: the scrape, in the format the scraper's Accept asks for."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        accept = Request(scope, receive).headers.get("accept")
        body, media_type = self._metrics.exposition(accept)
        await Response(body, media_type=media_type)(scope, receive, send)
