"""The live metrics: what each hook moves, as Prometheus exports it.

How the hub calls these hooks (a poller started, a poll skipped): tests/live/test_hub.py.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from gateway.live.metrics import POLL_OUTCOMES, LiveMetrics

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def exported(registry: CollectorRegistry) -> Series:
    """Every sample of the live metrics, by name and labels (creation times left out)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def test_every_series_is_exported_at_zero_before_anything_happens() -> None:
    # A poll outcome never seen yet is a 0, not a missing series (rate() needs both ends).
    registry = CollectorRegistry()
    LiveMetrics(registry)

    polls: Series = {
        ("gateway_live_polls_total", (("outcome", outcome),)): 0.0 for outcome in POLL_OUTCOMES
    }
    expected: Series = {
        ("gateway_live_subscriptions", ()): 0,
        ("gateway_live_pollers", ()): 0,
        **polls,
        ("gateway_live_updates_sent_total", ()): 0,
    }
    assert exported(registry) == expected


def test_subscriptions_and_pollers_are_gauges_that_go_both_ways() -> None:
    registry = CollectorRegistry()
    metrics = LiveMetrics(registry)

    metrics.subscriptions(3)
    metrics.subscriptions(-1)
    metrics.pollers(2)
    metrics.pollers(-2)

    assert registry.get_sample_value("gateway_live_subscriptions") == 2
    assert registry.get_sample_value("gateway_live_pollers") == 0


@pytest.mark.parametrize("outcome", POLL_OUTCOMES)
def test_a_poll_is_counted_under_its_outcome_only(outcome: str) -> None:
    registry = CollectorRegistry()
    metrics = LiveMetrics(registry)

    metrics.poll(outcome)
    metrics.poll(outcome)

    assert {
        other: registry.get_sample_value("gateway_live_polls_total", {"outcome": other})
        for other in POLL_OUTCOMES
    } == {other: 2 if other == outcome else 0 for other in POLL_OUTCOMES}


def test_each_update_sent_is_counted() -> None:
    registry = CollectorRegistry()
    metrics = LiveMetrics(registry)

    metrics.update_sent()
    metrics.update_sent()

    assert registry.get_sample_value("gateway_live_updates_sent_total") == 2


def test_the_gauges_add_up_across_live_worker_processes() -> None:
    # With `serve --workers N` each process writes its own file; livesum adds the
    # processes still running, so a dead worker's subscriptions stop counting.
    metrics = LiveMetrics(CollectorRegistry())

    assert metrics.active_subscriptions._multiprocess_mode == "livesum"
    assert metrics.active_pollers._multiprocess_mode == "livesum"
