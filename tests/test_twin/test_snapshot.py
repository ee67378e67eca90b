"""Snapshots are plain data, and rebuild-then-continue equals never stopping."""

from __future__ import annotations

import json

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
        assert _plain(snap) == snap  # plain data: survives JSON (with infinities) unchanged
        resumed = LiveTwin.from_snapshot(net, _plain(snap))
        assert resumed.clock == first.clock and resumed.env.now == first.clock
        assert resumed.apply_all(events[cut:]) == []
        assert resumed.state.snapshot() == straight.state.snapshot()
        assert resumed.stats.applied == straight.stats.applied


def test_duplicates_after_rebuild_are_still_caught(mini_scenario):
    net, events = mini_scenario.network, mini_scenario.events
    twin = LiveTwin(net)
    twin.apply_all(events[:1000])
    resumed = LiveTwin.from_snapshot(net, twin.snapshot())
    (r,) = resumed.apply(events[999])
    assert r.reason == "duplicate"


def test_parked_events_survive_a_snapshot(mini_scenario):
    from twin.events import OrderCreated, OrderScanned

    twin = LiveTwin(mini_scenario.network)
    twin.apply(OrderScanned(id="early", time=30.0, order_id="LATE-ORDER", site_id="A-WH", kind="sorted"))
    snap = _plain(twin.snapshot())
    resumed = LiveTwin.from_snapshot(mini_scenario.network, snap)
    assert resumed.stats.parked == 1
    created = OrderCreated(
        id="c", time=20.0, order_id="LATE-ORDER", origin="A-WH", destination="A-HUB", promised_at=1e6,
        path=("FD-A-01-T1",),
    )  # fmt: skip
    assert not resumed.apply(created)
    assert resumed.stats.parked == 0
    assert resumed.state.orders["LATE-ORDER"].stage == "sorted"  # the parked scan was applied


def test_two_runs_with_the_same_events_are_identical(mini_scenario):
    a, b = LiveTwin(mini_scenario.network), LiveTwin(mini_scenario.network)
    a.apply_all(mini_scenario.events)
    b.apply_all(mini_scenario.events)
    assert a.snapshot() == b.snapshot()
