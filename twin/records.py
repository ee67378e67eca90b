"""What a run of the network model records: per trip, per lot of freight, per order."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twin.provenance import Ledger

__all__ = ["Lot", "ModelResult", "OrderInfo", "OrderView", "TripRun", "frozen_rows", "order_infos"]


@dataclass(slots=True)
class TripRun:
    """What happened to a trip in this run."""

    departures: list[float | None]
    arrivals: list[float | None]
    released: float | None = None
    held_for: str | None = None
    hold_seconds: float = 0.0
    waited_for_vehicle: float = 0.0
    #: the dock waits (seconds); like ``dock_wait_at``, replaced, never changed in place (a
    #: model's copies of a template's records share them)
    dock_waits: list[float] = field(default_factory=list)
    #: running provenance of the trip's delay; per leg as it arrived; when the vehicle was freed
    ledger: Ledger = field(default_factory=dict)
    arrival_ledgers: dict[int, Ledger] = field(default_factory=dict)
    release_ledger: Ledger = field(default_factory=dict)
    #: the dock wait per leg (replaced, never changed in place)
    dock_wait_at: dict[int, float] = field(default_factory=dict)


@dataclass(slots=True)
class Lot:
    """Orders that travel together: same place, same remaining path, same destination.

    The model moves lots, not single orders, which keeps a forecast's cost proportional to
    the freight flows rather than to the number of orders. A lot splits when a vehicle has
    room for only part of it (the lowest order ids board first).
    """

    ids: list[str]
    destination: str
    path: list[str]
    boards: list[str]
    hop: int
    stage: str
    site: str | None
    trip: str | None = None
    ready: bool = False
    delivered_at: float | None = None
    inbound_trip: str | None = None
    inbound_leg: int = 0
    rolls: int = 0
    sort_wait: float = 0.0
    miss_ledger: Ledger | None = None
    serial: int = 0
    #: order of arrival at a site before the snapshot (unsorted freight is sorted in this order)
    since: float = 0.0
    #: seconds of a missed connection whose upstream causes are carried once the lot is
    #: sorted (it was rolled at the start of a run while still on the road)
    miss_carry: float = 0.0

    @property
    def id(self) -> str:
        """The lowest order id of the lot (its name in logs and orderings)."""
        return self.ids[0]

    def pending_hop(self) -> int:
        """Index of the next hop to board: the current one, or the one after the ride."""
        return self.hop + 1 if self.trip is not None else self.hop

    def alight(self, hop: int | None = None) -> str:
        """Where the lot leaves the trip of ``hop`` (default: the current hop)."""
        h = self.hop if hop is None else hop
        return self.boards[h + 1] if h + 1 < len(self.path) else self.destination


@dataclass(frozen=True, slots=True)
class OrderInfo:
    """What the model keeps of an order besides its lot."""

    origin: str
    destination: str
    promised_at: float


_T = TypeVar("_T")
#: per class, its slots' setters in field order (``frozen_rows``)
_SETTERS: dict[type, tuple[Any, ...]] = {}


def frozen_rows(cls: type[_T], n: int, columns: Sequence[Iterable[Any]]) -> list[_T]:
    """``[cls(*row) for row in zip(*columns)]`` for ``n`` rows: the same objects, for a fraction of the cost.

    A frozen slotted dataclass's ``__init__`` sets each field through ``object.__setattr__``
    (compiled or not);
    a forecast makes thousands of some (an ``OrderInfo`` per open order, a
    ``PredictedState`` per order and trip), so this sets the slots directly, one field at
    a time for all the rows. ``columns`` holds one iterable per field, in field order (the
    callers' tests check the rows equal the constructor's, field by field).
    """
    setters = _SETTERS.get(cls)
    if setters is None:
        fields: tuple[str, ...] = getattr(cls, "__match_args__")  # noqa: B009
        setters = _SETTERS[cls] = tuple(cls.__dict__[f].__set__ for f in fields)
    # ``object.__new__`` for a class run from source; a compiled one (``twin.compiled``)
    # has its own, which ``object.__new__`` refuses to stand in for (and its constructor
    # runs the dataclass's ``__init__`` from source: as slow as the interpreted one)
    new = cls.__new__
    out = [new(cls) for _ in range(n)]
    for setter, values in zip(setters, columns, strict=True):
        deque(map(setter, out, values), maxlen=0)
    return out


def order_infos(origins: Sequence[str], destinations: Sequence[str], promises: Sequence[float]) -> list[OrderInfo]:
    """``[OrderInfo(o, d, p) for o, d, p in zip(...)]``, the same objects (``frozen_rows``)."""
    return frozen_rows(OrderInfo, len(origins), (origins, destinations, promises))


@dataclass(frozen=True, slots=True)
class OrderView:
    """One order's outcome in a run (read from its lot)."""

    id: str
    origin: str
    destination: str
    promised_at: float
    stage: str
    site: str | None
    trip: str | None
    delivered_at: float | None
    rolls: int
    path: list[str]


@dataclass(slots=True)
class ModelResult:
    """Outcome of a run: per-trip records, the lots, and where the clock stopped."""

    until: float
    trips: dict[str, TripRun]
    lots: list[Lot]
    info: dict[str, OrderInfo]
    #: per-entity provenance, filled in by the forecaster: ("order"|"trip", id) -> ledger
    ledgers: dict[tuple[str, str], Ledger] = field(default_factory=dict)
    #: the same provenance per lot (parallel to ``lots``; None when none of its orders is late)
    lot_ledgers: list[Ledger | None] = field(default_factory=list)

    @property
    def orders(self) -> dict[str, OrderView]:
        """Every order's outcome, by order id."""
        out: dict[str, OrderView] = {}
        for lot in self.lots:
            for oid in lot.ids:
                i = self.info[oid]
                out[oid] = OrderView(
                    oid, i.origin, i.destination, i.promised_at, lot.stage, lot.site, lot.trip,
                    lot.delivered_at, lot.rolls, list(lot.path),
                )  # fmt: skip
        return out
