"""World state as a fold over events: ``state.apply(event)``, one handler per event type.

Every handler is order-insensitive within the allowed lateness: observations are kept by
(event time, event id), so the newest wins whatever order they arrive in, and sets of facts
(departures, arrivals, lane samples) are kept as sets. Handlers never raise on bad input;
they return a reason and a detail, and the caller turns that into a rejection.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Final

from twin.disruption import DisruptionState
from twin.events import (
    DISPATCH_ACTIONS,
    DISRUPTION_KINDS,
    SCAN_KINDS,
    DispatchCommand,
    DisruptionCleared,
    DisruptionReported,
    DockStatus,
    Event,
    OrderCancelled,
    OrderCreated,
    OrderDelivered,
    OrderScanned,
    SiteThroughput,
    TripHandoff,
    VehicleArrived,
    VehicleDeparted,
    VehiclePosition,
)
from twin.lane import LaneSample, LaneState, SplitTotals
from twin.network import Network
from twin.order import OrderState
from twin.site import SiteState
from twin.trip import TripState
from twin.vehicle import VehicleState

__all__ = ["PARK", "Outcome", "WorldState"]


class _Park:
    """Sentinel: the event names an entity a later event may still create."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


#: ``None`` when applied; ``(reason, detail)`` when rejected; a ``_Park`` to wait for an entity.
Outcome = tuple[str, str] | _Park | None
PARK: Final = _Park


def _unknown(kind: str, key: object) -> tuple[str, str]:
    return ("unknown-entity", f"{kind} {key!r} is not known to the twin")


def _invalid(detail: str) -> tuple[str, str]:
    return ("invalid", detail)


class WorldState:
    """The live world: the static network plus what observations say about it now."""

    __slots__ = (
        "network",
        "clock",
        "sites",
        "lanes",
        "vehicles",
        "trips",
        "orders",
        "disruptions",
        "_handlers",
    )

    def __init__(self, network: Network, clock: float = 0.0) -> None:
        self.network = network
        self.clock = clock
        self.sites: dict[str, SiteState] = {
            s.id: SiteState(docks_in_service=s.docks, handling_rate=s.handling_rate) for s in network.sites.values()
        }
        self.lanes: dict[str, LaneState] = {lid: LaneState() for lid in network.lanes}
        self.vehicles: dict[str, VehicleState] = {
            v.id: VehicleState(status="at_site", site_id=v.home) for v in network.vehicles.values()
        }
        self.trips: dict[str, TripState] = {
            t.id: TripState(departures=[None] * len(t.legs), arrivals=[None] * len(t.legs))
            for t in network.trips.values()
        }
        self.orders: dict[str, OrderState] = {}
        self.disruptions: dict[str, DisruptionState] = {}
        self._handlers: dict[type[Event], Callable[[Any], Outcome]] = {
            VehiclePosition: self._on_position,
            VehicleDeparted: self._on_departed,
            VehicleArrived: self._on_arrived,
            DockStatus: self._on_dock_status,
            SiteThroughput: self._on_throughput,
            DisruptionReported: self._on_disruption_reported,
            DisruptionCleared: self._on_disruption_cleared,
            OrderCreated: self._on_order_created,
            OrderScanned: self._on_order_scanned,
            OrderDelivered: self._on_order_delivered,
            OrderCancelled: self._on_order_cancelled,
            DispatchCommand: self._on_dispatch,
            TripHandoff: self._on_handoff,
        }

    def __reduce__(self) -> tuple[Callable[..., WorldState], tuple[object, ...]]:
        """Pickled as its network, clock and entity states (a compiled class has no ``__dict__``)."""
        entities = (self.sites, self.lanes, self.vehicles, self.trips, self.orders, self.disruptions)
        return (_restored, (self.network, self.clock, *entities))

    # ------------------------------------------------------------------ the fold
    def apply(self, event: Event) -> Outcome:
        """Fold one event into the state; return None, a rejection reason, or PARK."""
        handler = self._handlers.get(type(event))
        if handler is None:
            return ("unknown-type", f"no handler for {type(event).__name__}")
        return handler(event)

    # vehicles -----------------------------------------------------------------
    def _on_position(self, ev: VehiclePosition) -> Outcome:
        v = self.vehicles.get(ev.vehicle_id)
        if v is None:
            return _unknown("vehicle", ev.vehicle_id)
        if ev.lane_id is not None:
            lane = self.lanes.get(ev.lane_id)
            if lane is None:
                return _unknown("lane", ev.lane_id)
            p = ev.progress
            if p is None or not 0.0 <= p <= 1.0:
                return _invalid(f"progress={p!r} on a lane must be within [0, 1]")
            if ev.site_id is not None:
                return _invalid("a position names a lane or a site, not both")
            lane.observe(ev.vehicle_id, ev.time, p)
            if v.newer(ev.time, ev.id):
                v.status = "en_route"
                v.lane_id = ev.lane_id
                v.progress = p
                v.site_id = None
                v.obs_time = ev.time
                v.obs_id = ev.id
            return None
        if ev.site_id is None:
            return _invalid("a position needs lane_id and progress, or site_id")
        if ev.site_id not in self.sites:
            return _unknown("site", ev.site_id)
        if v.newer(ev.time, ev.id):
            v.status = "at_site"
            v.site_id = ev.site_id
            v.lane_id = None
            v.progress = 1.0
            v.obs_time = ev.time
            v.obs_id = ev.id
        return None

    def _leg_event(
        self, ev: VehicleDeparted | VehicleArrived, arriving: bool
    ) -> tuple[str, str] | tuple[VehicleState, TripState, str]:
        v = self.vehicles.get(ev.vehicle_id)
        if v is None:
            return _unknown("vehicle", ev.vehicle_id)
        trip = self.network.trips.get(ev.trip_id)
        if trip is None:
            return _unknown("trip", ev.trip_id)
        if ev.site_id not in self.sites:
            return _unknown("site", ev.site_id)
        if not 0 <= ev.leg < len(trip.legs):
            return _invalid(f"trip {ev.trip_id!r} has legs 0..{len(trip.legs) - 1}, not {ev.leg}")
        leg = trip.legs[ev.leg]
        where = leg.destination if arriving else leg.origin
        if ev.site_id != where:
            verb = "arrives at" if arriving else "departs from"
            return _invalid(f"leg {ev.leg} of trip {ev.trip_id!r} {verb} {where!r}, not {ev.site_id!r}")
        if trip.vehicle_id != ev.vehicle_id:
            return _invalid(f"trip {ev.trip_id!r} is run by {trip.vehicle_id!r}, not {ev.vehicle_id!r}")
        return v, self.trips[ev.trip_id], leg.lane_id

    def _on_departed(self, ev: VehicleDeparted) -> Outcome:
        found = self._leg_event(ev, arriving=False)
        if len(found) == 2:
            return found
        v, ts, lane_id = found
        prev = ts.departures[ev.leg]
        if prev is None or ev.time < prev:
            ts.departures[ev.leg] = ev.time
        self.lanes[lane_id].observe(ev.vehicle_id, ev.time, 0.0)
        if v.newer(ev.time, ev.id):
            v.status = "en_route"
            v.lane_id = lane_id
            v.progress = 0.0
            v.site_id = None
            v.obs_time = ev.time
            v.obs_id = ev.id
        self._set_trip(v, ev)
        return None

    def _on_arrived(self, ev: VehicleArrived) -> Outcome:
        found = self._leg_event(ev, arriving=True)
        if len(found) == 2:
            return found
        v, ts, lane_id = found
        prev = ts.arrivals[ev.leg]
        if prev is None or ev.time < prev:
            ts.arrivals[ev.leg] = ev.time
        self.lanes[lane_id].observe(ev.vehicle_id, ev.time, 1.0)
        if v.newer(ev.time, ev.id):
            v.status = "at_site"
            v.site_id = ev.site_id
            v.lane_id = None
            v.progress = 1.0
            v.obs_time = ev.time
            v.obs_id = ev.id
        self._set_trip(v, ev)
        return None

    @staticmethod
    def _set_trip(v: VehicleState, ev: VehicleDeparted | VehicleArrived) -> None:
        if ev.time > v.trip_obs_time or (ev.time == v.trip_obs_time and ev.id > v.trip_obs_id):
            v.trip_id = ev.trip_id
            v.leg = ev.leg
            v.trip_obs_time = ev.time
            v.trip_obs_id = ev.id

    # sites --------------------------------------------------------------------
    def _on_dock_status(self, ev: DockStatus) -> Outcome:
        s = self.sites.get(ev.site_id)
        if s is None:
            return _unknown("site", ev.site_id)
        if ev.in_service < 0 or not 0 <= ev.occupied <= max(ev.in_service, ev.occupied):
            return _invalid(f"docks occupied={ev.occupied}, in_service={ev.in_service} must be >= 0")
        if ev.in_service < self.network.sites[ev.site_id].docks:
            s.degraded(ev.time)
        if ev.time > s.dock_obs_time or (ev.time == s.dock_obs_time and ev.id > s.dock_obs_id):
            s.docks_occupied = ev.occupied
            s.docks_in_service = ev.in_service
            s.dock_obs_time = ev.time
            s.dock_obs_id = ev.id
        return None

    def _on_throughput(self, ev: SiteThroughput) -> Outcome:
        s = self.sites.get(ev.site_id)
        if s is None:
            return _unknown("site", ev.site_id)
        if not ev.rate_per_hour > 0:
            return _invalid(f"rate_per_hour={ev.rate_per_hour} must be > 0 orders per hour")
        if ev.rate_per_hour < 0.9 * self.network.sites[ev.site_id].handling_rate:
            s.degraded(ev.time)
        if ev.time > s.rate_obs_time or (ev.time == s.rate_obs_time and ev.id > s.rate_obs_id):
            s.handling_rate = ev.rate_per_hour
            s.rate_obs_time = ev.time
            s.rate_obs_id = ev.id
        return None

    # disruptions --------------------------------------------------------------
    def _on_disruption_reported(self, ev: DisruptionReported) -> Outcome:
        if ev.kind not in DISRUPTION_KINDS:
            return _invalid(f"kind={ev.kind!r} must be one of {DISRUPTION_KINDS}")
        if ev.kind == "site_capacity":
            if ev.target_id not in self.sites:
                return _unknown("site", ev.target_id)
            if not 0.0 <= ev.factor <= 1.0:
                return _invalid(f"site_capacity factor={ev.factor} is the fraction of docks in service, in [0, 1]")
        else:
            if ev.target_id not in self.lanes:
                return _unknown("lane", ev.target_id)
            if ev.kind == "lane_slowdown" and not ev.factor >= 1.0:
                return _invalid(f"lane_slowdown factor={ev.factor} multiplies travel time; use >= 1")
        d = self.disruptions.get(ev.disruption_id)
        if d is None:
            self.disruptions[ev.disruption_id] = DisruptionState(
                ev.kind, ev.target_id, ev.factor, ev.time, ev.expected_end, None, ev.time, ev.id
            )
        elif ev.time > d.obs_time or (ev.time == d.obs_time and ev.id > d.obs_id):
            d.kind, d.target_id, d.factor = ev.kind, ev.target_id, ev.factor
            d.expected_end, d.obs_time, d.obs_id = ev.expected_end, ev.time, ev.id
            d.start = min(d.start, ev.time)
        self._refresh_lane_disruptions()
        return None

    def _on_disruption_cleared(self, ev: DisruptionCleared) -> Outcome:
        d = self.disruptions.get(ev.disruption_id)
        if d is None:
            return PARK(ev.disruption_id)
        if d.cleared_at is None or ev.time < d.cleared_at:
            d.cleared_at = ev.time
        self._refresh_lane_disruptions()
        return None

    def _refresh_lane_disruptions(self) -> None:
        for lane in self.lanes.values():
            lane.disruption_factor = 1.0
            lane.closed = False
        for d in self.disruptions.values():
            if d.cleared_at is not None or d.kind == "site_capacity":
                continue
            lane = self.lanes[d.target_id]
            if d.kind == "lane_closure":
                lane.closed = True
            else:
                lane.disruption_factor = max(lane.disruption_factor, d.factor)

    # orders -------------------------------------------------------------------
    def _on_order_created(self, ev: OrderCreated) -> Outcome:
        if ev.order_id in self.orders:
            return _invalid(f"order {ev.order_id!r} already exists; use a new order id")
        for site in (ev.origin, ev.destination):
            if site not in self.sites:
                return _unknown("site", site)
        boards = self._boards(ev.origin, ev.destination, ev.path)
        if isinstance(boards, tuple):
            return boards
        self.orders[ev.order_id] = OrderState(
            origin=ev.origin,
            destination=ev.destination,
            promised_at=ev.promised_at,
            created_at=ev.time,
            path=list(ev.path),
            boards=boards,
            site_id=ev.origin,
            obs_time=ev.time,
            obs_id=ev.id,
        )
        return None

    def _boards(self, origin: str, destination: str, path: tuple[str, ...]) -> list[str] | tuple[str, str]:
        """Where the order boards each trip of its path; a rejection if the path is broken."""
        trips = self.network.trips
        boards: list[str] = []
        here = origin
        for i, tid in enumerate(path):
            trip = trips.get(tid)
            if trip is None:
                return _unknown("trip", tid)
            stops = trip.stops()
            if here not in stops[:-1]:
                return _invalid(f"path hop {i}: trip {tid!r} does not leave {here!r}")
            boards.append(here)
            after = stops[stops.index(here) + 1 :]
            if i + 1 < len(path):
                nxt = trips.get(path[i + 1])
                if nxt is None:
                    return _unknown("trip", path[i + 1])
                meet = [s for s in after if s in nxt.stops()[:-1]]
                if not meet:
                    return _invalid(f"path hops {i}, {i + 1}: trips {tid!r} and {path[i + 1]!r} do not meet")
                here = meet[0]
            elif destination not in after:
                return _invalid(f"path ends with trip {tid!r}, which does not reach {destination!r}")
        if not path and origin != destination:
            return _invalid("an order needs a path of trips from its origin to its destination")
        return boards

    def _rebook(self, order: OrderState, site: str, trip_id: str) -> None:
        """Put the order on ``trip_id`` for the hop that boards at ``site`` (rolls, moves)."""
        for i in range(order.hop, len(order.path)):
            if order.boards[i] == site:
                order.path[i] = trip_id
                return

    def _on_order_scanned(self, ev: OrderScanned) -> Outcome:
        o = self.orders.get(ev.order_id)
        if o is None:
            return PARK(ev.order_id)
        if ev.site_id not in self.sites:
            return _unknown("site", ev.site_id)
        if ev.kind not in SCAN_KINDS:
            return _invalid(f"scan kind={ev.kind!r} must be one of {SCAN_KINDS}")
        if ev.kind == "loaded":
            if ev.trip_id is None:
                return _invalid("a 'loaded' scan needs the trip_id the order is loaded on")
            if ev.trip_id not in self.trips:
                return _unknown("trip", ev.trip_id)
        if ev.kind == "unloaded":
            self.sites[ev.site_id].unloaded(ev.time)
            if o.unloaded_at is None or ev.time > o.unloaded_at:
                o.unloaded_at = ev.time
        elif ev.kind == "sorted":
            self.sites[ev.site_id].sort_ended(ev.time)
            if o.sorted_at is None or ev.time > o.sorted_at:
                o.sorted_at = ev.time
        if not o.newer(ev.kind, ev.time, ev.id):
            return None
        o.stage = ev.kind
        o.obs_time = ev.time
        o.obs_id = ev.id
        if ev.kind == "loaded":
            assert ev.trip_id is not None
            if ev.trip_id not in o.path[o.hop :]:
                booked = next((o.path[i] for i in range(o.hop, len(o.path)) if o.boards[i] == ev.site_id), None)
                if booked is not None and booked != ev.trip_id:
                    # it left on a later trip than booked: a missed connection, kept for cause chains
                    o.misses.append([booked, ev.site_id, ev.time])
                self._rebook(o, ev.site_id, ev.trip_id)
            o.hop = o.path.index(ev.trip_id, o.hop) if ev.trip_id in o.path[o.hop :] else o.hop
            o.site_id = ev.site_id
            o.trip_id = ev.trip_id
        else:
            o.site_id = ev.site_id
            o.trip_id = None
            nxt = [i for i in range(len(o.boards)) if o.boards[i] == ev.site_id]
            o.hop = nxt[-1] if nxt else len(o.path)
        return None

    def _on_order_delivered(self, ev: OrderDelivered) -> Outcome:
        o = self.orders.get(ev.order_id)
        if o is None:
            return PARK(ev.order_id)
        if ev.site_id not in self.sites:
            return _unknown("site", ev.site_id)
        # a delivery is the end of the destination's sorting of its batch
        self.sites[ev.site_id].sort_ended(ev.time)
        if o.delivered_at is None or ev.time < o.delivered_at:
            o.delivered_at = ev.time
        if o.newer("delivered", ev.time, ev.id):
            o.stage = "delivered"
            o.site_id = ev.site_id
            o.trip_id = None
            o.hop = len(o.path)
            o.obs_time = ev.time
            o.obs_id = ev.id
        return None

    def _on_order_cancelled(self, ev: OrderCancelled) -> Outcome:
        o = self.orders.get(ev.order_id)
        if o is None:
            return PARK(ev.order_id)
        if o.newer("cancelled", ev.time, ev.id):
            o.stage = "cancelled"
            o.obs_time = ev.time
            o.obs_id = ev.id
        return None

    # planner ------------------------------------------------------------------
    def _on_dispatch(self, ev: DispatchCommand) -> Outcome:
        ts = self.trips.get(ev.trip_id)
        if ts is None:
            return _unknown("trip", ev.trip_id)
        if ev.action not in DISPATCH_ACTIONS:
            return _invalid(f"action={ev.action!r} must be one of {DISPATCH_ACTIONS}")
        if ev.action == "cancel_trip":
            ts.cancelled = True
            return None
        if ev.action == "move_order":
            if ev.order_id is None:
                return _invalid("move_order needs order_id")
            o = self.orders.get(ev.order_id)
            if o is None:
                return PARK(ev.order_id)
            here = o.site_id if o.site_id is not None else o.origin
            hop = next((i for i in range(o.hop, len(o.path)) if o.boards[i] == here), None)
            if hop is None:
                return _invalid(f"order {ev.order_id!r} has no hop left that boards at {here!r}")
            alight = o.boards[hop + 1] if hop + 1 < len(o.path) else o.destination
            stops = self.network.trips[ev.trip_id].stops()
            if here not in stops[:-1] or alight not in stops[stops.index(here) + 1 :]:
                return _invalid(
                    f"trip {ev.trip_id!r} does not go from {here!r} to {alight!r}, "
                    f"the hop order {ev.order_id!r} is waiting for"
                )
            self._rebook(o, here, ev.trip_id)
            return None
        if ev.action == "hold" and ev.until is None:
            return _invalid("hold needs until (the earliest departure time)")
        if ev.time > ts.command_time or (ev.time == ts.command_time and ev.id > ts.command_id):
            ts.hold_until = ev.until if ev.action == "hold" else None
            ts.depart_now = ev.action == "depart_now"
            ts.command_time = ev.time
            ts.command_id = ev.id
        return None

    # shards -------------------------------------------------------------------
    def _on_handoff(self, ev: TripHandoff) -> Outcome:
        """Take over a trip from another shard: its departure and the orders on board."""
        trip = self.network.trips.get(ev.trip_id)
        if trip is None:
            return _unknown("trip", ev.trip_id)
        if not 0 <= ev.leg < len(trip.legs):
            return _invalid(f"trip {ev.trip_id!r} has legs 0..{len(trip.legs) - 1}, not {ev.leg}")
        leg = trip.legs[ev.leg]
        departed = VehicleDeparted(
            id=ev.id, time=ev.departed_at, vehicle_id=ev.vehicle_id, trip_id=ev.trip_id, leg=ev.leg, site_id=leg.origin
        )
        found = self._leg_event(departed, arriving=False)
        if len(found) == 2:
            return found
        previous = self.network.previous_trip(ev.trip_id)
        if ev.previous_arrived_at is not None and previous is not None:
            prev = self.trips[previous]
            if prev.arrivals[-1] is None and not prev.cancelled:
                # This shard handed the previous trip off and never saw it arrive.
                prev.arrivals[-1] = ev.previous_arrived_at
        for ob in ev.orders:
            if ob.order_id not in self.orders:
                boards = self._boards(ob.origin, ob.destination, ob.path)
                if isinstance(boards, tuple):
                    return boards
                self.orders[ob.order_id] = OrderState(
                    origin=ob.origin,
                    destination=ob.destination,
                    promised_at=ob.promised_at,
                    created_at=ob.created_at,
                    path=list(ob.path),
                    boards=boards,
                )
            o = self.orders[ob.order_id]
            if o.newer("loaded", ev.departed_at, ev.id):
                o.stage = "loaded"
                o.site_id = leg.origin
                o.trip_id = ev.trip_id
                o.path = list(ob.path)
                o.hop = ob.hop
                o.obs_time = ev.departed_at
                o.obs_id = ev.id
        return self._on_departed(departed)

    # ------------------------------------------------------------------ reading
    def vehicle_progress(self, vehicle_id: str, at: float | None = None, factor: float | None = None) -> float:
        """Dead-reckoned progress of an en-route vehicle at ``at`` (default: the clock).

        From the last observation the vehicle is assumed to move at the lane's nominal speed
        times the slowdown the twin currently believes in (or ``factor``), and never past the
        end of the lane until an arrival is observed.
        """
        v = self.vehicles[vehicle_id]
        if v.status != "en_route" or v.lane_id is None:
            return 1.0 if v.status == "at_site" else 0.0
        lane = self.network.lanes[v.lane_id]
        if factor is None:
            factor = self.lanes[v.lane_id].factor(lane.travel_time)
        t = self.clock if at is None else at
        moved = max(0.0, t - v.obs_time) / (lane.travel_time * factor)
        return min(1.0, v.progress + moved)

    def late_orders(self, at: float | None = None) -> list[str]:
        """Orders delivered after their promise, or still open past it."""
        t = self.clock if at is None else at
        out = []
        for oid, o in self.orders.items():
            if o.stage == "cancelled":
                continue
            if o.delivered_at is not None:
                if o.delivered_at > o.promised_at:
                    out.append(oid)
            elif t > o.promised_at:
                out.append(oid)
        return out

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> dict[str, Any]:
        """The dynamic state as plain JSON-able data (the network is referenced, not copied)."""
        return {
            "clock": self.clock,
            "sites": {k: _slots(v) for k, v in self.sites.items()},
            "lanes": {
                k: {
                    "samples": {vid: _slots(s) for vid, s in v.samples.items()},
                    "latest_time": v.latest_time,
                    "disruption_factor": v.disruption_factor,
                    "closed": v.closed,
                    "previous": {vid: _slots(s) for vid, s in v.previous.items()},
                    "finished": {vid: _slots(t) for vid, t in v.finished.items()},
                }
                for k, v in self.lanes.items()
            },
            "vehicles": {k: _slots(v) for k, v in self.vehicles.items()},
            "trips": {k: _slots(v) for k, v in self.trips.items()},
            "orders": {k: _slots(v) for k, v in self.orders.items()},
            "disruptions": {k: _slots(v) for k, v in self.disruptions.items()},
        }

    @classmethod
    def from_snapshot(cls, network: Network, snap: dict[str, Any]) -> WorldState:
        """Rebuild a state from :meth:`snapshot` output and the same network."""
        state = cls(network, snap["clock"])
        state.sites = {
            k: SiteState(**{**v, "unloads": list(v.get("unloads", ())), "sorts": list(v.get("sorts", ()))})
            for k, v in snap["sites"].items()
        }
        state.lanes = {
            k: LaneState(
                samples={vid: LaneSample(**s) for vid, s in v["samples"].items()},
                latest_time=v["latest_time"],
                disruption_factor=v["disruption_factor"],
                closed=v["closed"],
                previous={vid: LaneSample(**s) for vid, s in v["previous"].items()},
                finished={vid: SplitTotals(**t) for vid, t in v["finished"].items()},
            )
            for k, v in snap["lanes"].items()
        }
        state.vehicles = {k: VehicleState(**v) for k, v in snap["vehicles"].items()}
        state.trips = {
            k: TripState(**{**v, "departures": list(v["departures"]), "arrivals": list(v["arrivals"])})
            for k, v in snap["trips"].items()
        }
        state.orders = {
            k: OrderState(
                **{**v, "path": list(v["path"]), "boards": list(v["boards"]), "misses": [list(m) for m in v["misses"]]}
            )
            for k, v in snap["orders"].items()
        }
        state.disruptions = {k: DisruptionState(**v) for k, v in snap["disruptions"].items()}
        return state


def _restored(
    network: Network,
    clock: float,
    sites: dict[str, SiteState],
    lanes: dict[str, LaneState],
    vehicles: dict[str, VehicleState],
    trips: dict[str, TripState],
    orders: dict[str, OrderState],
    disruptions: dict[str, DisruptionState],
) -> WorldState:
    """A pickled :class:`WorldState` back (``WorldState.__reduce__``)."""
    state = WorldState(network, clock)
    state.sites, state.lanes, state.vehicles, state.trips = sites, lanes, vehicles, trips
    state.orders, state.disruptions = orders, disruptions
    return state


#: Types of slot values copied as they are (no container is one of them).
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


_SlotReader = tuple[tuple[str, ...], Callable[[object], tuple[Any, ...]]]
#: per state class: its slot names and a getter of all their values at once
_SLOT_READERS: dict[type, _SlotReader] = {}


def _slot_reader(cls: type) -> _SlotReader:
    # the dataclass's fields, in order (its ``__slots__``, which a compiled class does not have)
    names = tuple(f.name for f in dataclasses.fields(cls))
    get = attrgetter(*names)
    reader: _SlotReader = (names, (lambda obj: (get(obj),)) if len(names) == 1 else get)
    _SLOT_READERS[cls] = reader
    return reader


def _slots(obj: object) -> dict[str, Any]:
    cls = type(obj)
    names, get = _SLOT_READERS.get(cls) or _slot_reader(cls)
    out: dict[str, Any] = {}
    scalars = _SCALARS
    for name, value in zip(names, get(obj), strict=True):
        if type(value) not in scalars:
            if isinstance(value, list | tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
        out[name] = value
    return out
