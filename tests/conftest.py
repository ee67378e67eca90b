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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``interpreted`` patch a compiled module's internals (``twin.compiled``).

    With the compiled modules loaded, a patch of their internals changes nothing, so those
    tests leave this session and ``test_compiled.py`` runs them in a process that runs the
    sources; without them (``TWIN_PURE_PYTHON``, an edit since the build), they run here and
    that test, which would only repeat them, leaves instead. Either way each runs once.
    """
    import twin

    leave = "interpreted" if twin.compiled.ACTIVE else "compiled_only"
    keep = [item for item in items if item.get_closest_marker(leave) is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker(leave)])
        items[:] = keep
