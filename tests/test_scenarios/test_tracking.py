"""Tracking: replaying the default day, the twin ends in step with the hidden true world."""

from __future__ import annotations

import polars as pl

from scenarios.replay import replay

#: Dead-reckoned progress of a vehicle on the road must be within this of the truth.
PROGRESS_TOLERANCE = 0.05


def test_order_stages_match_ground_truth(default_scenario):
    result = replay(default_scenario.network, default_scenario.events)
    assert result.rejections == []
    state = result.twin.state
    truth = default_scenario.truth_orders
    matches = sum(
        1 for oid, stage in truth.select("order_id", "final_stage").iter_rows() if state.orders[oid].stage == stage
    )
    assert matches / truth.height >= 0.99
    delivered = dict(truth.select("order_id", "delivered_at").iter_rows())
    assert all(o.delivered_at == delivered[oid] for oid, o in state.orders.items() if o.stage == "delivered")
    assert len(state.late_orders()) == truth.filter(pl.col("late")).height


def test_vehicle_positions_within_tolerance_at_every_checkpoint(default_scenario):
    events = default_scenario.events
    truth = default_scenario.truth_vehicles
    checkpoints = sorted(set(truth.get_column("at").to_list()))
    from twin.live import LiveTwin

    twin = LiveTwin(default_scenario.network)
    i = 0
    worst = 0.0
    en_route_checked = 0
    for at in checkpoints:
        while i < len(events) and events[i].time <= at:
            twin.apply(events[i])
            i += 1
        for row in truth.filter(pl.col("at") == at).iter_rows(named=True):
            v = twin.state.vehicles[row["vehicle_id"]]
            if row["status"] == "at_site":
                assert (v.status, v.site_id) == ("at_site", row["site_id"]), row
            else:
                assert (v.status, v.lane_id) == ("en_route", row["lane_id"]), row
                err = abs(twin.state.vehicle_progress(row["vehicle_id"], at) - row["progress"])
                worst = max(worst, err)
                en_route_checked += 1
    assert en_route_checked > 50
    assert worst <= PROGRESS_TOLERANCE, worst
