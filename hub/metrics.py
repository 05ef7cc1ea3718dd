"""The hub's Prometheus metrics, registered on the app's own registry (services.metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class HubMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.publishes = Counter(
            "hub_publishes_total", "Publish requests taken, by kind (fat, ping).", ["kind"], registry=registry
        )
        self.deliveries = Counter(
            "hub_deliveries_total",
            "Delivery attempts by outcome (delivered, retry, failed, gone).",
            ["outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "hub_delivery_latency_seconds",
            "From the publish being stored to the delivery being acknowledged.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=registry,
        )
        self.pending = Gauge("hub_outbox_pending", "Deliveries waiting in the outbox.", registry=registry)
        self.fetches = Counter(
            "hub_topic_fetches_total",
            "Topic fetches by result (changed, unchanged, error).",
            ["result"],
            registry=registry,
        )
