"""The SimPy network model against oracles: Erlang C, and cascades worked out by hand."""

from __future__ import annotations

import math
import random

import pytest

from twin.durations import NominalDurations, whole
from twin.lane import Lane, lane_id
from twin.live import LiveTwin
from twin.model import Model
from twin.network import Network
from twin.site import Site
from twin.state import WorldState
from twin.trip import Leg, Trip
from twin.vehicle import Vehicle


def _lane(a: str, b: str, seconds: float) -> Lane:
    return Lane(lane_id(a, b), a, b, seconds, 0.0)


def _trip(tid: str, vid: str, a: str, b: str, dep: float, travel: float, hold: float = 1800.0) -> Trip:
    return Trip(tid, vid, (Leg(lane_id(a, b), a, b, dep, dep + travel),), hold)


def _site(sid: str, docks: int = 2, rate: float = 3600.0) -> Site:
    # rate 3600/h: sorting one order takes exactly one second
    return Site(sid, "hub", "r1", docks, rate, dock_seconds=600.0, seconds_per_order=2.0)


class Recorder:
    def __init__(self) -> None:
        self.log: list[tuple[float, str, str]] = []

    def departed(self, t, trip_id, leg, vehicle_id, site_id):
        self.log.append((t, "departed", trip_id))

    def arrived(self, t, trip_id, leg, vehicle_id, site_id):
        self.log.append((t, "arrived", trip_id))

    def scanned(self, t, order_id, site_id, kind, trip_id):
        self.log.append((t, kind, order_id))

    def delivered(self, t, order_id, site_id):
        self.log.append((t, "delivered", order_id))

    def docks(self, t, site_id, occupied, in_service):
        pass

    def rolled(self, t, order_id, from_trip, to_trip):
        self.log.append((t, f"rolled:{from_trip}->{to_trip}", order_id))


def _abc_network(hold: float) -> Network:
    """A -> B -> C; T1 (vehicle V1) brings freight to B for T2 (V2); V2 then runs T3 back."""
    sites = [_site("A"), _site("B"), _site("C")]
    lanes = [_lane("A", "B", 3600), _lane("B", "A", 3600), _lane("B", "C", 3600), _lane("C", "B", 3600)]
    vehicles = [Vehicle("V1", 100, "A"), Vehicle("V2", 100, "B"), Vehicle("V3", 100, "B")]
    trips = [
        _trip("T1", "V1", "A", "B", 0, 3600),
        _trip("T2", "V2", "B", "C", 4500, 3600, hold),
        _trip("T3", "V2", "C", "B", 9000, 3600),
        _trip("T4", "V3", "B", "C", 9000, 3600),
    ]
    return Network(sites, lanes, vehicles, trips)


def test_rotation_cascade_to_the_second():
    # V1 runs T1 A->B then T5 B->A. A 1.5x slowdown on A->B makes T1 arrive at 5400 instead of
    # 3600; unloading one order takes 600 + 2 = 602 s, so V1 is free at 6002 and T5 (planned 4500)
    # departs 1502 s late, arrives at 9602, and its order is sorted (1 s) and delivered at 10205.
    sites = [_site("A"), _site("B")]
    lanes = [_lane("A", "B", 3600), _lane("B", "A", 3600)]
    net = Network(
        sites,
        lanes,
        [Vehicle("V1", 10, "A")],
        [_trip("T1", "V1", "A", "B", 0, 3600), _trip("T5", "V1", "B", "A", 4500, 3600)],
    )
    rec = Recorder()
    model = Model(WorldState(net), NominalDurations({"A->B": 1.5}), observer=rec).build()
    model.add_order("O1", "A", "B", 99999, ["T1"], ["A"])
    model.add_order("O2", "B", "A", 99999, ["T5"], ["B"])
    model.run(20000)
    res = model.collect()
    assert res.trips["T1"].departures == [0.0]
    assert res.trips["T1"].arrivals == [5400.0]
    assert res.trips["T5"].waited_for_vehicle == 1502.0
    assert res.trips["T5"].departures == [6002.0]
    assert res.trips["T5"].arrivals == [9602.0]
    assert res.orders["O2"].delivered_at == 9602.0 + 602.0 + 1.0
    assert (5400.0, "arrived", "T1") in rec.log
    assert (6002.0, "departed", "T5") in rec.log


def test_held_connection_cascade_to_the_second():
    # O1 rides T1 (A->B, slowed 1.5x: arrives 5400), is unloaded at 6002 and sorted at 6003.
    # T2 (B->C, planned 4500, hold limit 1800 s) waits for it and leaves at 6003: 1503 s late.
    # T2 arrives at C at 9603; O1 is unloaded (602 s) and sorted (1 s): delivered at 10206.
    # V2's next trip T3 (planned 9000 from C) can only leave once V2 has unloaded at C: 10205.
    net = _abc_network(hold=1800.0)
    rec = Recorder()
    model = Model(WorldState(net), NominalDurations({"A->B": 1.5}), observer=rec).build()
    model.add_order("O1", "A", "C", 99999, ["T1", "T2"], ["A", "B"])
    model.run(30000)
    res = model.collect()
    assert res.trips["T2"].departures == [6003.0]
    assert res.trips["T2"].hold_seconds == 6003.0 - 4500.0
    assert res.trips["T2"].held_for == "T1"
    assert res.trips["T2"].arrivals == [9603.0]
    assert res.orders["O1"].delivered_at == 10206.0
    assert res.orders["O1"].rolls == 0
    assert res.trips["T3"].departures == [10205.0]
    assert res.trips["T3"].waited_for_vehicle == 1205.0


def test_missed_connection_rolls_to_next_trip():
    # Same, but T2 may only be held 600 s (until 5100) and T1 only reaches B at 5400: waiting
    # cannot help, so T2 leaves on time at 4500 and O1 rolls to T4 (planned 9000). T4 arrives
    # at 12600; O1 is unloaded (602 s) and sorted (1 s): delivered at 13203.
    net = _abc_network(hold=600.0)
    rec = Recorder()
    model = Model(WorldState(net), NominalDurations({"A->B": 1.5}), observer=rec).build()
    model.add_order("O1", "A", "C", 99999, ["T1", "T2"], ["A", "B"])
    model.run(30000)
    res = model.collect()
    assert res.trips["T2"].departures == [4500.0]
    assert res.trips["T2"].hold_seconds == 0.0
    assert (4500.0, "rolled:T2->T4", "O1") in rec.log
    assert res.orders["O1"].path == ["T1", "T4"]
    assert res.trips["T4"].departures == [9000.0]
    assert res.orders["O1"].delivered_at == 12600.0 + 602.0 + 1.0
    assert res.orders["O1"].rolls == 1


def test_hold_waits_only_for_freight_due_before_the_deadline():
    # T1 is slowed 1.2x: it reaches B at 4320, before T2's hold deadline (4500 + 600 = 5100).
    # O1 is unloaded at 4922 and sorted at 4923: T2 waits for it and leaves at 4923.
    net = _abc_network(hold=600.0)
    model = Model(WorldState(net), NominalDurations({"A->B": 1.2})).build()
    model.add_order("O1", "A", "C", 99999, ["T1", "T2"], ["A", "B"])
    model.run(30000)
    res = model.collect()
    assert res.trips["T1"].arrivals == [4320.0]
    assert res.trips["T2"].departures == [4923.0]
    assert res.orders["O1"].rolls == 0


@pytest.mark.parametrize(("vehicles_last", "loaded"), [(False, False), (True, True)])
def test_same_second_rule_freight_sorted_as_its_trip_is_due(vehicles_last, loaded):
    # T1 reaches B at 3897 (A->B slowed to 3897 s); O1 is unloaded (602 s) and sorted (1 s)
    # at 4500, the second T2 is due to leave, and T2 may not be held (hold limit 0). SimPy
    # alone orders the two by when their events were created: T2's wait was scheduled
    # first, so T2 leaves and O1 rolls to T4. Under ``vehicles_last`` a vehicle acts after
    # everything else in its second: O1 is sorted first and rides T2.
    net = _abc_network(hold=0.0)
    model = Model(WorldState(net), NominalDurations({"A->B": 3897 / 3600}), vehicles_last=vehicles_last).build()
    model.add_order("O1", "A", "C", 99999, ["T1", "T2"], ["A", "B"])
    model.run(30000)
    res = model.collect()
    assert res.trips["T1"].arrivals == [3897.0]
    assert res.trips["T2"].departures == [4500.0]
    if loaded:
        assert (res.orders["O1"].path, res.orders["O1"].rolls) == (["T1", "T2"], 0)
        assert res.orders["O1"].delivered_at == 8100.0 + 602.0 + 1.0
    else:
        assert (res.orders["O1"].path, res.orders["O1"].rolls) == (["T1", "T4"], 1)
        assert res.orders["O1"].delivered_at == 12600.0 + 602.0 + 1.0


def test_a_closed_model_is_freed_without_the_cycle_collector():
    # the forecaster pauses the cyclic collector while it runs replicas; a closed model
    # (its processes stopped, some of them mid-wait at the end of the run) must not be
    # kept alive by reference cycles until the collector runs again, nor leave any behind
    import gc
    import weakref

    net = _abc_network(hold=1800.0)
    state = WorldState(net)  # (a world state is a cycle of its own: it stays referenced here)
    model = Model(state, NominalDurations({"A->B": 1.5})).build()
    model.add_order("O1", "A", "C", 99999, ["T1", "T2"], ["A", "B"])
    model.run(6100)  # T2 is held for O1, the sorter and V3 are mid-wait
    res = model.collect()
    assert res.trips["T2"].departures == [6003.0]
    # the model itself may be compiled (``twin.compiled``: no weak references to it); its
    # environment is not, and the model holds it
    env = weakref.ref(model.env)
    enabled = gc.isenabled()
    gc.collect()  # what earlier tests left (the model is still referenced here)
    gc.disable()
    try:
        model.close()
        del model
        # neither it nor anything of its SimPy run (environment, events, processes, resources)
        assert env() is None
        assert gc.collect() == 0
    finally:
        if enabled:
            gc.enable()
    assert res.trips["T2"].departures == [6003.0]


def test_closing_a_model_leaves_an_environment_it_was_given_alone():
    import simpy

    env = simpy.Environment(initial_time=0.0)
    other = env.timeout(99999.0)  # someone else's event in the same environment
    model = Model(WorldState(_abc_network(hold=1800.0)), NominalDurations(), env=env).build()
    model.run(6100)
    model.close()
    assert any(entry[-1] is other for entry in env._queue)
    env.run(until=env.timeout(1.0))  # still usable


def test_coasting_needs_the_same_second_rule():
    net = _abc_network(hold=0.0)
    with pytest.raises(ValueError, match="vehicles_last"):
        Model(WorldState(net), NominalDurations(), coast=frozenset())


def test_dock_contention_queues_bunched_arrivals():
    # Three vehicles reach B together; B has one dock; each unload takes 602 s.
    sites = [_site("A", docks=3), _site("B", docks=1)]
    lanes = [_lane("A", "B", 1000)]
    vehicles = [Vehicle(f"V{i}", 10, "A") for i in range(3)]
    trips = [_trip(f"T{i}", f"V{i}", "A", "B", 0, 1000) for i in range(3)]
    model = Model(WorldState(Network(sites, lanes, vehicles, trips)), NominalDurations()).build()
    for i in range(3):
        model.add_order(f"O{i}", "A", "B", 99999, [f"T{i}"], ["A"])
    model.run(10000)
    res = model.collect()
    assert sorted(w for t in res.trips.values() for w in t.dock_waits) == [0.0, 602.0, 1204.0]


class _ExpUnload(NominalDurations):
    def __init__(self, mean: float, seed: int) -> None:
        super().__init__()
        self.rng = random.Random(seed)
        self.mean = mean

    def unload(self, site, orders, key):
        return whole(self.rng.expovariate(1.0 / self.mean))


def _erlang_c_wait(lam: float, mu: float, c: int) -> float:
    a = lam / mu
    rho = a / c
    top = a**c / math.factorial(c) / (1 - rho)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    return p_wait / (c * mu - lam)


@pytest.mark.slow
def test_dock_wait_matches_erlang_c():
    """M/M/c at a site's docks: mean wait within 5 % of Erlang C (c=3, rho=0.6).

    Waits in a queue are strongly autocorrelated: at this load the mean of 60,000 waits still
    scatters by about 7 % from run to run, so the run is 300,000 vehicles (about 2 % scatter;
    seeds 1, 2, 3 gave +1.5 %, -2.5 %, -2.1 %).
    """
    c, mean_service, lam = 3, 900.0, 1.0 / 500.0
    n = 300_000
    rng = random.Random(1)
    t = 0.0
    sites = [_site("SRC", docks=1), _site("DOCK", docks=c)]
    lanes = [_lane("SRC", "DOCK", 60)]
    vehicles, trips = [], []
    for i in range(n):
        t += rng.expovariate(lam)
        vehicles.append(Vehicle(f"V{i}", 1, "SRC"))
        trips.append(_trip(f"T{i}", f"V{i}", "SRC", "DOCK", round(t), 60))
    model = Model(WorldState(Network(sites, lanes, vehicles, trips)), _ExpUnload(mean_service, 1001)).build()
    for i in range(n):
        model.add_order(f"O{i}", "SRC", "DOCK", 1e12, [f"T{i}"], ["SRC"])
    model.run(t + 100_000)
    waits = [w for tr in model.collect().trips.values() for w in tr.dock_waits]
    assert len(waits) == n
    warm = waits[n // 20 :]
    measured = sum(warm) / len(warm)
    expected = _erlang_c_wait(lam, 1.0 / mean_service, c)
    print(f"mean dock wait {measured:.1f} s, Erlang C {expected:.1f} s")
    assert abs(measured - expected) / expected < 0.05, (measured, expected)


@pytest.mark.parametrize("capacity", [1, 2, 3])
def test_capacity_grants_as_simpy_resource_with_fewer_steps(capacity):
    """Docks and sorters: the same grants, in the same order, as SimPy's own Resource."""
    import simpy

    from twin.engine import Capacity

    def trace(kind, take=False):
        env = simpy.Environment()
        res = kind(env, capacity=capacity)
        rng = random.Random(7)
        log = []

        def user(name, arrive, hold):
            yield env.timeout(arrive)
            # as the model's sorting does: with nothing else due in this instant, take a
            # free slot at once instead of waiting for the request's event
            slot = res.take() if take and env.peek() > env.now else None
            if slot is None:
                slot = res.request()
                yield slot
            log.append((env.now, name))
            yield env.timeout(hold)
            res.release(slot)

        for i in range(200):
            # whole seconds, so that arrivals, grants and releases often fall in the same second
            env.process(user(i, rng.randint(0, 400), rng.randint(1, 12)))
        steps = 0
        while env.peek() < float("inf"):
            env.step()
            steps += 1
        return log, steps

    expected, simpy_steps = trace(simpy.Resource)
    got, steps = trace(Capacity)
    assert got == expected
    assert steps < simpy_steps
    got, fewer = trace(Capacity, take=True)
    assert got == expected
    assert fewer < steps


@pytest.mark.parametrize("make", ["Wake", "wake"])
def test_a_wake_with_normal_priority_is_ordered_as_simpy_timeout(make: str):
    """``Wake(env, d, NORMAL)`` (used for dock and sorting times) takes its place in the queue
    exactly as ``env.timeout(d)``: same time, priority and insertion order, so interleaving
    the two among same-second events and other priorities processes them in the same order.
    The same for ``wake(env, d, NORMAL)``, which makes a ``Wake`` without the class call."""
    import simpy
    from simpy.events import NORMAL

    import twin.engine

    new = getattr(twin.engine, make)

    def trace(use_wake: bool) -> list[tuple[float, str]]:
        env = simpy.Environment(initial_time=100.0)
        seen: list[tuple[float, str]] = []

        def proc(name: str, delays: list[float]):
            for d in delays:
                yield new(env, d, NORMAL) if use_wake and name in "ac" else env.timeout(d)
                seen.append((env.now, name))
            yield new(env, 0.0, 2)  # a vehicle-style wake-up: after the others of its second
            seen.append((env.now, name + "!"))

        for name, delays in (("a", [5.0, 0.0, 3.0]), ("b", [5.0, 3.0]), ("c", [2.0, 3.0, 3.0]), ("d", [8.0])):
            env.process(proc(name, delays))
        env.run()
        return seen

    assert trace(use_wake=True) == trace(use_wake=False)
    seen = trace(use_wake=False)
    times = [t for t, _ in seen]
    assert len(times) - len(set(times)) >= 4  # the comparison covers same-second ties


def test_template_copies_have_every_field_and_share_nothing_that_changes():
    """``_copy_run`` and ``_copy_lot`` build records slot by slot: every field is copied (a
    field added to ``TripRun`` or ``Lot`` and not copied fails here), and every container a
    run changes in place is a new one (a lot's ``ids`` and ``boards``, a trip's dock waits
    are replaced, never changed, so they are shared)."""
    import dataclasses

    from twin.model import _copy_lot, _copy_run
    from twin.records import Lot, TripRun

    led = {("lane_slowdown", "L1"): [30.0, 5.0]}
    run = TripRun(
        [1.0, None], [2.0, None], 3.0, "T0", 4.0, 5.0, [6.0], led, {0: dict(led)}, led, {0: 6.0},
    )  # fmt: skip
    lot = Lot(
        ["O1", "O2"], "S9", ["T1", "T2"], ["S1", "S2"], 1, "sorted", "S2", "T2", True, 7.0, "T1", 1, 2, 8.0,
        {("missed_connection", "T0"): [9.0, 1.0]}, 12, 10.0, 11.0,
    )  # fmt: skip
    for original, copy, shared in (
        (run, _copy_run(run), ("dock_waits", "dock_wait_at")),
        (lot, _copy_lot(lot), ("ids", "boards")),
    ):
        for f in dataclasses.fields(original):
            a, b = getattr(original, f.name), getattr(copy, f.name)
            assert a == b, f.name
            if isinstance(a, (list, dict)):
                assert (a is b) == (f.name in shared), f.name
    copied = _copy_run(run)
    assert copied.release_ledger is copied.ledger  # released: its release ledger is its ledger
    other = _copy_run(TripRun([None], [None], release_ledger={("x", "y"): [1.0, 0.0]}))
    assert other.release_ledger is not other.ledger


class _Events:
    """Observer that writes what a model does as the twin's events (as the generator does)."""

    def __init__(self) -> None:
        self.events: list = []

    def _id(self) -> str:
        return f"e{len(self.events) + 1:05d}"

    def departed(self, t, trip_id, leg, vehicle_id, site_id):
        from twin.events import VehicleDeparted

        self.events.append(
            VehicleDeparted(id=self._id(), time=t, vehicle_id=vehicle_id, trip_id=trip_id, leg=leg, site_id=site_id)
        )

    def arrived(self, t, trip_id, leg, vehicle_id, site_id):
        from twin.events import VehicleArrived

        self.events.append(
            VehicleArrived(id=self._id(), time=t, vehicle_id=vehicle_id, trip_id=trip_id, leg=leg, site_id=site_id)
        )

    def scanned(self, t, order_id, site_id, kind, trip_id):
        from twin.events import OrderScanned

        self.events.append(
            OrderScanned(id=self._id(), time=t, order_id=order_id, site_id=site_id, kind=kind, trip_id=trip_id)
        )

    def delivered(self, t, order_id, site_id):
        from twin.events import OrderDelivered

        self.events.append(OrderDelivered(id=self._id(), time=t, order_id=order_id, site_id=site_id))

    def docks(self, t, site_id, occupied, in_service):
        pass

    def rolled(self, t, order_id, from_trip, to_trip):
        pass


def _created(orders):
    from twin.events import OrderCreated

    return [
        OrderCreated(
            id=f"c{k:03d}", time=0.0, order_id=oid, origin="A", destination="B", promised_at=99999.0, path=(tid,)
        )
        for k, (oid, tid) in enumerate(orders)
    ]


def _two_vans_one_dock(leave0: float, leave1: float):
    """V0 and V1 take 10 orders each from A to B (1000 s), leaving at ``leave0`` and ``leave1``; B has one dock.

    Returns the network, the orders (id, trip), the first run's events and when each order
    was unloaded in it.
    """
    sites = [_site("A"), _site("B", docks=1)]
    net = Network(sites, [_lane("A", "B", 1000)], [Vehicle("V0", 50, "A"), Vehicle("V1", 50, "A")],
                  [_trip("T0", "V0", "A", "B", leave0, 1000), _trip("T1", "V1", "A", "B", leave1, 1000)])  # fmt: skip
    orders = [(f"O{v}{i}", f"T{v}") for v in range(2) for i in range(10)]
    world = Model(WorldState(net, 0.0), NominalDurations(), observer=(rec := _Events())).build()
    for oid, tid in orders:
        world.add_order(oid, "A", "B", 99999.0, [tid], ["A"])
    world.run(10000)
    unloaded = {e.order_id: e.time for e in rec.events if getattr(e, "kind", None) == "unloaded"}
    return net, orders, rec, unloaded


@pytest.mark.parametrize("cut", [1500.0, 1800.0, 2000.0])
def test_a_vehicle_unloading_at_the_snapshot_goes_on_where_it_was(cut):
    """A model rebuilt from the state mid-unloading ends each unloading when the first run did.

    Worked by hand: B has one dock; V0 (10 orders) arrives at 1000 and unloads 600 + 2 * 10 =
    620 s, to 1620; V1 (10 orders) arrives at 1100, waits for the dock until 1620 and unloads
    to 2240. Rebuilt at 1500, V0 has done 500 s and V1 is queued; at 1800 and 2000, V1 has done
    180 and 380 s (it took the dock when V0's freight was scanned unloaded, at 1620). Before,
    every unloading restarted at the snapshot (V1 ended at 2420, 2620).
    """
    from twin.events import DockStatus

    net, orders, rec, unloaded = _two_vans_one_dock(0, 100)
    created = _created(orders)
    assert (unloaded["O00"], unloaded["O10"]) == (1620.0, 2240.0)

    live = LiveTwin(net)
    assert not live.apply_all([*created, *(e for e in rec.events if e.time <= cut)])
    assert not live.apply(DockStatus(id="d1", time=cut, site_id="B", occupied=1, in_service=1))
    state = live.state
    assert state.clock == cut
    again = Model(state, NominalDurations(), observer=(rec2 := _Events())).build()
    again.run(10000)
    later = {e.order_id: e.time for e in rec2.events if getattr(e, "kind", None) == "unloaded"}
    for oid, _ in orders:
        assert later.get(oid, unloaded[oid]) == unloaded[oid], oid


def test_vehicles_holding_freight_at_the_snapshot_take_the_docks_in_the_order_they_arrived():
    """Two vehicles hold freight at a one-dock site: the one that arrived first has the dock.

    V1 arrived at 1000 and V0 (first in vehicle-id order) at 1100; at the snapshot (1200) V1
    has been unloading for 200 s and V0 waits. Both unload when they did in the first run
    (V1 to 1620, V0 from 1620 to 2240); before, V0 took the dock first, unloading 1200-1820.
    """
    from twin.events import DockStatus

    net, orders, rec, unloaded = _two_vans_one_dock(100, 0)
    # T1 first: 1000 + 620; then T0: 1620 + 620
    assert (unloaded["O10"], unloaded["O00"]) == (1620.0, 2240.0)
    created = _created(orders)
    live = LiveTwin(net)
    assert not live.apply_all([*created, *(e for e in rec.events if e.time <= 1200.0)])
    assert not live.apply(DockStatus(id="d1", time=1200.0, site_id="B", occupied=1, in_service=1))
    state = live.state
    again = Model(state, NominalDurations(), observer=(rec2 := _Events())).build()
    again.run(10000)
    later = {e.order_id: e.time for e in rec2.events if getattr(e, "kind", None) == "unloaded"}
    assert later == unloaded


@pytest.mark.parametrize("cut", [2000.0, 2400.0])
def test_freight_waiting_for_the_sorter_at_the_snapshot_is_sorted_when_it_was(cut):
    """A model rebuilt while freight waits for the sorter delivers it when the first run did.

    Worked by hand: B sorts 360 orders an hour (10 s each) and has two docks. V0 brings 60
    orders, arrives at 1000, unloads 600 + 2 * 60 = 720 s to 1720 and sorts them 600 s to 2320;
    V1 brings 10, arrives at 1200, unloads to 1820, waits for the sorter until 2320 and sorts them
    100 s, to 2420. Rebuilt at 2400, the sorter has been at V1's batch for 80 s (since V0's
    batch was done), not since it was unloaded (580 s, more than it takes: it ended at once).
    """
    from twin.events import DockStatus

    sites = [_site("A"), _site("B", docks=2, rate=360.0)]
    net = Network(sites, [_lane("A", "B", 1000)], [Vehicle("V0", 100, "A"), Vehicle("V1", 100, "A")],
                  [_trip("T0", "V0", "A", "B", 0, 1000), _trip("T1", "V1", "A", "B", 200, 1000)])  # fmt: skip
    orders = [(f"O0{i:02d}", "T0") for i in range(60)] + [(f"O1{i:02d}", "T1") for i in range(10)]
    world = Model(WorldState(net, 0.0), NominalDurations(), observer=(rec := _Events())).build()
    for oid, tid in orders:
        world.add_order(oid, "A", "B", 99999.0, [tid], ["A"])
    world.run(10000)
    delivered = {e.order_id: e.time for e in rec.events if type(e).__name__ == "OrderDelivered"}
    assert (delivered["O000"], delivered["O100"]) == (2320.0, 2420.0)

    live = LiveTwin(net)
    assert not live.apply_all([*_created(orders), *(e for e in rec.events if e.time <= cut)])
    assert not live.apply(DockStatus(id="d1", time=cut, site_id="B", occupied=0, in_service=2))
    assert live.state.clock == cut
    again = Model(live.state, NominalDurations()).build()
    again.run(10000)
    later = {oid: d for lot in again.collect().lots for oid in lot.ids if (d := lot.delivered_at) is not None}
    for oid, _ in orders:
        assert later.get(oid, delivered[oid]) == delivered[oid], oid
