"""The instrumented upstream transport: every HTTP attempt counted, timed and noted."""

from __future__ import annotations

import asyncio
import contextlib
import logging

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
def test_every_upstream_attempt_is_counted_and_noted_in_the_request(
    inner: httpx.AsyncBaseTransport, status: str, caplog: pytest.LogCaptureFixture
) -> None:
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
    assert line["upstream_requests"] == 2
    assert value(observed.metrics, "gateway_upstream_requests_total", status=status) == 2
    assert value(observed.metrics, "gateway_upstream_request_duration_seconds_count") == 2
