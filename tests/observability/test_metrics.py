from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability import MULTIPROC_ENV
from gateway.observability.metrics import MAX_OPERATIONS, Metrics
from gateway.sandbox import credential_headers
from tests.conftest import DEMO, GatewayFactory, Sandbox

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_after_a_scripted_set_of_requests(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    # The client sends no headers of its own, so one request can go without credentials.
    gateway = gateway_factory(headers={}).as_caller(credential_headers(DEMO))
    for _ in range(2):
        assert gateway.query("query Latest { calls(size: 2) { id } }").status_code == 200
    gateway.query("{ calls(size: 1) { id } }")
    gateway.query("query NoCredentials { calls { id } }", headers={}).raise_for_status()
    gateway.http.post(
        "/graphql", content=b"{}", headers={**credential_headers(DEMO), "Content-Type": "text/x"}
    )
    gateway.query(
        "query WrongUser { calls { id } }",
        headers={**credential_headers(DEMO), "X-Catapult-User-Id": "u-second"},
    )
    sandbox.faults(fail_status=503)
    failed = gateway.query("query Broken { calls { id } }")
    assert failed.json()["errors"][0]["extensions"]["code"] == "UPSTREAM_ERROR"
    sandbox.faults()
    long_name = "N" * 65
    gateway.query(f"query {long_name} {{ calls(size: 1) {{ id }} }}")

    response = gateway.http.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = scrape(response.text)
    requests = "gateway_requests_total"
    assert value(samples, requests, operation="Latest", outcome="OK") == 2
    assert value(samples, requests, operation="(anonymous)", outcome="OK") == 1
    # Names from requests without usable credentials take no slot of their own.
    assert value(samples, requests, operation="(unchecked)", outcome="UNAUTHENTICATED") == 2
    assert value(samples, requests, operation="Broken", outcome="UPSTREAM_ERROR") == 1
    assert value(samples, requests, operation="(invalid)", outcome="OK") == 1
    assert value(samples, requests, operation="(anonymous)", outcome="BAD_REQUEST") == 1
    assert value(samples, "gateway_errors_total", code="UNAUTHENTICATED") == 2
    assert value(samples, "gateway_operation_duration_seconds_count", operation="Latest") == 2
    assert value(samples, "gateway_request_duration_seconds_count") == 8
    # Two retries of the 503, then UPSTREAM_ERROR: three attempts, each counted.
    assert value(samples, "gateway_upstream_requests_total", status="503") == 3
    assert value(samples, "gateway_upstream_requests_total", status="401") == 1
    # The second `Latest` is the same request from the same caller within the TTL: the
    # response cache answers it, counted as a request and a hit, without the upstream.
    assert value(samples, "gateway_response_cache_hits_total") == 1
    # The long-named query asks the upstream what the anonymous one did: the upstream
    # cache (gateway/upstream/cache.py) answers it, so only two 200s reach the upstream.
    assert value(samples, "gateway_upstream_requests_total", status="200") == 2
    assert value(samples, "gateway_cache_requests_total", result="hit") == 1
    assert value(samples, "gateway_upstream_retries_total") == 2
    assert value(samples, "gateway_upstream_request_duration_seconds_count") == 6
    assert value(samples, "gateway_requests_in_flight") == 0
    for result in ("hit", "miss", "error"):
        assert ("gateway_cache_requests_total", (("result", result),)) in samples
    for name in (
        "gateway_singleflight_shares_total",
        "gateway_pacing_waits_total",
        "gateway_pacing_refusals_total",
        "gateway_pacing_wait_seconds_count",
    ):
        assert (name, ()) in samples
    assert value(samples, "gateway_worker_up") == 1
    # No credential or user id anywhere, labels included.
    for secret in (
        DEMO.token,
        DEMO.secret,
        DEMO.user_id,
        "u-second",
        *credential_headers(DEMO).values(),
    ):
        assert secret not in response.text


def test_only_checked_requests_give_a_name_a_slot_over_http(
    gateway_factory: GatewayFactory,
) -> None:
    # The client sends no headers of its own, so requests can go without credentials.
    gateway = gateway_factory(headers={}).as_caller(credential_headers(DEMO))
    # A name that failed validation, one without credentials (nothing upstream needed), one
    # whose credentials are malformed, then a checked request and the same name without.
    gateway.query("query FailsValidation { nope }")
    gateway.query("query NoCredentials { __typename }", headers={})
    gateway.query(
        "query BadCredentials { __typename }",
        headers={"Authorization": "Basic !!", "X-Catapult-User-Id": "u-demo"},
    )
    assert gateway.query("query Latest { calls(size: 1) { id } }").status_code == 200
    gateway.query("query Latest { calls(size: 1) { id } }", headers={})

    samples = scrape(gateway.http.get("/metrics").text)

    requests = "gateway_requests_total"
    operations = {dict(labels)["operation"] for (name, labels) in samples if name == requests}
    assert operations == {"(unchecked)", "Latest"}
    assert value(samples, requests, operation="(unchecked)", outcome="OK") == 2
    assert value(samples, requests, operation="Latest", outcome="UNAUTHENTICATED") == 1


def test_operation_labels_are_bounded() -> None:
    metrics = Metrics(multiprocess_dir=None)

    labels = [metrics.operation_label(f"op_{i}", checked=True) for i in range(MAX_OPERATIONS + 5)]

    assert labels[:MAX_OPERATIONS] == [f"op_{i}" for i in range(MAX_OPERATIONS)]
    assert labels[MAX_OPERATIONS:] == ["(other)"] * 5
    assert metrics.operation_label("op_0", checked=True) == "op_0"
    assert metrics.operation_label("op_0", checked=False) == "op_0"
    assert metrics.operation_label(None, checked=True) == "(anonymous)"
    assert metrics.operation_label("has space", checked=True) == "(invalid)"
    assert metrics.operation_label("x" * 65, checked=True) == "(invalid)"


@pytest.mark.parametrize(
    "name",
    ["other", "invalid", "anonymous", "unchecked"],
    ids=["other", "invalid", "anonymous", "unchecked"],
)
def test_operation_names_never_count_under_a_group_label(name: str) -> None:
    # Before: `query other` and the 101st name were both counted as "other".
    metrics = Metrics(multiprocess_dir=None)
    for i in range(MAX_OPERATIONS):
        metrics.request_finished(f"op_{i}", [], 0.01, checked=True)
    metrics.request_finished("late", [], 0.01, checked=True)
    metrics.request_finished(None, [], 0.01, checked=True)
    metrics.request_finished("x" * 65, [], 0.01, checked=True)
    metrics.request_finished("never_checked", [], 0.01, checked=False)
    fresh = Metrics(multiprocess_dir=None)
    fresh.request_finished(name, [], 0.01, checked=True)

    group_labels = {
        dict(labels)["operation"]
        for (sample, labels) in scrape(metrics.exposition()[0].decode())
        if sample == "gateway_requests_total"
    } - {f"op_{i}" for i in range(MAX_OPERATIONS)}

    assert group_labels == {"(other)", "(anonymous)", "(invalid)", "(unchecked)"}
    assert fresh.operation_label(name, checked=True) == name
    assert all(not re.fullmatch(r"[_A-Za-z][_0-9A-Za-z]*", label) for label in group_labels)


def test_unchecked_requests_take_no_operation_slot() -> None:
    # Before: every name took a slot, so junk from requests that failed validation or
    # had no credentials filled all 100 and real operations were counted as "other".
    metrics = Metrics(multiprocess_dir=None)
    for i in range(2 * MAX_OPERATIONS):
        metrics.request_finished(f"junk_{i}", ["GRAPHQL_VALIDATION_FAILED"], 0.01, checked=False)

    assert metrics.operation_label("Latest", checked=True) == "Latest"
    samples = scrape(metrics.exposition()[0].decode())
    assert (
        value(
            samples,
            "gateway_requests_total",
            operation="(unchecked)",
            outcome="GRAPHQL_VALIDATION_FAILED",
        )
        == 2 * MAX_OPERATIONS
    )
    assert not any("junk_" in str(labels) for (_, labels) in samples)


@pytest.mark.parametrize("checked", [True, False], ids=["checked", "unchecked"])
def test_long_operation_names_are_not_retained(checked: bool) -> None:
    # Before: the per-(name, outcome) cache kept each caller's raw name, up to 400 of
    # them: 330 names of 900,000 characters took a process from 93 MB to 694 MB.
    metrics = Metrics(multiprocess_dir=None)
    long_names = [f"N{i}_" + "B" * 900_000 for i in range(40)]
    for name in long_names:
        metrics.request_finished(name, ["UNAUTHENTICATED"], 0.01, checked=checked)
    retained = sum(
        sys.getsizeof(label) + sys.getsizeof(outcome) for label, outcome in metrics._finished
    )

    assert retained < 4 * MAX_OPERATIONS * 2 * 200
    assert all(len(label) <= 64 for label, _ in metrics._finished)
    assert all(len(name) <= 64 for name in metrics._operations)


def test_the_recording_api_for_cache_and_pacing() -> None:
    metrics = Metrics(multiprocess_dir=None)
    metrics.cache_result("hit")
    metrics.cache_result("hit")
    metrics.cache_result("miss")
    metrics.cache_result("error")
    metrics.singleflight_share()
    metrics.pacing_wait(0.4)
    metrics.pacing_refusal()

    samples = scrape(metrics.exposition()[0].decode())

    assert value(samples, "gateway_cache_requests_total", result="hit") == 2
    assert value(samples, "gateway_cache_requests_total", result="miss") == 1
    assert value(samples, "gateway_cache_requests_total", result="error") == 1
    assert value(samples, "gateway_singleflight_shares_total") == 1
    assert value(samples, "gateway_pacing_waits_total") == 1
    assert value(samples, "gateway_pacing_wait_seconds_sum") == pytest.approx(0.4)
    assert value(samples, "gateway_pacing_refusals_total") == 1
    with pytest.raises(ValueError, match="unknown cache result"):
        metrics.cache_result("stale")


def test_metric_names_follow_prometheus_conventions() -> None:
    text = Metrics(multiprocess_dir=None).exposition()[0].decode()

    names = {family.name for family in text_string_to_metric_families(text)}

    assert names
    assert all(re.fullmatch(r"gateway_[a-z_]+", name) for name in names)


def test_request_counts_stay_right_past_the_operation_bound() -> None:
    metrics = Metrics(multiprocess_dir=None)
    names = [f"op_{i}" for i in range(3 * MAX_OPERATIONS)]

    for _ in range(2):
        for name in names:
            metrics.request_finished(name, [], 0.01, checked=True)
            metrics.request_finished(name, ["UPSTREAM_ERROR"], 0.01, checked=True)

    samples = scrape(metrics.exposition()[0].decode())
    requests = "gateway_requests_total"
    assert value(samples, requests, operation="op_0", outcome="OK") == 2
    assert value(samples, requests, operation="op_0", outcome="UPSTREAM_ERROR") == 2
    named = MAX_OPERATIONS
    assert value(samples, requests, operation="(other)", outcome="OK") == 2 * (len(names) - named)
    assert sum(v for (name, _), v in samples.items() if name == requests) == 4 * len(names)
    assert value(samples, "gateway_errors_total", code="UPSTREAM_ERROR") == 2 * len(names)


def sample_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize("operations", [200, 1000], ids=["200-names", "1000-names"])
def test_many_operation_names_make_a_bounded_exposition(operations: int) -> None:
    metrics = Metrics(multiprocess_dir=None)

    for i in range(operations):
        metrics.request_finished(f"op_{i}", [], 0.01, checked=True)

    text = metrics.exposition()[0].decode()
    # Before: 3,646 lines for 200 names (a 15-series histogram per name). Now: per name
    # (100 of them, then "(other)") a request count and a count + sum of latency, each with
    # its _created series, plus the rest of the gateway's metrics.
    assert len(sample_lines(text)) == 567
    samples = scrape(text)
    buckets = [labels for (name, labels) in samples if name.endswith("_bucket")]
    assert all(dict(labels).keys() == {"le"} for labels in buckets)
    assert value(samples, "gateway_request_duration_seconds_count") == operations
    assert value(samples, "gateway_operation_duration_seconds_count", operation="op_0") == 1
    assert value(samples, "gateway_operation_duration_seconds_sum", operation="op_0") == (
        pytest.approx(0.01)
    )
    other = operations - MAX_OPERATIONS
    assert value(samples, "gateway_operation_duration_seconds_count", operation="(other)") == other


OPENMETRICS = "application/openmetrics-text"
ACCEPT = [
    pytest.param(None, "text/plain; version=0.0.4", id="no-accept"),
    pytest.param("text/plain", "text/plain; version=0.0.4", id="prometheus-text"),
    pytest.param("text/html,*/*;q=0.8", "text/plain; version=0.0.4", id="browser"),
    pytest.param(
        # What Prometheus itself sends.
        f"{OPENMETRICS};version=1.0.0,{OPENMETRICS};version=0.0.1;q=0.75,"
        "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        OPENMETRICS,
        id="prometheus-scraper",
    ),
    pytest.param(OPENMETRICS, OPENMETRICS, id="openmetrics"),
]


@pytest.mark.parametrize(("accept", "expected"), ACCEPT)
def test_metrics_negotiate_openmetrics(
    gateway_factory: GatewayFactory, accept: str | None, expected: str
) -> None:
    gateway = gateway_factory()
    assert gateway.query("query Latest { calls(size: 1) { id } }").status_code == 200

    response = gateway.http.get("/metrics", headers={} if accept is None else {"Accept": accept})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith(expected)
    if expected == OPENMETRICS:
        assert response.text.endswith("# EOF\n")
        # prometheus-client's OpenMetrics parser has no annotations.
        parsed = openmetrics_families(response.text)  # type: ignore[no-untyped-call]
        families = {f.name: f for f in parsed}
        # OpenMetrics names a counter without _total; its sample keeps it.
        [ok] = [
            s
            for s in families["gateway_requests"].samples
            if s.name == "gateway_requests_total" and s.labels["operation"] == "Latest"
        ]
        assert ok.value == 1
        assert families["gateway_request_duration_seconds"].type == "histogram"
    else:
        samples = scrape(response.text)
        assert value(samples, "gateway_requests_total", operation="Latest", outcome="OK") == 1
        assert "# EOF" not in response.text


@pytest.mark.parametrize(
    ("handed", "environment", "exposes_own"),
    [
        pytest.param(None, None, True, id="single-process"),
        pytest.param(None, "elsewhere", True, id="environment-not-read"),
        pytest.param("handed", None, False, id="directory-handed-in"),
    ],
)
def test_a_scrape_merges_the_directory_handed_in_and_only_that(
    handed: str | None,
    environment: str | None,
    exposes_own: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if environment is not None:
        (tmp_path / environment).mkdir()
        monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / environment))
    if handed is not None:
        (tmp_path / handed).mkdir()
    metrics = Metrics(multiprocess_dir=None if handed is None else str(tmp_path / handed))
    metrics.request_finished("Calls", [], 0.01, checked=True)

    # In one process the samples live in its own registry; the (empty) directory has none.
    exposed = metrics.exposition()[0].decode()

    assert ('operation="Calls"' in exposed) is exposes_own
