"""Incremental forecasts equal full forecasts of the same state, event after event."""

from __future__ import annotations

import pytest

from twin.events import OrderScanned, VehiclePosition
from twin.forecast import Beliefs, Forecaster
from twin.incremental import IncrementalForecaster
from twin.live import LiveTwin


def _live(gen, at_hours: float, replicas: int) -> tuple[LiveTwin, Forecaster, IncrementalForecaster]:
    twin = LiveTwin(gen.network)
    twin.apply_all([e for e in gen.events if e.time <= at_hours * 3600])
    fc = Forecaster(gen.network, replicas=replicas, seed=3)
    inc = IncrementalForecaster(fc)
    inc.attach(twin)
    return twin, fc, inc


def test_a_forecast_with_the_states_own_beliefs_is_the_forecast():
    """``beliefs=`` defaults to what the state teaches now: giving those changes nothing."""
    from scenarios.generate import generate
    from scenarios.spec import load_scenario

    gen = generate(load_scenario("two-region-mini"))
    twin = LiveTwin(gen.network)
    twin.apply_all([e for e in gen.events if e.time <= 3 * 3600])
    fc = Forecaster(gen.network, replicas=4, seed=2)
    assert fc.forecast(twin.state, Beliefs.of(twin.state)) == fc.forecast(twin.state)


@pytest.mark.parametrize(
    ("scenario", "at_hours"),
    [("default_scenario", 9), ("default_scenario", 13), ("outage_scenario", 7.5), ("mini_scenario", 3)],
)
def test_every_update_equals_a_full_forecast_of_the_new_state(request, scenario, at_hours):
    """The stream after ``at_hours``: after each position, the whole forecast equals a full one.

    Full forecast: the same seed and the beliefs of the last refresh (what the incremental
    forecast keeps). Both ways of an update are taken: replicas patched from their records,
    and replicas run again because a check failed; and other events refresh. At 07:30 on
    hub-morning-outage the hub is short of docks and slow to sort: reruns for docks too.
    """
    gen = request.getfixturevalue(scenario)
    twin, fc, inc = _live(gen, at_hours, replicas=12)
    assert inc.refresh(twin.state) == fc.forecast(twin.state)  # the traces change nothing
    assert inc.predictions() == fc.forecast(twin.state, inc.beliefs)
    updates = patched = rerun = refreshes = 0
    for e in (e for e in gen.events if e.time > at_hours * 3600):
        twin.apply(e)
        if not isinstance(e, VehiclePosition):
            continue
        before = inc.predictions()
        changed = inc.update(twin.state)
        now = inc.predictions()
        if inc.last.kind == "refresh":
            refreshes += 1
            continue
        updates += 1
        patched += inc.last.patched
        rerun += inc.last.rerun
        assert now == fc.forecast(twin.state, inc.beliefs), f"update {updates} ({e.vehicle_id} at {e.time})"
        # what it returns is exactly what changed
        assert {p.key for p in changed} == {a.key for a, b in zip(before, now, strict=True) if a != b}
        if updates >= 24:
            break
    assert updates >= 24 and refreshes > 0
    assert patched > 0 and rerun > 0, (patched, rerun)


def test_what_an_update_cannot_take_in_is_a_refresh(default_scenario):
    """A position that moves the clock, and any other kind of event, take a full refresh."""
    gen = default_scenario
    twin, fc, inc = _live(gen, 9, replicas=4)
    inc.refresh(twin.state)
    assert inc.update(twin.state) == [] and inc.last.kind == "unchanged"
    later = [e for e in gen.events if e.time > twin.clock + 1 and isinstance(e, VehiclePosition)][0]
    twin.apply(later)
    inc.update(twin.state)
    assert (inc.last.kind, inc.last.reason) == ("refresh", "clock")
    scan = [e for e in gen.events if e.time >= twin.clock and isinstance(e, OrderScanned)][0]
    twin.apply(scan)
    inc.update(twin.state)
    assert (inc.last.kind, inc.last.reason) == ("refresh", "event")
    assert inc.predictions() == fc.forecast(twin.state)


def test_an_incremental_forecast_runs_its_replicas_here(default_scenario):
    with Forecaster(default_scenario.network, replicas=4, workers=2) as fc:
        with pytest.raises(ValueError, match="workers=1"):
            IncrementalForecaster(fc)


def test_attach_refuses_to_replace_another_hook(mini_scenario):
    twin = LiveTwin(mini_scenario.network)
    twin.on_applied = print
    with pytest.raises(ValueError, match="on_applied"):
        IncrementalForecaster(Forecaster(mini_scenario.network, replicas=2)).attach(twin)


def test_one_update_takes_in_several_positions(default_scenario):
    """Positions of several vehicles at one clock, then one update: each is taken in turn."""
    gen = default_scenario
    later = [e for e in gen.events if e.time > 9 * 3600]
    seconds = sorted({e.time for e in later if isinstance(e, VehiclePosition) and e.lane_id is not None})
    twin, fc, inc = _live(gen, 9, replicas=8)
    rounds = 0
    for second in seconds[:3]:
        # everything up to that second, its other events and its first position (the clock
        # is then the second's); then its other positions at once
        twin.apply_all([e for e in later if twin.clock < e.time < second])
        burst = [e for e in later if e.time == second]
        positions = [e for e in burst if isinstance(e, VehiclePosition) and e.lane_id is not None]
        twin.apply_all([e for e in burst if e not in positions[1:]])
        inc.refresh(twin.state)
        positions = positions[1:]
        twin.apply_all(positions)
        inc.update(twin.state)
        assert inc.last.kind == "incremental" and inc.last.vehicles == len({e.vehicle_id for e in positions})
        assert inc.predictions() == fc.forecast(twin.state, inc.beliefs)
        rounds += inc.last.vehicles > 1
    assert rounds >= 2


def test_beliefs_that_do_not_know_a_vehicles_lane_are_refused(mini_scenario):
    """Beliefs from before a vehicle took to its lane cannot dead-reckon it: a clear error."""
    gen = mini_scenario
    twin = LiveTwin(gen.network)
    twin.apply_all([e for e in gen.events if e.time <= 3 * 3600])
    old = Beliefs.of(twin.state)
    on_road = {v.lane_id for v in twin.state.vehicles.values() if v.status == "en_route"}
    for e in (e for e in gen.events if e.time > 3 * 3600):
        twin.apply(e)
        if isinstance(e, VehiclePosition) and e.lane_id is not None and e.lane_id not in on_road:
            break
    with pytest.raises(ValueError, match="Beliefs.of"):
        Forecaster(gen.network, replicas=2).forecast(twin.state, old)
