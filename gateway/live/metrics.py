"""The live updates' Prometheus metrics, on the gateway's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

POLL_OUTCOMES = ("changed", "unchanged", "error", "skipped")


class LiveMetrics:
    """Subscriptions and pollers held, polls made, updates sent."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.active_subscriptions = Gauge(
            "gateway_live_subscriptions",
            "Live subscriptions (`callsUpdated`) open now, over WebSocket and SSE.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.active_pollers = Gauge(
            "gateway_live_pollers",
            "Pollers running now: one per credentials and arguments watched in this process.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.polls = Counter(
            "gateway_live_polls",
            "Polls of a watched page, by outcome: changed, unchanged, error, or skipped "
            "(the account's pacing had no slot; the tick passes silently).",
            ["outcome"],
            registry=registry,
        )
        self.updates = Counter(
            "gateway_live_updates_sent",
            "`callsUpdated` updates handed to subscribers.",
            registry=registry,
        )
        for outcome in POLL_OUTCOMES:
            self.polls.labels(outcome)

    def subscriptions(self, delta: int) -> None:
        self.active_subscriptions.inc(delta)

    def pollers(self, delta: int) -> None:
        self.active_pollers.inc(delta)

    def poll(self, outcome: str) -> None:
        self.polls.labels(outcome).inc()

    def update_sent(self) -> None:
        self.updates.inc()
