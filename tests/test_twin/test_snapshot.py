"""Snapshots are plain data, and rebuild-then-continue equals never stopping."""

from __future__ import annotations

import json
import math

from twin.live import LiveTwin


def _plain(obj):
    """JSON round trip (infinities allowed): proves the snapshot is plain data."""
    return json.loads(json.dumps(obj, allow_nan=True))


def test_snapshot_rebuild_mid_replay_gives_identical_results(mini_scenario):
    net, events = mini_scenario.network, mini_scenario.events
    straight = LiveTwin(net)
    assert straight.apply_all(events) == []
    for cut in (len(events) // 3, len(events) // 2, 2 * len(events) // 3):
        first = LiveTwin(net)
        first.apply_all(events[:cut])
        snap = first.snapshot()
        state_only = {k: v for k, v in snap.items() if k != "parked"}
        assert _plain(state_only) == state_only or _has_inf(state_only)
        resumed = LiveTwin.from_snapshot(net, snap)
        assert resumed.clock == first.clock and resumed.env.now == first.clock
        assert resumed.apply_all(events[cut:]) == []
        assert resumed.state.snapshot() == straight.state.snapshot()
        assert resumed.stats.applied == straight.stats.applied


def _has_inf(obj) -> bool:
    if isinstance(obj, float):
        return math.isinf(obj)
    if isinstance(obj, dict):
        return any(_has_inf(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_has_inf(v) for v in obj)
    return False


def test_duplicates_after_rebuild_are_still_caught(mini_scenario):
    net, events = mini_scenario.network, mini_scenario.events
    twin = LiveTwin(net)
    twin.apply_all(events[:1000])
    resumed = LiveTwin.from_snapshot(net, twin.snapshot())
    (r,) = resumed.apply(events[999])
    assert r.reason == "duplicate"


def test_two_runs_with_the_same_events_are_identical(mini_scenario):
    a, b = LiveTwin(mini_scenario.network), LiveTwin(mini_scenario.network)
    a.apply_all(mini_scenario.events)
    b.apply_all(mini_scenario.events)
    assert a.snapshot() == b.snapshot()
