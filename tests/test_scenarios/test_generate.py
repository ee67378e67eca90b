"""The generator: size of the default day, determinism to the byte, hidden disruptions."""

from __future__ import annotations

import hashlib

import polars as pl

from scenarios.eventlog import read_events
from scenarios.generate import generate
from scenarios.spec import load_scenario


def test_default_scenario_is_a_regional_day(default_scenario):
    g = default_scenario
    net = g.network
    assert len(net.regions) >= 3
    assert len(net.sites) >= 20
    assert len(net.vehicles) >= 100
    assert len(net.trips) >= 300
    assert len(g.orders) == 5000
    assert len(g.events) > 100_000
    types = g.manifest["events_by_type"]
    for t in ("position", "arrived", "departed", "scanned", "dock.status", "created", "delivered"):
        assert any(t in k for k in types), t
    # the disruptions are hidden: nothing in the stream reports them
    assert not any("disruption" in k for k in types)


def test_hidden_disruption_cascades_across_regions(default_scenario):
    spec = load_scenario("regional-day")
    import dataclasses

    calm = generate(dataclasses.replace(spec, disruptions=()))
    stormy = default_scenario
    late_calm = calm.truth_orders.filter(pl.col("late"))
    late_stormy = stormy.truth_orders.filter(pl.col("late"))
    assert late_stormy.height > late_calm.height + 100
    extra = late_stormy.join(late_calm, on="order_id", how="anti")
    # late because of the north->south linehaul, yet in more than one region
    regions = {d[0] for d in extra.get_column("destination").to_list()}
    assert len(regions) >= 2, regions
    trips = stormy.truth_trips.with_columns(delay=pl.col("actual_departure") - pl.col("planned_departure"))
    # rotation: the return trips of the slowed linehaul trucks leave late
    assert (
        trips.filter(pl.col("trip_id").str.starts_with("LH-NS") & (pl.col("origin") == "S-HUB"))["delay"].max() > 1800
    )


def test_same_seed_same_bytes(tmp_path):
    spec = load_scenario("two-region-mini")
    a, b = tmp_path / "a", tmp_path / "b"
    ga = generate(spec, a)
    generate(spec, b)
    for name in ("events.parquet", "truth_trips.parquet", "truth_orders.parquet", "truth_vehicles.parquet"):
        assert hashlib.sha256((a / name).read_bytes()).digest() == hashlib.sha256((b / name).read_bytes()).digest(), (
            name
        )
    assert read_events(a / "events.parquet") == ga.events
    assert (a / "manifest.json").read_text() == (b / "manifest.json").read_text()


def test_events_are_in_event_time_order_with_unique_ids(default_scenario):
    times = [e.time for e in default_scenario.events]
    assert times == sorted(times)
    assert len({e.id for e in default_scenario.events}) == len(default_scenario.events)
