"""The scenario format: every library scenario loads; mistakes name the field and the rule."""

from __future__ import annotations

import tomllib

import pytest

from scenarios.build import build_network
from scenarios.spec import LIBRARY, ScenarioError, load_scenario, parse_scenario


@pytest.mark.parametrize("name", sorted(p.name for p in LIBRARY.iterdir() if (p / "scenario.toml").exists()))
def test_library_scenarios_load_and_build(name):
    spec = load_scenario(name)
    assert spec.name == name
    build_network(spec)


def _mini() -> dict:
    return tomllib.loads((LIBRARY / "two-region-mini" / "scenario.toml").read_text())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["site"][0].update(kind="airport"), "site[0].kind: must be one of"),
        (lambda d: d["site"][1].update(docks=0), "site[1].docks: must be > 0"),
        (lambda d: d["site"][1].update(docks="two"), "site[1].docks: must be int"),
        (lambda d: d["site"][2].update(id="A-HUB"), "site[2].id: 'A-HUB' is used twice"),
        (lambda d: d["lane"][0].update(to="NOWHERE"), "lane[0].to: site 'NOWHERE' is not defined"),
        (lambda d: d["lane"][0].update(minutes=-5), "lane[0].minutes: must be > 0"),
        (lambda d: d["service"][0].update(route=["A-WH", "B-Z"]), "service[0].route: needs lanes both ways"),
        (lambda d: d["service"][0].update(first_departure="7 am"), "service[0].first_departure: must be a time of day"),
        (lambda d: d["service"][0].update(vehicels=3), "service[0]: unknown field(s) ['vehicels']"),
        (lambda d: d["demand"].update(created_until="00:00"), "demand.created_until: must be after created_from"),
        (lambda d: d["demand"].update(to_kind="moon"), "demand.to_kind: no site has kind 'moon'"),
        (lambda d: d["disruption"][0].update(target="A-HUB->A-WH2"), "disruption[0].target: lane 'A-HUB->A-WH2'"),
        (lambda d: d["disruption"][0].update(factor=0.5), "disruption[0].factor: a lane_slowdown multiplies"),
        (lambda d: d["scenario"].update(epoch="2026-03-02T00:00:00+02:00"), "scenario.epoch: must be in UTC"),
        (lambda d: d["scenario"].pop("seed"), "scenario.seed: is required"),
        (lambda d: d.pop("demand"), "demand: must be a table"),
    ],
)
def test_errors_name_the_field_and_the_rule(mutate, message):
    data = _mini()
    mutate(data)
    with pytest.raises(ScenarioError) as err:
        parse_scenario(data, source="mini.toml")
    assert str(err.value).startswith("mini.toml: ")
    assert message in str(err.value)


def test_unknown_library_name_lists_the_library():
    with pytest.raises(ScenarioError, match="regional-day"):
        load_scenario("no-such-scenario")


def test_bad_toml_says_where(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[scenario\nname = 1\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(path)


def test_forecasts_never_draw_the_worlds_own_noise():
    """The generated world draws its noise with the scenario's seed and the keyed draws of a
    forecast's replica 0: the forecasts' default seed is derived from it, stable, and different."""
    from twin.durations import keyed_uniform

    spec = load_scenario("regional-day")
    assert spec.forecast_seed != spec.seed
    assert spec.forecast_seed == load_scenario("regional-day").forecast_seed
    assert 0 <= spec.forecast_seed < 2**31
    key = "travel/LM-A-01-T1/0"
    assert keyed_uniform(spec.forecast_seed, 0, key) != keyed_uniform(spec.seed, 0, key)
