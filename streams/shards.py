"""Shards: one live twin per region, every event routed to the shard that must apply it.

Shard = region (DESIGN.md, "Scale-out"). A shard sees only the events of its region, so a trip
that leaves the region is *handed off*: when a shard has applied a ``VehicleDeparted`` on a leg
that ends in another region, it emits a :class:`~twin.events.TripHandoff` (the departure and the
orders on board, from its own state) for the destination shard, which takes the trip and those
orders over. Ownership of trips and orders moves with the handoffs; each shard publishes
predictions only for what it owns, so every entity key has exactly one publisher at a time.

Routing (:class:`ShardRouter`) is static, from the network:

======================================  =================================================
event                                   shard
======================================  =================================================
vehicle position                        region of the site, or of the lane's destination
vehicle arrived / departed              region of the site
dock status, site throughput            region of the site
order created                           region of the origin
order scanned / delivered               region of the scan site
dispatch command                        region of the trip's origin
disruption reported                     every shard; accounted by the target's region
                                        (site, or lane destination)
disruption cleared                      every shard; accounted by a stable hash of its id
order cancelled                         every shard (it names no site); accounted by the
                                        shard of the order's origin that knows the order
======================================  =================================================

Events naming unknown sites, lanes or trips go to a shard picked by a stable hash of their
subject, whose twin rejects them (``unknown-entity``). Every event has exactly one *accountable*
copy: the one counted as applied or dead-lettered, so consumed = applied + dead-lettered holds
over all shards. Broadcast copies on other shards are applied too (each shard's model covers
the whole network) but never counted or dead-lettered.

Handoffs are deferred to the end of the departure's timestamp (they are emitted once the shard
has applied everything up to and including the departure time), so the orders loaded at the
same instant as the departure are on board whatever the order of equal-time events. An order
scanned ``loaded`` after its leg left (a late scan) follows in a supplementary handoff.

:class:`ShardedPipeline` runs every shard in one process: routes events in the order given,
delivers handoffs as soon as the stream moves past their time, forecasts each shard at a
cadence in event time (when its clock first crosses a multiple of ``cadence``), and ends with a
final prediction set. The Kafka worker runs the same :class:`Shard` objects
(``streams.host``); only the transport differs.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from twin.errors import Rejection
from twin.events import (
    DispatchCommand,
    DisruptionCleared,
    DisruptionReported,
    DockStatus,
    Event,
    OrderCancelled,
    OrderCreated,
    OrderDelivered,
    OrderOnBoard,
    OrderScanned,
    SiteThroughput,
    TripHandoff,
    VehicleArrived,
    VehicleDeparted,
    VehiclePosition,
)
from twin.live import DEFAULT_LATENESS, LiveTwin
from twin.network import Network
from twin.state import WorldState

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CADENCE",
    "ForecastSettings",
    "ForecasterLike",
    "PublicationTicket",
    "PipelineResult",
    "Prediction",
    "Publication",
    "Route",
    "Shard",
    "ShardRouter",
    "ShardStats",
    "ShardedPipeline",
    "fold_publications",
]

#: Default forecast cadence in event time (seconds): the same as ``twin run``'s.
DEFAULT_CADENCE: Final = 3600.0
_HANDOFF_SUFFIX: Final = "~handoff"


# ---------------------------------------------------------------------------------- protocols


@runtime_checkable
class Prediction(Protocol):
    """What the pipeline needs of a predicted state (``twin.forecast.PredictedState``)."""

    @property
    def kind(self) -> str:
        """``order``, ``trip`` or ``site``."""
        ...

    @property
    def id(self) -> str:
        """The entity id."""
        ...

    @property
    def as_of(self) -> float:
        """Event-time watermark the prediction was made at."""
        ...

    @property
    def key(self) -> str:
        """``kind:id``, the key on the compacted predictions topic."""
        ...


class ForecasterLike(Protocol):
    """A forecaster (``twin.forecast.Forecaster``): a full forecast of a world state.

    A forecaster may also be incremental (``mark(event)`` for every applied event, then
    ``update(state)`` returning the predictions that changed); the pipeline uses that when
    present for publications between cadence ticks.
    """

    def forecast(self, state: WorldState) -> Sequence[Any]:
        """Predictions for every open order, unfinished trip and site of ``state``."""
        ...


@dataclass(frozen=True, slots=True)
class ForecastSettings:
    """How shards forecast: ``cadence`` in event-time seconds, then the forecaster's settings."""

    cadence: float = DEFAULT_CADENCE
    horizon: float = 12 * 3600.0
    replicas: int = 32
    seed: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.cadence > 0:
            msg = f"forecast cadence={self.cadence} must be > 0 seconds of event time"
            raise ValueError(msg)

    def build(self, network: Network) -> ForecasterLike:
        """A fresh forecaster with these settings."""
        from twin.forecast import Forecaster

        return Forecaster(network, horizon=self.horizon, replicas=self.replicas, seed=self.seed, workers=self.workers)


# ---------------------------------------------------------------------------------- routing


@dataclass(frozen=True, slots=True)
class Route:
    """The shards that apply an event, and the one accountable for it.

    ``accountable`` is None for an order cancellation: the copy that counts is the one on the
    shard of the order's origin, decided when a shard knows the order.
    """

    shards: tuple[str, ...]
    accountable: str | None


class ShardRouter:
    """Static routing of events to shards (regions), from the network."""

    __slots__ = (
        "network",
        "regions",
        "site_region",
        "lane_dest_region",
        "trip_origin_region",
        "_routes",
        "_all",
        "_by_class",
    )

    def __init__(self, network: Network) -> None:
        self.network = network
        self.regions: tuple[str, ...] = network.regions
        if not self.regions:
            msg = "the network has no regions (sites); a sharded pipeline needs at least one"
            raise ValueError(msg)
        self.site_region: dict[str, str] = {sid: s.region for sid, s in network.sites.items()}
        self.lane_dest_region: dict[str, str] = {
            lid: self.site_region[lane.destination] for lid, lane in network.lanes.items()
        }
        self.trip_origin_region: dict[str, str] = {tid: self.site_region[t.origin] for tid, t in network.trips.items()}
        self._routes: dict[str, Route] = {r: Route((r,), r) for r in self.regions}
        self._all = self.regions
        #: the routes of the frequent event classes, looked up by exact class (one dict lookup
        #: instead of a chain of isinstance checks); anything else takes :meth:`_route`
        self._by_class: dict[type, Callable[[Any], Route]] = {
            VehiclePosition: self._position,
            VehicleArrived: self._at_site,
            VehicleDeparted: self._at_site,
            OrderScanned: self._at_site,
            OrderDelivered: self._at_site,
            DockStatus: self._at_site,
        }

    def fallback(self, key: str) -> str:
        """The shard for an entity the network does not know: a stable hash of its id."""
        return self.regions[zlib.crc32(key.encode("utf-8", "surrogatepass")) % len(self.regions)]

    def _one(self, region: str | None, subject: str) -> Route:
        return self._routes[region if region is not None else self.fallback(subject)]

    def _everywhere(self, accountable: str | None) -> Route:
        if accountable is None:
            return Route(self._all, None)
        return Route((accountable, *(r for r in self._all if r != accountable)), accountable)

    def route(self, event: Event) -> Route:
        """Where ``event`` goes (see the module docstring)."""
        fn = self._by_class.get(type(event))
        return fn(event) if fn is not None else self._route(event)

    def _position(self, event: VehiclePosition) -> Route:
        if event.lane_id is not None:
            region = self.lane_dest_region.get(event.lane_id)
        else:
            region = self.site_region.get(event.site_id or "")
        return self._routes[region if region is not None else self.fallback(event.vehicle_id)]

    def _at_site(self, event: VehicleArrived | VehicleDeparted | OrderScanned | OrderDelivered | DockStatus) -> Route:
        region = self.site_region.get(event.site_id)
        return self._routes[region if region is not None else self.fallback(event.subject)]

    def _route(self, event: Event) -> Route:
        site = self.site_region
        if isinstance(event, VehiclePosition):
            if event.lane_id is not None:
                return self._one(self.lane_dest_region.get(event.lane_id), event.vehicle_id)
            return self._one(site.get(event.site_id or ""), event.vehicle_id)
        if isinstance(event, VehicleArrived | VehicleDeparted | OrderScanned | OrderDelivered | DockStatus):
            return self._one(site.get(event.site_id), event.subject)
        if isinstance(event, SiteThroughput):
            return self._one(site.get(event.site_id), event.site_id)
        if isinstance(event, OrderCreated):
            return self._one(site.get(event.origin), event.order_id)
        if isinstance(event, DispatchCommand):
            return self._one(self.trip_origin_region.get(event.trip_id), event.trip_id)
        if isinstance(event, DisruptionReported):
            target = site.get(event.target_id) or self.lane_dest_region.get(event.target_id)
            return self._everywhere(target if target is not None else self.fallback(event.disruption_id))
        if isinstance(event, DisruptionCleared):
            return self._everywhere(self.fallback(event.disruption_id))
        if isinstance(event, OrderCancelled):
            return self._everywhere(None)
        if isinstance(event, TripHandoff):
            return self._one(event.to_shard if event.to_shard in self._routes else None, event.trip_id)
        return self._one(None, event.subject)


# ---------------------------------------------------------------------------------- one shard


@dataclass(frozen=True, slots=True)
class Publication:
    """One record for the predictions topic: a prediction, or a tombstone (``prediction`` None)."""

    shard: str
    key: str
    prediction: Any | None


@dataclass(slots=True)
class ShardStats:
    """What happened to the events this shard is accountable for."""

    applied: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    #: events parked (waiting for their entity) right now
    pending: int = 0
    handoffs_sent: int = 0
    handoffs_received: int = 0
    #: broadcast copies of a cancellation this shard could not apply (it does not know the order)
    dropped_copies: int = 0
    #: handoffs this shard could not apply (a bug or a network mismatch between shards)
    handoffs_rejected: int = 0
    publications: int = 0

    @property
    def consumed(self) -> int:
        """Applied + dead-lettered + pending: every accountable event handed to the shard."""
        return sum(self.applied.values()) + sum(self.dead_lettered.values()) + self.pending

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for snapshots and summaries)."""
        return {
            "applied": dict(sorted(self.applied.items())),
            "dead_lettered": dict(sorted(self.dead_lettered.items())),
            "pending": self.pending,
            "handoffs_sent": self.handoffs_sent,
            "handoffs_received": self.handoffs_received,
            "dropped_copies": self.dropped_copies,
            "handoffs_rejected": self.handoffs_rejected,
            "publications": self.publications,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardStats:
        """Inverse of :meth:`as_dict`."""
        return cls(
            Counter(data["applied"]),
            Counter(data["dead_lettered"]),
            data["pending"],
            data["handoffs_sent"],
            data["handoffs_received"],
            data["dropped_copies"],
            data["handoffs_rejected"],
            data["publications"],
        )


@dataclass(slots=True)
class ShardResult:
    """What handing one event to a shard did.

    ``ok``: the event itself was applied; ``applied``: events applied now besides it (parked
    ones it released); ``dead_letters``: rejections this shard is accountable for;
    ``settled``: ids of every event that stopped waiting (applied or rejected);
    ``parked``: the event itself is waiting for its entity.
    """

    ok: bool = False
    applied: list[Event] = field(default_factory=list)
    #: the event's own rejection, accountable or not (None if applied or parked)
    rejected: Rejection | None = None
    dead_letters: list[Rejection] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    parked: bool = False


#: The common outcome (applied, nothing else happened), shared: never mutate it.
CLEAN: Final = ShardResult(ok=True)


@dataclass(slots=True)
class _PendingHandoff:
    time: float
    id: str
    trip_id: str
    leg: int
    vehicle_id: str
    departed_at: float
    #: None: every order on board when emitted; else just these (a late scan)
    orders: tuple[str, ...] | None


class PublicationTicket:
    """A shard's ownership and publication record frozen at one moment (see :meth:`Shard.ticket`)."""

    __slots__ = ("_moved", "_orders", "_region", "_shard", "_trip_origin", "receipt")

    def __init__(self, shard: Shard, moved: dict[str, bool], orders: frozenset[str], receipt: int) -> None:
        self._shard = shard.name
        self._region = shard.router.site_region
        self._trip_origin = shard.router.trip_origin_region
        self._moved = moved
        self._orders = orders
        #: the number of the shard's next handoff receipt when the ticket was taken
        self.receipt = receipt

    def owns(self, key: str) -> bool:
        """:meth:`Shard.owns` as it answered when the ticket was taken."""
        kind, _, eid = key.partition(":")
        if kind == "site":
            return self._region.get(eid) == self._shard
        moved = self._moved.get(key)
        if moved is not None:
            return moved
        if kind == "trip":
            return self._trip_origin.get(eid) == self._shard
        if kind == "order":
            return eid in self._orders
        return False


class Shard:
    """One region's live twin, with ownership, deferred handoffs and forecast ticks.

    Passive: the caller hands it events in the order to apply them, asks it for handoffs when
    its event time has moved on, and runs forecasts when :meth:`due` says a tick is due.
    """

    def __init__(
        self,
        name: str,
        network: Network,
        router: ShardRouter | None = None,
        *,
        lateness: float = DEFAULT_LATENESS,
        cadence: float | None = DEFAULT_CADENCE,
        twin: LiveTwin | None = None,
    ) -> None:
        self.router = router if router is not None else ShardRouter(network)
        if name not in self.router.regions:
            msg = f"shard {name!r} is not a region of the network; regions: {list(self.router.regions)}"
            raise ValueError(msg)
        self.name = name
        self.network = network
        self.twin = twin if twin is not None else LiveTwin(network, lateness=lateness)
        self.twin.on_applied = self._on_applied
        self.cadence = cadence if cadence and cadence > 0 else None
        self.next_tick = self._tick_after(self.twin.clock)
        self.stats = ShardStats()
        #: the shard's incremental forecaster, told of every applied event (set by the caller)
        self.marker: Callable[[Event], None] | None = None
        #: while not None, every call into the twin in order: an event handed to it, None for
        #: :meth:`flush` (``streams.forecast_process`` replays them on its copy of the twin)
        self.journal: list[Event | None] | None = None
        #: the forecast process's copy of this shard's twin, if it has one (``streams.forecast_process``)
        self.mirror: int | None = None
        #: ownership moved by handoffs: key -> owned here
        self._moved: dict[str, bool] = {}
        #: keys with a live prediction published by this shard
        self._published: set[str] = set()
        #: while publication tickets are out: the keys inherited by handoffs since the oldest one
        #: (``_receipts[i]`` is receipt number ``_receipt_base + i``)
        self._tickets_out = 0
        self._receipts: list[str] = []
        self._receipt_base = 0
        #: handoffs of departures (and late loaded scans) not emitted yet; read-only outside (the host
        #: tests it per event, a list is cheaper to test than :attr:`has_pending_handoffs`)
        self.pending_handoffs: list[_PendingHandoff] = []
        #: (trip, leg) handed off -> orders handed with it
        self._handed: dict[tuple[str, int], set[str]] = {}
        #: accountability of parked events: id -> accountable here (None: decide when settled)
        self._parked: dict[str, bool | None] = {}
        self._applied_now: list[Event] = []
        self._accountable_now: bool | None = None

    def __repr__(self) -> str:
        return f"Shard({self.name!r}, clock={self.clock}, pending_handoffs={len(self.pending_handoffs)})"

    @property
    def state(self) -> WorldState:
        """The shard's world state."""
        return self.twin.state

    @property
    def clock(self) -> float:
        """The shard's event-time watermark."""
        return self.twin.clock

    # ------------------------------------------------------------------ ticks
    def _tick_after(self, t: float) -> float:
        if self.cadence is None:
            return math.inf
        return (t // self.cadence + 1) * self.cadence

    def due(self, t: float) -> bool:
        """True if a forecast tick must run before an event at ``t`` is applied."""
        return t >= self.next_tick

    def ticked(self, t: float) -> None:
        """A tick ran before applying an event at ``t``: the next one is after ``t``."""
        self.next_tick = self._tick_after(t)

    # ------------------------------------------------------------------ applying
    def apply(self, event: Event, *, accountable: bool | None = True) -> ShardResult:
        """Apply a routed event; ``accountable`` False for a broadcast copy, None to decide later.

        Returns :data:`CLEAN` (shared, do not mutate) when the event was applied and nothing
        else happened, which is almost always.
        """
        # One list, emptied per event (read only below, before the next event is applied).
        applied = self._applied_now
        applied.clear()
        self._accountable_now = accountable
        if self.journal is not None:
            self.journal.append(event)
        rejections = self.twin.apply(event)
        if not rejections and len(applied) == 1 and applied[0] is event:
            return CLEAN
        own_done = False
        others: list[Event] = []
        for ev in applied:
            if ev is event:
                own_done = True
            else:
                others.append(ev)
        result = ShardResult(own_done, others)
        result.settled.extend(ev.id for ev in others)
        for rej in rejections:
            if not own_done and rej.event_id == event.id:
                own_done = True
                result.rejected = rej
                acct = self._settle_accountable(accountable, event)
                result.settled.append(event.id)
                if acct:
                    self.stats.dead_lettered[rej.reason] += 1
                    result.dead_letters.append(rej)
                elif acct is None:
                    self.stats.dropped_copies += 1
                continue
            result.settled.append(rej.event_id)
            acct = self._parked.pop(rej.event_id, False)
            if acct is not False:
                if acct is None:
                    self.stats.dropped_copies += 1
                else:
                    self.stats.pending -= 1
                    self.stats.dead_lettered[rej.reason] += 1
                    result.dead_letters.append(rej)
        if not own_done:
            result.parked = True
            self._parked[event.id] = accountable
            if accountable:
                self.stats.pending += 1
        return result

    def _settle_accountable(self, accountable: bool | None, event: Event) -> bool | None:
        """Accountability of a (dynamically routed) cancellation, once the shard knows the order."""
        if accountable is not None:
            return accountable
        order_id = getattr(event, "order_id", None)
        o = self.state.orders.get(order_id) if isinstance(order_id, str) else None
        if o is None:
            return None
        return self.router.site_region.get(o.origin) == self.name

    def _on_applied(self, event: Event) -> None:
        """LiveTwin hook: count, note handoffs to make, tell the incremental forecaster."""
        self._applied_now.append(event)
        parked = self._parked
        if parked and event.id in parked:
            acct = parked.pop(event.id)
            if acct:
                self.stats.pending -= 1
        else:
            acct = self._accountable_now
        if acct is None:
            acct = self._settle_accountable(None, event)
            if acct is None:  # pragma: no cover - an applied cancellation names a known order
                acct = False
        if acct:
            self.stats.applied[event.TYPE] += 1
        # Exact classes: the twin applies no subclass of an event class (its handlers go by type).
        cls = type(event)
        if cls is VehicleDeparted:
            self._on_departed(event)  # type: ignore[arg-type]
        elif cls is OrderScanned and event.kind == "loaded" and event.trip_id is not None:  # type: ignore[attr-defined]
            self._on_loaded(event)  # type: ignore[arg-type]
        if self.marker is not None:
            self.marker(event)

    def _leaves_region(self, trip_id: str, leg: int) -> bool:
        trip = self.network.trips[trip_id]
        return self.router.site_region[trip.legs[leg].destination] != self.name

    def _on_departed(self, ev: VehicleDeparted) -> None:
        if self._leaves_region(ev.trip_id, ev.leg):
            self.pending_handoffs.append(
                _PendingHandoff(ev.time, ev.id + _HANDOFF_SUFFIX, ev.trip_id, ev.leg, ev.vehicle_id, ev.time, None)
            )

    def _on_loaded(self, ev: OrderScanned) -> None:
        assert ev.trip_id is not None
        leg = self.network.leg_index(ev.trip_id, ev.site_id)
        if leg < 0 or not self._leaves_region(ev.trip_id, leg):
            return
        handed = self._handed.get((ev.trip_id, leg))
        if handed is None or ev.order_id in handed:
            return  # not gone yet (the departure's handoff will carry it), or already handed over
        departed = self.state.trips[ev.trip_id].departures[leg]
        if departed is None:  # pragma: no cover - a handed-off leg has departed
            return
        vehicle = self.network.trips[ev.trip_id].vehicle_id
        self.pending_handoffs.append(
            _PendingHandoff(
                max(ev.time, departed), ev.id + _HANDOFF_SUFFIX, ev.trip_id, leg, vehicle, departed, (ev.order_id,)
            )
        )

    def flush(self) -> ShardResult:
        """End of stream: reject what is still parked (accountable ones are dead letters)."""
        result = ShardResult(ok=True)
        if self.journal is not None:
            self.journal.append(None)
        for rej in self.twin.flush():
            result.settled.append(rej.event_id)
            acct = self._parked.pop(rej.event_id, False)
            if acct is None:
                self.stats.dropped_copies += 1
            elif acct:
                self.stats.pending -= 1
                self.stats.dead_lettered[rej.reason] += 1
                result.dead_letters.append(rej)
        return result

    # ------------------------------------------------------------------ handoffs
    @property
    def has_pending_handoffs(self) -> bool:
        """True if some handoff waits to be emitted."""
        return bool(self.pending_handoffs)

    def handoff_due(self, frontier: float) -> bool:
        """True if some handoff is older than ``frontier`` (the next event time) and not yet emitted."""
        return any(p.time < frontier for p in self.pending_handoffs)

    def take_handoffs(self, frontier: float) -> list[TripHandoff]:
        """Emit the handoffs of departures before ``frontier`` (everything at their time is applied)."""
        if not self.pending_handoffs:
            return []
        ready = sorted((p for p in self.pending_handoffs if p.time < frontier), key=lambda p: (p.time, p.id))
        if not ready:
            return []
        self.pending_handoffs = [p for p in self.pending_handoffs if p.time >= frontier]
        return [self._handoff(p) for p in ready]

    def _handoff(self, p: _PendingHandoff) -> TripHandoff:
        orders = self.state.orders
        if p.orders is None:
            ids = sorted(oid for oid, o in orders.items() if o.trip_id == p.trip_id and o.stage == "loaded")
        else:
            ids = [oid for oid in p.orders if oid in orders]
        to_shard = self.router.site_region[self.network.trips[p.trip_id].legs[p.leg].destination]
        on_board = tuple(
            OrderOnBoard(
                order_id=oid,
                origin=o.origin,
                destination=o.destination,
                promised_at=o.promised_at,
                created_at=o.created_at,
                path=tuple(o.path),
                hop=o.hop,
            )
            for oid in ids
            for o in (orders[oid],)
        )
        self._handed.setdefault((p.trip_id, p.leg), set()).update(ids)
        self._moved[f"trip:{p.trip_id}"] = False
        for oid in ids:
            self._moved[f"order:{oid}"] = False
        self.stats.handoffs_sent += 1
        previous = self.network.previous_trip(p.trip_id)
        previous_arrived_at = self.state.trips[previous].arrivals[-1] if previous is not None else None
        return TripHandoff(
            id=p.id,
            time=p.time,
            trip_id=p.trip_id,
            leg=p.leg,
            vehicle_id=p.vehicle_id,
            departed_at=p.departed_at,
            from_shard=self.name,
            to_shard=to_shard,
            orders=on_board,
            previous_arrived_at=previous_arrived_at,
        )

    def receive(self, handoff: TripHandoff) -> ShardResult:
        """Take over a trip (and its orders) handed off by another shard."""
        result = self.apply(handoff, accountable=False)
        if result.ok:
            self.stats.handoffs_received += 1
            keys = [f"trip:{handoff.trip_id}", *(f"order:{o.order_id}" for o in handoff.orders)]
            for key in keys:
                self._moved[key] = True
            # Inherit the keys: if the entity closes before this shard publishes, it tombstones it.
            self._published.update(keys)
            if self._tickets_out:
                self._receipts.extend(keys)
        else:
            self.stats.handoffs_rejected += 1
        return result

    # ------------------------------------------------------------------ ownership and publishing
    def owns(self, key: str) -> bool:
        """True if this shard publishes the prediction for ``key`` (``kind:id``) now."""
        kind, _, eid = key.partition(":")
        if kind == "site":
            return self.router.site_region.get(eid) == self.name
        moved = self._moved.get(key)
        if moved is not None:
            return moved
        if kind == "trip":
            return self.router.trip_origin_region.get(eid) == self.name
        if kind == "order":
            o = self.state.orders.get(eid)
            return o is not None and self.router.site_region.get(o.origin) == self.name
        return False

    def publish(
        self, predictions: Iterable[Any], *, full: bool = True, ticket: PublicationTicket | None = None
    ) -> list[Publication]:
        """Publications for the owned predictions; a full set also tombstones owned keys it lacks.

        With a ``ticket`` (from :meth:`ticket`, taken when the forecast's state was copied), the
        publication is decided as it would have been at that moment: ownership as it was then,
        and the keys this shard inherited since (handoffs received meanwhile) are neither
        tombstoned nor forgotten. Tickets are published in the order they were taken.
        """
        owns = self.owns if ticket is None else ticket.owns
        live: dict[str, Any] = {}
        for p in predictions:
            key = p.key
            if owns(key):
                live[key] = p
        out = [Publication(self.name, key, p) for key, p in live.items()]
        since: set[str] = set()
        if ticket is not None:
            # Keys inherited after the ticket was taken: at its moment they were not there yet.
            since = set(self._receipts[ticket.receipt - self._receipt_base :])
            self._tickets_out -= 1
            if self._tickets_out:
                del self._receipts[: ticket.receipt - self._receipt_base]
                self._receipt_base = ticket.receipt
            else:
                self._receipts.clear()
                self._receipt_base = 0
        if full:
            for key in sorted(self._published - since - live.keys()):
                if owns(key):
                    out.append(Publication(self.name, key, None))
            self._published = set(live) | since
        else:
            self._published.update(live)
        self.stats.publications += 1
        return out

    def ticket(self) -> PublicationTicket:
        """What :meth:`publish` needs to publish later a forecast of the state as it is now."""
        here = self.name
        region = self.router.site_region
        orders = frozenset(oid for oid, o in self.state.orders.items() if region.get(o.origin) == here)
        if not self._tickets_out:
            self._receipt_base = 0
        self._tickets_out += 1
        return PublicationTicket(self, dict(self._moved), orders, self._receipt_base + len(self._receipts))

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able data: the twin's snapshot plus the shard's bookkeeping."""
        return {
            "name": self.name,
            "twin": self.twin.snapshot(),
            "cadence": self.cadence,
            "next_tick": self.next_tick,
            "stats": self.stats.as_dict(),
            "moved": sorted(self._moved.items()),
            "published": sorted(self._published),
            "pending": [
                [
                    p.time,
                    p.id,
                    p.trip_id,
                    p.leg,
                    p.vehicle_id,
                    p.departed_at,
                    None if p.orders is None else list(p.orders),
                ]
                for p in self.pending_handoffs
            ],
            "handed": [[t, leg, sorted(ids)] for (t, leg), ids in sorted(self._handed.items())],
            "parked": sorted(self._parked.items()),
        }

    @classmethod
    def from_snapshot(cls, network: Network, snap: dict[str, Any], router: ShardRouter | None = None) -> Shard:
        """A shard continuing exactly where :meth:`snapshot` was taken."""
        twin = LiveTwin.from_snapshot(network, snap["twin"])
        shard = cls(snap["name"], network, router, cadence=snap["cadence"], twin=twin)
        shard.next_tick = snap["next_tick"]
        shard.stats = ShardStats.from_dict(snap["stats"])
        shard._moved = {k: bool(v) for k, v in snap["moved"]}
        shard._published = set(snap["published"])
        shard.pending_handoffs = [
            _PendingHandoff(t, i, trip, leg, vid, dep, None if orders is None else tuple(orders))
            for t, i, trip, leg, vid, dep, orders in snap["pending"]
        ]
        shard._handed = {(t, leg): set(ids) for t, leg, ids in snap["handed"]}
        shard._parked = {k: v for k, v in snap["parked"]}
        return shard


def fold_publications(publications: Iterable[Publication]) -> dict[str, Any]:
    """The compacted view of a publication stream: the last live prediction per key."""
    out: dict[str, Any] = {}
    for pub in publications:
        if pub.prediction is None:
            out.pop(pub.key, None)
        else:
            out[pub.key] = pub.prediction
    return out


# ---------------------------------------------------------------------------------- in-process


@dataclass(slots=True)
class PipelineResult:
    """What a sharded in-process run did."""

    events: int
    dead_letters: list[Rejection]
    publications: list[Publication]
    shards: dict[str, Shard]
    forecasts: int
    forecast_seconds: float

    def final_predictions(self) -> dict[str, Any]:
        """Last live prediction per entity key (what the compacted topic holds at the end)."""
        return fold_publications(self.publications)

    def summary(self) -> dict[str, Any]:
        """Counts per shard and in total."""
        per = {name: s.stats.as_dict() | {"clock_s": s.clock} for name, s in sorted(self.shards.items())}
        applied = sum(sum(s.stats.applied.values()) for s in self.shards.values())
        return {
            "events": self.events,
            "applied": applied,
            "dead_lettered": len(self.dead_letters),
            "dead_lettered_by_reason": dict(sorted(Counter(r.reason for r in self.dead_letters).items())),
            "dropped_copies": sum(s.stats.dropped_copies for s in self.shards.values()),
            "forecasts": self.forecasts,
            "forecast_seconds": round(self.forecast_seconds, 3),
            "predictions": len(self.final_predictions()),
            "shards": per,
        }


class ShardedPipeline:
    """Every shard of a network in one process: routing, handoffs, forecasts at a cadence.

    ``forecast`` None turns forecasting off (no publications). ``forecaster_factory`` builds
    each shard's forecaster (default: ``forecast.build(network)``, a ``twin.forecast.Forecaster``).
    """

    def __init__(
        self,
        network: Network,
        *,
        lateness: float = DEFAULT_LATENESS,
        forecast: ForecastSettings | None = None,
        forecaster_factory: Callable[[], ForecasterLike] | None = None,
        on_publish: Callable[[list[Publication]], None] | None = None,
    ) -> None:
        self.network = network
        self.router = ShardRouter(network)
        self.lateness = lateness
        self.settings = forecast
        cadence = forecast.cadence if forecast is not None else None
        self.shards: dict[str, Shard] = {
            r: Shard(r, network, self.router, lateness=lateness, cadence=cadence) for r in self.router.regions
        }
        self.forecasters: dict[str, ForecasterLike] = {}
        if forecast is not None:
            make = forecaster_factory or (lambda: forecast.build(network))
            self.forecasters = {r: make() for r in self.shards}
            for name, fc in self.forecasters.items():
                mark = getattr(fc, "mark", None)
                if callable(mark):
                    self.shards[name].marker = mark
        self.publications: list[Publication] = []
        self.dead_letters: list[Rejection] = []
        self.forecasts = 0
        self.forecast_seconds = 0.0
        self.on_publish = on_publish
        self._now = -math.inf
        self._events = 0
        self._finished = False

    # ------------------------------------------------------------------ running
    def apply(self, event: Event) -> list[Rejection]:
        """Route one event and apply it on its shard(s); return the dead letters it produced."""
        if self._finished:
            msg = "ShardedPipeline.apply after finish(); build a new pipeline for a new stream"
            raise RuntimeError(msg)
        self._events += 1
        t = event.time
        out: list[Rejection] = []
        if t > self._now:
            self._deliver_handoffs(t)
            self._now = t
        route = self.router.route(event)
        for name in route.shards:
            shard = self.shards[name]
            self._maybe_tick(shard, t)
            accountable = None if route.accountable is None else name == route.accountable
            out.extend(shard.apply(event, accountable=accountable).dead_letters)
        self.dead_letters.extend(out)
        return out

    def run(self, events: Iterable[Event]) -> PipelineResult:
        """Apply every event in the order given, then :meth:`finish`."""
        apply = self.apply
        for ev in events:
            apply(ev)
        return self.finish()

    def finish(self) -> PipelineResult:
        """End of stream: deliver the last handoffs, reject what is parked, publish a final set."""
        if not self._finished:
            self._deliver_handoffs(math.inf)
            for shard in self.shards.values():
                self.dead_letters.extend(shard.flush().dead_letters)
            for shard in self.shards.values():
                self._forecast(shard)
            self._finished = True
        return PipelineResult(
            self._events, self.dead_letters, self.publications, self.shards, self.forecasts, self.forecast_seconds
        )

    def final_predictions(self) -> dict[str, Any]:
        """Last live prediction per entity key so far."""
        return fold_publications(self.publications)

    # ------------------------------------------------------------------ internals
    def _deliver_handoffs(self, frontier: float) -> None:
        for shard in self.shards.values():
            if not shard.handoff_due(frontier):
                continue
            for handoff in shard.take_handoffs(frontier):
                dest = self.shards[handoff.to_shard]
                self._maybe_tick(dest, handoff.time)
                rejected = dest.receive(handoff).rejected
                if rejected is not None:
                    log.warning(
                        "shard %s could not take handoff %s of trip %s from %s: %s (%s)",
                        dest.name, handoff.id, handoff.trip_id, handoff.from_shard, rejected.reason, rejected.detail,
                    )  # fmt: skip

    def _maybe_tick(self, shard: Shard, t: float) -> None:
        if shard.due(t):
            self._forecast(shard)
            shard.ticked(t)

    def _forecast(self, shard: Shard) -> None:
        fc = self.forecasters.get(shard.name)
        if fc is None:
            return
        start = time.perf_counter()
        preds = fc.forecast(shard.state)
        self.forecast_seconds += time.perf_counter() - start
        self.forecasts += 1
        pubs = shard.publish(preds)
        self.publications.extend(pubs)
        if self.on_publish is not None:
            self.on_publish(pubs)

    def close(self) -> None:
        """Release the forecasters' worker processes, if any."""
        for fc in self.forecasters.values():
            close = getattr(fc, "close", None)
            if callable(close):
                close()
