"""The instrumented upstream transport: every HTTP attempt counted and timed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import weakref
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.observability.transport import InstrumentedTransport
from tests.observability.test_telemetry import http_request, request_lines, telemetry, value


def _answers(status: int) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status))


def _refuses() -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("inner", "status"),
    [
        pytest.param(_answers(200), "200", id="answered"),
        pytest.param(_answers(503), "503", id="upstream-error-status"),
        pytest.param(_refuses(), "ConnectError", id="transport-error"),
    ],
)
def test_every_upstream_attempt_is_counted_in_the_metrics_only(
    inner: httpx.AsyncBaseTransport, status: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The request's line counts its attempts from its operation's tally, which the
    # upstream client counts into (tests/upstream/test_client.py); the transport serves
    # every request alike and writes into none.
    observed = telemetry()
    caplog.set_level(logging.INFO, logger="gateway.request")

    async def attempt_twice() -> None:
        async with httpx.AsyncClient(transport=InstrumentedTransport(inner, observed)) as client:
            for _ in range(2):
                with contextlib.suppress(httpx.ConnectError):
                    await client.get("http://upstream.test/v1/users/u-1/calls/")

    with observed.request(http_request(), "r-1"):
        asyncio.run(attempt_twice())

    [line] = request_lines(caplog)
    assert line["upstream_requests"] == 0
    assert value(observed.metrics, "gateway_upstream_requests_total", status=status) == 2
    assert value(observed.metrics, "gateway_upstream_request_duration_seconds_count") == 2


class _StreamedBody(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"[]"


class _Streams(httpx.AsyncBaseTransport):
    """Answers with a body still to read, as the aiohttp transport does."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_StreamedBody())


@pytest.mark.parametrize(
    "finish",
    [
        pytest.param("read", id="read"),
        pytest.param("closed-unread", id="closed-unread"),
    ],
)
def test_an_ended_attempt_leaves_no_reference_cycle(finish: str) -> None:
    # A cycle (the response's stream holding the response) left every upstream answer, and
    # the transport's with it, to the cyclic collector: ~60 objects a cache miss.
    transport = InstrumentedTransport(_Streams(), telemetry())

    async def attempt() -> weakref.ref[httpx.Response]:
        request = httpx.Request("GET", "http://upstream.test/v1/users/u-1/calls/")
        response = await transport.handle_async_request(request)
        if finish == "read":
            async for _ in response.stream:  # type: ignore[union-attr]
                pass
        else:
            await response.aclose()
        return weakref.ref(response)

    gc.disable()
    try:
        freed = asyncio.run(attempt())
        assert freed() is None
    finally:
        gc.enable()
