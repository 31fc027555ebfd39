"""Per-request telemetry: the request's log line, metrics and server span, and the
instrumented upstream transport that adds one child span and one metric per upstream call.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import TracebackType
from typing import TYPE_CHECKING

import httpx
from starlette.requests import Request

from gateway.observability.logging import RequestLog, bounded_text
from gateway.observability.metrics import Metrics
from gateway.observability.record import (
    RequestRecord,
    bind_request,
    current_request,
    unbind_request,
)

if TYPE_CHECKING:
    from gateway.context import UpstreamWarning
    from gateway.observability.tracing import Tracing

request_log = RequestLog("gateway.request")
warnings_log = logging.getLogger("gateway.upstream")


class Telemetry:
    """What the app observes: metrics always, traces when tracing is configured."""

    def __init__(self, metrics: Metrics, tracing: Tracing | None = None) -> None:
        self.metrics = metrics
        self.tracing = tracing

    @contextmanager
    def request(self, request: Request, request_id: str) -> Iterator[RequestRecord]:
        """Observe one GraphQL request; the caller fills in the record it yields."""
        record = RequestRecord(request_id, request.method)
        token = bind_request(record)
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
            self.metrics.request_finished(
                record.operation, record.error_codes, duration, checked=record.operation_checked
            )
            unbind_request(token)
            if request_log.enabled():
                request_log.write("graphql request", record.log_fields(duration))

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
        """Observe a request answered whole from the response cache, around sending it.

        The same log line and request metrics as `request`, plus a response-cache hit.
        Without tracing this skips what only a running request needs (the record in a
        context variable, the in-flight gauge): a hit is over in microseconds.
        """
        if self.tracing is not None:
            return self._traced_hit(request, request_id, operation)
        return _Hit(self.metrics, request.method, request_id, operation)

    @contextmanager
    def _traced_hit(
        self, request: Request, request_id: str, operation: str | None
    ) -> Iterator[object]:
        with self.request(request, request_id) as record:
            record.operation, record.status = operation, 200
            # Only a checked request's answer is cached (200, no errors, credentials).
            record.operation_checked = True
            self.metrics.response_hit()
            yield record


class _Hit:
    __slots__ = ("_method", "_metrics", "_operation", "_request_id", "_started")

    def __init__(
        self, metrics: Metrics, method: str, request_id: str, operation: str | None
    ) -> None:
        self._metrics = metrics
        self._method = method
        self._request_id = request_id
        self._operation = operation
        self._started = 0.0

    def __enter__(self) -> object:
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        duration = time.perf_counter() - self._started
        self._metrics.response_hits.inc()
        # Only a checked request's answer is cached (200, no errors, credentials).
        self._metrics.request_finished(self._operation, [], duration, checked=True)
        if request_log.enabled():
            record = RequestRecord(
                self._request_id,
                self._method,
                self._operation,
                200,
                cache=Counter({"response-hit": 1}),
            )
            request_log.write("graphql request", record.log_fields(duration))


class InstrumentedTransport(httpx.AsyncBaseTransport):
    """Wraps the upstream transport: counts, times and traces every HTTP attempt."""

    def __init__(self, inner: httpx.AsyncBaseTransport, telemetry: Telemetry) -> None:
        self._inner = inner
        self._metrics = telemetry.metrics
        self._tracing = telemetry.tracing

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        record = current_request()
        if record is not None:
            record.upstream_requests += 1
        span_cm = (
            nullcontext(None)
            if self._tracing is None
            else self._tracing.client_span(request.method, request.url.path, request.headers)
        )
        started = time.perf_counter()
        with span_cm as span:
            try:
                response = await self._inner.handle_async_request(request)
            except httpx.TransportError as exc:
                self._metrics.upstream_request(type(exc).__name__, time.perf_counter() - started)
                if span is not None and self._tracing is not None:
                    self._tracing.set_status(span, None, type(exc).__name__)
                raise
            self._metrics.upstream_request(response.status_code, time.perf_counter() - started)
            if span is not None and self._tracing is not None:
                self._tracing.set_status(span, response.status_code)
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()
