"""Shared test fixtures: the real services (Kafka, Prometheus) live in fixtures_services."""

pytest_plugins = ["fixtures_services"]
