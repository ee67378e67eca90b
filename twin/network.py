"""The static network: sites, lanes, fleet and trip schedule, validated once, with indexes."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from twin.errors import ValidationError
from twin.lane import Lane
from twin.site import SITE_KINDS, Site
from twin.trip import Trip
from twin.vehicle import Vehicle

__all__ = ["Network"]


@dataclass(frozen=True, slots=True)
class _Service:
    """Trips that carry freight from one site to another, sorted by departure there."""

    departures: list[float] = field(default_factory=list)
    trips: list[str] = field(default_factory=list)

    def __reduce__(self) -> tuple[type[_Service], tuple[list[float], list[str]]]:
        """Pickled as its fields: a compiled class is rebuilt through its constructor."""
        return (_Service, (self.departures, self.trips))


class Network:
    """Sites, lanes, vehicles and scheduled trips, checked for consistency on construction.

    Raises :class:`ValidationError` naming the entity, the rule and the fix.
    """

    __slots__ = ("sites", "lanes", "vehicles", "trips", "rotations", "_services", "regions", "_legs_from", "_previous")

    def __init__(
        self,
        sites: Iterable[Site],
        lanes: Iterable[Lane],
        vehicles: Iterable[Vehicle],
        trips: Iterable[Trip],
    ) -> None:
        self.sites: dict[str, Site] = _unique("site", sites)
        self.lanes: dict[str, Lane] = _unique("lane", lanes)
        self.vehicles: dict[str, Vehicle] = _unique("vehicle", vehicles)
        self.trips: dict[str, Trip] = _unique("trip", trips)
        self.regions: tuple[str, ...] = tuple(sorted({s.region for s in self.sites.values()}))
        self._validate()
        self.rotations: dict[str, tuple[str, ...]] = self._build_rotations()
        #: (trip, site) -> index of the first leg of the trip departing the site
        self._legs_from: dict[tuple[str, str], int] = {}
        for trip in self.trips.values():
            for i, leg in enumerate(trip.legs):
                self._legs_from.setdefault((trip.id, leg.origin), i)
        #: trip -> the trip its vehicle runs just before it
        self._previous: dict[str, str | None] = {}
        for rot in self.rotations.values():
            for i, tid in enumerate(rot):
                self._previous[tid] = rot[i - 1] if i > 0 else None
        self._services: dict[tuple[str, str], _Service] = {}
        for trip in sorted(self.trips.values(), key=lambda t: (t.planned_departure, t.id)):
            stops = trip.stops()
            for i, board in enumerate(stops[:-1]):
                dep = trip.legs[i].planned_departure
                for alight in stops[i + 1 :]:
                    svc = self._services.setdefault((board, alight), _Service())
                    svc.departures.append(dep)
                    svc.trips.append(trip.id)
        for svc in self._services.values():
            order = sorted(range(len(svc.trips)), key=lambda k: (svc.departures[k], svc.trips[k]))
            svc.departures[:] = [svc.departures[k] for k in order]
            svc.trips[:] = [svc.trips[k] for k in order]

    def __reduce__(
        self,
    ) -> tuple[type[Network], tuple[tuple[Site, ...], tuple[Lane, ...], tuple[Vehicle, ...], tuple[Trip, ...]]]:
        """Pickled as its sites, lanes, vehicles and trips; the rest is derived again on load.

        (A compiled class is rebuilt through its constructor.)
        """
        sites, lanes = tuple(self.sites.values()), tuple(self.lanes.values())
        return (Network, (sites, lanes, tuple(self.vehicles.values()), tuple(self.trips.values())))

    def _validate(self) -> None:
        for site in self.sites.values():
            if site.kind not in SITE_KINDS:
                msg = f"site {site.id!r}: kind {site.kind!r} is not one of {SITE_KINDS}"
                raise ValidationError(msg)
            if site.docks < 1:
                msg = f"site {site.id!r}: docks={site.docks} must be at least 1"
                raise ValidationError(msg)
            if site.handling_rate <= 0:
                msg = f"site {site.id!r}: handling_rate={site.handling_rate} must be > 0"
                raise ValidationError(msg)
        for lane in self.lanes.values():
            for end in (lane.origin, lane.destination):
                if end not in self.sites:
                    msg = f"lane {lane.id!r}: site {end!r} is not defined; add it to the sites"
                    raise ValidationError(msg)
            if lane.travel_time <= 0:
                msg = f"lane {lane.id!r}: travel_time={lane.travel_time} must be > 0 seconds"
                raise ValidationError(msg)
            if lane.sigma < 0:
                msg = f"lane {lane.id!r}: sigma={lane.sigma} must be >= 0"
                raise ValidationError(msg)
        for vehicle in self.vehicles.values():
            if vehicle.home not in self.sites:
                msg = f"vehicle {vehicle.id!r}: home site {vehicle.home!r} is not defined"
                raise ValidationError(msg)
        for trip in self.trips.values():
            if trip.vehicle_id not in self.vehicles:
                msg = f"trip {trip.id!r}: vehicle {trip.vehicle_id!r} is not defined"
                raise ValidationError(msg)
            if not trip.legs:
                msg = f"trip {trip.id!r}: needs at least one leg"
                raise ValidationError(msg)
            prev = None
            for i, leg in enumerate(trip.legs):
                found = self.lanes.get(leg.lane_id)
                if found is None:
                    msg = f"trip {trip.id!r} leg {i}: lane {leg.lane_id!r} is not defined"
                    raise ValidationError(msg)
                lane = found
                if (lane.origin, lane.destination) != (leg.origin, leg.destination):
                    msg = (
                        f"trip {trip.id!r} leg {i}: goes {leg.origin}->{leg.destination} but lane "
                        f"{lane.id!r} goes {lane.origin}->{lane.destination}"
                    )
                    raise ValidationError(msg)
                if leg.planned_arrival <= leg.planned_departure:
                    msg = f"trip {trip.id!r} leg {i}: planned arrival must be after departure"
                    raise ValidationError(msg)
                if prev is not None and (
                    leg.origin != prev.destination or leg.planned_departure < prev.planned_arrival
                ):
                    msg = (
                        f"trip {trip.id!r} leg {i}: must start where and after leg {i - 1} ends "
                        f"({prev.destination} at {prev.planned_arrival})"
                    )
                    raise ValidationError(msg)
                prev = leg
            if trip.hold_limit < 0:
                msg = f"trip {trip.id!r}: hold_limit={trip.hold_limit} must be >= 0"
                raise ValidationError(msg)

    def _build_rotations(self) -> dict[str, tuple[str, ...]]:
        by_vehicle: dict[str, list[Trip]] = {v: [] for v in self.vehicles}
        for trip in self.trips.values():
            by_vehicle[trip.vehicle_id].append(trip)
        rotations: dict[str, tuple[str, ...]] = {}
        for vid, trips in by_vehicle.items():
            trips.sort(key=lambda t: (t.planned_departure, t.id))
            where = self.vehicles[vid].home
            for trip in trips:
                if trip.origin != where:
                    msg = (
                        f"vehicle {vid!r}: trip {trip.id!r} starts at {trip.origin!r} but the "
                        f"vehicle is at {where!r} then; fix the schedule or the home site"
                    )
                    raise ValidationError(msg)
                where = trip.destination
            for a, b in zip(trips, trips[1:], strict=False):
                if b.planned_departure < a.planned_arrival:
                    msg = (
                        f"vehicle {vid!r}: trip {b.id!r} departs before trip {a.id!r} arrives; "
                        "a vehicle runs one trip at a time"
                    )
                    raise ValidationError(msg)
            rotations[vid] = tuple(t.id for t in trips)
        return rotations

    def next_trip(self, board: str, alight: str, after: float, exclude: str = "") -> str | None:
        """First trip from ``board`` to ``alight`` departing ``board`` at or after ``after``."""
        svc = self._services.get((board, alight))
        if svc is None:
            return None
        k = bisect.bisect_left(svc.departures, after)
        while k < len(svc.trips):
            if svc.trips[k] != exclude:
                return svc.trips[k]
            k += 1
        return None

    def services(self, board: str, alight: str) -> list[str]:
        """All trips that carry freight from ``board`` to ``alight``, by departure."""
        svc = self._services.get((board, alight))
        return list(svc.trips) if svc else []

    def leg_index(self, trip_id: str, site: str) -> int:
        """Index of the leg of ``trip_id`` that departs ``site`` (-1 if it does not)."""
        i = self._legs_from.get((trip_id, site))
        if i is None:
            if trip_id not in self.trips:
                raise KeyError(trip_id)
            return -1
        return i

    def previous_trip(self, trip_id: str) -> str | None:
        """The trip the same vehicle runs just before ``trip_id`` (None for its first)."""
        return self._previous[trip_id]


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


_T = TypeVar("_T", bound=_HasId)


def _unique(kind: str, items: Iterable[_T]) -> dict[str, _T]:
    out: dict[str, _T] = {}
    for item in items:
        key = item.id
        if key in out:
            msg = f"{kind} id {key!r} is defined twice; ids must be unique"
            raise ValidationError(msg)
        out[key] = item
    return out
