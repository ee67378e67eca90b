"""Property tests: any arrival order within the allowed lateness gives the sorted order's state."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scenarios.generate import generate
from scenarios.spec import load_scenario
from twin.live import LiveTwin

LATENESS = 900.0


@pytest.fixture(scope="module")
def windows():
    """Twin snapshots at 40 points of the mini scenario, each with the events of the next 810 s."""
    mini = generate(load_scenario("two-region-mini"))
    events = mini.events
    twin = LiveTwin(mini.network, lateness=LATENESS)
    out = []
    step = len(events) // 40
    done = 0
    for start in range(step, len(events) - 1, step):
        assert twin.apply_all(events[done:start]) == []
        done = start
        end = start
        while end < len(events) and events[end].time - events[start].time < LATENESS * 0.9:
            end += 1
        out.append((twin.snapshot(), events[start:end]))
    return mini.network, out


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_permutation_within_lateness_gives_the_sorted_state(windows, data):
    network, snapshots = windows
    k = data.draw(st.integers(0, len(snapshots) - 1), label="window")
    snap, batch = snapshots[k]
    order = data.draw(st.permutations(range(len(batch))), label="order")

    def run(events):
        twin = LiveTwin.from_snapshot(network, snap)
        return twin, twin.apply_all(events)

    sorted_twin, sorted_rejected = run(batch)
    shuffled_twin, shuffled_rejected = run([batch[i] for i in order])
    assert sorted_rejected == [] and shuffled_rejected == []
    assert shuffled_twin.state.snapshot() == sorted_twin.state.snapshot()
    assert shuffled_twin.stats.applied == sorted_twin.stats.applied
