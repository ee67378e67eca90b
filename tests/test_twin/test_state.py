"""The fold: one test per handler, idempotency, lateness, unknown entities, parking."""

from __future__ import annotations

import math

import pytest

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
from twin.lane import Lane, LaneState
from twin.live import LiveTwin
from twin.network import Network
from twin.site import Site
from twin.state import WorldState
from twin.trip import Leg, Trip
from twin.vehicle import Vehicle


def network() -> Network:
    sites = [
        Site("A", "warehouse", "r1", 2, 600.0),
        Site("B", "hub", "r1", 3, 1200.0),
        Site("C", "zone", "r2", 2, 600.0),
    ]
    lanes = [
        Lane("A->B", "A", "B", 3600.0),
        Lane("B->A", "B", "A", 3600.0),
        Lane("B->C", "B", "C", 1800.0),
    ]
    vehicles = [Vehicle("V1", 50, "A"), Vehicle("V2", 50, "B"), Vehicle("V3", 50, "B")]
    trips = [
        Trip("T1", "V1", (Leg("A->B", "A", "B", 1000.0, 4600.0),)),
        Trip("T2", "V2", (Leg("B->C", "B", "C", 6000.0, 7800.0),)),
        Trip("T3", "V1", (Leg("B->A", "B", "A", 6000.0, 9600.0),)),
        Trip("T4", "V3", (Leg("B->C", "B", "C", 9000.0, 10800.0),)),
    ]
    return Network(sites, lanes, vehicles, trips)


@pytest.fixture
def twin() -> LiveTwin:
    return LiveTwin(network(), lateness=600.0)


def created(eid: str = "c1", t: float = 10.0, oid: str = "O1") -> OrderCreated:
    return OrderCreated(
        id=eid, time=t, order_id=oid, origin="A", destination="C", promised_at=9000.0, path=("T1", "T2")
    )


def test_position_on_lane_and_at_site(twin):
    assert twin.apply(VehiclePosition(id="p1", time=1600.0, vehicle_id="V1", lane_id="A->B", progress=0.2)) == ()
    v = twin.state.vehicles["V1"]
    assert (v.status, v.lane_id, v.progress) == ("en_route", "A->B", 0.2)
    # dead reckoning at nominal speed: 360 s later the vehicle is 10 % further
    assert twin.state.vehicle_progress("V1", 1960.0) == pytest.approx(0.3)
    twin.apply(VehiclePosition(id="p2", time=5000.0, vehicle_id="V1", site_id="B"))
    assert (v.status, v.site_id, v.lane_id) == ("at_site", "B", None)


def test_observed_speed_updates_lane_slowdown(twin):
    lane = twin.state.lanes["A->B"]
    twin.apply(VehicleDeparted(id="d1", time=1000.0, vehicle_id="V1", trip_id="T1", leg=0, site_id="A"))
    twin.apply(VehiclePosition(id="p1", time=2800.0, vehicle_id="V1", lane_id="A->B", progress=0.25))
    # 1800 s for a quarter of a 3600 s lane: twice as slow as nominal
    assert lane.factor(3600.0) == pytest.approx(2.0)
    assert twin.state.vehicle_progress("V1", 3520.0) == pytest.approx(0.25 + 720.0 / 7200.0)


def test_departed_and_arrived(twin):
    twin.apply(VehicleDeparted(id="d1", time=1100.0, vehicle_id="V1", trip_id="T1", leg=0, site_id="A"))
    ts = twin.state.trips["T1"]
    assert ts.departures == [1100.0] and ts.status == "en_route"
    twin.apply(VehicleArrived(id="a1", time=4800.0, vehicle_id="V1", trip_id="T1", leg=0, site_id="B"))
    assert ts.arrivals == [4800.0] and ts.status == "completed"
    v = twin.state.vehicles["V1"]
    assert (v.status, v.site_id, v.trip_id) == ("at_site", "B", "T1")


def test_departure_from_wrong_site_is_invalid(twin):
    (r,) = twin.apply(VehicleDeparted(id="d1", time=1100.0, vehicle_id="V1", trip_id="T1", leg=0, site_id="B"))
    assert r.reason == "invalid" and "departs from 'A'" in r.detail


def test_dock_status_and_throughput(twin):
    twin.apply(DockStatus(id="k1", time=100.0, site_id="B", occupied=2, in_service=3))
    twin.apply(SiteThroughput(id="s1", time=100.0, site_id="B", rate_per_hour=900.0))
    s = twin.state.sites["B"]
    assert (s.docks_occupied, s.docks_in_service, s.handling_rate) == (2, 3, 900.0)
    (r,) = twin.apply(SiteThroughput(id="s2", time=110.0, site_id="B", rate_per_hour=0.0))
    assert r.reason == "invalid"


def test_disruption_reported_and_cleared(twin):
    twin.apply(
        DisruptionReported(id="x1", time=100.0, disruption_id="D1", kind="lane_slowdown", target_id="A->B", factor=1.5)
    )
    assert twin.state.lanes["A->B"].factor(3600.0) == 1.5
    twin.apply(DisruptionCleared(id="x2", time=200.0, disruption_id="D1"))
    assert twin.state.lanes["A->B"].factor(3600.0) == 1.0
    assert twin.state.disruptions["D1"].cleared_at == 200.0


def test_order_lifecycle(twin):
    twin.apply(created())
    o = twin.state.orders["O1"]
    assert (o.stage, o.site_id, o.boards) == ("created", "A", ["A", "B"])
    twin.apply(OrderScanned(id="s1", time=1000.0, order_id="O1", site_id="A", kind="loaded", trip_id="T1"))
    assert (o.stage, o.trip_id, o.hop) == ("loaded", "T1", 0)
    twin.apply(OrderScanned(id="s2", time=5000.0, order_id="O1", site_id="B", kind="unloaded"))
    assert (o.stage, o.site_id, o.trip_id, o.hop) == ("unloaded", "B", None, 1)
    twin.apply(OrderScanned(id="s3", time=5100.0, order_id="O1", site_id="B", kind="sorted"))
    twin.apply(OrderDelivered(id="s4", time=8000.0, order_id="O1", site_id="C"))
    assert (o.stage, o.delivered_at) == ("delivered", 8000.0)
    assert twin.state.late_orders() == []


def test_move_order_rebooks_the_waiting_hop(twin):
    twin.apply(created())
    twin.apply(OrderScanned(id="s1", time=5100.0, order_id="O1", site_id="B", kind="sorted"))
    (r,) = twin.apply(DispatchCommand(id="m0", time=5150.0, trip_id="T3", action="move_order", order_id="O1"))
    assert r.reason == "invalid" and "does not go from 'B' to 'C'" in r.detail
    assert twin.apply(DispatchCommand(id="m1", time=5200.0, trip_id="T4", action="move_order", order_id="O1")) == ()
    assert twin.state.orders["O1"].path == ["T1", "T4"]


def test_order_loaded_on_another_trip_is_rebooked(twin):
    twin.apply(created())
    twin.apply(OrderScanned(id="s1", time=5100.0, order_id="O1", site_id="B", kind="sorted"))
    twin.apply(OrderScanned(id="s2", time=9000.0, order_id="O1", site_id="B", kind="loaded", trip_id="T4"))
    o = twin.state.orders["O1"]
    assert (o.path, o.hop, o.trip_id) == (["T1", "T4"], 1, "T4")


def test_order_cancelled(twin):
    twin.apply(created())
    twin.apply(OrderCancelled(id="x", time=50.0, order_id="O1", reason="customer"))
    assert twin.state.orders["O1"].stage == "cancelled"


def test_dispatch_hold_and_depart_now(twin):
    twin.apply(DispatchCommand(id="h1", time=100.0, trip_id="T2", action="hold", until=6600.0))
    assert twin.state.trips["T2"].hold_until == 6600.0
    twin.apply(DispatchCommand(id="h2", time=200.0, trip_id="T2", action="depart_now"))
    ts = twin.state.trips["T2"]
    assert (ts.hold_until, ts.depart_now) == (None, True)
    (r,) = twin.apply(DispatchCommand(id="h3", time=300.0, trip_id="T2", action="hold"))
    assert r.reason == "invalid" and "until" in r.detail


def test_same_event_id_twice_changes_nothing(twin):
    ev = VehiclePosition(id="p1", time=1600.0, vehicle_id="V1", lane_id="A->B", progress=0.2)
    twin.apply(ev)
    before = twin.state.snapshot()
    (r,) = twin.apply(ev)
    assert r.reason == "duplicate"
    assert twin.state.snapshot() == before
    assert twin.stats.applied_total == 1


def test_late_event_within_lateness_is_a_correction(twin):
    twin.apply(VehiclePosition(id="p2", time=2000.0, vehicle_id="V1", lane_id="A->B", progress=0.3))
    # an older observation arrives late but within 600 s: applied, does not override the newer one
    assert twin.apply(VehiclePosition(id="p1", time=1500.0, vehicle_id="V1", lane_id="A->B", progress=0.15)) == ()
    assert twin.state.vehicles["V1"].progress == 0.3
    # a late departure event is still recorded
    assert twin.apply(VehicleDeparted(id="d1", time=1450.0, vehicle_id="V1", trip_id="T1", leg=0, site_id="A")) == ()
    assert twin.state.trips["T1"].departures == [1450.0]


def test_too_late_event_is_rejected(twin):
    twin.apply(VehiclePosition(id="p2", time=5000.0, vehicle_id="V1", lane_id="A->B", progress=0.9))
    (r,) = twin.apply(VehiclePosition(id="p1", time=4000.0, vehicle_id="V1", lane_id="A->B", progress=0.5))
    assert r.reason == "too-late" and "allowed lateness is 600 s" in r.detail
    assert twin.stats.rejected["too-late"] == 1


@pytest.mark.parametrize(
    "event",
    [
        VehiclePosition(id="u1", time=1.0, vehicle_id="nope", site_id="A"),
        VehiclePosition(id="u2", time=1.0, vehicle_id="V1", lane_id="X->Y", progress=0.1),
        VehicleArrived(id="u3", time=1.0, vehicle_id="V1", trip_id="T9", leg=0, site_id="B"),
        DockStatus(id="u4", time=1.0, site_id="Z", occupied=0, in_service=1),
        DispatchCommand(id="u5", time=1.0, trip_id="T9", action="depart_now"),
        OrderCreated(id="u6", time=1.0, order_id="O9", origin="A", destination="C", promised_at=1.0, path=("T1", "T7")),
    ],
)
def test_unknown_entities_are_rejected(twin, event):
    (r,) = twin.apply(event)
    assert r.reason == "unknown-entity"
    assert r.event_id == event.id


def test_scan_before_its_order_waits_then_applies(twin):
    assert twin.apply(OrderScanned(id="s1", time=1000.0, order_id="O1", site_id="A", kind="loaded", trip_id="T1")) == ()
    assert twin.stats.parked == 1
    assert twin.apply(created(t=990.0)) == ()
    assert twin.stats.parked == 0
    assert twin.state.orders["O1"].stage == "loaded"
    assert twin.stats.applied_total == 2


def test_scan_of_an_order_that_never_appears_is_rejected_not_lost(twin):
    twin.apply(OrderScanned(id="s1", time=1000.0, order_id="O404", site_id="A", kind="sorted"))
    # the clock moves past the lateness window: the parked scan comes back as a rejection
    out = twin.apply(VehiclePosition(id="p", time=1700.0, vehicle_id="V1", site_id="A"))
    assert [(r.event_id, r.reason) for r in out] == [("s1", "unknown-entity")]
    assert twin.stats.parked == 0


def test_flush_returns_what_is_still_parked(twin):
    twin.apply(OrderDelivered(id="s1", time=1000.0, order_id="O404", site_id="C"))
    assert [(r.event_id, r.reason) for r in twin.flush()] == [("s1", "unknown-entity")]


def test_duplicate_of_a_parked_event(twin):
    ev = OrderScanned(id="s1", time=1000.0, order_id="O1", site_id="A", kind="sorted")
    twin.apply(ev)
    (r,) = twin.apply(ev)
    assert r.reason == "duplicate"


def test_invalid_values_say_the_rule(twin):
    (r,) = twin.apply(VehiclePosition(id="p", time=1.0, vehicle_id="V1", lane_id="A->B", progress=1.5))
    assert r.reason == "invalid" and "[0, 1]" in r.detail
    (r,) = twin.apply(VehiclePosition(id="q", time=1.0, vehicle_id="V1"))
    assert r.reason == "invalid"


def test_clock_is_the_watermark_and_simpy_follows(twin):
    twin.apply(VehiclePosition(id="p", time=1234.0, vehicle_id="V1", site_id="A"))
    assert twin.clock == 1234.0 and twin.env.now == 1234.0
    twin.apply(VehiclePosition(id="q", time=1000.0, vehicle_id="V1", site_id="A"))
    assert twin.clock == 1234.0


def _traversal(ls: LaneState, vehicle: str, ratio: float, travel: float = 3600.0) -> None:
    """One vehicle a quarter of the way along the lane at ``ratio`` times nominal speed."""
    ls.observe(vehicle, 0.0, 0.0)
    ls.observe(vehicle, 0.25 * travel * ratio, 0.25)


def test_one_traversal_within_the_lane_noise_is_not_a_lane_slowdown():
    # a vehicle 11 % slow on a lane whose trips vary by sigma 0.12: its own luck, not the lane's
    ls = LaneState()
    _traversal(ls, "V1", 1.11)
    assert ls.factor(3600.0) == pytest.approx(1.11)  # without noise every observation counts
    assert ls.factor(3600.0, 0.12) == 1.0
    # four vehicles all 11 % slow: their mean has sigma 0.06, so most of it is the lane's
    for v in ("V2", "V3", "V4"):
        _traversal(ls, v, 1.11)
    m = math.log(1.11)
    assert ls.factor(3600.0, 0.12) == pytest.approx(math.exp(m * (1 - 0.12**2 / (4 * m * m))))


def test_one_traversal_far_beyond_the_noise_is_a_slowdown():
    ls = LaneState()
    _traversal(ls, "V1", 2.0)
    m = math.log(2.0)
    assert ls.factor(3600.0, 0.12) == pytest.approx(math.exp(m * (1 - 0.12**2 / (m * m))))
    assert ls.factor(3600.0, 0.12) > 1.95


def test_observations_are_shrunk_toward_a_reported_disruption():
    ls = LaneState(disruption_factor=1.5)
    _traversal(ls, "V1", 1.6)
    assert ls.factor(3600.0, 0.12) == pytest.approx(1.5)


def test_a_lane_belief_carries_its_own_uncertainty():
    """The estimate's posterior spread: none when the evidence is taken as noise or there is
    no noise at all, ``sqrt((1 - B) sigma^2 / n)`` otherwise, and smaller with more traversals."""
    ls = LaneState()
    assert ls.belief(3600.0, 0.12) == (1.0, 0.0)  # no evidence: the reported factor, certain
    _traversal(ls, "V1", 1.11)
    assert ls.belief(3600.0, 0.12) == (1.0, 0.0)  # within the noise: fully shrunk
    assert ls.belief(3600.0)[1] == 0.0  # sigma 0: believed as observed
    for v in ("V2", "V3", "V4"):
        _traversal(ls, v, 1.11)
    m = math.log(1.11)
    keep = 1 - 0.12**2 / (4 * m * m)
    factor, spread = ls.belief(3600.0, 0.12)
    assert factor == pytest.approx(math.exp(m * keep))
    assert spread == pytest.approx(math.sqrt(keep * 0.12**2 / 4))
    for v in ("V5", "V6", "V7", "V8"):
        _traversal(ls, v, 1.11)
    assert 0 < ls.belief(3600.0, 0.12)[1] < spread


def test_a_traversal_remembers_its_first_observation_past_halfway_in_any_order():
    import itertools

    obs = [(0.0, 0.0), (900.0, 0.3), (1500.0, 0.5), (2100.0, 0.7), (3000.0, 1.0)]
    for order in itertools.permutations(obs):
        ls = LaneState()
        for t, p in order:
            ls.observe("V1", t, p)
        s = ls.samples["V1"]
        assert (s.first_time, s.mid_time, s.last_time) == (0.0, 1500.0, 3000.0)
    assert s.halves(3000.0) == pytest.approx((0.0, 0.0, 0.5, 0.5))
    ls.observe("V1", 3100.0, 0.1)  # a new traversal forgets the old halfway point
    assert ls.samples["V1"].mid_time == math.inf and ls.samples["V1"].halves(3000.0) is None


def test_a_traversal_whose_pace_changed_at_halfway_speaks_with_its_second_half():
    """Lane of 3600 s, sigma 0.12: V1 drives the first half at 2.2 times nominal (0 -> 3960 s,
    progress 0.5), then the second at nominal speed (3960 -> 5760 s). Whole-traversal average:
    (5760 / 3600) / 1.0 = 1.6; second half: (1800 / 3600) / 0.5 = 1.0. The log paces differ by
    log 2.2 = 0.79; along-road variation gives the difference a variance of
    (1 - persistence) * 0.12**2 * (1/0.5 + 1/0.5)."""
    ls = LaneState()
    for t, p in [(0.0, 0.0), (3960.0, 0.5), (5760.0, 1.0)]:
        ls.observe("V1", t, p)
    s = ls.samples["V1"]
    assert s.ratio(3600.0) == pytest.approx(1.6)
    # persistence 0.9: sd 0.076, the change is 10 sd: the second half alone
    assert s.recent(3600.0, 0.12, 0.9) == pytest.approx((1.0, 0.5))
    # no persistence at all: sd 0.24, the change is 3.3 sd: still a change
    assert s.recent(3600.0, 0.12, 0.0) == pytest.approx((1.0, 0.5))
    # a lane with sigma 0.5: sd 1.0 at no persistence, 0.79 is within the road's variation
    assert s.recent(3600.0, 0.5, 0.0) == pytest.approx((1.6, 1.0))
    # sigma 0 (no model of variation): the whole span, as before
    assert s.recent(3600.0, 0.0, 0.9) == pytest.approx((1.6, 1.0))
    # a steady traversal (same pace on both halves, 1.1): the whole span
    for t, p in [(0.0, 0.0), (1980.0, 0.5), (3960.0, 1.0)]:
        ls.observe("V2", t, p)
    assert ls.samples["V2"].recent(3600.0, 0.12, 0.9) == pytest.approx((1.1, 1.0))
    # a second half too short to tell (60 s < MIN_SAMPLE_SECONDS): the whole span
    for t, p in [(0.0, 0.0), (3960.0, 0.5), (4020.0, 0.52)]:
        ls.observe("V3", t, p)
    assert ls.samples["V3"].recent(3600.0, 0.12, 0.9) == pytest.approx(((4020.0 / 3600.0) / 0.52, 0.52))
    # the lane's belief still averages whole traversals
    assert ls.belief(3600.0)[0] == pytest.approx(math.exp((math.log(1.6) + math.log(1.1) + math.log(4020 / 1872)) / 3))


def test_the_pace_shown_on_a_leg_in_progress_follows_a_change_of_pace(twin):
    from twin.forecast import leg_paces

    twin.apply(VehicleDeparted(id="d1", time=1000.0, vehicle_id="V1", trip_id="T1", leg=0, site_id="A"))
    twin.apply(VehiclePosition(id="p1", time=2800.0, vehicle_id="V1", lane_id="A->B", progress=0.25))
    # before halfway: the pace since departure, 1800 s for a quarter of 3600 s (ratio 2)
    assert leg_paces(twin.state, 0.9)[("T1", 0)] == pytest.approx((math.log(2.0), 0.25))
    twin.apply(VehiclePosition(id="p2", time=3400.0, vehicle_id="V1", lane_id="A->B", progress=0.5))
    twin.apply(VehiclePosition(id="p3", time=4300.0, vehicle_id="V1", lane_id="A->B", progress=0.75))
    # halves: 2400 s for half (ratio 1.33), then 900 s for a quarter (ratio 1); the log paces
    # differ by 0.29, against sd sqrt((1 - rho) * 0.1**2 * (1/0.5 + 1/0.25)):
    # rho 0.9: sd 0.077, a change: the pace since halfway
    assert leg_paces(twin.state, 0.9)[("T1", 0)] == pytest.approx((0.0, 0.25))
    # rho 0: sd 0.24, within the road's variation: the average since departure (3300 s for 0.75)
    assert leg_paces(twin.state, 0.0)[("T1", 0)] == pytest.approx((math.log(3300.0 / 3600.0 / 0.75), 0.75))


def _split_traversals(rng, share: float, sigma: float, n: int, travel: float = 3600.0) -> list[tuple[Lane, LaneState]]:
    """Traversals whose pace on each half is the vehicle's own (variance ``share * sigma**2``)
    times independent variation along the road (``(1 - share) * sigma**2 / 0.5`` per half)."""
    lane = Lane("A->B", "A", "B", travel, sigma=sigma)
    ls = LaneState()
    for i in range(n):
        b = rng.normal(0.0, math.sqrt(share) * sigma)
        w1, w2 = rng.normal(0.0, math.sqrt((1 - share) * sigma**2 / 0.5), size=2)
        t_mid = 0.5 * travel * math.exp(b + w1)
        ls.observe(f"V{i}", 0.0, 0.0)
        ls.observe(f"V{i}", t_mid, 0.5)
        ls.observe(f"V{i}", t_mid + 0.5 * travel * math.exp(b + w2), 1.0)
    return [(lane, ls)]


def test_pace_persistence_recovers_the_share_that_generated_the_traversals():
    """Oracle: traversals drawn from the model with a known persistent share."""
    import numpy as np

    from twin.lane import PERSISTENCE_PRIOR_TRAVERSALS, pace_persistence

    rng = np.random.default_rng(11)
    for share in (0.0, 0.5, 0.9):
        est = pace_persistence(_split_traversals(rng, share, 0.12, 4000))
        assert est.traversals == 4000
        assert est.share == pytest.approx(share, abs=0.05)
    # few traversals: held toward no persistence by the prior pseudo-traversals
    few = pace_persistence(_split_traversals(rng, 1.0, 0.12, 2))
    assert few.share == pytest.approx(1 - PERSISTENCE_PRIOR_TRAVERSALS / (2 + PERSISTENCE_PRIOR_TRAVERSALS), abs=0.01)
    assert pace_persistence([]).share == 0.0


#: one vehicle's three traversals of a lane of 3600 s, each observed at 0, halfway and its end
#: (the third at 0.75): paces per half 1.0 / 1.2, 1.0 / 0.8, 1.0 / 1.0
_A = [(0.0, 0.0), (1800.0, 0.5), (3960.0, 1.0)]
_B = [(10000.0, 0.0), (11800.0, 0.5), (13240.0, 1.0)]
_C = [(20000.0, 0.0), (21800.0, 0.5), (22700.0, 0.75)]


def test_pace_persistence_counts_every_traversal_of_a_vehicle_not_only_its_newest():
    """Worked by hand, sigma 0.1: a traversal's term is d**2 / (sigma**2 * (1/p1 + 1/p2)) for the
    difference d of its log paces before and after halfway, here 25 * d**2. A: 25 * log(1.2)**2
    = 0.8310; B: 25 * log(0.8)**2 = 1.2448; C: 0. With the prior's 2 pseudo-traversals at share 0,
    unexplained = (2 + 0.8310 + 1.2448 + 0) / (3 + 2) = 0.8152, share 0.1848. (Counting only the
    vehicle's newest traversal, C, gave 1 - 2 / 3 = 0.3333 from one traversal.)"""
    from twin.lane import PERSISTENCE_PRIOR_TRAVERSALS, pace_persistence

    lane = Lane("A->B", "A", "B", 3600.0, sigma=0.1)
    ls = LaneState()
    for t, p in _A + _B + _C:
        ls.observe("V1", t, p)
    # the newest traversal is the lane's sample, the one before is kept whole, the oldest counted
    assert (ls.samples["V1"].first_time, ls.previous["V1"].first_time) == (20000.0, 10000.0)
    assert ls.finished["V1"].traversals == 1
    assert ls.finished["V1"].unexplained == pytest.approx(math.log(1.2) ** 2 / 4)
    terms = [25 * math.log(1.2) ** 2, 25 * math.log(0.8) ** 2, 0.0]
    assert terms == pytest.approx([0.83103, 1.24483, 0.0], abs=1e-5)
    est = pace_persistence([(lane, ls)])
    assert est.traversals == 3
    assert est.share == pytest.approx(1 - (PERSISTENCE_PRIOR_TRAVERSALS + sum(terms)) / (3 + 2))
    assert est.share == pytest.approx(0.18483, abs=1e-5)
    # the lane's belief still rests on each vehicle's newest traversal only (C: pace 1.0)
    assert ls.belief(3600.0)[0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "order",
    [
        _A + _B + _C,
        # the end of a traversal reported after the next one began
        _A[:2] + _B[:2] + _A[2:] + _B[2:] + _C,
        _A[:2] + _B[:1] + _A[2:] + _B[1:] + _C,
        # a departure reported after the next position on the lane
        _A + _B[1:2] + _B[:1] + _B[2:] + _C[1:2] + _C[:1] + _C[2:],
        # the previous traversal's end reported after the newest began
        _A + _B[:2] + _C[:1] + _B[2:] + _C[1:],
    ],
)
def test_every_traversal_is_counted_whatever_order_its_observations_arrive_in(order):
    """Out of order by less than a traversal: the same samples, previous traversals and counts."""
    ls = LaneState()
    for t, p in order:
        ls.observe("V1", t, p)
    ref = LaneState()
    for t, p in _A + _B + _C:
        ref.observe("V1", t, p)
    assert ls == ref
    assert ls.finished["V1"].traversals == 1


def test_lane_history_survives_a_snapshot(twin):
    for i, (t, p) in enumerate(_A + _B + _C):
        twin.apply(VehiclePosition(id=f"p{i}", time=t, vehicle_id="V1", lane_id="A->B", progress=p))
    state = twin.state
    back = WorldState.from_snapshot(state.network, state.snapshot())
    assert back.lanes["A->B"] == state.lanes["A->B"]
    assert back.lanes["A->B"].finished["V1"].traversals == 1 and "V1" in back.lanes["A->B"].previous


def test_when_a_vehicle_still_unloading_took_its_dock():
    """``SiteState.unloading_since``, worked by hand (docks first come, first served)."""
    from twin.site import SiteState

    s = SiteState(docks_in_service=1)
    for t in (300.0, 1620.0, 1620.0, 2500.0):
        s.unloaded(t)
    assert s.unloads == [300.0, 1620.0, 2500.0]  # distinct times, in order
    # one dock: it took the dock when the unloading before it ended (1620), or on arrival
    assert s.unloading_since(1100.0, 0, 1, 1800.0) == 1620.0
    assert s.unloading_since(1700.0, 0, 1, 1800.0) == 1700.0
    # a vehicle that arrived earlier still holds the only dock: queued
    assert s.unloading_since(1100.0, 1, 1, 1800.0) is None
    # three docks, nothing ahead: one unloading ended since it arrived (1620), which may have
    # been a vehicle unloading beside it: it had a dock on arrival
    assert s.unloading_since(1100.0, 0, 3, 1800.0) == 1100.0
    # three docks, two still ahead of it and one ended since: at worst it waited for that one
    assert s.unloading_since(1100.0, 2, 3, 1800.0) == 1620.0
    # what ended after the clock is not known yet
    assert s.unloading_since(2000.0, 0, 1, 2400.0) == 2000.0


def test_when_the_sorter_took_up_the_freight_next_in_line():
    """``SiteState.sorting_since``, worked by hand (one sorter, first come, first served)."""
    from twin.site import SiteState

    s = SiteState(docks_in_service=1)
    for t in (900.0, 2400.0, 2400.0, 4000.0):
        s.sort_ended(t)
    assert s.sorts == [900.0, 2400.0, 4000.0]
    # unloaded at 1000 while the sorter was busy until 2400: sorted since 2400, not 1000
    assert s.sorting_since(1000.0, 3000.0) == 2400.0
    # unloaded at 2500, after the sorter was free: since it was unloaded
    assert s.sorting_since(2500.0, 3000.0) == 2500.0
    # sortings that ended after the clock are not known yet
    assert s.sorting_since(1000.0, 2000.0) == 1000.0
    assert SiteState(docks_in_service=1).sorting_since(1000.0, 3000.0) == 1000.0
