"""Per-request telemetry: the request's log line, metrics and server span.

Each upstream call's span and metric are added by `transport.InstrumentedTransport`. What
the upstream layers report here is counted process-wide only: what one request's
operation asked of the upstream reaches its line through the operation's own tally,
which the record's owner attaches to it (`RequestRecord.upstream`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import TYPE_CHECKING

from starlette.requests import Request

from gateway.observability.logging import RequestLog, bounded_text
from gateway.observability.metrics import Metrics
from gateway.observability.record import RequestRecord

if TYPE_CHECKING:
    from gateway.context import UpstreamWarning
    from gateway.observability.tracing import Tracing

request_log = RequestLog("gateway.request")
warnings_log = logging.getLogger("gateway.upstream")


class Telemetry:
    """What the app observes: metrics always, traces when tracing is configured."""

    def __init__(self, metrics: Metrics, tracing: Tracing | None) -> None:
        self.metrics = metrics
        self.tracing = tracing

    @contextmanager
    def request(self, request: Request, request_id: str) -> Iterator[RequestRecord]:
        """Observe one GraphQL request; the caller fills in the record it yields."""
        record = RequestRecord(request_id, request.method)
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            if self.tracing is None:
                yield record
                return
            # A copy: the caller's trace context is read, not the request's headers changed.
            with self.tracing.server_span(request.method, dict(request.headers)) as span:
                record.trace_id = self.tracing.trace_id(span)
                try:
                    yield record
                finally:
                    if record.operation:
                        span.set_attribute("graphql.operation.name", bounded_text(record.operation))
                    if record.error_codes:
                        span.set_attribute("gateway.error_codes", sorted(set(record.error_codes)))
                    self.tracing.set_status(span, record.status)
        finally:
            duration = time.perf_counter() - started
            self.metrics.in_flight.dec()
            self._finished(record, duration)

    def _finished(self, record: RequestRecord, duration: float) -> None:
        # The end of every request, the cache hits' included: its metrics and its line.
        self.metrics.request_finished(
            record.operation, record.error_codes, duration, checked=record.operation_checked
        )
        if request_log.enabled():
            request_log.write("graphql request", record.log_fields(duration))

    # What the upstream service reports (its `UpstreamMetrics`) is counted, process-wide.

    def cache_result(self, result: str) -> None:
        """An upstream-cache look-up ("hit", "miss" or "error")."""
        self.metrics.cache_result(result)

    def singleflight_share(self) -> None:
        self.metrics.singleflight_share()

    def pacing_wait(self, seconds: float) -> None:
        self.metrics.pacing_wait(seconds)

    def pacing_refusal(self) -> None:
        self.metrics.pacing_refusal()

    def upstream_warnings(self, warnings: Sequence[UpstreamWarning], request_id: str) -> None:
        """Tolerated upstream oddities of one answer: one count each, one log line per kind.

        A page of 1000 calls with every field odd is 18,000 warnings: each is counted, but
        only the first of each (kind, field) is logged, with how many it stands for.
        """
        first: dict[tuple[str, str], UpstreamWarning] = {}
        repeats: dict[tuple[str, str], int] = {}
        for warning in warnings:
            self.metrics.upstream_warning(warning.kind)
            field = next((str(p) for p in reversed(warning.path) if isinstance(p, str)), "")
            key = (warning.kind, field)
            first.setdefault(key, warning)
            repeats[key] = repeats.get(key, 0) + 1
        for (kind, field), warning in first.items():
            warnings_log.warning(
                warning.message,
                extra={
                    "request_id": request_id,
                    "kind": warning.kind,
                    "path": ".".join(str(part) for part in warning.path),
                    "call_id": warning.call_id,
                    "count": repeats[(kind, field)],
                },
            )

    def cached_answer(
        self, request: Request, request_id: str, operation: str | None
    ) -> AbstractContextManager[object]:
        """Observe a request answered whole from the answer cache, around sending it.

        The same log line and request metrics as `request`, plus a response-cache hit.
        Without tracing this skips what only a running request needs (the in-flight
        gauge, a generator-based context manager): a hit is over in microseconds.
        """
        if self.tracing is not None:
            return self._traced_hit(request, request_id, operation)
        record = RequestRecord(request_id, request.method)
        self._answered_from_cache(record, operation)
        return _Hit(self, record)

    @contextmanager
    def _traced_hit(
        self, request: Request, request_id: str, operation: str | None
    ) -> Iterator[object]:
        with self.request(request, request_id) as record:
            self._answered_from_cache(record, operation)
            yield record

    def _answered_from_cache(self, record: RequestRecord, operation: str | None) -> None:
        record.operation, record.status = operation, 200
        # Only a checked request's answer is cached (200, no errors, credentials).
        record.operation_checked = True
        record.cache["response-hit"] += 1
        self.metrics.response_hit()


class _Hit:
    # `request` without the gauge (see `cached_answer`).
    __slots__ = ("_record", "_started", "_telemetry")

    def __init__(self, telemetry: Telemetry, record: RequestRecord) -> None:
        self._telemetry = telemetry
        self._record = record
        self._started = 0.0

    def __enter__(self) -> object:
        self._started = time.perf_counter()
        return self._record

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._telemetry._finished(self._record, time.perf_counter() - self._started)
