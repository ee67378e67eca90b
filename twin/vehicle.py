"""Vehicles and their observed status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from mypy_extensions import mypyc_attr

__all__ = ["VEHICLE_STATUSES", "Vehicle", "VehicleState"]

VehicleStatus = Literal["at_site", "en_route"]
VEHICLE_STATUSES: Final = ("at_site", "en_route")


@dataclass(frozen=True, slots=True)
class Vehicle:
    """A truck or van: its capacity (orders) and the site it starts the day at."""

    id: str
    capacity: int
    home: str

    def __reduce__(self) -> tuple[type[Vehicle], tuple[str, int, str]]:
        """Pickled as its fields: a compiled class is rebuilt through its constructor."""
        return (Vehicle, (self.id, self.capacity, self.home))


@mypyc_attr(serializable=True)  # compiled: pickled without calling __init__
@dataclass(slots=True)
class VehicleState:
    """Latest observation of a vehicle: where it is, and since when.

    ``status`` is ``en_route`` with ``lane_id`` and ``progress`` (observed at
    ``obs_time``), or ``at_site`` with ``site_id``.
    """

    status: VehicleStatus
    site_id: str | None
    lane_id: str | None = None
    progress: float = 0.0
    trip_id: str | None = None
    leg: int = 0
    obs_time: float = float("-inf")
    obs_id: str = ""
    #: the newest departure/arrival event, which sets ``trip_id`` and ``leg``
    trip_obs_time: float = float("-inf")
    trip_obs_id: str = ""

    def newer(self, time: float, event_id: str) -> bool:
        """True if an observation at ``time`` with ``event_id`` supersedes the current one."""
        return time > self.obs_time or (time == self.obs_time and event_id > self.obs_id)
