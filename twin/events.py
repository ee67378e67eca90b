"""Typed, frozen, versioned event records: everything the twin can be told.

Times inside the twin are float seconds since the scenario or deployment epoch; the wire
format (CloudEvents JSON with RFC 3339 times) is only known to ``streams.codec``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Final, Literal

__all__ = [
    "DISPATCH_ACTIONS",
    "DISRUPTION_KINDS",
    "EVENT_TYPES",
    "SCAN_KINDS",
    "DispatchCommand",
    "DisruptionCleared",
    "DisruptionReported",
    "DockStatus",
    "Event",
    "OrderCancelled",
    "OrderCreated",
    "OrderDelivered",
    "OrderOnBoard",
    "OrderScanned",
    "SiteThroughput",
    "TripHandoff",
    "VehicleArrived",
    "VehicleDeparted",
    "VehiclePosition",
    "event_fields",
    "event_from_dict",
    "event_to_dict",
]

ScanKind = Literal["loaded", "unloaded", "sorted"]
SCAN_KINDS: Final = ("loaded", "unloaded", "sorted")
DisruptionKind = Literal["lane_slowdown", "lane_closure", "site_capacity"]
DISRUPTION_KINDS: Final = ("lane_slowdown", "lane_closure", "site_capacity")
DispatchAction = Literal["depart_now", "hold", "move_order", "cancel_trip"]
DISPATCH_ACTIONS: Final = ("depart_now", "hold", "move_order", "cancel_trip")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Common envelope: a unique id and the event time (seconds since the epoch of the run)."""

    TYPE: ClassVar[str] = ""
    #: The entity the event is about; it keys the event on the wire (CloudEvents ``subject``).
    SUBJECT: ClassVar[str] = ""

    id: str
    time: float

    @property
    def subject(self) -> str:
        """Id of the entity this event is about."""
        value: str = getattr(self, self.SUBJECT)
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class VehiclePosition(Event):
    """A vehicle's position: on a lane at a progress in [0, 1], or standing at a site."""

    TYPE: ClassVar[str] = "logistics.vehicle.position.v1"
    SUBJECT: ClassVar[str] = "vehicle_id"
    vehicle_id: str
    lane_id: str | None = None
    progress: float | None = None
    site_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VehicleArrived(Event):
    """A vehicle arrived at the end of leg ``leg`` of ``trip_id``."""

    TYPE: ClassVar[str] = "logistics.vehicle.arrived.v1"
    SUBJECT: ClassVar[str] = "vehicle_id"
    vehicle_id: str
    trip_id: str
    leg: int
    site_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VehicleDeparted(Event):
    """A vehicle departed on leg ``leg`` of ``trip_id``."""

    TYPE: ClassVar[str] = "logistics.vehicle.departed.v1"
    SUBJECT: ClassVar[str] = "vehicle_id"
    vehicle_id: str
    trip_id: str
    leg: int
    site_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DockStatus(Event):
    """A site's dock sensors: docks occupied and docks in service right now."""

    TYPE: ClassVar[str] = "logistics.dock.status.v1"
    SUBJECT: ClassVar[str] = "site_id"
    site_id: str
    occupied: int
    in_service: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteThroughput(Event):
    """A site's measured handling rate, in orders per hour."""

    TYPE: ClassVar[str] = "logistics.site.throughput.v1"
    SUBJECT: ClassVar[str] = "site_id"
    site_id: str
    rate_per_hour: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DisruptionReported(Event):
    """A known disruption: a lane slows (factor > 1) or closes, or a site loses docks.

    ``factor`` is the travel-time multiplier for ``lane_slowdown``, and the fraction of
    docks still in service for ``site_capacity``; ``expected_end`` is None when unknown.
    """

    TYPE: ClassVar[str] = "logistics.disruption.reported.v1"
    SUBJECT: ClassVar[str] = "disruption_id"
    disruption_id: str
    kind: DisruptionKind
    target_id: str
    factor: float = 1.0
    expected_end: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DisruptionCleared(Event):
    """A previously reported disruption is over."""

    TYPE: ClassVar[str] = "logistics.disruption.cleared.v1"
    SUBJECT: ClassVar[str] = "disruption_id"
    disruption_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderCreated(Event):
    """A new order, with its promise and its planned path (trip ids, in order)."""

    TYPE: ClassVar[str] = "logistics.order.created.v1"
    SUBJECT: ClassVar[str] = "order_id"
    order_id: str
    origin: str
    destination: str
    promised_at: float
    path: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderScanned(Event):
    """An order was scanned at a site: loaded onto a trip, unloaded, or sorted (handled)."""

    TYPE: ClassVar[str] = "logistics.order.scanned.v1"
    SUBJECT: ClassVar[str] = "order_id"
    order_id: str
    site_id: str
    kind: ScanKind
    trip_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderDelivered(Event):
    """An order was delivered at its destination."""

    TYPE: ClassVar[str] = "logistics.order.delivered.v1"
    SUBJECT: ClassVar[str] = "order_id"
    order_id: str
    site_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderCancelled(Event):
    """An order was cancelled."""

    TYPE: ClassVar[str] = "logistics.order.cancelled.v1"
    SUBJECT: ClassVar[str] = "order_id"
    order_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchCommand(Event):
    """A planner's decision for a trip.

    ``depart_now``: leave without waiting for more freight; ``hold``: do not leave before
    ``until``; ``move_order``: put ``order_id`` on ``trip_id`` instead of its planned trip;
    ``cancel_trip``: the trip will not run.
    """

    TYPE: ClassVar[str] = "logistics.dispatch.command.v1"
    SUBJECT: ClassVar[str] = "trip_id"
    trip_id: str
    action: DispatchAction
    until: float | None = None
    order_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderOnBoard:
    """What a destination shard needs to know of an order handed over with its vehicle."""

    order_id: str
    origin: str
    destination: str
    promised_at: float
    created_at: float
    path: tuple[str, ...]
    hop: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TripHandoff(Event):
    """A trip left its shard (region) for another: the destination shard takes over.

    Emitted by the origin shard when a vehicle departs on a leg that ends in another region;
    carries the departure and the orders on board, so the destination shard knows what is
    coming before the vehicle arrives. ``previous_arrived_at`` is when the vehicle's previous
    trip (in its rotation) arrived, as the origin shard saw it: the destination shard may have
    handed that trip off itself and never seen it arrive.
    """

    TYPE: ClassVar[str] = "logistics.twin.handoff.v1"
    SUBJECT: ClassVar[str] = "trip_id"
    trip_id: str
    leg: int
    vehicle_id: str
    departed_at: float
    from_shard: str
    to_shard: str
    orders: tuple[OrderOnBoard, ...] = ()
    previous_arrived_at: float | None = None


EVENT_TYPES: Final[dict[str, type[Event]]] = {
    cls.TYPE: cls
    for cls in (
        VehiclePosition,
        VehicleArrived,
        VehicleDeparted,
        DockStatus,
        SiteThroughput,
        DisruptionReported,
        DisruptionCleared,
        OrderCreated,
        OrderScanned,
        OrderDelivered,
        OrderCancelled,
        DispatchCommand,
        TripHandoff,
    )
}


def event_to_dict(event: Event) -> dict[str, Any]:
    """An event as plain JSON-able data: ``{"type": ..., "id": ..., "time": ..., fields}``."""
    out: dict[str, Any] = {"type": event.TYPE}
    for f in fields(event):
        value = getattr(event, f.name)
        if isinstance(value, tuple):
            value = [asdict(v) if is_dataclass(v) and not isinstance(v, type) else v for v in value]
        out[f.name] = value
    return out


def event_from_dict(data: dict[str, Any]) -> Event:
    """Inverse of :func:`event_to_dict`."""
    values = dict(data)
    cls = EVENT_TYPES[values.pop("type")]
    if "path" in values:
        values["path"] = tuple(values["path"])
    if cls is TripHandoff:
        values["orders"] = tuple(OrderOnBoard(**{**o, "path": tuple(o["path"])}) for o in values.get("orders", ()))
    return cls(**values)


def event_fields(cls: type[Event]) -> tuple[str, ...]:
    """Names of an event class's payload fields (everything but ``id`` and ``time``)."""
    return tuple(f.name for f in fields(cls) if f.name not in ("id", "time"))
