"""Trips: scheduled runs of one vehicle over one or more legs, and their observed progress."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from mypy_extensions import mypyc_attr

__all__ = ["TRIP_STATUSES", "Leg", "Trip", "TripState"]

TripStatus = Literal["planned", "en_route", "completed", "cancelled"]
TRIP_STATUSES: Final = ("planned", "en_route", "completed", "cancelled")


@dataclass(frozen=True, slots=True)
class Leg:
    """One lane of a trip with its planned departure and arrival (seconds since epoch)."""

    lane_id: str
    origin: str
    destination: str
    planned_departure: float
    planned_arrival: float

    def __reduce__(self) -> tuple[type[Leg], tuple[str, str, str, float, float]]:
        """Pickled as its fields: a compiled class is rebuilt through its constructor."""
        return (Leg, (self.lane_id, self.origin, self.destination, self.planned_departure, self.planned_arrival))


@dataclass(frozen=True, slots=True)
class Trip:
    """A scheduled run: vehicle, legs in order, and the connection policy.

    ``hold_limit`` is how long (seconds) the first departure may be held past its plan for
    late inbound freight; freight later than that rolls to the next trip.
    """

    id: str
    vehicle_id: str
    legs: tuple[Leg, ...]
    hold_limit: float = 1800.0

    def __reduce__(self) -> tuple[type[Trip], tuple[str, str, tuple[Leg, ...], float]]:
        """Pickled as its fields: a compiled class is rebuilt through its constructor."""
        return (Trip, (self.id, self.vehicle_id, self.legs, self.hold_limit))

    @property
    def origin(self) -> str:
        """Site the trip starts at."""
        return self.legs[0].origin

    @property
    def destination(self) -> str:
        """Site the trip ends at."""
        return self.legs[-1].destination

    @property
    def planned_departure(self) -> float:
        """Planned departure of the first leg."""
        return self.legs[0].planned_departure

    @property
    def planned_arrival(self) -> float:
        """Planned arrival of the last leg."""
        return self.legs[-1].planned_arrival

    def stops(self) -> tuple[str, ...]:
        """Sites the trip visits, in order."""
        return (self.legs[0].origin, *(leg.destination for leg in self.legs))


@mypyc_attr(serializable=True)  # compiled: pickled without calling __init__
@dataclass(slots=True)
class TripState:
    """Observed departures and arrivals per leg, and the planner's commands for the trip."""

    departures: list[float | None]
    arrivals: list[float | None]
    cancelled: bool = False
    hold_until: float | None = None
    depart_now: bool = False
    command_time: float = float("-inf")
    command_id: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> TripStatus:
        """Planned, en route (some leg departed), completed (last leg arrived) or cancelled."""
        if self.cancelled:
            return "cancelled"
        if self.arrivals[-1] is not None:
            return "completed"
        if any(d is not None for d in self.departures):
            return "en_route"
        return "planned"

    @property
    def current_leg(self) -> int:
        """Index of the last leg that departed (0 before the trip starts)."""
        last = 0
        for i, d in enumerate(self.departures):
            if d is not None:
                last = i
        return last
