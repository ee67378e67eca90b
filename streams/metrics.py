"""The twin's Prometheus metrics, declared in one place; the registry is passed in.

Base units (seconds), names prefixed ``twin_``. ``TwinMetrics.create(registry)`` gives every
worker (and every test) its own set; ``deploy/prometheus/rules`` and the Grafana dashboards
in ``deploy/grafana`` use exactly these names (a test checks that).
"""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["METRIC_NAMES", "TwinMetrics"]

_FORECAST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class TwinMetrics(NamedTuple):
    """Every metric the twin exports."""

    events: Counter
    event_lag: Gauge
    clock: Gauge
    dlq: Counter
    snapshot_age: Gauge
    forecast_duration: Histogram
    forecast_replicas: Gauge
    predicted_late_orders: Gauge
    at_risk_orders: Gauge
    predictions_published: Counter
    handoffs: Counter
    forecast_failures: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> TwinMetrics:
        """Register the twin's metrics on ``registry``."""
        return cls(
            events=Counter(
                "twin_events",
                "Events handed to the twin, by type and outcome (applied, rejected, dead-lettered).",
                ["shard", "type", "outcome"],
                registry=registry,
            ),
            event_lag=Gauge(
                "twin_event_lag_seconds",
                "Processing time minus event time of the shard's last applied event.",
                ["shard"],
                registry=registry,
            ),
            clock=Gauge(
                "twin_clock_seconds",
                "The twin's clock (event-time watermark), seconds since the Unix epoch.",
                ["shard"],
                registry=registry,
            ),
            dlq=Counter(
                "twin_dlq_events",
                "Events sent to the dead-letter topic, by reason.",
                ["reason"],
                registry=registry,
            ),
            snapshot_age=Gauge(
                "twin_snapshot_age_seconds",
                "Seconds since the shard's state was last snapshotted.",
                ["shard"],
                registry=registry,
            ),
            forecast_duration=Histogram(
                "twin_forecast_duration_seconds",
                "Wall time of one forecast of a shard.",
                ["shard"],
                buckets=_FORECAST_BUCKETS,
                registry=registry,
            ),
            forecast_replicas=Gauge(
                "twin_forecast_replicas",
                "Monte Carlo replicas per forecast.",
                ["shard"],
                registry=registry,
            ),
            predicted_late_orders=Gauge(
                "twin_predicted_late_orders",
                "Open orders with a probability of missing their promise of 0.5 or more, by region.",
                ["region"],
                registry=registry,
            ),
            at_risk_orders=Gauge(
                "twin_at_risk_orders",
                "Orders waiting at a site that are predicted late, by site.",
                ["site"],
                registry=registry,
            ),
            predictions_published=Counter(
                "twin_predictions_published",
                "Predicted states published, by entity kind.",
                ["kind"],
                registry=registry,
            ),
            handoffs=Counter(
                "twin_handoffs",
                "Trips handed between shards, by shard and outcome (sent, received, rejected: dead-lettered).",
                ["shard", "outcome"],
                registry=registry,
            ),
            forecast_failures=Counter(
                "twin_forecast_failures",
                "Forecasts that failed and published nothing, by shard and exception class "
                "(BrokenProcessPool: the forecast process died and another was started; MirrorLost: "
                "its copy of the shard's twin was lost or disagreed, and a snapshot goes next).",
                ["shard", "reason"],
                registry=registry,
            ),
        )


#: Names as exposed to Prometheus (counters get ``_total``, histograms ``_bucket`` etc.).
METRIC_NAMES: frozenset[str] = frozenset(
    {
        "twin_events_total",
        "twin_event_lag_seconds",
        "twin_clock_seconds",
        "twin_dlq_events_total",
        "twin_snapshot_age_seconds",
        "twin_forecast_duration_seconds",
        "twin_forecast_replicas",
        "twin_predicted_late_orders",
        "twin_at_risk_orders",
        "twin_predictions_published_total",
        "twin_handoffs_total",
        "twin_forecast_failures_total",
    }
)
