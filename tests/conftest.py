"""Shared test fixtures. The real services (Kafka, Prometheus) live in fixtures_services."""

from __future__ import annotations

import pytest

from scenarios.generate import GeneratedScenario, generate
from scenarios.spec import load_scenario

pytest_plugins = ["fixtures_services"]


@pytest.fixture(scope="session")
def default_scenario() -> GeneratedScenario:
    """The default library scenario, generated once per test session (in memory)."""
    return generate(load_scenario("regional-day"))


@pytest.fixture(scope="session")
def mini_scenario() -> GeneratedScenario:
    """The small library scenario, generated once per test session (in memory)."""
    return generate(load_scenario("two-region-mini"))


@pytest.fixture(scope="session")
def outage_scenario() -> GeneratedScenario:
    """The library scenario whose hub loses docks and sorting in the morning, generated once."""
    return generate(load_scenario("hub-morning-outage"))
