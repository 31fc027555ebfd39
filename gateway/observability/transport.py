"""The instrumented upstream transport: one metric, one line count and one client span per
HTTP attempt to the upstream, retries included.

It lives with what it reports to rather than in `gateway/upstream/`: the upstream package
reports only through the narrow `UpstreamMetrics` seam and knows nothing of Prometheus or
OpenTelemetry; `app.py` wraps the upstream pool in this at start-up.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import httpx

from gateway.observability.telemetry import Telemetry


class InstrumentedTransport(httpx.AsyncBaseTransport):
    """Wraps the upstream transport: counts, times and traces every HTTP attempt."""

    def __init__(self, inner: httpx.AsyncBaseTransport, telemetry: Telemetry) -> None:
        self._inner = inner
        self._telemetry = telemetry
        self._metrics = telemetry.metrics
        self._tracing = telemetry.tracing

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._telemetry.upstream_request_sent()
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
