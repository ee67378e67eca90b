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
