"""Where a state's open freight is when a model starts: lots, and what has been seen so far.

``place`` groups the open orders of a world state into lot templates that every replica of
a forecast copies; ``observed_history`` gives the provenance of delays already observed;
``freight_free`` and ``detachable`` name the trips no freight can ride.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mypy_extensions import mypyc_attr

from twin.provenance import Ledger, add_cause, carry_causes
from twin.records import Lot, OrderInfo, order_infos
from twin.state import WorldState

__all__ = ["SORT_ALLOWANCE", "Placement", "detachable", "freight_free", "observed_history", "place"]


@mypyc_attr(serializable=True)  # compiled: pickled without calling __init__
@dataclass(slots=True)
class Placement:
    """Where the state's open freight is, grouped into lot templates (computed once per state)."""

    info: dict[str, OrderInfo]
    onboard: list[Lot]
    unsorted: list[Lot]
    ready: list[Lot]
    #: provenance of delays already observed, per trip: (running ledger, ledgers at arrival per leg)
    history: dict[str, tuple[Ledger, dict[int, Ledger]]] = field(default_factory=dict)


_GroupKey = tuple[str, str | None, str | None, int, tuple[str, ...], tuple[str, ...], str]
#: Time freight normally spends between unloading and sorted; beyond it is a handling backlog.
SORT_ALLOWANCE = 600.0


def observed_history(
    state: WorldState, lane_causes: dict[str, tuple[str, str]] | None = None
) -> dict[str, tuple[Ledger, dict[int, Ledger]]]:
    """Provenance of the delays the state has already observed, per trip.

    A late first departure goes to the vehicle's previous trip when that one arrived late
    (carrying its history along), else to the departure itself; time on a completed leg
    beyond the lane's nominal time goes to the lane (or to a reported disruption on it).
    """
    net = state.network
    causes = lane_causes or {}
    out: dict[str, tuple[Ledger, dict[int, Ledger]]] = {}
    for trip in sorted(net.trips.values(), key=lambda t: (t.planned_departure, t.id)):
        ts = state.trips[trip.id]
        dep0 = ts.departures[0]
        if dep0 is None:
            continue
        led: Ledger = {}
        arrivals: dict[int, Ledger] = {}
        late = dep0 - trip.planned_departure
        if late > 0:
            prev = net.previous_trip(trip.id)
            prev_arrival = state.trips[prev].arrivals[-1] if prev is not None else None
            if prev is not None and prev_arrival is not None and prev_arrival > net.trips[prev].planned_arrival:
                if prev in out:
                    carry_causes(led, out[prev][0], late)
                add_cause(led, "vehicle_rotation", prev, late, dep0)
            else:
                # the vehicle was there: it waited for freight; at a site running below its
                # nominal capacity at the time, that freight was stuck in its dock or sorting queue
                site = state.sites[trip.origin]
                if (
                    site.degraded_from is not None
                    and site.degraded_to is not None
                    and (site.degraded_from <= dep0 <= site.degraded_to + 2 * 3600.0)
                ):
                    short_docks = site.docks_in_service < net.sites[trip.origin].docks
                    add_cause(led, "dock_queue" if short_docks else "handling_backlog", trip.origin, late, dep0)
                add_cause(led, "held_departure", trip.id, late, dep0)
        for i, leg in enumerate(trip.legs):
            d, a = ts.departures[i], ts.arrivals[i]
            if d is None or a is None:
                break
            excess = (a - d) - net.lanes[leg.lane_id].travel_time
            mechanism, entity = causes.get(leg.lane_id, ("lane_slowdown", leg.lane_id))
            add_cause(led, mechanism, entity, excess, d)
            arrivals[i] = dict(led)
        out[trip.id] = (led, arrivals)
    return out


def _observed_misses(state: WorldState, misses: list[list[object]]) -> Ledger:
    """Missed connections seen in the live state, with the site's condition as their cause."""
    net = state.network
    led: Ledger = {}
    for booked, site, at in misses:
        b, where, t = str(booked), str(site), float(at)  # type: ignore[arg-type]
        leg = net.leg_index(b, where)
        planned = net.trips[b].legs[max(0, leg)].planned_departure
        # it left at ``t`` (the loaded scan) instead of the booked trip's planned departure
        gap = t - planned
        s = state.sites[where]
        if s.degraded_from is not None and s.degraded_to is not None and s.degraded_from <= t <= s.degraded_to + 7200.0:
            short_docks = s.docks_in_service < net.sites[where].docks
            add_cause(led, "dock_queue" if short_docks else "handling_backlog", where, gap, planned)
        add_cause(led, "missed_connection", b, gap, planned)
    return led


def freight_free(state: WorldState, placement: Placement) -> frozenset[str]:
    """Trips that no freight can ride.

    A trip is freight-free when it is on no open order's remaining path and serves none of
    the hops such an order still has to make (so no missed connection can roll freight onto
    it): nothing is ever booked on it or loaded on it, so it touches no dock and no sorter.
    """
    net = state.network
    capable: set[str] = set()
    hops: set[tuple[str, str]] = set()
    for lot in (*placement.onboard, *placement.unsorted, *placement.ready):
        for h in range(lot.hop, len(lot.path)):
            capable.add(lot.path[h])
            alight = lot.alight(h)
            hops.add((lot.boards[h], alight))
            if lot.site is not None:
                hops.add((lot.site, alight))
    for board, alight in hops:
        capable.update(net.services(board, alight))
    return frozenset(t for t in net.trips if t not in capable)


def detachable(state: WorldState, placement: Placement, free: frozenset[str] | None = None) -> frozenset[str]:
    """Trips that no freight can ride and that only their vehicle's earlier trips affect.

    The detachable trips are, per vehicle, the freight-free trips (``freight_free``) after
    its last trip that is not: not started, they touch no dock, no sorter and no other
    vehicle, and no one reads them during a run. A model can compute them after its SimPy run.
    """
    net = state.network
    free = freight_free(state, placement) if free is None else free
    out: set[str] = set()
    for rotation in net.rotations.values():
        for tid in reversed(rotation):
            ts = state.trips[tid]
            if tid not in free or ts.arrivals[-1] is not None or any(d is not None for d in ts.departures):
                break
            out.add(tid)
    return frozenset(out)


def place(state: WorldState, lane_causes: dict[str, tuple[str, str]] | None = None) -> Placement:
    """Group the state's open orders into lots (shared by every replica of a forecast)."""
    net = state.network
    # per group: [earliest observation, order ids]
    groups: dict[_GroupKey, list[Any]] = {}
    misses: dict[_GroupKey, list[list[object]]] = {}
    # the open orders' ids, origins, destinations and promises (``OrderInfo``s made after the loop)
    oids: list[str] = []
    origins: list[str] = []
    destinations: list[str] = []
    promises: list[float] = []
    for oid, o in state.orders.items():
        stage = o.stage
        if stage == "delivered" or stage == "cancelled":
            continue
        oids.append(oid)
        origins.append(o.origin)
        destinations.append(o.destination)
        promises.append(o.promised_at)
        where = "ready"
        trip = None
        if stage == "created":
            pass
        elif stage == "loaded" and o.trip_id is not None:
            leg = net.leg_index(o.trip_id, o.site_id or "")
            if leg >= 0 and state.trips[o.trip_id].departures[leg] is not None:
                where, trip = "onboard", o.trip_id
        elif stage == "unloaded" and o.site_id is not None:
            where = "unsorted"
            # freight unloaded together is sorted together: keep unloadings apart
            trip = f"@{o.obs_time!r}"
        elif stage == "sorted" and o.unloaded_at is not None and o.sorted_at is not None:
            # how long it waited for the sorter beyond a normal turn (10 minutes)
            trip = f"~{max(0, round(o.sorted_at - o.unloaded_at - SORT_ALLOWANCE))}"
        site = o.site_id if where != "onboard" else None
        if o.misses:
            trip = f"{trip}|" + "|".join(f"{m[0]}@{m[1]}" for m in o.misses)
        key: _GroupKey = (where, site, trip, o.hop, tuple(o.path), tuple(o.boards), o.destination)
        # the key (a 7-tuple, hashed at every dictionary operation) is looked up once
        entry = groups.get(key)
        t = o.obs_time
        if entry is None:
            groups[key] = [t, [oid]]
        else:
            entry[1].append(oid)
            if t < entry[0]:  # ``min(earliest, t)``
                entry[0] = t
        if o.misses:
            misses[key] = o.misses
    info = dict(zip(oids, order_infos(origins, destinations, promises), strict=True))
    out = Placement(info, [], [], [], observed_history(state, lane_causes))
    for key, (since, ids) in sorted(groups.items(), key=lambda kv: min(kv[1][1])):
        where, site, trip, hop, path, boards, destination = key
        lot = Lot(
            sorted(ids),
            str(destination),
            list(path),
            list(boards),
            hop,
            "loaded" if where == "onboard" else ("unloaded" if where == "unsorted" else "sorted"),
            None if where == "onboard" else str(site),
            trip.split("|")[0] if where == "onboard" and trip is not None else None,
            since=since,
        )
        if trip is not None and trip.startswith("~"):
            lot.sort_wait = float(trip.split("|")[0][1:])
        if key in misses:
            lot.miss_ledger = _observed_misses(state, misses[key])
        if site is not None and 0 < hop <= len(path):
            # waiting at a transfer site: remember which trip (and leg) brought it here
            came = net.trips[path[hop - 1]]
            lot.inbound_trip = came.id
            lot.inbound_leg = next((i for i, lg in enumerate(came.legs) if lg.destination == site), len(came.legs) - 1)
        getattr(out, where).append(lot)
    return out
