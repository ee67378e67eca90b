"""The sharded in-process pipeline: routing, handoffs, ownership, ticks, snapshots, accounting."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter

import polars as pl
import pytest

from scenarios.generate import generate
from scenarios.predictions import ForecastRecorder
from scenarios.replay import replay
from scenarios.spec import load_scenario
from streams.shards import ForecastSettings, Shard, ShardedPipeline, ShardRouter, fold_publications
from twin.events import (
    DispatchCommand,
    DisruptionCleared,
    DisruptionReported,
    DockStatus,
    OrderCancelled,
    OrderCreated,
    OrderDelivered,
    OrderScanned,
    SiteThroughput,
    VehicleArrived,
    VehicleDeparted,
    VehiclePosition,
)
from twin.forecast import Forecaster
from twin.live import LiveTwin

#: Few replicas: these tests check plumbing, not forecast quality.
FAST = ForecastSettings(cadence=3600.0, horizon=6 * 3600.0, replicas=4, seed=7)
#: Cut the mini day at 6 h so that many orders and trips are still open at the end.
CUT = 6 * 3600.0


@pytest.fixture(scope="module")
def mini():
    return generate(load_scenario("two-region-mini"))


@pytest.fixture(scope="module")
def mini_cut(mini):
    return [ev for ev in mini.events if ev.time < CUT]


def _cross_region_departures(net, events):
    region = {sid: s.region for sid, s in net.sites.items()}
    return [
        ev
        for ev in events
        if isinstance(ev, VehicleDeparted)
        and region[net.trips[ev.trip_id].legs[ev.leg].destination] != region[ev.site_id]
    ]


# ---------------------------------------------------------------------------------- routing


def test_routes_every_event_type_to_the_shard_that_must_apply_it(mini):
    net = mini.network
    router = ShardRouter(net)
    assert router.regions == ("alpha", "beta")
    lh = next(t for t in net.trips.values() if t.origin == "A-HUB" and t.destination == "B-HUB")
    one = {
        VehiclePosition(id="1", time=0, vehicle_id="V", site_id="B-WH"): "beta",
        VehiclePosition(id="2", time=0, vehicle_id="V", lane_id="A-HUB->B-HUB", progress=0.5): "beta",
        VehiclePosition(id="3", time=0, vehicle_id="V", lane_id="B-HUB->A-HUB", progress=0.5): "alpha",
        VehicleDeparted(id="4", time=0, vehicle_id="V", trip_id=lh.id, leg=0, site_id="A-HUB"): "alpha",
        VehicleArrived(id="5", time=0, vehicle_id="V", trip_id=lh.id, leg=0, site_id="B-HUB"): "beta",
        DockStatus(id="6", time=0, site_id="B-HUB", occupied=1, in_service=3): "beta",
        SiteThroughput(id="7", time=0, site_id="A-Z", rate_per_hour=500): "alpha",
        OrderCreated(id="8", time=0, order_id="O", origin="B-WH", destination="A-Z", promised_at=9): "beta",
        OrderScanned(id="9", time=0, order_id="O", site_id="A-HUB", kind="sorted"): "alpha",
        OrderDelivered(id="10", time=0, order_id="O", site_id="A-Z"): "alpha",
        DispatchCommand(id="11", time=0, trip_id=lh.id, action="depart_now"): "alpha",
    }
    for ev, shard in one.items():
        route = router.route(ev)
        assert (route.shards, route.accountable) == ((shard,), shard), ev
    # Disruptions reach every shard (every shard's model covers the whole network); one accounts.
    slowdown = DisruptionReported(
        id="d", time=0, disruption_id="D", kind="lane_slowdown", target_id="A-HUB->B-HUB", factor=2
    )
    rep = router.route(slowdown)
    assert set(rep.shards) == {"alpha", "beta"} and rep.accountable == "beta"
    clr = router.route(DisruptionCleared(id="c", time=0, disruption_id="D"))
    assert set(clr.shards) == {"alpha", "beta"} and clr.accountable == router.fallback("D")
    # A cancellation names no site: every shard gets it, the one of the order's origin accounts.
    can = router.route(OrderCancelled(id="x", time=0, order_id="O"))
    assert set(can.shards) == {"alpha", "beta"} and can.accountable is None
    # Unknown entities go to a stable shard, whose twin rejects them.
    unknown = router.route(DockStatus(id="u", time=0, site_id="NOWHERE", occupied=0, in_service=1))
    assert unknown.shards == (router.fallback("NOWHERE"),)


def test_every_generated_event_has_exactly_one_accountable_shard(mini):
    router = ShardRouter(mini.network)
    counts = Counter(router.route(ev).accountable for ev in mini.events)
    assert None not in counts
    assert sum(counts.values()) == len(mini.events)
    assert set(counts) == {"alpha", "beta"}


# ---------------------------------------------------------------------------------- tracking


def test_one_region_is_exactly_the_unsharded_twin_run():
    """Oracle: with a single region the sharded pipeline must be ``twin run``, prediction for prediction."""
    spec = load_scenario("two-region-mini")
    spec = dataclasses.replace(spec, sites=tuple(dataclasses.replace(s, region="all") for s in spec.sites))
    gen = generate(spec)
    events = [ev for ev in gen.events if ev.time < CUT]

    forecaster = Forecaster(gen.network, horizon=FAST.horizon, replicas=FAST.replicas, seed=FAST.seed)
    recorder = ForecastRecorder(forecaster)
    baseline = replay(gen.network, events, on_clock=recorder, cadence=FAST.cadence)

    result = ShardedPipeline(gen.network, forecast=FAST).run(events)
    (shard,) = result.shards.values()
    assert shard.state.snapshot() == baseline.twin.state.snapshot()
    live = [pub.prediction for pub in result.publications if pub.prediction is not None]
    assert live == recorder.predictions
    assert result.summary()["applied"] == len(events) - len(baseline.rejections)


def test_sharded_orders_end_where_the_hidden_true_world_put_them(mini):
    """Oracle: ground truth. Each order's owner shard knows its final stage and delivery time."""
    result = ShardedPipeline(mini.network).run(mini.events)
    assert result.dead_letters == []
    assert result.summary()["applied"] == len(mini.events)
    shards = list(result.shards.values())
    truth = mini.truth_orders
    assert truth.height == 400
    for oid, stage, delivered in truth.select("order_id", "final_stage", "delivered_at").iter_rows():
        owners = [s for s in shards if s.owns(f"order:{oid}")]
        assert len(owners) == 1, oid
        o = owners[0].state.orders[oid]
        assert o.stage == stage, oid
        assert o.delivered_at == delivered, oid
    late = sum(1 for s in shards for oid in s.state.late_orders() if s.owns(f"order:{oid}"))
    assert late == truth.filter(pl.col("late")).height


def test_sharded_state_equals_the_single_twin_entity_by_entity(mini):
    events = mini.events
    single = LiveTwin(mini.network)
    single.apply_all(events)
    result = ShardedPipeline(mini.network).run(events)
    shards = result.shards
    region = {sid: s.region for sid, s in mini.network.sites.items()}
    # Orders: the owner shard's record is the single twin's.
    for oid, o in single.state.orders.items():
        (owner,) = [s for s in shards.values() if s.owns(f"order:{oid}")]
        mine = owner.state.orders[oid]
        assert (mine.stage, mine.site_id, mine.trip_id, mine.hop, mine.path, mine.delivered_at) == (
            o.stage, o.site_id, o.trip_id, o.hop, o.path, o.delivered_at,
        ), oid  # fmt: skip
    # Sites: the region's shard.
    for sid, s in single.state.sites.items():
        assert shards[region[sid]].state.sites[sid] == s
    # Trips: each leg's departure is known where it leaves, its arrival where it ends.
    for tid, ts in single.state.trips.items():
        legs = mini.network.trips[tid].legs
        for i, leg in enumerate(legs):
            assert shards[region[leg.origin]].state.trips[tid].departures[i] == ts.departures[i]
            assert shards[region[leg.destination]].state.trips[tid].arrivals[i] == ts.arrivals[i]
    # Vehicles: the freshest observation across shards is the single twin's.
    for vid, v in single.state.vehicles.items():
        newest = max((s.state.vehicles[vid] for s in shards.values()), key=lambda x: (x.obs_time, x.obs_id))
        assert (newest.status, newest.site_id, newest.lane_id, newest.progress) == (
            v.status, v.site_id, v.lane_id, v.progress,
        ), vid  # fmt: skip


# ---------------------------------------------------------------------------------- handoffs


def test_a_handoff_the_destination_cannot_take_is_logged_and_counted(mini, caplog):
    """In process a rejected handoff is a bug (one network for all shards): it must show."""
    pipeline = ShardedPipeline(mini.network)
    shard = next(s for s in pipeline.shards.values() if s.name == "alpha")
    make = shard._handoff
    broken: list[str] = []

    def first_one_broken(pending):
        handoff = make(pending)
        if broken:
            return handoff
        broken.append(handoff.trip_id)
        return dataclasses.replace(handoff, trip_id="NO-SUCH-TRIP")

    shard._handoff = first_one_broken
    with caplog.at_level("WARNING", logger="streams.shards"):
        result = pipeline.run(mini.events)
    assert broken
    assert sum(s.stats.handoffs_rejected for s in result.shards.values()) == 1
    (record,) = [r for r in caplog.records if "could not take handoff" in r.getMessage()]
    assert "NO-SUCH-TRIP" in record.getMessage() and "unknown-entity" in record.getMessage()


def test_every_cross_region_departure_hands_the_trip_and_its_orders_over(mini):
    net = mini.network
    crossing = _cross_region_departures(net, mini.events)
    assert len(crossing) == 8
    result = ShardedPipeline(net).run(mini.events)
    assert sum(s.stats.handoffs_sent for s in result.shards.values()) == len(crossing)
    assert sum(s.stats.handoffs_received for s in result.shards.values()) == len(crossing)
    assert sum(s.stats.handoffs_rejected for s in result.shards.values()) == 0
    # Orders loaded at the very instant of the departure travel with it (handoffs are deferred
    # to the end of the timestamp): every order that crossed is known and owned at its destination.
    loaded = {
        (ev.order_id, ev.trip_id)
        for ev in mini.events
        if isinstance(ev, OrderScanned) and ev.kind == "loaded" and ev.trip_id in {d.trip_id for d in crossing}
    }
    assert loaded
    for oid, _trip in loaded:
        o = mini.truth_orders.filter(pl.col("order_id") == oid).row(0, named=True)
        dest_region = net.sites[o["destination"]].region
        assert result.shards[dest_region].owns(f"order:{oid}")
        assert oid in result.shards[dest_region].state.orders


def test_a_shard_learns_that_the_trip_it_handed_off_arrived(mini):
    """A vehicle shuttling between regions: the shard that handed trip T off never sees T arrive,
    but the handoff of the vehicle's next trip back carries T's arrival. Without it the shard
    would forecast the next trips of that vehicle behind a trip it believes still on the road."""
    single = LiveTwin(mini.network)
    single.apply_all(mini.events)
    result = ShardedPipeline(mini.network).run(mini.events)
    net = mini.network
    checked = 0
    for name, shard in result.shards.items():
        st = shard.state
        for tid, ts in st.trips.items():
            nxt = [t for t in net.rotations[net.trips[tid].vehicle_id] if net.previous_trip(t) == tid]
            if not nxt or ts.departures[0] is None:
                continue
            if st.trips[nxt[0]].departures[0] is not None:  # the vehicle left on its next trip
                assert ts.arrivals[-1] == single.state.trips[tid].arrivals[-1], (name, tid)
                checked += 1
    assert checked > 20


def test_order_of_equal_time_events_does_not_change_the_outcome(mini, mini_cut):
    base = ShardedPipeline(mini.network, forecast=FAST).run(mini_cut)
    rng = random.Random(11)
    groups: dict[float, list] = {}
    for ev in mini_cut:
        groups.setdefault(ev.time, []).append(ev)
    shuffled = []
    for t in sorted(groups):
        batch = groups[t][:]
        rng.shuffle(batch)
        shuffled.extend(batch)
    assert shuffled != mini_cut
    other = ShardedPipeline(mini.network, forecast=FAST).run(shuffled)
    for name, shard in base.shards.items():
        assert other.shards[name].state.snapshot() == shard.state.snapshot(), name
    assert other.final_predictions() == base.final_predictions()


# ---------------------------------------------------------------------------------- predictions


def test_each_shard_publishes_only_what_it_owns_and_every_open_entity_once(mini, mini_cut):
    result = ShardedPipeline(mini.network, forecast=FAST).run(mini_cut)
    final = result.final_predictions()
    assert len(final) > 100
    kinds = Counter(p.kind for p in final.values())
    assert kinds["site"] == len(mini.network.sites) and kinds["order"] > 50 and kinds["trip"] > 5
    # Every open order of the owner shards is predicted once; nothing closed is left on the topic.
    open_orders = {
        f"order:{oid}"
        for s in result.shards.values()
        for oid, o in s.state.orders.items()
        if s.owns(f"order:{oid}") and o.stage not in ("delivered", "cancelled")
    }
    assert {k for k in final if k.startswith("order:")} == open_orders
    # The final set is as of each shard's own clock.
    for pub in result.publications[-len(final) :]:
        if pub.prediction is not None:
            assert pub.prediction.as_of == result.shards[pub.shard].clock
    # One publisher per key at a time: between two live publications of a key by different
    # shards, ownership moved by a handoff (the key is a crossing trip or order).
    crossing = {f"trip:{d.trip_id}" for d in _cross_region_departures(mini.network, mini_cut)}
    last_by: dict[str, str] = {}
    for pub in result.publications:
        prev = last_by.get(pub.key)
        if prev is not None and prev != pub.shard:
            assert pub.key.startswith("order:") or pub.key in crossing, pub.key
        last_by[pub.key] = pub.shard


def test_closed_entities_are_tombstoned(mini):
    result = ShardedPipeline(mini.network, forecast=FAST).run(mini.events)
    tombstones = [p for p in result.publications if p.prediction is None]
    assert tombstones
    final = result.final_predictions()
    # At the end of the day every order is delivered and every trip completed: only sites remain
    # (plus trips still running when the day ends).
    assert not [k for k in final if k.startswith("order:")]
    assert {k for k in final if k.startswith("site:")} == {f"site:{s}" for s in mini.network.sites}
    assert fold_publications(result.publications) == final


def test_publications_are_deterministic(mini, mini_cut):
    a = ShardedPipeline(mini.network, forecast=FAST).run(mini_cut)
    b = ShardedPipeline(mini.network, forecast=FAST).run(mini_cut)
    assert a.publications == b.publications


# ---------------------------------------------------------------------------------- snapshots


def test_shards_restored_from_json_snapshots_mid_stream_finish_identically(mini, mini_cut):
    base = ShardedPipeline(mini.network, forecast=FAST).run(mini_cut)
    half = len(mini_cut) // 2
    # Cut right after a cross-region departure, so a handoff is still pending in the snapshot.
    dep = _cross_region_departures(mini.network, mini_cut)[1]
    cut = mini_cut.index(dep) + 1
    for split in (half, cut):
        pipe = ShardedPipeline(mini.network, forecast=FAST)
        for ev in mini_cut[:split]:
            pipe.apply(ev)
        for name, shard in list(pipe.shards.items()):
            snap = json.loads(json.dumps(shard.snapshot()))
            restored = Shard.from_snapshot(mini.network, snap, pipe.router)
            pipe.shards[name] = restored
        for ev in mini_cut[split:]:
            pipe.apply(ev)
        again = pipe.finish()
        for name, shard in base.shards.items():
            assert again.shards[name].state.snapshot() == shard.state.snapshot()
            assert again.shards[name].stats == shard.stats
        assert again.final_predictions() == base.final_predictions()


# ---------------------------------------------------------------------------------- accounting


def test_bad_events_are_dead_lettered_once_and_the_counts_add_up(mini, mini_cut):
    good = mini_cut
    created = next(ev for ev in good if isinstance(ev, OrderCreated))
    position = next(ev for ev in good if isinstance(ev, VehiclePosition) and ev.time > 3 * 3600)
    bad_at = good.index(position) + 1
    late_at = bad_at + 50
    bad = [
        position,  # the same event again: a duplicate id
        DockStatus(id="unknown-site", time=position.time, site_id="NOWHERE", occupied=0, in_service=1),
        VehiclePosition(
            id="invalid",
            time=position.time,
            vehicle_id=position.vehicle_id,
            site_id="A-HUB",
            lane_id="A-WH->A-HUB",
            progress=0.1,
        ),  # fmt: skip
        OrderScanned(id="never-created", time=position.time, order_id="NO-SUCH-ORDER", site_id="A-HUB", kind="sorted"),
        OrderCancelled(id="cancel-known", time=position.time, order_id=created.order_id),
        OrderCancelled(id="cancel-unknown", time=position.time, order_id="NO-SUCH-ORDER-2"),
    ]
    too_late = DockStatus(id="too-late", time=10.0, site_id="A-HUB", occupied=0, in_service=3)
    stream = [*good[:bad_at], *bad, *good[bad_at:late_at], too_late, *good[late_at:]]
    result = ShardedPipeline(mini.network).run(stream)
    reasons = Counter(r.reason for r in result.dead_letters)
    assert reasons == {"duplicate": 1, "unknown-entity": 2, "invalid": 1, "too-late": 1}
    assert {r.event_id for r in result.dead_letters} >= {"unknown-site", "invalid", "never-created", "too-late"}
    stats = [s.stats for s in result.shards.values()]
    applied = sum(sum(s.applied.values()) for s in stats)
    dead = sum(sum(s.dead_lettered.values()) for s in stats)
    assert sum(s.pending for s in stats) == 0
    # The cancellation of an order no shard knows is counted nowhere (its copies are dropped).
    assert applied + dead == len(stream) - 1
    assert sum(s.dropped_copies for s in stats) >= 2
    origin = result.shards[mini.network.sites[created.origin].region]
    assert origin.stats.applied["logistics.order.cancelled.v1"] == 1


def test_twin_backtest_sharded_scores_what_the_shards_publish(mini, tmp_path):
    from scenarios.predictions import predictions_frame
    from streams.cli import main

    out = tmp_path / "bt"
    argv = ["backtest", "two-region-mini", "--sharded", "--replicas", "4", "--cadence", "3600"]
    assert main([*argv, "--horizon", "8", "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["forecasts_by"].startswith("per-region shards")
    settings = ForecastSettings(cadence=3600.0, horizon=8 * 3600.0, replicas=4, seed=mini.spec.forecast_seed)
    result = ShardedPipeline(mini.network, forecast=settings).run(mini.events)
    want = predictions_frame(p.prediction for p in result.publications if p.prediction is not None)
    got = pl.read_parquet(out / "predictions.parquet")
    assert got.height == want.height > 1000
    assert got.sort("as_of", "kind", "id").equals(want.sort("as_of", "kind", "id"))
