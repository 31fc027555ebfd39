from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from gateway.context import UpstreamWarning
from gateway.observability.metrics import Metrics
from gateway.observability.record import RequestRecord
from gateway.observability.telemetry import Telemetry

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: Metrics) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.exposition()[0].decode())
        for sample in family.samples
    }


def counts(metrics: Metrics) -> Samples:
    """The samples that count something (not creation times, not summed seconds)."""
    return {
        key: sample
        for key, sample in scrape(metrics).items()
        if not key[0].endswith(("_created", "_sum"))
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return scrape(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


def http_request(method: str = "POST") -> Request:
    return Request({"type": "http", "method": method, "headers": [], "path": "/graphql"})


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The `extra` fields of every request line logged, without the duration."""
    lines = []
    for record in caplog.records:
        if record.name == "gateway.request" and record.getMessage() == "graphql request":
            fields = {key: getattr(record, key) for key in RequestRecord("", "").log_fields(0)}
            del fields["duration_ms"]
            lines.append(fields)
    return lines


def telemetry() -> Telemetry:
    return Telemetry(Metrics(multiprocess_dir=None), None)


def _ok(record: RequestRecord) -> None:
    record.operation, record.status, record.operation_checked = "Calls", 200, True


def _failed(record: RequestRecord) -> None:
    record.operation, record.status = "Calls", 200
    record.error_codes = ["UPSTREAM_TIMEOUT", "BAD_USER_INPUT", "UPSTREAM_TIMEOUT"]
    record.operation_checked = True


def _unchecked(record: RequestRecord) -> None:
    record.operation, record.status = "Calls", 400


def _raises(record: RequestRecord) -> None:
    record.operation = "Calls"
    raise RuntimeError("the endpoint failed")


@pytest.mark.parametrize(
    ("fill", "line", "counted"),
    [
        pytest.param(
            _ok,
            {"operation": "Calls", "status": 200, "error_codes": []},
            {"operation": "Calls", "outcome": "OK"},
            id="answered",
        ),
        pytest.param(
            _failed,
            {
                "operation": "Calls",
                "status": 200,
                "error_codes": ["BAD_USER_INPUT", "UPSTREAM_TIMEOUT"],
            },
            {"operation": "Calls", "outcome": "UPSTREAM_TIMEOUT"},
            id="errors-first-code-is-the-outcome",
        ),
        pytest.param(
            _unchecked,
            {"operation": "Calls", "status": 400, "error_codes": []},
            {"operation": "(unchecked)", "outcome": "OK"},
            id="unchecked-name-takes-no-slot",
        ),
        pytest.param(
            _raises,
            {"operation": "Calls", "status": None, "error_codes": []},
            {"operation": "(unchecked)", "outcome": "OK"},
            id="endpoint-raises-still-logged-and-counted",
        ),
    ],
)
def test_a_request_ends_with_one_line_and_its_metrics(
    fill: Callable[[RequestRecord], None],
    line: dict[str, Any],
    counted: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    observed = telemetry()
    caplog.set_level(logging.INFO, logger="gateway.request")

    try:
        with observed.request(http_request(), "r-1") as record:
            assert value(observed.metrics, "gateway_requests_in_flight") == 1
            fill(record)
    except RuntimeError:
        pass

    expected = {
        "request_id": "r-1",
        "method": "POST",
        "upstream_requests": 0,
        "cache": None,
        **line,
    }
    assert request_lines(caplog) == [expected]
    assert value(observed.metrics, "gateway_requests_in_flight") == 0
    assert value(observed.metrics, "gateway_requests_total", **counted) == 1
    assert value(observed.metrics, "gateway_request_duration_seconds_count") == 1


def test_cache_look_ups_reported_by_the_upstream_are_counted_but_noted_in_no_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The line's look-ups come from the operation's own tally, which the operation's
    # runner hands the record; what the upstream cache reports here is process-wide,
    # whatever request happens to be running when it does.
    observed = telemetry()
    caplog.set_level(logging.INFO, logger="gateway.request")

    with observed.request(http_request(), "r-1"):
        observed.cache_result("hit")
        observed.cache_result("hit")
        observed.cache_result("miss")
    observed.cache_result("error")  # outside any request: counted too

    [line] = request_lines(caplog)
    assert line["cache"] is None
    assert value(observed.metrics, "gateway_cache_requests_total", result="hit") == 2
    assert value(observed.metrics, "gateway_cache_requests_total", result="miss") == 1
    assert value(observed.metrics, "gateway_cache_requests_total", result="error") == 1


def test_metrics_alone_write_no_request_record() -> None:
    observed = telemetry()

    with observed.request(http_request(), "r-1") as record:
        observed.metrics.cache_result("hit")
        observed.metrics.response_hit()

    assert record.cache == {}


@pytest.mark.parametrize(
    ("method", "operation"),
    [
        pytest.param("POST", "Calls", id="post"),
        pytest.param("GET", None, id="get-anonymous"),
    ],
)
def test_a_cache_hit_ends_like_any_request_plus_a_response_hit(
    method: str, operation: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    answered, hit = telemetry(), telemetry()
    caplog.set_level(logging.INFO, logger="gateway.request")

    with answered.request(http_request(method), "r-1") as record:
        record.operation, record.status, record.operation_checked = operation, 200, True
        record.cache["response-hit"] += 1
    with hit.cached_answer(http_request(method), "r-1", operation):
        pass

    executed_line, hit_line = request_lines(caplog)
    assert hit_line == executed_line
    assert hit_line["cache"] == {"response-hit": 1}
    assert counts(hit.metrics) == {
        **counts(answered.metrics),
        ("gateway_response_cache_hits_total", ()): 1.0,
    }


def test_upstream_warnings_count_each_and_log_one_line_per_kind_and_field(
    caplog: pytest.LogCaptureFixture,
) -> None:
    observed = telemetry()
    caplog.set_level(logging.WARNING, logger="gateway.upstream")
    warnings = [
        UpstreamWarning("odd state", ("calls", index, "state"), f"c-{index}", "unknown_value")
        for index in range(3)
    ] + [UpstreamWarning("bad time", ("calls", 0, "startTime"), "c-0", "malformed_field")]

    observed.upstream_warnings(warnings, "r-1")

    lines = [
        (record.getMessage(), vars(record)["kind"], vars(record)["count"])
        for record in caplog.records
        if record.name == "gateway.upstream"
    ]
    assert lines == [("odd state", "unknown_value", 3), ("bad time", "malformed_field", 1)]
    assert all(vars(record)["request_id"] == "r-1" for record in caplog.records)
    assert value(observed.metrics, "gateway_upstream_warnings_total", kind="unknown_value") == 3
    assert value(observed.metrics, "gateway_upstream_warnings_total", kind="malformed_field") == 1
