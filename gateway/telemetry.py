"""Per-request telemetry: the request's log line, metrics and server span, and the
instrumented upstream transport that adds one child span and one metric per upstream call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

import httpx
from starlette.requests import Request

from gateway.logs import RequestRecord, bind_request, current_request, unbind_request
from gateway.metrics import Metrics

if TYPE_CHECKING:
    from gateway.tracing import Tracing

log = logging.getLogger("gateway.request")


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
                        span.set_attribute("graphql.operation.name", record.operation)
                    if record.error_codes:
                        span.set_attribute("gateway.error_codes", sorted(set(record.error_codes)))
                    self.tracing.set_status(span, record.status)
        finally:
            duration = time.perf_counter() - started
            self.metrics.in_flight.dec()
            self.metrics.request_finished(record.operation, record.error_codes, duration)
            unbind_request(token)
            if log.isEnabledFor(logging.INFO):
                log.info("graphql request", extra=record.log_fields(duration))


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
