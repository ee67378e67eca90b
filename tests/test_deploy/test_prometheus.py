"""The real Prometheus setup (deploy/prometheus) and the deployment files are valid.

No mocks: a real Prometheus scrapes a real prometheus_client endpoint; promtool checks our files.
"""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fixtures_services import free_ports
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
PROM_RULES = DEPLOY / "prometheus" / "rules" / "twin-alerts.yml"
COMPOSE = DEPLOY / "docker-compose.yml"
KAFKA_POM = DEPLOY / "kafka" / "pom.xml"

# The project's metric names: the alert rules must use exactly these.
TWIN_METRICS = (
    "twin_event_lag_seconds",
    "twin_dlq_events_total",
    "twin_snapshot_age_seconds",
    "twin_forecast_duration_seconds",
)


@pytest.fixture
def metrics_endpoint():
    """A prometheus_client HTTP server on a free port with its own fresh registry."""
    registry = CollectorRegistry()
    (port,) = free_ports(1)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield registry, f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _value(result: list[dict]) -> float | None:
    return float(result[0]["value"][1]) if result else None


@pytest.mark.prometheus
def test_prometheus_scrapes_a_client_counter(prometheus_factory, metrics_endpoint):
    registry, target = metrics_endpoint
    events = Counter("twin_test_events", "Events seen by the test", registry=registry)
    events.inc(42)

    prom = prometheus_factory([target], rule_files=[PROM_RULES], job="twin")
    query = f'twin_test_events_total{{job="twin", instance="{target}"}}'
    prom.wait_for(query, lambda r: _value(r) == 42.0, timeout=30)

    # Live scraping, not a one-off: the next increment shows up too.
    events.inc(3)
    prom.wait_for(query, lambda r: _value(r) == 45.0, timeout=30)
    assert _value(prom.query(f'up{{job="twin", instance="{target}"}}')) == 1.0

    # Our alert rules load into a real Prometheus and evaluate without errors.
    def rules_evaluated(_: object) -> bool:
        groups = prom.api("rules")["groups"]
        rules = [rule for g in groups for rule in g["rules"]]
        return bool(rules) and all(
            rule.get("health") == "ok" and rule.get("lastEvaluation", "").startswith("20") for rule in rules
        )

    prom.wait_for("vector(1)", rules_evaluated, timeout=30)
    names = {rule["name"] for g in prom.api("rules")["groups"] for rule in g["rules"]}
    assert {"TwinEventLagHigh", "TwinDLQEvents", "TwinSnapshotStale", "TwinForecastSlow"} <= names


@pytest.mark.prometheus
def test_shared_prometheus_server_takes_new_targets(prometheus_server, metrics_endpoint):
    registry, target = metrics_endpoint
    Gauge("twin_snapshot_age_seconds", "Age of the last snapshot", registry=registry).set(12.5)

    prometheus_server.set_targets([target], labels={"service": "twin"})
    result = prometheus_server.wait_for(
        f'twin_snapshot_age_seconds{{instance="{target}"}}',
        lambda r: _value(r) == 12.5,
        timeout=30,
    )
    assert result[0]["metric"]["service"] == "twin"
    prometheus_server.set_targets([])


# ------------------------------------------------------------------------------------ promtool


@pytest.mark.prometheus
def test_promtool_check_config(promtool):
    proc = subprocess.run([promtool, "check", "config", str(PROM_CONFIG)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout + proc.stderr


@pytest.mark.prometheus
def test_promtool_check_rules(promtool):
    rule_files = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
    assert PROM_RULES in rule_files
    proc = subprocess.run(
        [promtool, "check", "rules", *map(str, rule_files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ files as data


def test_alert_rules_use_the_project_metric_names():
    text = PROM_RULES.read_text()
    for metric in TWIN_METRICS:
        assert re.search(rf"\b{metric}(_bucket|_sum|_count)?\b", text), metric


def test_run_local_scripts_are_executable_bash():
    for script in (
        DEPLOY / "kafka" / "run-local",
        DEPLOY / "prometheus" / "run-local",
        DEPLOY / "install-test-deps",
    ):
        assert os.access(script, os.X_OK), f"{script} is not executable"
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_prometheus_yaml_files():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(PROM_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    twin_targets = [t for sc in jobs["twin"]["static_configs"] for t in sc["targets"]]
    assert twin_targets == ["127.0.0.1:9464"]
    assert "prometheus" in jobs
    assert config["rule_files"] == ["rules/*.yml"]

    rules = yaml.safe_load(PROM_RULES.read_text())
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    for metric in TWIN_METRICS:
        assert metric in exprs
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in {"warning", "critical"}
                assert rule["annotations"]["summary"]


def _pom_kafka_version() -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(KAFKA_POM).getroot()
    version = root.find("m:properties/m:kafka.version", ns)
    assert version is not None and version.text
    return version.text.strip()


def test_docker_compose_images_are_pinned():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"kafka", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        image = service["image"]
        repo, sep, tag = image.rpartition(":")
        assert sep and repo and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.match(r"^v?\d+\.\d+\.\d+", tag), f"{name}: {image!r}"
    # The compose broker is the same Kafka version the local jars default to.
    assert services["kafka"]["image"] == f"apache/kafka:{_pom_kafka_version()}"

    # Prometheus gets our files at the paths its config expects.
    prom_volumes = services["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom_volumes
    assert "./prometheus/rules:/etc/prometheus/rules:ro" in prom_volumes
    for volume in prom_volumes:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (DEPLOY / source).exists(), volume
    grafana_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert grafana_mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert grafana_mounts["/var/lib/grafana/dashboards"] == "./grafana/dashboards"
