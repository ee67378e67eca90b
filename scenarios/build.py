"""Turn a scenario spec into the twin's network, and draw and route its demand."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from scenarios.spec import ScenarioSpec, ServiceSpec
from twin.lane import Lane, lane_id
from twin.network import Network
from twin.site import Site
from twin.trip import Leg, Trip
from twin.vehicle import Vehicle

__all__ = ["PlannedOrder", "Router", "build_network", "draw_orders"]

#: How long a vehicle stands at an intermediate stop of a multi-stop route.
INTERMEDIATE_DWELL = 900.0
#: Planned departures are rounded up to this grid (seconds).
SLOT = 300.0


def build_network(spec: ScenarioSpec) -> Network:
    """Sites, lanes, vehicles and the trip schedule the scenario describes."""
    sites = [
        Site(s.id, s.kind, s.region, s.docks, s.handling_rate, s.dock_seconds, s.seconds_per_order)  # type: ignore[arg-type]
        for s in spec.sites
    ]
    lanes: dict[tuple[str, str], Lane] = {}
    for ls in spec.lanes:
        for a, b in (
            [(ls.origin, ls.destination), (ls.destination, ls.origin)]
            if ls.both_ways
            else [(ls.origin, ls.destination)]
        ):
            lanes[(a, b)] = Lane(lane_id(a, b), a, b, ls.minutes * 60.0, ls.sigma)
    vehicles: list[Vehicle] = []
    trips: list[Trip] = []
    for svc in spec.services:
        v, t = _service_schedule(svc, lanes, spec.duration)
        vehicles.extend(v)
        trips.extend(t)
    return Network(sites, lanes.values(), vehicles, trips)


def _service_schedule(
    svc: ServiceSpec, lanes: dict[tuple[str, str], Lane], duration: float
) -> tuple[list[Vehicle], list[Trip]]:
    vehicles, trips = [], []
    for j in range(svc.vehicles):
        route = svc.route[::-1] if svc.start_at_both_ends and j % 2 else svc.route
        vid = f"{svc.id}-{j + 1:02d}"
        vehicles.append(Vehicle(vid, svc.capacity, route[0]))
        t = svc.first_departure + j * svc.headway_minutes * 60.0
        for k in range(svc.trips_per_vehicle):
            stops = route if k % 2 == 0 else route[::-1]
            legs = []
            for a, b in zip(stops, stops[1:], strict=False):
                arrive = t + lanes[(a, b)].travel_time
                legs.append(Leg(lane_id(a, b), a, b, t, arrive))
                t = arrive + INTERMEDIATE_DWELL
            if legs[0].planned_departure >= duration:
                break
            trips.append(Trip(f"{vid}-T{k + 1}", vid, tuple(legs), svc.hold_minutes * 60.0))
            t = math.ceil((legs[-1].planned_arrival + svc.turnaround_minutes * 60.0) / SLOT) * SLOT
    return vehicles, trips


@dataclass(frozen=True, slots=True)
class PlannedOrder:
    """An order of the demand, routed on the schedule."""

    id: str
    created_at: float
    origin: str
    destination: str
    promised_at: float
    path: tuple[str, ...]
    planned_arrival: float


class Router:
    """Earliest-arrival routing over the trip schedule (connection scan).

    Freight that arrives at a site is ready for another trip ``min_connection`` seconds
    later (unloading and sorting); staying on the same trip needs no connection time.
    """

    def __init__(self, network: Network, min_connection: float) -> None:
        self.network = network
        self.min_connection = min_connection
        conns = []
        for trip in network.trips.values():
            for i, leg in enumerate(trip.legs):
                conns.append((leg.planned_departure, leg.planned_arrival, leg.origin, leg.destination, trip.id, i))
        conns.sort()
        self.connections = conns

    def route(self, origin: str, destination: str, ready: float) -> tuple[tuple[str, ...], float] | None:
        """(trip ids, planned arrival at the destination), or None if unreachable."""
        inf = math.inf
        best: dict[str, float] = {origin: ready}
        boarded: dict[str, str] = {}
        journey: dict[str, tuple[str, str]] = {}
        target = inf
        for dep, arr, a, b, tid, _ in self.connections:
            if dep < ready:
                continue
            if dep >= target:
                break
            if tid not in boarded:
                if best.get(a, inf) > dep:
                    continue
                boarded[tid] = a
            at = arr if b == destination else arr + self.min_connection
            if at < best.get(b, inf):
                best[b] = at
                journey[b] = (tid, boarded[tid])
                if b == destination:
                    target = arr
        if destination not in journey:
            return None
        path: list[str] = []
        site = destination
        while site != origin:
            tid, board = journey[site]
            path.append(tid)
            site = board
        path.reverse()
        return tuple(path), best[destination]


def draw_orders(spec: ScenarioSpec, network: Network) -> list[PlannedOrder]:
    """The scenario's demand: random (seeded) origin, destination and creation time, routed.

    Draws that cannot be routed before the end of the scenario are drawn again.
    """
    d = spec.demand
    rng = random.Random(f"{spec.seed}/demand")
    origins = sorted(s.id for s in spec.sites if s.kind == d.from_kind)
    dests = sorted(s.id for s in spec.sites if s.kind == d.to_kind)
    router = Router(network, d.min_connection_minutes * 60.0)
    out: list[PlannedOrder] = []
    attempts = 0
    while len(out) < d.orders:
        attempts += 1
        if attempts > 20 * d.orders + 100:
            msg = (
                f"{spec.source}: demand: only {len(out)} of {d.orders} orders could be routed on the "
                "schedule; add trips or move created_until earlier"
            )
            raise ValueError(msg)
        created = float(round(rng.uniform(d.created_from, d.created_until)))
        o, dst = rng.choice(origins), rng.choice(dests)
        if o == dst:
            continue
        routed = router.route(o, dst, created)
        if routed is None:
            continue
        path, arrival = routed
        if arrival > spec.duration:
            continue
        promised = float(math.ceil((arrival + d.promise_slack_minutes * 60.0) / 60.0) * 60.0)
        out.append(PlannedOrder(f"O{len(out) + 1:05d}", created, o, dst, promised, path, arrival))
    out.sort(key=lambda p: (p.created_at, p.id))
    return out
