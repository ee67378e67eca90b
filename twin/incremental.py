"""Incremental forecasts: a full forecast kept up to date event by event.

``IncrementalForecaster(forecaster)`` makes a full forecast of a state (``refresh``) and keeps
what every replica did: its trip records and lots, its tally, and a ``Trace`` of what it did
at the parts of the network that trips share (docks, sorters, holds, the links that copy a
ledger). After events are applied to the state and marked (``touch``), ``update`` re-forecasts
only what they can change and returns the predictions that changed. The result equals a full
forecast of the new state with the same seed and the same beliefs, every prediction to the
last bit (``tests/test_twin/test_incremental.py`` checks it event after event).

What an update can do incrementally is a vehicle's position at an unchanged clock. The
position changes what the vehicle has shown on its leg (its pace, its dead-reckoned
progress), so in each replica the rest of its drive, its arrival, and what follows from
that. What the twin has learned from all the observations (``Beliefs``: lane slowdowns, the
share of pace that persists) is kept from the last refresh, as the forecast then used it:
otherwise every position would nudge every leg under way (docs/forecasting.md,
"Incremental updates"). Anything else (another kind of event, a position that moves the
clock, a vehicle that changed leg) takes a full refresh, as does the caller's period.

In each replica the update works out the vehicle's new arrival, its dock, its unloading and
the sorting of its freight from the replica's records, and checks in the trace that none of
it could have changed what anything else in that replica saw: no other vehicle wanted a
dock that this one's could have taken, the sorter's queue kept its order, no departure
looked at its freight while it was on its way, no link copied its trip's ledger, and its
next trip still leaves on its plan. Then the replica's records and tally are patched in
place. When a check fails, that replica is run again in full from the new state. Only the
entities whose outcome changed in some replica are aggregated again.
"""

# ruff: noqa: EM101 - ``_Rerun("reason")``: the reasons are short labels, counted in UpdateStats
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from twin.durations import DrawTable
from twin.events import Event, VehiclePosition
from twin.forecast import (
    SCHEDULE_GRACE,
    Beliefs,
    Forecaster,
    PredictedState,
    _draw_keys,
    _gc_paused,
    _Keys,
    _Setup,
    _Tally,
    _tally_model,
    leg_paces,
)
from twin.model import Trace, _copy_run, lot_ledger
from twin.provenance import Ledger, add_cause
from twin.records import Lot, TripRun
from twin.state import WorldState

if TYPE_CHECKING:
    from twin.live import LiveTwin

__all__ = ["IncrementalForecaster", "UpdateStats"]

#: Why a forecast was a full refresh (``UpdateStats.reason``): the first; one asked for
#: (``refresh``); the clock moved; an event other than a position on a lane; a vehicle
#: changed status, lane or leg; a vehicle is on a lane the beliefs have no reckoning for.
REFRESH_REASONS: Final = ("first", "period", "clock", "event", "vehicle", "lane")


@dataclass(slots=True)
class UpdateStats:
    """What one ``refresh`` or ``update`` did."""

    #: "refresh" (a full forecast), "incremental", or "unchanged" (nothing to do)
    kind: str
    #: why a refresh (``REFRESH_REASONS``), else ""
    reason: str = ""
    #: vehicles whose position was taken in
    vehicles: int = 0
    #: replicas patched from their records / run again in full
    patched: int = 0
    rerun: int = 0
    #: why replicas were run again: reason -> count
    rerun_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    #: predictions made again
    entities: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class _Replica:
    """What one replica did: its records, its tally and its trace."""

    trips: dict[str, TripRun]
    lots: list[Lot]
    trace: Trace
    tally: _Tally
    #: sort key -> its record in ``trace.sorts``; dock holder -> its use in ``trace.docks``
    sorts: dict[str, list[object]]
    docks: dict[str, list[object]]


class _Rerun(Exception):  # noqa: N818 - a control-flow signal, caught within this module
    """A replica cannot be patched: run it again (the reason is the message)."""


class IncrementalForecaster:
    """A full forecast kept up to date by re-forecasting only what each event can change.

    ``refresh(state)`` makes a full forecast and keeps every replica's records;
    ``touch(event)`` marks an event applied to the state since (``attach(twin)`` makes it
    the live twin's ``on_applied`` hook); ``update(state)`` brings the forecast to the state and returns the predictions
    that changed. ``predictions()`` is the whole current forecast, in the order of
    ``Forecaster.forecast``. ``last`` tells what the latest call did.
    """

    def __init__(self, forecaster: Forecaster) -> None:
        if forecaster.workers != 1:
            msg = "an incremental forecast keeps its replicas in this process: give it a Forecaster with workers=1"
            raise ValueError(msg)
        self.fc = forecaster
        self.last = UpdateStats("refresh", "first")
        self._state: WorldState | None = None
        self._beliefs: Beliefs | None = None
        self._setup: _Setup | None = None
        self._draws: DrawTable | None = None
        self._keys: _Keys | None = None
        self._reps: list[_Replica] = []
        self._preds: list[PredictedState] = []
        #: (kind, id) -> index in ``_preds``
        self._index: dict[tuple[str, str], int] = {}
        self._order_col: dict[str, int] = {}
        self._trip_col: dict[str, int] = {}
        self._p_late = np.zeros(0)
        self._clock = math.nan
        #: per vehicle: (status, lane, trip, leg) at the last refresh
        self._where: dict[str, tuple[object, ...]] = {}
        self._touched: set[str] = set()
        self._other = True

    # ------------------------------------------------------------------ API
    @property
    def beliefs(self) -> Beliefs | None:
        """What the last refresh learned from the observations (None before the first)."""
        return self._beliefs

    def predictions(self) -> list[PredictedState]:
        """The current forecast: every prediction, in the order of ``Forecaster.forecast``."""
        return list(self._preds)

    def attach(self, twin: LiveTwin) -> None:
        """Mark every event the live twin applies from now on (its ``on_applied`` hook).

        An update takes in only what was marked: a state changed by events it was not told
        of would keep predictions of the state before them.
        """
        hook = twin.on_applied
        if hook is not None and hook != self.touch:
            msg = "the live twin already has an on_applied hook; call touch(event) from it instead"
            raise ValueError(msg)
        twin.on_applied = self.touch

    def touch(self, event: Event) -> None:
        """Mark an event applied to the state since the last update."""
        if isinstance(event, VehiclePosition) and event.lane_id is not None:
            self._touched.add(event.vehicle_id)
        else:
            self._other = True

    def touch_all(self, events: Iterable[Event]) -> None:
        """``touch`` each event."""
        for e in events:
            self.touch(e)

    def refresh(self, state: WorldState) -> list[PredictedState]:
        """A full forecast of the state, learning the beliefs anew; returns every prediction."""
        with _gc_paused():  # as a forecast does: replicas pile up records (``_gc_paused``)
            return self._refresh(state, "first" if self._state is None else "period")

    def update(self, state: WorldState) -> list[PredictedState]:
        """Bring the forecast to the state; return the predictions that changed.

        Incremental when every event since the last update is a vehicle position at the
        same clock (see the module docstring); a full refresh otherwise.
        """
        with _gc_paused():
            return self._update(state)

    def _update(self, state: WorldState) -> list[PredictedState]:
        if self._state is None or self._setup is None:
            return self._refresh(state, "first")
        if self._other:
            return self._refresh(state, "event")
        if state.clock != self._clock:
            return self._refresh(state, "clock")
        start = time.perf_counter()
        touched, self._touched = sorted(self._touched), set()
        if not touched:
            self.last = UpdateStats("unchanged")
            return []
        for vid in touched:
            v = state.vehicles[vid]
            if (v.status, v.lane_id, v.trip_id, v.leg) != self._where.get(vid):
                return self._refresh(state, "vehicle")
        beliefs = self._beliefs
        assert beliefs is not None
        progress = beliefs.progress(state)
        if progress is None:
            return self._refresh(state, "lane")
        paces = leg_paces(state, beliefs.persistence)
        stats = UpdateStats("incremental", vehicles=len(touched))
        changed_orders: set[int] = set()
        changed_trips: set[int] = set()
        sites_changed = False
        for vid in touched:
            o, t, s = self._take_position(state, vid, progress, paces, stats)
            changed_orders |= o
            changed_trips |= t
            sites_changed |= s
        out = self._reaggregate(state, sorted(changed_orders), sorted(changed_trips), sites_changed)
        stats.entities = len(out)
        stats.seconds = time.perf_counter() - start
        self.last = stats
        return out

    # ------------------------------------------------------------------ refresh
    def _refresh(self, state: WorldState, reason: str) -> list[PredictedState]:
        start = time.perf_counter()
        fc = self.fc
        self._touched.clear()
        self._other = False
        self._state = state
        self._clock = state.clock
        beliefs = self._beliefs = Beliefs.of(state)
        setup = self._setup = fc._setup(state, beliefs)
        ids = list(range(fc.replicas))
        draws = self._draws = DrawTable(fc.seed, ids, _draw_keys(state))
        keys: _Keys | None = None
        reps: list[_Replica] = []
        for placement, model in fc._replicas(state, ids, setup, draws, trace=True):
            if keys is None:
                keys = _Keys(state, placement.info, model.template)
            reps.append(_replica(model.trips, model.lots, model.trace, _tally_model(model, keys)))
        assert keys is not None
        self._keys, self._reps = keys, reps
        self._preds = fc._aggregate(state, keys, [r.tally for r in reps])
        self._index = {(p.kind, p.id): i for i, p in enumerate(self._preds)}
        self._order_col = {oid: k for k, oid in enumerate(keys.order_ids)}
        self._trip_col = {tid: k for k, tid in enumerate(keys.trip_ids)}
        n_orders = len(keys.order_ids)
        self._p_late = np.array([p.p_late for p in self._preds[:n_orders]], dtype=float)
        self._where = {vid: (v.status, v.lane_id, v.trip_id, v.leg) for vid, v in state.vehicles.items()}
        self.last = UpdateStats("refresh", reason, rerun=len(reps), entities=len(self._preds))
        self.last.seconds = time.perf_counter() - start
        return list(self._preds)

    # ------------------------------------------------------------------ one position
    def _take_position(
        self,
        state: WorldState,
        vehicle_id: str,
        progress: dict[str, float],
        paces: dict[tuple[str, int], tuple[float, float]],
        stats: UpdateStats,
    ) -> tuple[set[int], set[int], bool]:
        """Take in one vehicle's new position in every replica; return the changed columns.

        Returns (order columns, trip columns, whether any site's dock waits changed).
        """
        old = self._setup
        assert old is not None and self._keys is not None and self._draws is not None
        # the setup of the state with only this vehicle's position new
        new_paces = dict(old.paces)
        leg = _current_leg(state, old, vehicle_id)
        if leg is not None:
            new_paces.pop(leg, None)
            if leg in paces:
                new_paces[leg] = paces[leg]
        new_progress = dict(old.progress)
        if vehicle_id in progress:
            new_progress[vehicle_id] = progress[vehicle_id]
        setup = dataclasses.replace(old, paces=new_paces, progress=new_progress)
        if setup.paces == old.paces and setup.progress == old.progress:
            return set(), set(), False
        self._setup = setup
        orders: set[int] = set()
        trips: set[int] = set()
        sites = False
        for r, rep in enumerate(self._reps):
            try:
                if leg is None:
                    raise _Rerun("not driving")
                o, t = self._patch(state, setup, r, rep, vehicle_id, leg)
                orders |= o
                trips |= t
                stats.patched += 1
            except _Rerun as why:
                reason = str(why)
                stats.rerun_reasons[reason] = stats.rerun_reasons.get(reason, 0) + 1
                stats.rerun += 1
                o, t, s = self._rerun(state, setup, r)
                orders |= o
                trips |= t
                sites |= s
        return orders, trips, sites

    def _patch(
        self, state: WorldState, setup: _Setup, r: int, rep: _Replica, vehicle_id: str, leg: tuple[str, int]
    ) -> tuple[set[int], set[int]]:
        """Patch one replica for the vehicle's new drive, or raise ``_Rerun``."""
        net = state.network
        tid, i = leg
        trip = net.trips[tid]
        last = len(trip.legs) - 1
        if i != last:
            raise _Rerun("multi-leg")
        if tid in rep.trace.reads:
            raise _Rerun("ledger read")
        run = rep.trips[tid]
        base_arrival = run.arrivals[i]
        if base_arrival is None:
            raise _Rerun("horizon")
        lane = net.lanes[trip.legs[i].lane_id]
        clock = state.clock
        until = setup.until
        durations = self.fc._durations(state, setup, self._draws, r)  # type: ignore[arg-type]
        remaining = max(0.0, 1.0 - setup.progress[vehicle_id])
        duration = durations.travel(tid, i, lane, clock, remaining)
        arrival = clock + duration
        if arrival >= until:
            raise _Rerun("horizon")
        # the trip's ledger as the run builds it: the template's, the delay observed so far
        # (``Model._observed_delay``), the drive's excess (``Model._drive``)
        template = setup.template.trips[tid]
        ledger: Ledger = template.ledger.copy()
        dep = run.departures[i] or 0.0
        mechanism, entity = durations.lane_cause(lane)
        behind = (clock - dep) - (1.0 - remaining) * lane.travel_time
        if behind > 0:
            add_cause(ledger, mechanism, entity, behind, dep)
        excess = duration - lane.travel_time * remaining
        if excess > 0:
            add_cause(ledger, mechanism, entity, excess, clock)
        site = trip.legs[i].destination
        aboard = setup.template.onboard.get(tid) or []
        new_run = _copy_run(run)
        new_run.arrivals[i] = arrival
        new_run.arrival_ledgers[i] = dict(ledger)
        new_run.ledger = ledger
        patch_lots: list[tuple[Lot, float, float | None]] = []
        use: list[object] | None = None
        sort: list[object] | None = None
        new_use = new_sort = None
        if not aboard:
            base_free, free = base_arrival, arrival
        else:
            for lot in aboard:
                h = lot.hop + 1
                if (lot.boards[h] if h < len(lot.path) else lot.destination) != site:
                    raise _Rerun("freight stays aboard")
            key = f"{tid}/{i}"
            use = rep.docks.get(key)
            sort = rep.sorts.get(key)
            if use is None or sort is None:
                raise _Rerun("no record")
            taken, released = float(use[1]), float(use[2])  # type: ignore[arg-type]
            if taken != base_arrival or math.isinf(released):
                raise _Rerun("dock wait")
            s = net.sites[site]
            count = sum(len(lot.ids) for lot in aboard)
            unloaded = arrival + durations.unload(s, count, key)
            if unloaded >= until:
                raise _Rerun("horizon")
            self._check_docks(state, rep, site, key, min(base_arrival, arrival), max(released, unloaded))
            queued, started, ended = float(sort[2]), float(sort[3]), float(sort[4])  # type: ignore[arg-type]
            if math.isinf(ended) or queued != released:
                raise _Rerun("no record")
            lo, hi = min(queued, unloaded), max(queued, unloaded)
            if started > queued:
                # it waited for the sorter: it starts when it did if it still waits, in the same place
                if not unloaded < started:
                    raise _Rerun("sorter")
                self._check_sorts(rep, site, key, lo, hi, points=True)
                new_started, new_ended = started, ended
            else:
                new_started = unloaded
                rate = _rate(state, rep.trace, site, min(started, new_started), max(started, new_started))
                new_ended = new_started + max(1.0, durations.sort(s, count, rate, key) - 0.0)
                if new_ended >= until:
                    raise _Rerun("horizon")
                self._check_sorts(rep, site, key, lo, max(ended, new_ended))
            ready, new_ready = ended, new_ended
            onward: list[str | None] = sort[6]  # type: ignore[assignment]
            for serial, nxt in zip(sort[5], onward, strict=True):  # type: ignore[call-overload]
                lot = rep.lots[serial]
                if nxt is not None:
                    # it waits at the site for its next trip: that trip must load it as before
                    # and nothing may have looked at it before it was ready
                    leg_at = net.leg_index(nxt, site)
                    left = rep.trips[nxt].departures[leg_at] if leg_at >= 0 else None
                    if left is None or not left > max(ready, new_ready):
                        raise _Rerun("connection")
                    if _looked_at(rep.trace, nxt, site, clock, max(ready, new_ready)):
                        raise _Rerun("hold")
                if lot.trip is None and lot.inbound_trip == tid and lot.inbound_leg == i:
                    # still where this trip left it at the end of the run: its ledger reads it
                    delivered = new_ready if lot.destination == site else lot.delivered_at
                    patch_lots.append((lot, new_started - unloaded, delivered))
            base_free, free = released, unloaded
            new_use = [key, arrival, unloaded]
            new_sort = [sort[0], key, unloaded, new_started, new_ended, sort[5], sort[6]]
        # the vehicle's next trip leaves on its plan either way
        rotation = net.rotations[trip.vehicle_id]
        k = rotation.index(tid)
        if k + 1 < len(rotation):
            nxt_trip = rotation[k + 1]
            if state.trips[nxt_trip].cancelled:
                raise _Rerun("next trip")
            planned = net.trips[nxt_trip].legs[0].planned_departure
            if not max(base_free, free) < planned or base_free + (planned - base_free) != free + (planned - free):
                raise _Rerun("next trip")
        new_run.released = free
        new_run.release_ledger = ledger
        # every check passed: patch the records, the trace and the tally
        rep.trips[tid] = new_run
        if use is not None and new_use is not None:
            use[:] = new_use
        if sort is not None and new_sort is not None:
            sort[:] = new_sort
        keys = self._keys
        assert keys is not None
        tally = rep.tally
        orders: set[int] = set()
        for lot, waited, delivered in patch_lots:
            lot.sort_wait = waited
            lot.delivered_at = delivered
            cols = keys.lots.columns(lot.ids)
            t = math.inf if delivered is None else delivered
            tally.delivered[cols] = t
            first = float(keys.promised[cols].min()) if len(cols) else math.inf
            # as ``_tally_model``: a ledger for the lot's orders when it is late for one of them
            tally.order_ledger[cols] = _keep(tally, lot_ledger(rep.trips, net, lot) if t > first else None)
            orders.update(cols.tolist())
        trips: set[int] = set()
        col = self._trip_col.get(tid)
        if col is not None:
            tally.arrivals[col] = arrival
            late = arrival > keys.trip_due[col]
            tally.trip_ledger[col] = _keep(
                tally, new_run.arrival_ledgers.get(keys.trip_last[col], new_run.ledger) if late else None
            )
            trips.add(col)
        return orders, trips

    def _check_docks(self, state: WorldState, rep: _Replica, site: str, holder: str, lo: float, hi: float) -> None:
        """No one else may have wanted the dock this vehicle takes over [lo, hi], in either run.

        With the others holding at most ``capacity - 2`` docks throughout, this vehicle finds
        one free whenever it arrives and no one else ever waits because of it.
        """
        s = state.sites[site]
        capacity = max(state.network.sites[site].docks, s.docks_in_service, 1)
        points: list[tuple[float, int]] = []
        for use in rep.trace.docks.get(site, ()):
            if use[0] == holder:
                continue
            taken, released = float(use[1]), float(use[2])  # type: ignore[arg-type]
            if released < lo or taken > hi:
                continue
            # closed intervals: touching counts as overlapping (ties are not decided here)
            points.append((max(taken, lo), 1))
            points.append((min(released, hi), -1))
        points.sort(key=lambda p: (p[0], -p[1]))
        held = 0
        for _, d in points:
            held += d
            if held > capacity - 2:
                raise _Rerun("docks")

    def _check_sorts(self, rep: _Replica, site: str, key: str, lo: float, hi: float, *, points: bool = False) -> None:
        """No other batch at the site may queue, start or end within [lo, hi] (closed).

        Unless ``points``, none may be at the sorter or waiting for it within [lo, hi] either.
        """
        for rec in rep.trace.sorts:
            if rec[0] != site or rec[1] == key:
                continue
            queued, started, ended = float(rec[2]), float(rec[3]), float(rec[4])  # type: ignore[arg-type]
            if points:
                if lo <= queued <= hi or lo <= started <= hi or lo <= ended <= hi:
                    raise _Rerun("sorter")
            elif not (ended < lo or queued > hi):
                raise _Rerun("sorter")

    def _rerun(self, state: WorldState, setup: _Setup, r: int) -> tuple[set[int], set[int], bool]:
        """Run replica ``r`` again in full from the new setup; return what changed in its tally."""
        keys = self._keys
        assert keys is not None
        old = self._reps[r]
        new: _Replica | None = None
        for _placement, model in self.fc._replicas(state, [r], setup, self._draws, trace=True):
            new = _replica(model.trips, model.lots, model.trace, _tally_model(model, keys))
        assert new is not None
        self._reps[r] = new
        a, b = old.tally, new.tally
        orders = _changed(a.delivered, b.delivered, a.order_ledger, b.order_ledger, a.ledgers, b.ledgers)
        trips = _changed(a.arrivals, b.arrivals, a.trip_ledger, b.trip_ledger, a.ledgers, b.ledgers)
        sites = sorted(a.waits) != sorted(b.waits)
        return orders, trips, sites

    # ------------------------------------------------------------------ aggregation
    def _reaggregate(
        self, state: WorldState, orders: Sequence[int], trips: Sequence[int], sites_changed: bool
    ) -> list[PredictedState]:
        """Predict again the changed orders and trips (and sites when needed); return those that changed."""
        keys = self._keys
        assert keys is not None
        fc = self.fc
        tallies = [rep.tally for rep in self._reps]
        as_of = state.clock
        end = as_of + fc.horizon
        out: list[PredictedState] = []
        risk_moved = False
        if orders:
            # one column is doubled: numpy may sum a lone contiguous column in another order
            # (pairwise) than a column of a wider matrix, and the sums must be the full forecast's
            cols = np.array(orders if len(orders) > 1 else [*orders, *orders], dtype=np.intp)
            times, which, found = _columns(tallies, cols, "order")
            preds, p_late = fc._time_predictions(
                "order", [keys.order_ids[c] for c in cols], times, keys.promised[cols], as_of, end, 0.0, which, found
            )  # fmt: skip
            preds, p_late, cols = preds[: len(orders)], p_late[: len(orders)], cols[: len(orders)]
            before = self._p_late[cols] >= 0.5
            self._p_late[cols] = p_late
            risk_moved = bool(np.any(before != (p_late >= 0.5)))
            out.extend(self._replace(preds))
        if trips:
            cols = np.array(trips if len(trips) > 1 else [*trips, *trips], dtype=np.intp)
            times, which, found = _columns(tallies, cols, "trip")
            preds, _ = fc._time_predictions(
                "trip", [keys.trip_ids[c] for c in cols], times, keys.trip_planned[cols], as_of, end,
                SCHEDULE_GRACE, which, found,
            )  # fmt: skip
            out.extend(self._replace(preds[: len(trips)]))
        if sites_changed or risk_moved:
            out.extend(self._replace(fc._site_predictions(state, tallies, keys.order_ids, self._p_late)))
        return out

    def _replace(self, preds: list[PredictedState]) -> list[PredictedState]:
        """Put new predictions in place of the old; return those that differ."""
        out: list[PredictedState] = []
        index, current = self._index, self._preds
        for p in preds:
            k = index[(p.kind, p.id)]
            if current[k] != p:
                current[k] = p
                out.append(p)
        return out


# ---------------------------------------------------------------------- helpers
def _replica(trips: dict[str, TripRun], lots: list[Lot], trace: Trace | None, tally: _Tally) -> _Replica:
    assert trace is not None
    sorts = {str(rec[1]): rec for rec in trace.sorts}
    docks: dict[str, list[object]] = {}
    for uses in trace.docks.values():
        for use in uses:
            docks[str(use[0])] = use
    return _Replica(trips, lots, trace, tally, sorts, docks)


def _keep(tally: _Tally, ledger: Ledger | None) -> int:
    """The index of a (non-empty) ledger added to the tally's, or -1 for none."""
    if not ledger:
        return -1
    tally.ledgers.append(ledger)
    return len(tally.ledgers) - 1


def _current_leg(state: WorldState, setup: _Setup, vehicle_id: str) -> tuple[str, int] | None:
    """The (trip, leg) a vehicle is driving at the clock in the model, or None.

    As ``Model._operate`` finds it: the first trip of its rotation the template has not
    released, on the first leg not arrived, if that leg has left and is on the vehicle's
    lane (else the model does not drive it from the vehicle's position).
    """
    net = state.network
    v = state.vehicles[vehicle_id]
    if v.status != "en_route" or vehicle_id not in setup.template.operating:
        return None
    for tid in net.rotations[vehicle_id]:
        run = setup.template.trips[tid]
        if run.released is not None:
            continue
        if run.arrivals[-1] is not None or state.trips[tid].cancelled or tid in setup.detached:
            return None
        for i, leg in enumerate(net.trips[tid].legs):
            if run.arrivals[i] is not None:
                continue
            if run.departures[i] is None or leg.lane_id != v.lane_id:
                return None
            return (tid, i)
        return None
    return None


def _rate(state: WorldState, trace: Trace, site: str, lo: float, hi: float) -> float:
    """The site's sorting rate over [lo, hi] (``_Rerun`` if it changes within it)."""
    s = state.sites[site]
    nominal = state.network.sites[site].handling_rate
    rate = s.handling_rate if s.handling_rate > 0 else nominal
    for t in trace.rates.get(site, ()):
        if lo <= t <= hi:
            raise _Rerun("rate")
        if t < lo:
            rate = max(rate, nominal)
    return rate


def _looked_at(trace: Trace, trip_id: str, site: str, lo: float, hi: float) -> bool:
    """Whether a departure looked at the freight booked on (trip, site) within [lo, hi]."""
    return any(t == trip_id and s == site and lo <= at <= hi for t, s, at in trace.inbound)


def _changed(
    a: npt.NDArray[np.float64],
    b: npt.NDArray[np.float64],
    la: npt.NDArray[np.intp],
    lb: npt.NDArray[np.intp],
    ledgers_a: list[Ledger],
    ledgers_b: list[Ledger],
) -> set[int]:
    """Columns whose time or ledger differs between two tallies."""
    out = set(np.flatnonzero((a != b) | ((la >= 0) != (lb >= 0))).tolist())
    for k in np.flatnonzero((la >= 0) & (lb >= 0)).tolist():
        if k not in out and ledgers_a[la[k]] != ledgers_b[lb[k]]:
            out.add(k)
    return out


def _columns(
    tallies: Sequence[_Tally], cols: npt.NDArray[np.intp], kind: str
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.intp], list[Ledger]]:
    """The replicas x columns matrix of times, and which ledger explains each cell."""
    use = cols
    n = len(tallies)
    times = np.empty((n, len(use)), dtype=float)
    which = np.full((n, len(use)), -1, dtype=np.intp)
    found: list[Ledger] = []
    for r, t in enumerate(tallies):
        if kind == "order":
            times[r] = t.delivered[use]
            idx = t.order_ledger[use]
        else:
            times[r] = t.arrivals[use]
            idx = t.trip_ledger[use]
        ok = np.flatnonzero(idx >= 0)
        if len(ok):
            which[r, ok] = np.arange(len(found), len(found) + len(ok))
            found.extend(t.ledgers[j] for j in idx[ok].tolist())
    return times, which, found
