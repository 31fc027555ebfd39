"""The instrumented upstream transport: one metric and one client span per HTTP attempt to
the upstream, retries included. (The request's line counts its attempts from its
operation's tally, which the upstream client counts into as it hands each one here.)

It lives with what it reports to rather than in `gateway/upstream/`: the upstream package
reports only through the narrow `UpstreamMetrics` seam and knows nothing of Prometheus or
OpenTelemetry; `app.py` wraps the upstream pool in this at start-up.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import httpx

from gateway.observability.telemetry import Telemetry

if TYPE_CHECKING:
    from opentelemetry.trace import Span


class InstrumentedTransport(httpx.AsyncBaseTransport):
    """Wraps the upstream transport: counts, times and traces every HTTP attempt."""

    def __init__(self, inner: httpx.AsyncBaseTransport, telemetry: Telemetry) -> None:
        self._inner = inner
        self._metrics = telemetry.metrics
        self._tracing = telemetry.tracing

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        span_cm = (
            nullcontext(None)
            if self._tracing is None
            else self._tracing.client_span(request.method, request.url.path, request.headers)
        )
        started = time.perf_counter()
        span = span_cm.__enter__()
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TransportError as exc:
            self._attempt_ended(span, span_cm, started, None, exc)
            raise
        except BaseException as exc:
            span_cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if response.is_closed:  # read already (a test's MockTransport answer)
            self._attempt_ended(span, span_cm, started, response, None)
            return response
        # The attempt ends with its body, which the caller reads from the stream: counted
        # and timed then, as when the transport read it; one abandoned is not counted.
        response.stream = _ObservedBody(
            response.stream,
            lambda error: self._attempt_ended(span, span_cm, started, response, error),
            lambda error: span_cm.__exit__(
                None if error is None else type(error),
                error,
                None if error is None else error.__traceback__,
            ),
        )
        return response

    def _attempt_ended(
        self,
        span: Span | None,
        span_cm: AbstractContextManager[Span | None],
        started: float,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> None:
        if response is None or error is not None:
            outcome = type(error).__name__
            self._metrics.upstream_request(outcome, time.perf_counter() - started)
            if span is not None and self._tracing is not None:
                self._tracing.set_status(span, None, outcome)
        else:
            self._metrics.upstream_request(response.status_code, time.perf_counter() - started)
            if span is not None and self._tracing is not None:
                self._tracing.set_status(span, response.status_code)
        span_cm.__exit__(None, None, None)

    async def aclose(self) -> None:
        await self._inner.aclose()


# How an attempt's body ended: read (None) or failed in the transport (its error); and
# how it was abandoned: closed unread (None) or left by another exception.
_Ended = Callable[[BaseException | None], object]


def _unused(error: BaseException | None) -> None:
    pass


class _ObservedBody(httpx.AsyncByteStream):
    """An upstream body that reports, once, how its attempt ended."""

    def __init__(
        self,
        inner: httpx.SyncByteStream | httpx.AsyncByteStream,
        ended: _Ended,
        abandoned: _Ended,
    ) -> None:
        assert isinstance(inner, httpx.AsyncByteStream)  # an async transport's body
        self._inner = inner
        self._ended = ended
        self._abandoned = abandoned
        self._open = True

    def _end(self, report: _Ended, error: BaseException | None) -> None:
        if self._open:
            self._open = False
            # The reports hold the response, whose stream this is: dropped once used, the
            # response is freed by reference counting, not left (~60 objects a request,
            # the aiohttp answer with it) for the cyclic collector, ~0.4% of a cache miss.
            self._ended = self._abandoned = _unused
            report(error)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx.TransportError as exc:
            self._end(self._ended, exc)
            raise
        except BaseException as exc:
            self._end(self._abandoned, exc)
            raise
        self._end(self._ended, None)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._end(self._abandoned, None)
