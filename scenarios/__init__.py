"""Scenarios: a human-editable file format, the hidden true-world generator, replays, backtests."""

from scenarios.spec import ScenarioError, ScenarioSpec, load_scenario

__all__ = ["ScenarioError", "ScenarioSpec", "load_scenario"]
