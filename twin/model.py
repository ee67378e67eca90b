"""The SimPy network model: vehicles drive lanes, docks queue, sites sort, trips connect.

One model serves every mode. Built from a :class:`WorldState` (a snapshot), it runs with the
:class:`~twin.durations.Durations` it is given: nominal ones for what the twin expects,
keyed random ones for forecast replicas, and the hidden "true world" ones of the scenario
generator. An :class:`Observer` sees every transition (the generator turns them into events;
tests record them).

Delay cascades through the three mechanisms of the design:

1. vehicle rotation: a vehicle runs its trips in order, so a late arrival delays its next trip;
2. freight connections: a first departure is held (up to the trip's ``hold_limit``) for booked
   freight that is on its way in; freight that is not ready when the trip leaves rolls to the
   next trip serving the same hop;
3. contention: arriving vehicles queue for a site's docks, and unloaded freight queues for the
   site's sorting capacity.

Durations are whole seconds, so events often fall in the same second. By default SimPy
orders those by when they were created; forecasts run with ``vehicles_last=True``, an
explicit rule instead: a vehicle's own wake-ups come after everything else in their second,
vehicles in id order. Under that rule the model computes the freight-free stretches of a
vehicle's timeline (``coast``) instead of simulating them, with exactly the same results.

Phases: ``build()`` -> ``run(until)`` -> ``collect()`` (-> ``close()``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import simpy
from simpy.events import NORMAL

from twin.durations import Durations
from twin.engine import Proc, Sites, Start, Startable, Started, run_until, unlink, wake
from twin.network import Network
from twin.placement import Placement, place
from twin.provenance import Ledger, add_cause, carry_causes
from twin.records import Lot, ModelResult, OrderInfo, TripRun
from twin.state import WorldState

__all__ = ["Model", "ModelTemplate", "Observer"]


class Observer(Protocol):
    """Receives every transition of the model as it happens (all methods optional no-ops)."""

    def departed(self, t: float, trip_id: str, leg: int, vehicle_id: str, site_id: str) -> None:
        """A vehicle left ``site_id`` on leg ``leg`` of ``trip_id``."""

    def arrived(self, t: float, trip_id: str, leg: int, vehicle_id: str, site_id: str) -> None:
        """A vehicle reached ``site_id`` at the end of leg ``leg``."""

    def scanned(self, t: float, order_id: str, site_id: str, kind: str, trip_id: str | None) -> None:
        """An order was loaded, unloaded or sorted."""

    def delivered(self, t: float, order_id: str, site_id: str) -> None:
        """An order reached its destination and was handled there."""

    def docks(self, t: float, site_id: str, occupied: int, in_service: int) -> None:
        """A site's dock occupancy changed."""

    def rolled(self, t: float, order_id: str, from_trip: str, to_trip: str | None) -> None:
        """An order missed ``from_trip`` and was rebooked on ``to_trip`` (None: no later trip)."""


class _NullObserver:
    def departed(self, t: float, trip_id: str, leg: int, vehicle_id: str, site_id: str) -> None:
        pass

    def arrived(self, t: float, trip_id: str, leg: int, vehicle_id: str, site_id: str) -> None:
        pass

    def scanned(self, t: float, order_id: str, site_id: str, kind: str, trip_id: str | None) -> None:
        pass

    def delivered(self, t: float, order_id: str, site_id: str) -> None:
        pass

    def docks(self, t: float, site_id: str, occupied: int, in_service: int) -> None:
        pass

    def rolled(self, t: float, order_id: str, from_trip: str, to_trip: str | None) -> None:
        pass


def _copy_run(run: TripRun) -> TripRun:
    """A trip record that can change without changing ``run`` (ledgers: see ``Ledger``).

    Built slot by slot (a model copies a few hundred per replica; about a third cheaper
    than through ``TripRun.__init__``); a test checks that every field is copied. Its dock
    waits are replaced, never changed in place, so they are shared.
    """
    c = TripRun.__new__(TripRun)
    c.departures = run.departures.copy()
    c.arrivals = run.arrivals.copy()
    c.released = run.released
    c.held_for = run.held_for
    c.hold_seconds = run.hold_seconds
    c.waited_for_vehicle = run.waited_for_vehicle
    c.dock_waits = run.dock_waits  # replaced, never changed in place (``_unload``): shared
    c.ledger = ledger = run.ledger.copy()
    c.arrival_ledgers = run.arrival_ledgers.copy()
    c.release_ledger = ledger if run.release_ledger is run.ledger else run.release_ledger
    c.dock_wait_at = run.dock_wait_at  # as ``dock_waits``
    return c


def _copy_lot(lot: Lot) -> Lot:
    """A lot that can change without changing ``lot`` (its ``ids`` and ``boards`` are never changed in place).

    Built slot by slot, as ``_copy_run``.
    """
    c = Lot.__new__(Lot)
    c.ids = lot.ids
    c.destination = lot.destination
    c.path = lot.path.copy()
    c.boards = lot.boards
    c.hop = lot.hop
    c.stage = lot.stage
    c.site = lot.site
    c.trip = lot.trip
    c.ready = lot.ready
    c.delivered_at = lot.delivered_at
    c.inbound_trip = lot.inbound_trip
    c.inbound_leg = lot.inbound_leg
    c.rolls = lot.rolls
    c.sort_wait = lot.sort_wait
    miss = lot.miss_ledger
    c.miss_ledger = miss.copy() if miss is not None else None
    c.serial = lot.serial
    c.since = lot.since
    c.miss_carry = lot.miss_carry
    return c


#: a lot's order list (the sort key of lots in ``Model._load``)
_ORDER_IDS = operator.attrgetter("ids")


@dataclass(slots=True)
class ModelTemplate:
    """What building a model does the same way for every replica of a state, done once.

    ``Model.build`` makes a trip record per trip, copies the placed lots, replays the rolls
    of freight whose trip left before the snapshot (``_catch_up``) and books every lot:
    none of it depends on the durations, so a forecast does it once (``ModelTemplate.of``)
    and each replica copies the result (``Model(..., template=...)``), with the same
    records, the same bookings in the same order and the same processes started in the
    same order as a model built on its own (tested). Trip records that no run changes are
    shared, not copied: those of vehicles with nothing left to do, and the completed trips
    at the head of the others' rotations, which their process would release at the start
    (they are released here, at the same time, the state's clock).
    """

    state: WorldState
    placement: Placement
    trips: dict[str, TripRun]
    lots: list[Lot]
    info: dict[str, OrderInfo]
    booked: dict[tuple[str, str], dict[int, Lot]]
    onboard: dict[str, list[Lot]]
    batches: list[tuple[str, list[Lot], str, float]]
    #: vehicles that get a process (the others have nothing left to do)
    operating: frozenset[str]
    #: trips whose records no run changes
    frozen: frozenset[str]
    #: each vehicle's wake-up priority under ``vehicles_last`` (empty: each model ranks them)
    rank: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, state: WorldState, placement: Placement) -> ModelTemplate:
        """Build the template of a state's models (placement: ``place(state, ...)``)."""
        from twin.durations import NominalDurations  # no draw is made while placing freight

        m = Model(state, NominalDurations(), placement=placement)
        batches = m._place_freight()
        m.close()  # it never runs: only its records are kept
        net = state.network
        operating: set[str] = set()
        frozen: set[str] = set()
        for vid, rotation in net.rotations.items():
            if not any(m.trips[t].arrivals[-1] is None or m.onboard.get(t) for t in rotation):
                frozen.update(rotation)
                continue
            operating.add(vid)
            for tid in rotation:
                run = m.trips[tid]
                if run.arrivals[-1] is None or m.onboard.get(tid):
                    break
                # what ``_operate`` does first, at the state's clock
                run.released = state.clock
                run.release_ledger = run.ledger
                frozen.add(tid)
        return cls(
            state, placement, m.trips, m.lots, m.info, m.booked, m.onboard, batches,
            frozenset(operating), frozenset(frozen), m._rank,
        )  # fmt: skip


def lot_ledger(trips: dict[str, TripRun], net: Network, o: Lot, *, misses: bool = True) -> Ledger:
    """Provenance of the delay of a lot's orders so far, from a run's trip records.

    Missed connections (unless ``misses`` is False), then the trip that brought it to
    where it is (or that it rides), the dock queue and the sorting backlog there.
    """
    out: Ledger = dict(o.miss_ledger) if o.miss_ledger and misses else {}
    if o.trip is not None:
        for k, (secs, at) in trips[o.trip].ledger.items():
            add_cause(out, k[0], k[1], secs, at)
        return out
    if o.inbound_trip is None:
        return out
    run = trips[o.inbound_trip]
    for k, (secs, at) in run.arrival_ledgers.get(o.inbound_leg, {}).items():
        add_cause(out, k[0], k[1], secs, at)
    site = net.trips[o.inbound_trip].legs[o.inbound_leg].destination
    arrived = run.arrivals[o.inbound_leg] or 0.0
    add_cause(out, "dock_queue", site, run.dock_wait_at.get(o.inbound_leg, 0.0), arrived)
    add_cause(out, "handling_backlog", site, o.sort_wait, arrived)
    return out


class Trace:
    """What one run did at the parts of the network that trips share, for incremental updates.

    ``twin.incremental`` reads it to tell whether a change to one vehicle's drive could have
    changed anything another trip saw in this run (see docs/forecasting.md, "Incremental
    updates"). Recorded only when a model is given one (``Model(..., trace=Trace())``).
    """

    __slots__ = ("docks", "inbound", "rates", "reads", "sorts")

    def __init__(self) -> None:
        #: site -> every use of one of its docks: [holder, taken, released] (released: inf
        #: while held); the holder of an unloading is its key ("<trip>/<leg>")
        self.docks: dict[str, list[list[object]]] = {}
        #: every sort: [site, key, queued, started, ended, lot serials, the trip each lot is
        #: booked on from the site (None: none)] (inf: not yet)
        self.sorts: list[list[object]] = []
        #: (trip, site, time) of every look at the freight booked on a departure (holds)
        self.inbound: list[tuple[str, str, float]] = []
        #: trips whose ledger a link copied during the run (rotations, holds, misses)
        self.reads: set[str] = set()
        #: site -> when its sorting rate changed
        self.rates: dict[str, list[float]] = {}

    def took(self, site: str, holder: str, at: float) -> list[object]:
        use: list[object] = [holder, at, math.inf]
        self.docks.setdefault(site, []).append(use)
        return use


#: Priority of the first vehicle's wake-ups under ``vehicles_last`` (SimPy's own are 0 and 1).
_VEHICLES = 2


class Model:
    """The network model, built from a world state; see the module docstring."""

    # Slots, not an instance dictionary: the model's methods read its attributes tens of
    # thousands of times per replica, and with more than 30 attributes an instance
    # dictionary no longer shares its keys with the class's other instances, which makes
    # every such read and write a slower, hinted dictionary lookup (CPython 3.11).
    __slots__ = (
        "_built",
        "_deadlines",
        "_deferred",
        "_docked",
        "_free_at",
        "_last_ready",
        "_never",
        "_observing",
        "_own_env",
        "_procs",
        "_ran",
        "_rank",
        "_shared_info",
        "_sortings",
        "_start_event",
        "_starting",
        "_until",
        "_uses",
        "_waiters",
        "booked",
        "coast",
        "coasted",
        "detached",
        "dock_waits",
        "docks",
        "durations",
        "env",
        "info",
        "lots",
        "net",
        "observer",
        "onboard",
        "placement",
        "progress",
        "rates",
        "sorters",
        "state",
        "steps",
        "template",
        "trace",
        "trips",
        "vehicle_leg",
        "vehicle_site",
        "vehicles_last",
        "__weakref__",
    )

    def __init__(
        self,
        state: WorldState,
        durations: Durations,
        *,
        env: simpy.Environment | None = None,
        observer: Observer | None = None,
        placement: Placement | None = None,
        detached: frozenset[str] = frozenset(),
        vehicles_last: bool = False,
        coast: frozenset[str] | None = None,
        template: ModelTemplate | None = None,
        progress: Mapping[str, float] | None = None,
        trace: Trace | None = None,
    ) -> None:
        if coast is not None and not vehicles_last:
            msg = "coast= needs vehicles_last=True: computed stretches are exact only under that rule"
            raise ValueError(msg)
        if coast is not None and observer is not None:
            msg = "coast= computes stretches of a timeline ahead of the clock; an observer would see them out of order"
            raise ValueError(msg)
        if template is not None and (observer is not None or template.state is not state or env is not None):
            msg = "template= must come from ModelTemplate.of(state, ...) of this state, without an observer or env"
            raise ValueError(msg)
        self.state = state
        #: dead-reckoned progress of the vehicles on the road (None: ``state.vehicle_progress``)
        self.progress = progress
        #: what the run does at shared parts (docks, sorters, holds, links), or None
        self.trace = trace
        #: trip -> its dock use in ``trace`` while it unloads
        self._uses: dict[str, list[object]] = {}
        self.placement = placement if template is None else template.placement
        #: what building from this state does the same way every time, done once (or None)
        self.template = template
        #: ``info`` is the template's, shared: copied before ``add_order`` changes it
        self._shared_info = False
        self.net = state.network
        self.env = env if env is not None else simpy.Environment(initial_time=state.clock)
        #: the model made its environment (``close`` may then clear it)
        self._own_env = env is None
        self.durations = durations
        self.observer: Observer = observer if observer is not None else _NullObserver()
        self._observing = observer is not None
        self.trips: dict[str, TripRun] = {}
        self.lots: list[Lot] = []
        self.info: dict[str, OrderInfo] = {}
        #: each site's docks and sorter, created when first used
        self.docks: Sites = Sites(self.env)
        self.sorters: Sites = Sites(self.env)
        self.rates: dict[str, float] = {}
        #: orders booked for (trip, boarding site), ready or not
        self.booked: dict[tuple[str, str], dict[int, Lot]] = {}
        self.onboard: dict[str, list[Lot]] = {}
        #: (site, seconds) of every wait for a dock in this run, as they happen (the same
        #: waits as the trip records' ``dock_wait_at``, kept here so a tally need not look
        #: through every trip)
        self.dock_waits: list[tuple[str, float]] = []
        self._waiters: dict[tuple[str, str], simpy.Event] = {}
        self._last_ready: dict[tuple[str, str], str | None] = {}
        self._deadlines: dict[tuple[str, str], float] = {}
        #: where each vehicle currently is (site id) or None while driving
        self.vehicle_site: dict[str, str | None] = {}
        #: (lane id, start time, start progress, end time) of vehicles on the road
        self.vehicle_leg: dict[str, tuple[str, float, float, float]] = {}
        #: trips computed without SimPy after the run (see ``detachable``); not observed
        self.detached = detached
        #: when each vehicle reached its detached trips during the run
        self._free_at: dict[str, float] = {}
        #: vehicles unloading at the snapshot: trip -> (its dock, seconds of unloading done)
        self._docked: dict[str, tuple[simpy.resources.resource.Request, float]] = {}
        #: same-second rule: a vehicle's own wake-ups (its departure time has come, a drive
        #: ends) come after everything else in that second, vehicles in id order (see ``_wait``)
        self.vehicles_last = vehicles_last
        # the same for every replica of a state: the template's, when it has them
        self._rank = (
            template.rank
            if template is not None and template.rank
            else {vid: _VEHICLES + i for i, vid in enumerate(sorted(self.net.vehicles))}
        )
        #: freight-free trips whose stretches of the timeline are computed, not simulated
        #: (see ``_coast``); None: simulate every step
        self.coast = coast
        #: legs computed by ``_coast`` in this run (for measurements and tests)
        self.coasted = 0
        #: simulation steps (events processed) in this run (for measurements; plain environments)
        self.steps = 0
        self._until = math.inf
        #: never triggered: a process that is done waits on it instead of ending (see ``_park``)
        self._never = self.env.event()
        #: the processes started, to stop them in ``close``
        self._procs: list[simpy.Process] = []
        self._built = False
        self._ran = False
        #: while building, processes are started by one shared event (``Start``)
        self._starting = False
        self._start_event: Start | None = None
        #: while ``run`` steps the environment itself: the sorts started during a step, which
        #: ``run_until`` starts when the step ends; None: each with an ``Initialize`` event
        self._deferred: list[Startable] | None = None
        #: the sorts started, to stop them in ``close``
        self._sortings: list[_Sorting] = []

    # ------------------------------------------------------------------ build
    def build(self) -> Model:
        """Create resources, place freight and start one process per vehicle."""
        if self._built:
            msg = "Model.build() was already called; build a new Model from the state instead"
            raise RuntimeError(msg)
        self._built = True
        self._starting = True
        try:
            self._build()
        finally:
            self._starting = False
        return self

    def _build(self) -> None:
        net, st = self.net, self.state
        for sid, site in net.sites.items():
            s = st.sites[sid]
            self.docks.capacity[sid] = max(site.docks, s.docks_in_service, 1)
            self.sorters.capacity[sid] = 1
            self.rates[sid] = s.handling_rate if s.handling_rate > 0 else site.handling_rate
            lost = site.docks - max(1, s.docks_in_service)
            if lost > 0 or self.rates[sid] < site.handling_rate:
                self._start(self._capacity_loss(sid, max(0, lost)))
        if self.template is not None:
            batches = self._adopt(self.template)
        else:
            batches = self._place_freight()
        for sid, lots, key, credit in batches:
            self._start_sorting(_Sorting(self, sid, lots, key, credit))
        self._docked = self._at_docks()
        for vid in sorted(net.vehicles):
            if self.template is not None:
                operates = vid in self.template.operating
            else:
                operates = any(self.trips[t].arrivals[-1] is None or self.onboard.get(t) for t in net.rotations[vid])
            if operates:
                self._start(self._operate(vid))
            else:
                v = st.vehicles[vid]
                self.vehicle_site[vid] = v.site_id if v.status == "at_site" else None

    def _at_docks(self) -> dict[str, tuple[simpy.resources.resource.Request, float]]:
        """Vehicles unloading at the snapshot keep their dock, credited with the time done.

        A vehicle that arrived before the snapshot with freight still aboard is at a dock
        (or queued for one) in the world, and has been unloading since it took the dock
        (``SiteState.unloading_since``: docks first come, first served). Those at a dock take
        it here, in the order they arrived, and their unloading ends that much sooner; the
        rest queue in their processes as before. Returns trip -> (dock, seconds done).
        """
        st, net = self.state, self.net
        holding: dict[str, list[tuple[float, str]]] = {}
        for tid, lots in self.onboard.items():
            if not lots:
                continue
            arrived = self.trips[tid].arrivals[-1]
            if arrived is not None and arrived <= st.clock:
                holding.setdefault(net.trips[tid].destination, []).append((arrived, tid))
        out: dict[str, tuple[simpy.resources.resource.Request, float]] = {}
        for sid in sorted(holding):
            s = st.sites[sid]
            docks = min(self.docks.capacity[sid], max(1, s.docks_in_service))
            for ahead, (arrived, tid) in enumerate(sorted(holding[sid])):
                since = s.unloading_since(arrived, ahead, docks, st.clock)
                if since is None:
                    break
                # at once (the docks are free: no vehicle has requested one yet), or as SimPy
                # would, with a request granted at the clock
                docks_here = self.docks[sid]
                slot = docks_here.take() or docks_here.request()
                if self.trace is not None:
                    held = f"{tid}/{len(net.trips[tid].legs) - 1}"
                    self._uses[held] = self.trace.took(sid, held, st.clock)
                out[tid] = (slot, float(max(0, round(st.clock - since))))
        return out

    def _place_freight(self) -> list[tuple[str, list[Lot], str, float]]:
        """Trip records and lots from the state, the rolls before it replayed (see ``_catch_up``).

        Returns the batches of freight unloaded before the snapshot, to sort in this order.
        """
        env, st = self.env, self.state
        placement = self.placement if self.placement is not None else place(st)
        self.placement = placement
        for tid, ts in st.trips.items():
            run = self.trips[tid] = TripRun(list(ts.departures), list(ts.arrivals))
            seen = placement.history.get(tid)
            if seen is not None:
                run.ledger = dict(seen[0])
                run.arrival_ledgers = dict(seen[1])
                if ts.arrivals[-1] is not None:
                    run.release_ledger = run.ledger
        self.info = dict(placement.info)
        for t in placement.onboard:
            lot = self._new_lot(t)
            self._catch_up(lot, ready=False)
            self.onboard.setdefault(lot.trip or "", []).append(lot)
            self._book(lot)
        # freight unloaded before the snapshot and not sorted yet: one batch per unloading, in
        # the order they were unloaded; the sorter has been at the first one since it arrived,
        # or since the batch before it was done if that was later (``SiteState.sorting_since``)
        batches: dict[tuple[str, float], list[Lot]] = {}
        for t in sorted(placement.unsorted, key=lambda x: (x.since, x.ids[0])):
            lot = self._new_lot(t)
            self._catch_up(lot, ready=False)
            batches.setdefault((t.site or "", t.since), []).append(lot)
        out: list[tuple[str, list[Lot], str, float]] = []
        started: set[str] = set()
        for sid, since in sorted(batches, key=lambda k: (k[1], k[0])):
            site = st.sites.get(sid)
            began = site.sorting_since(since, env._now) if site is not None else since
            credit = 0.0 if sid in started else max(0.0, env._now - began)
            started.add(sid)
            out.append((sid, batches[(sid, since)], f"init/{sid}/{since!r}", credit))
        for t in placement.ready:
            lot = self._new_lot(t)
            self._catch_up(lot, ready=True)
            self._make_ready(lot)
        return out

    def _adopt(self, t: ModelTemplate) -> list[tuple[str, list[Lot], str, float]]:
        """The template's trip records and lots, copied (those no run changes are shared)."""
        frozen = t.frozen
        self.trips = {tid: run if tid in frozen else _copy_run(run) for tid, run in t.trips.items()}
        self.info = t.info
        self._shared_info = True
        lots = self.lots = [_copy_lot(lot) for lot in t.lots]
        self.booked = {key: {k: lots[k] for k in d} for key, d in t.booked.items()}
        self.onboard = {tid: [lots[o.serial] for o in lst] for tid, lst in t.onboard.items()}
        return [(sid, [lots[o.serial] for o in batch], key, credit) for sid, batch, key, credit in t.batches]

    def _new_lot(self, template: Lot) -> Lot:
        lot = Lot(
            template.ids, template.destination, list(template.path), template.boards, template.hop,
            template.stage, template.site, template.trip, inbound_trip=template.inbound_trip,
            inbound_leg=template.inbound_leg, sort_wait=template.sort_wait, since=template.since,
            miss_ledger=dict(template.miss_ledger) if template.miss_ledger else None,
            serial=len(self.lots),
        )  # fmt: skip
        self.lots.append(lot)
        return lot

    def _booked_since(self, o: Lot) -> float:
        """When a lot of the snapshot was booked on the trip of its pending hop.

        At its creation for the first hop; else when it was loaded on the trip before (the
        model books freight on its next hop as it loads it).
        """
        h = o.pending_hop()
        if h == 0:
            orders = self.state.orders
            return min((orders[i].created_at for i in o.ids if i in orders), default=self.env._now)
        tid = o.trip if o.trip is not None else o.path[h - 1]
        leg = self.net.leg_index(tid, o.boards[h - 1]) if tid in self.net.trips else -1
        dep = self.trips[tid].departures[leg] if leg >= 0 else None
        return dep if dep is not None else -math.inf

    def _catch_up(self, o: Lot, *, ready: bool) -> None:
        """Rebook freight whose next trip left before the snapshot, as the world did then.

        The world rolls freight booked on a trip when the trip leaves without it, to the
        next trip of the hop departing after that moment (a late trip planned earlier but
        still there is caught, and it holds for the freight); freight ready at a site whose
        trip had left before it was booked there rolls when it is ready. The live state
        learns of a roll only when the freight is loaded again, so a forecast replays the
        rolls from those times instead of rolling everything from the snapshot's clock.
        """
        since = self._booked_since(o)
        for _ in range(len(self.net.trips)):
            h = o.pending_hop()
            if h >= len(o.path):
                return
            tid, site = o.path[h], o.boards[h]
            leg = self.net.leg_index(tid, site)
            dep = self.trips[tid].departures[leg] if leg >= 0 else None
            if dep is None:
                return
            if dep >= since:
                at = dep
            elif ready:
                at = min(self.env._now, max(o.since, since))
            else:
                return  # rolls when it is ready, in the run
            self._roll(o, tid, site, at=at)
            if o.path[h] == tid:
                return
            since = at

    def _split(self, lot: Lot, n: int) -> Lot:
        """Take the first ``n`` orders of a lot into a new lot in the same situation."""
        part = Lot(
            lot.ids[:n], lot.destination, list(lot.path), lot.boards, lot.hop, lot.stage, lot.site, lot.trip,
            lot.ready, lot.delivered_at, lot.inbound_trip, lot.inbound_leg, lot.rolls, lot.sort_wait,
            dict(lot.miss_ledger) if lot.miss_ledger else None,
            len(self.lots), lot.since, lot.miss_carry,
        )  # fmt: skip
        lot.ids = lot.ids[n:]
        self.lots.append(part)
        return part

    def add_order(
        self,
        order_id: str,
        origin: str,
        destination: str,
        promised_at: float,
        path: list[str],
        boards: list[str],
    ) -> Lot:
        """A new order appears at its origin, ready for the first trip of its path."""
        if self._shared_info:
            self.info, self._shared_info = dict(self.info), False
        self.info[order_id] = OrderInfo(origin, destination, promised_at)
        lot = Lot([order_id], destination, path, boards, 0, "created", origin, serial=len(self.lots))
        self.lots.append(lot)
        self._make_ready(lot)
        return lot

    def run(self, until: float) -> Model:
        """Run the model until ``until`` (seconds since epoch)."""
        if (self.detached or self.coast is not None) and self._ran:
            msg = "a model with detached or coasting trips runs once; build a new Model to run further"
            raise RuntimeError(msg)
        self._ran = True
        self._until = until
        if until > self.env._now:
            if type(self.env) is simpy.Environment:
                self._deferred = []
                try:
                    self.steps += run_until(self.env, until, self._deferred)
                finally:
                    self._deferred = None
            else:
                self.env.run(until=until)  # e.g. a RealtimeEnvironment: it paces its own steps
            # the clock now stands where SimPy stopped: events at or after it did not happen
            for vid, start in self._free_at.items():
                self._run_detached(vid, start, self.env._now)
        return self

    def _run_detached(self, vehicle_id: str, start: float, stop: float) -> None:
        """The vehicle's detached trips, computed as ``_operate`` would run them in SimPy.

        Nothing is booked on them and nothing reads them during the run, so no queue or
        other vehicle can change them: each wait and each leg is the same arithmetic on the
        same draws, and a step that would end at or after ``stop`` did not happen.
        """
        now = start
        net, st = self.net, self.state
        for tid in net.rotations[vehicle_id]:
            if tid not in self.detached or st.trips[tid].cancelled:
                continue
            run, trip = self.trips[tid], net.trips[tid]
            for i, leg in enumerate(trip.legs):
                left_at = self._departure(tid, i, now, stop)
                if left_at is None:
                    return
                now = left_at
                lane = net.lanes[leg.lane_id]
                duration = self.durations.travel(tid, i, lane, now, 1.0)
                t = now + duration
                if t >= stop:
                    return
                left, now = now, t
                excess = duration - lane.travel_time * 1.0
                if excess > 0:
                    mechanism, entity = self.durations.lane_cause(lane)
                    add_cause(run.ledger, mechanism, entity, excess, left)
                run.arrivals[i] = now
                run.arrival_ledgers[i] = dict(run.ledger)
            run.released = now
            run.release_ledger = run.ledger

    def collect(self) -> ModelResult:
        """The per-trip and per-order records of this run."""
        return ModelResult(self.env._now, self.trips, self.lots, self.info)

    def network_trip_legs(self, trip_id: str) -> int:
        """How many legs a trip has."""
        return len(self.net.trips[trip_id].legs)

    def order_ledger(self, o: Lot, *, misses: bool = True) -> Ledger:
        """Provenance of an order's delay so far (``lot_ledger`` of this run's records)."""
        return lot_ledger(self.trips, self.net, o, misses=misses)

    # ------------------------------------------------------------------ freight
    def _make_ready(self, o: Lot) -> None:
        """The order is handled and waits at its site for the trip of its current hop."""
        o.ready = True
        o.trip = None
        if o.site == o.destination:
            o.stage = "delivered"
            o.delivered_at = self.env._now
            return
        if o.hop >= len(o.path):
            return
        tid, site = o.path[o.hop], o.site or ""
        leg = self.net.leg_index(tid, site)
        if leg >= 0 and (self.trips[tid].departures[leg] is not None or self.state.trips[tid].cancelled):
            # booked on a trip that already left (or will not run): the next one of the hop
            self._roll(o, tid, site)
            return
        key = (tid, site)
        # not ``setdefault(key, {})``, which makes a dictionary every time
        booked = self.booked.get(key)
        if booked is None:
            booked = self.booked[key] = {}
        booked[o.serial] = o
        waiter = self._waiters.get(key)
        if waiter is not None and not waiter.triggered and not self._inbound(*key, by=self._deadlines[key]):
            self._last_ready[key] = o.inbound_trip
            waiter.succeed()

    def _inbound(self, trip_id: str, site: str, by: float = math.inf) -> list[Lot]:
        """Booked freight for (trip, site) that can make it before ``by``.

        That is freight being handled at the site, or on a vehicle there or whose current leg
        ends there before ``by``; freight further out is not waited for.
        """
        out: list[Lot] = []
        if self.trace is not None:
            self.trace.inbound.append((trip_id, site, self.env._now))
        booked = self.booked.get((trip_id, site))
        if not booked:
            return out
        for o in booked.values():
            if o.ready:
                continue
            if o.site == site:
                out.append(o)
            elif o.trip is not None:
                vid = self.net.trips[o.trip].vehicle_id
                on_road = self.vehicle_leg.get(vid)
                if on_road is None and self.vehicle_site.get(vid) == site:
                    out.append(o)  # arrived, being unloaded
                elif on_road is not None and self.net.lanes[on_road[0]].destination == site and on_road[3] < by:
                    out.append(o)
                elif by == math.inf and site in self._stops_ahead(o):
                    out.append(o)
        return out

    def _stops_ahead(self, o: Lot) -> tuple[str, ...]:
        trip = self.net.trips[o.trip or ""]
        stops = trip.stops()
        here = o.boards[o.hop] if o.hop < len(o.boards) else stops[0]
        return stops[stops.index(here) + 1 :] if here in stops else stops

    def _book(self, o: Lot) -> None:
        """Index a lot that is not ready yet under the next hop it will board."""
        h = o.hop + 1 if o.trip is not None else o.hop
        if h < len(o.path):
            key = (o.path[h], o.boards[h])
            booked = self.booked.get(key)  # (as ``_make_ready``)
            if booked is None:
                booked = self.booked[key] = {}
            booked[o.serial] = o

    # ------------------------------------------------------------------ processes
    def _operate(self, vehicle_id: str) -> Proc:
        """Run the vehicle's remaining trips in order (this is the rotation mechanism)."""
        st, net = self.state, self.net
        v = st.vehicles[vehicle_id]
        self.vehicle_site[vehicle_id] = v.site_id if v.status == "at_site" else None
        rotation = net.rotations[vehicle_id]
        coast = self.coast
        k = 0
        while k < len(rotation):
            tid = rotation[k]
            if tid in self.detached:
                # the rest of the rotation is computed after the run (``_run_detached``)
                self._free_at[vehicle_id] = self.env._now
                break
            run = self.trips[tid]
            trip = net.trips[tid]
            if run.released is not None:
                k += 1
                continue
            if run.arrivals[-1] is not None:
                # Arrived before the snapshot: unload whatever is still on board.
                if self.onboard.get(tid):
                    yield from self._unload(tid, len(trip.legs) - 1, trip.destination)
                run.released = self.env._now
                run.release_ledger = run.ledger
                k += 1
                continue
            if st.trips[tid].cancelled:
                self._cancel(tid)
                k += 1
                continue
            if coast is not None and tid in coast and run.departures[0] is None:
                k, wake = self._coast(vehicle_id, k, self.env._now)
                if wake is None:
                    break
                if wake > self.env._now:
                    yield self._wait(vehicle_id, wake - self.env._now)
                continue
            last = len(trip.legs) - 1
            for i, leg in enumerate(trip.legs):
                if run.arrivals[i] is not None:
                    continue
                if run.departures[i] is None:
                    yield from self._depart(tid, i)
                    remaining = 1.0
                else:
                    if v.lane_id != leg.lane_id:
                        remaining = 1.0
                    elif self.progress is not None:
                        remaining = 1.0 - self.progress[vehicle_id]
                    else:
                        remaining = 1.0 - st.vehicle_progress(vehicle_id)
                    self._observed_delay(tid, i, remaining)
                if coast is not None and i == last and not self.onboard.get(tid):
                    # nothing aboard for the rest of the trip: the drive touches nothing else
                    break
                yield from self._drive(tid, i, vehicle_id, max(0.0, remaining))
            if run.arrivals[last] is None:
                end = self._coast_leg(tid, last, vehicle_id, self.env._now, max(0.0, remaining))
                if end is None:
                    break
                run.released = end
                run.release_ledger = run.ledger
                k, wake = self._coast(vehicle_id, k + 1, end)
                if wake is None:
                    break
                if wake > self.env._now:
                    yield self._wait(vehicle_id, wake - self.env._now)
                continue
            run.released = self.env._now
            run.release_ledger = run.ledger
            k += 1
        yield self._park()

    def _wait(self, vehicle_id: str, delay: float) -> simpy.Event:
        """A vehicle waits ``delay`` seconds (for its departure time, or while it drives).

        Under ``vehicles_last`` the wake-up is processed after every other event of its
        second, vehicles in id order, instead of in the order the events were created
        (SimPy's insertion counter). Durations are whole seconds, so such ties are common;
        with the rule, when a vehicle acts in a second no longer depends on when its wait
        was scheduled, which is what lets ``_coast`` replace a stretch of waits by one.
        """
        if not self.vehicles_last:
            return self.env.timeout(delay)
        return wake(self.env, delay, self._rank[vehicle_id])

    def _coast(self, vehicle_id: str, k: int, now: float) -> tuple[int, float | None]:
        """Compute the vehicle's freight-free trips from ``rotation[k]`` on, free at ``now``.

        Nothing is booked on a freight-free trip and nothing is aboard, so its departure
        loads nothing, its arrival unloads nothing, and nothing else reads its records or
        where its vehicle is during the run: each wait and each leg is the arithmetic that
        ``_depart`` and ``_drive`` (with its arrival) would do in SimPy, on the same draws, and a
        step at or after the end of the run did not happen. Returns the index of the next
        trip and when the vehicle next has to act in SimPy: when that trip is due to leave
        (or when the vehicle is free, if later or if the trip is not a plain departure).
        None: the run ends first (or the rotation does).
        """
        st, net = self.state, self.net
        rotation = net.rotations[vehicle_id]
        coast = self.coast or frozenset()
        while k < len(rotation):
            tid = rotation[k]
            run = self.trips[tid]
            if (
                tid in self.detached
                or tid not in coast
                or run.released is not None
                or run.arrivals[-1] is not None
                or run.departures.count(None) != len(run.departures)  # it has left (no generator)
            ):
                break
            if st.trips[tid].cancelled:
                # ``_cancel`` of a freight-free trip: nothing is booked on it
                k += 1
                continue
            for i in range(len(net.trips[tid].legs)):
                left = self._coast_depart(tid, i, vehicle_id, now)
                if left is None:
                    return k, None
                end = self._coast_leg(tid, i, vehicle_id, left, 1.0)
                if end is None:
                    return k, None
                now = end
            run.released = now
            run.release_ledger = run.ledger
            k += 1
        if k >= len(rotation):
            return k, None
        tid = rotation[k]
        if tid in self.detached:
            self._free_at[vehicle_id] = now
            return k, None
        run, ts = self.trips[tid], st.trips[tid]
        wake = now
        if run.released is None and run.arrivals[-1] is None and run.departures[0] is None and not ts.cancelled:
            planned = net.trips[tid].legs[0].planned_departure
            if now < planned:
                wake = now + (planned - now)
        return k, (wake if wake < self._until else None)

    def _coast_depart(self, trip_id: str, leg_index: int, vehicle_id: str, now: float) -> float | None:
        """``_depart`` of a freight-free trip, computed: when it leaves (None: not in this run)."""
        left_at = self._departure(trip_id, leg_index, now, self._until)
        if left_at is not None:
            self.vehicle_site[vehicle_id] = None
        return left_at

    def _departure(self, trip_id: str, leg_index: int, now: float, stop: float) -> float | None:
        """When a vehicle ready at ``now`` leaves on a leg nothing can delay but its plan and a hold.

        The waits ``_depart`` would make (the planned time; a dispatch hold), with the same
        provenance (a late vehicle's rotation, the hold), and the departure recorded; None if
        a wait ends at or after ``stop`` (it did not happen in this run).
        """
        ts, run = self.state.trips[trip_id], self.trips[trip_id]
        planned = self.net.trips[trip_id].legs[leg_index].planned_departure
        if now < planned:
            now = now + (planned - now)
            if now >= stop:
                return None
        elif leg_index == 0 and now > planned:
            late = now - planned
            run.waited_for_vehicle = late
            prev = self.net.previous_trip(trip_id)
            if prev is not None:
                carry_causes(run.ledger, self.trips[prev].release_ledger, late)
                if self.trace is not None:
                    self.trace.reads.add(prev)
                add_cause(run.ledger, "vehicle_rotation", prev, late, now)
        if ts.hold_until is not None and now < ts.hold_until:
            start = now
            now = now + (ts.hold_until - now)
            if now >= stop:
                return None
            add_cause(run.ledger, "held_departure", trip_id, now - start, start)
        run.departures[leg_index] = now
        return now

    def _coast_leg(self, trip_id: str, leg_index: int, vehicle_id: str, now: float, remaining: float) -> float | None:
        """``_drive`` (driving and arriving) of a leg with nothing aboard, computed (None: not in this run)."""
        run, trip = self.trips[trip_id], self.net.trips[trip_id]
        leg = trip.legs[leg_index]
        lane = self.net.lanes[leg.lane_id]
        duration = self.durations.travel(trip_id, leg_index, lane, now, remaining)
        end = now + duration
        if end >= self._until:
            return None
        self.coasted += 1
        excess = duration - lane.travel_time * remaining
        if excess > 0:
            mechanism, entity = self.durations.lane_cause(lane)
            add_cause(run.ledger, mechanism, entity, excess, now)
        run.arrivals[leg_index] = end
        run.arrival_ledgers[leg_index] = dict(run.ledger)
        self.vehicle_site[vehicle_id] = leg.destination
        return end

    def _start(self, proc: Proc) -> None:
        if not self._starting:
            self._procs.append(self.env.process(proc))
            return
        # while building: one event starts them all (``Start``), scheduled where the first
        # process's own would have been (the only event of a build)
        if self._start_event is None:
            self._start_event = Start(self.env)
        self._procs.append(Started(self.env, proc, self._start_event))

    def close(self) -> None:
        """Stop the model's processes and free its SimPy parts; its records (``collect``) stay.

        Suspended processes reference the model, and SimPy's events and resources
        reference the processes (and each other, and the environment itself), so a model
        that has run is a large reference cycle that only the cyclic garbage collector
        frees. The forecaster pauses that collector while it runs replicas
        (``twin.forecast._gc_paused``), and when it resumed it had about 48,000 such objects
        per forecast to find (and every object the forecast still held to scan), 0.1 s.
        Closing the generators drops their frames; unlinking the waits (a process and the
        event it waits on, a condition and its events, a resource and its requests, the
        event queue, the environment's own bound constructors) leaves no cycle, so
        reference counting frees a replica as soon as its records are dropped. An
        environment given to the model (``env=``) keeps its queue and constructors.
        """
        env = self.env
        for proc in self._procs:
            proc._generator.close()
            target = proc._target
            proc._target = None  # type: ignore[assignment]
            if isinstance(target, simpy.events.Condition):
                for ev in target._events:
                    unlink(ev)
            if target is not None:
                unlink(target)
        self._procs.clear()
        for sorting in self._sortings:
            if sorting.waiting is not None:
                unlink(sorting.waiting)
        self._sortings.clear()
        if self._start_event is not None:
            self._start_event.procs.clear()
        unlink(self._never)
        for res in (*self.docks.values(), *self.sorters.values()):
            res.put_queue.clear()
            res.get_queue.clear()
            res.users.clear()
        if not self._own_env:
            return  # an environment given to the model may have other users: left as it is
        for *_, event in env._queue:
            unlink(event)
        env._queue.clear()
        # ``Environment`` binds its event constructors to itself (``BoundClass.bind_early``);
        # the class attributes behave the same, unbound
        for name in ("process", "timeout", "event", "all_of", "any_of"):
            vars(env).pop(name, None)

    def _park(self) -> simpy.Event:
        """What a process that is done waits on, forever.

        A SimPy process that ends schedules its own termination event, which no one here
        waits for: processing it changes nothing but costs a simulation step (about one in
        eight of a forecast's). A parked process schedules nothing, and the events that are
        left keep their order (SimPy orders same-time events by an insertion counter, and
        leaving events out does not reorder the others).
        """
        return self._never

    def _capacity_loss(self, site_id: str, docks: int) -> Proc:
        """Docks out of service stay taken, and sorting stays slow, until the site recovers."""
        site = self.net.sites[site_id]
        back = self.durations.recovery(site, self.env._now)
        requests = [self.docks[site_id].request() for _ in range(docks)]
        uses: list[list[object]] = []
        for j, req in enumerate(requests):
            yield req
            if self.trace is not None:
                uses.append(self.trace.took(site_id, f"out-of-service/{j}", self.env._now))
        if back is not None:
            if back > self.env._now:
                yield self.env.timeout(back - self.env._now)
            for req in requests:
                self.docks[site_id].release(req)
            for use in uses:
                use[2] = self.env._now
            self.rates[site_id] = max(self.rates[site_id], site.handling_rate)
            if self.trace is not None:
                self.trace.rates.setdefault(site_id, []).append(self.env._now)
        yield self._park()

    def _observed_delay(self, trip_id: str, leg_index: int, remaining: float) -> None:
        """Provenance of a trip on the road: progress behind nominal so far is put on the lane.

        (Its late departure, if any, is already in the observed history from ``place``.)
        """
        run, trip = self.trips[trip_id], self.net.trips[trip_id]
        leg = trip.legs[leg_index]
        dep = run.departures[leg_index] or 0.0
        lane = self.net.lanes[leg.lane_id]
        behind = (self.env._now - dep) - (1.0 - remaining) * lane.travel_time
        if behind > 0:
            mechanism, entity = self.durations.lane_cause(lane)
            add_cause(run.ledger, mechanism, entity, behind, dep)

    def _depart(self, trip_id: str, leg_index: int) -> Proc:
        env, trip = self.env, self.net.trips[trip_id]
        leg = trip.legs[leg_index]
        run = self.trips[trip_id]
        ts = self.state.trips[trip_id]
        site = leg.origin
        planned = leg.planned_departure
        if env._now < planned:
            yield self._wait(trip.vehicle_id, planned - env._now)
        elif leg_index == 0 and env._now > planned:
            late = env._now - planned
            run.waited_for_vehicle = late
            prev = self.net.previous_trip(trip_id)
            if prev is not None:
                carry_causes(run.ledger, self.trips[prev].release_ledger, late)
                if self.trace is not None:
                    self.trace.reads.add(prev)
                add_cause(run.ledger, "vehicle_rotation", prev, late, env._now)
        if ts.hold_until is not None and env._now < ts.hold_until:
            start = env._now
            yield self._wait(trip.vehicle_id, ts.hold_until - env._now)
            add_cause(run.ledger, "held_departure", trip_id, env._now - start, start)
        if leg_index == 0 and not ts.depart_now:
            deadline = planned + trip.hold_limit
            inbound = self._inbound(trip_id, site, by=deadline)
            if inbound and env._now < deadline:
                waiter = env.event()
                self._waiters[(trip_id, site)] = waiter
                self._deadlines[(trip_id, site)] = deadline
                start = env._now
                yield waiter | env.timeout(deadline - env._now)
                del self._waiters[(trip_id, site)]
                run.hold_seconds = env._now - start
                still = self._inbound(trip_id, site, by=deadline)
                last = self._last_ready.pop((trip_id, site), None)
                culprit = min(o.inbound_trip or "" for o in still) if still else last
                run.held_for = culprit or None
                if culprit:
                    carry_causes(run.ledger, self.trips[culprit].release_ledger, run.hold_seconds)
                    if self.trace is not None:
                        self.trace.reads.add(culprit)
                add_cause(run.ledger, "held_departure", trip_id, run.hold_seconds, start)
        self._load(trip_id, leg_index, site)
        run.departures[leg_index] = env._now
        self.vehicle_site[trip.vehicle_id] = None
        if self._observing:
            self.observer.departed(env._now, trip_id, leg_index, trip.vehicle_id, site)

    def _load(self, trip_id: str, leg_index: int, site: str) -> None:
        env, trip = self.env, self.net.trips[trip_id]
        booked = self.booked.pop((trip_id, site), None)
        onboard = self.onboard.get(trip_id)
        if onboard is None:
            onboard = self.onboard[trip_id] = []
        if not booked:
            return
        room = self.net.vehicles[trip.vehicle_id].capacity
        for lot in onboard:
            room -= len(lot.ids)
        # in order of their first order id: an order is in one lot, so no two first ids are
        # equal and sorting by the order lists is sorting by their first ids (``attrgetter``:
        # no Python call and no pair built per lot)
        order: Iterable[Lot] = sorted(booked.values(), key=_ORDER_IDS) if len(booked) > 1 else booked.values()
        index = self.booked
        for lot in order:
            if lot.ready and room > 0:
                if len(lot.ids) > room:
                    rest = lot
                    lot = self._split(lot, room)
                    self._roll(rest, trip_id, site)
                room -= len(lot.ids)
                lot.ready = False
                lot.stage = "loaded"
                lot.site = None
                lot.trip = trip_id
                onboard.append(lot)
                # ``self._book(lot)``, inlined (the lot is on a trip: its next hop)
                h = lot.hop + 1
                if h < len(lot.path):
                    key = (lot.path[h], lot.boards[h])
                    b = index.get(key)
                    if b is None:
                        b = index[key] = {}
                    b[lot.serial] = lot
                if self._observing:
                    for oid in lot.ids:
                        self.observer.scanned(env._now, oid, site, "loaded", trip_id)
            else:
                self._roll(lot, trip_id, site)

    def _roll(self, o: Lot, missed: str, site: str, at: float | None = None) -> None:
        """The order missed ``missed`` at ``site``: rebook it on the next trip of its hop.

        ``at`` is when it missed it (default: now), for rolls replayed from before the start.
        """
        h = o.pending_hop()
        trips = self.net.trips
        missed_dep = trips[missed].legs[max(0, self.net.leg_index(missed, site))].planned_departure
        when = self.env._now if at is None else at
        # strictly later than the missed trip's plan: rolling always moves forward
        nxt = self.net.next_trip(site, o.alight(h), max(when, missed_dep + 1e-6), exclude=missed)
        o.rolls += 1
        if nxt is not None:
            gap = trips[nxt].legs[max(0, self.net.leg_index(nxt, site))].planned_departure - missed_dep
        else:
            gap = max(0.0, self.env._now + 1.0 - missed_dep)
        ledger: Ledger = {} if o.miss_ledger is None else o.miss_ledger
        if o.miss_ledger is None and at is not None and o.trip is not None:
            # rolled at the start while still on the road: what delays it is still to come
            o.miss_carry = gap
        elif o.miss_ledger is None and o.inbound_trip is not None:
            carry_causes(ledger, self.order_ledger(o), gap)
            if self.trace is not None:
                self.trace.reads.add(o.inbound_trip)
        add_cause(ledger, "missed_connection", missed, gap, self.env._now)
        o.miss_ledger = ledger
        if self._observing:
            for oid in o.ids:
                self.observer.rolled(self.env._now, oid, missed, nxt)
        if nxt is None:
            return
        o.path[h] = nxt
        if o.ready:
            o.ready = False
            self._make_ready(o)
        else:
            self._book(o)

    def _cancel(self, trip_id: str) -> None:
        for site in self.net.trips[trip_id].stops()[:-1]:
            for o in list(self.booked.pop((trip_id, site), {}).values()):
                self._roll(o, trip_id, site)

    def _drive(self, trip_id: str, leg_index: int, vehicle_id: str, remaining: float) -> Proc:
        """Drive the ``remaining`` fraction of a leg, arrive, and unload what alights there.

        (Driving and arriving are one generator: one less per leg to create and resume.)
        """
        env = self.env
        leg = self.net.trips[trip_id].legs[leg_index]
        lane = self.net.lanes[leg.lane_id]
        start = env._now
        duration = self.durations.travel(trip_id, leg_index, lane, start, remaining)
        self.vehicle_leg[vehicle_id] = (lane.id, start, 1.0 - remaining, start + duration)
        yield self._wait(vehicle_id, duration)
        del self.vehicle_leg[vehicle_id]
        run = self.trips[trip_id]
        excess = duration - lane.travel_time * remaining
        if excess > 0:
            mechanism, entity = self.durations.lane_cause(lane)
            add_cause(run.ledger, mechanism, entity, excess, start)
        # arrive
        site = leg.destination
        run.arrivals[leg_index] = env._now
        run.arrival_ledgers[leg_index] = dict(run.ledger)
        self.vehicle_site[vehicle_id] = site
        if self._observing:
            self.observer.arrived(env._now, trip_id, leg_index, vehicle_id, site)
        if self.onboard.get(trip_id):
            yield from self._unload(trip_id, leg_index, site, woken=True)

    def _unload(self, trip_id: str, leg_index: int, site: str, *, woken: bool = False) -> Proc:
        """Unload the freight that alights at ``site`` at a dock, then hand it to the sorter.

        ``woken``: the vehicle arrived in its own wake-up (see ``_wait``).
        """
        env = self.env
        onboard = self.onboard.get(trip_id, [])
        alighting: list[Lot] = []
        staying: list[Lot] = []
        for o in onboard:
            # ``o.alight() == site``, inlined
            h = o.hop + 1
            (alighting if (o.boards[h] if h < len(o.path) else o.destination) == site else staying).append(o)
        if not alighting:
            return
        self.onboard[trip_id] = staying
        docks = self.docks[site]
        queued = env._now
        # a vehicle unloading at the snapshot has its dock already (``_at_docks``)
        slot, done = self._docked.pop(trip_id, (None, 0.0)) if self._docked else (None, 0.0)
        # Under ``vehicles_last`` a vehicle arrives in its own wake-up, after every other
        # event of its second: a request for a free dock would be the next event processed
        # and would only resume this process, so the dock is taken at once instead.
        if slot is None and woken and self.vehicles_last:
            slot = docks.take()
        if slot is None:
            slot = docks.request()
            yield slot
        elif isinstance(slot, simpy.Event) and not slot.processed:
            yield slot
        wait = env._now - queued
        run = self.trips[trip_id]
        key = f"{trip_id}/{leg_index}"
        use = None
        if self.trace is not None:
            use = self._uses.pop(key, None) or self.trace.took(site, key, env._now)
        # new containers, not changed in place: template copies share the template's
        # (``_copy_run``), and most trips never wait at a dock
        run.dock_waits = [*run.dock_waits, wait]
        run.dock_wait_at = {**run.dock_wait_at, leg_index: wait}
        self.dock_waits.append((site, wait))
        add_cause(run.ledger, "dock_queue", site, wait, queued)
        if self._observing:
            self.observer.docks(env._now, site, docks.count, int(docks.capacity))
        s = self.net.sites[site]
        count = 0
        for o in alighting:
            count += len(o.ids)
        # ``env.timeout``: the same event, scheduled the same way, for less
        durations = self.durations
        took = durations.unload_rest(s, count, key, done) if done else durations.unload(s, count, key)
        yield wake(env, took, NORMAL)
        for o in alighting:
            o.stage = "unloaded"
            o.site = site
            o.trip = None
            o.inbound_trip = trip_id
            o.inbound_leg = leg_index
            o.hop += 1
            if self._observing:
                for oid in o.ids:
                    self.observer.scanned(env._now, oid, site, "unloaded", None)
        docks.release(slot)
        if use is not None:
            use[2] = env._now
        if self._observing:
            self.observer.docks(env._now, site, docks.count, int(docks.capacity))
        self._start_sorting(_Sorting(self, site, alighting, key, 0.0))

    def _start_sorting(self, sorting: _Sorting) -> None:
        """Start a sort where SimPy would start it as a process (see ``_Sorting``)."""
        self._sortings.append(sorting)
        if self.trace is not None:
            inf = math.inf
            sorting.record = [sorting.site, sorting.key, inf, inf, inf, [o.serial for o in sorting.batch]]
            self.trace.sorts.append(sorting.record)
        if self._starting:
            # while building: by the shared start event, in order with the processes
            if self._start_event is None:
                self._start_event = Start(self.env)
            self._start_event.procs.append(sorting)
        elif self._deferred is not None:
            self._deferred.append(sorting)  # when the step ends (``run_until``)
        else:
            # as SimPy starts a process: an urgent event at the current time
            sorting.waiting = simpy.events.Initialize(self.env, sorting)  # type: ignore[arg-type]


class _Sorting:
    """A batch of freight sorted at a site's sorter, first come, first served.

    What a SimPy process would do, in the same steps at the same points of the event order,
    as three callbacks instead of a generator (nothing to create, resume, park and close):
    it is started as a process is (``_resume``: by the build's ``Start``, at the end of the
    step that unloaded the batch, or by an ``Initialize`` event) and books the batch on its
    next hops; it takes the sorter or waits for it (``_sorting``), sorts for the drawn time,
    then frees the sorter and makes the freight ready (``_sorted``). ``credit`` is sorting
    already done on the batch before the model started. A test runs replicas both ways
    (this and the process it replaced) and compares every event and record.
    """

    __slots__ = ("batch", "credit", "key", "model", "queued", "record", "site", "slot", "waiting")

    def __init__(self, model: Model, site: str, batch: list[Lot], key: str, credit: float) -> None:
        self.model = model
        self.site = site
        self.batch = batch
        self.key = key
        self.credit = credit
        self.queued = 0.0
        #: its entry in the model's ``Trace`` (None: not traced)
        self.record: list[object] | None = None
        self.slot: simpy.resources.resource.Request | None = None
        #: the event it waits on (None: none; unlinked by ``Model.close``)
        self.waiting: simpy.Event | None = None

    def _resume(self, event: simpy.Event) -> None:
        """Start: book the batch on its next hops and take the sorter or ask for it."""
        m = self.model
        env = m.env
        booked = m.booked
        for o in self.batch:
            # ``m._book(o)``, inlined
            h = o.hop + 1 if o.trip is not None else o.hop
            if h < len(o.path):
                key_h = (o.path[h], o.boards[h])
                b = booked.get(key_h)
                if b is None:
                    b = booked[key_h] = {}
                b[o.serial] = o
        self.queued = env._now
        if self.record is not None:
            self.record[2] = env._now
            # the trip each lot is booked on from here (None: none, it is home)
            onward: list[str | None] = []
            for o in self.batch:
                h = o.hop + 1 if o.trip is not None else o.hop
                onward.append(o.path[h] if h < len(o.path) else None)
            self.record.append(onward)
        sorter = m.sorters[self.site]
        # with nothing else due in this instant (no event in the queue, nothing of the
        # build still to start), a request for a free sorter would be the next event
        # processed and would only resume this sort: take it at once
        start = m._start_event
        queue = env._queue  # ``env.peek()``: the time of the next event
        due = queue[0][0] if queue else math.inf
        slot = sorter.take() if due > env._now and (start is None or not start.waiting) else None
        if slot is None:
            self.slot = self.waiting = slot = sorter.request()
            slot.callbacks.append(self._sorting)
            return
        self.slot = slot
        self._sorting(slot)

    def _sorting(self, event: simpy.Event) -> None:
        """The sorter is this batch's: sort it for the drawn time."""
        m = self.model
        env = m.env
        waited = env._now - self.queued
        if self.record is not None:
            self.record[3] = env._now
        count = 0
        for o in self.batch:
            o.sort_wait = waited
            count += len(o.ids)
        site = self.site
        s = m.net.sites[site]
        # ``env.timeout``: the same event, scheduled the same way, for less
        w = wake(env, max(1.0, m.durations.sort(s, count, m.rates[site], self.key) - self.credit), NORMAL)
        w.callbacks.append(self._sorted)
        self.waiting = w

    def _sorted(self, event: simpy.Event) -> None:
        """Sorted: free the sorter, and the freight is delivered or waits for its next trip."""
        self.waiting = None
        m = self.model
        env = m.env
        site = self.site
        m.sorters[site].release(self.slot)  # type: ignore[arg-type]
        if self.record is not None:
            self.record[4] = env._now
        observing = m._observing
        for o in self.batch:
            if o.site == o.destination:
                o.stage = "delivered"
                o.delivered_at = env._now
                o.ready = True
                if observing:
                    for oid in o.ids:
                        m.observer.delivered(env._now, oid, site)
                continue
            o.stage = "sorted"
            if observing:
                for oid in o.ids:
                    m.observer.scanned(env._now, oid, site, "sorted", None)
            if o.miss_carry > 0:
                upstream = m.order_ledger(o, misses=False)
                if m.trace is not None and o.inbound_trip is not None:
                    m.trace.reads.add(o.inbound_trip)
                ledger: Ledger = {}
                carry_causes(ledger, upstream, o.miss_carry)
                for k, (secs, at) in (o.miss_ledger or {}).items():
                    add_cause(ledger, k[0], k[1], secs, at)
                o.miss_ledger, o.miss_carry = ledger, 0.0
            m._make_ready(o)
