"""Grafana dashboards and alert rules use the metrics the twin exports, and they evaluate.

The files are loaded as data; then a real Prometheus scrapes a real endpoint carrying
``TwinMetrics`` and every dashboard query is run against it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from fixtures_services import free_ports
from prometheus_client import CollectorRegistry, start_http_server

from streams.metrics import METRIC_NAMES, TwinMetrics

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
RULES = REPO / "deploy" / "prometheus" / "rules" / "twin-alerts.yml"
_NAME = re.compile(r"\btwin_[a-z_]+\b")
_SUFFIXES = ("_bucket", "_sum", "_count")


def _dashboards() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))]


def _exprs() -> list[str]:
    return [t["expr"] for d in _dashboards() for p in d["panels"] for t in p["targets"]]


def _metric(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in METRIC_NAMES:
            return name[: -len(suffix)]
    return name


def test_dashboards_are_valid_and_use_exported_metrics():
    dashboards = _dashboards()
    assert {d["uid"] for d in dashboards} == {"twin-operations", "twin-forecasts"}
    for d in dashboards:
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), d["uid"]
        for p in d["panels"]:
            assert p["datasource"]["uid"] == "twin-prometheus"
    used = {_metric(n) for e in _exprs() for n in _NAME.findall(e)}
    assert used <= METRIC_NAMES, used - METRIC_NAMES
    assert used == METRIC_NAMES, f"exported but on no dashboard: {METRIC_NAMES - used}"


def test_provisioning_points_at_the_dashboards_and_datasource():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "twin-prometheus"
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "twin.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts


def test_alert_rules_use_exported_metrics():
    rules = yaml.safe_load(RULES.read_text())
    names = {
        _metric(n)
        for g in rules["groups"]
        for r in g["rules"]
        for n in _NAME.findall(r["expr"])
        if not n.startswith("twin:")
    }
    assert names <= METRIC_NAMES, names - METRIC_NAMES


@pytest.mark.prometheus
def test_every_dashboard_query_returns_data_from_a_real_prometheus(prometheus_factory):
    registry = CollectorRegistry()
    m = TwinMetrics.create(registry)
    m.events.labels("north", "logistics.vehicle.position.v1", "applied").inc(100)
    m.events.labels("north", "logistics.vehicle.position.v1", "dead-lettered").inc(2)
    m.event_lag.labels("north").set(0.2)
    m.clock.labels("north").set(1.7e9)
    m.dlq.labels("schema").inc(2)
    m.snapshot_age.labels("north").set(12.0)
    m.forecast_duration.labels("north").observe(0.8)
    m.forecast_replicas.labels("north").set(32)
    m.predicted_late_orders.labels("north").set(7)
    m.at_risk_orders.labels("N-HUB").set(3)
    m.predictions_published.labels("order").inc(10)
    m.handoffs.labels("north", "sent").inc(4)
    m.forecast_failures.labels("north", "BrokenProcessPool").inc(1)
    (port,) = free_ports(1)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prom = prometheus_factory([f"127.0.0.1:{port}"], rule_files=[RULES], job="twin")
        prom.wait_for("twin_events_total", lambda r: len(r) == 2, timeout=30)
        # rate() needs two scrapes after the counters moved
        m.events.labels("north", "logistics.vehicle.position.v1", "applied").inc(50)
        m.dlq.labels("schema").inc(1)
        m.predictions_published.labels("order").inc(5)
        m.handoffs.labels("north", "sent").inc(2)
        m.forecast_failures.labels("north", "BrokenProcessPool").inc(1)
        m.forecast_duration.labels("north").observe(1.2)
        for expr in _exprs():
            prom.wait_for(expr, lambda r: len(r) > 0, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
