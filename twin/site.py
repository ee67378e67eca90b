"""Sites: hubs, cross-docks, warehouses and delivery zones, with their docks and handling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["SITE_KINDS", "Site", "SiteState"]

SiteKind = Literal["hub", "crossdock", "warehouse", "zone"]
SITE_KINDS: Final = ("hub", "crossdock", "warehouse", "zone")


@dataclass(frozen=True, slots=True)
class Site:
    """A place freight is handled.

    ``docks`` is how many vehicles can (un)load at once; ``handling_rate`` is how many
    orders per hour the site sorts; ``dock_seconds`` and ``seconds_per_order`` make the
    time a vehicle occupies a dock (fixed part plus a part per order unloaded).
    """

    id: str
    kind: SiteKind
    region: str
    docks: int
    handling_rate: float
    dock_seconds: float = 600.0
    seconds_per_order: float = 2.0


@dataclass(slots=True)
class SiteState:
    """What the twin currently knows of a site (dock sensors, throughput readings)."""

    docks_in_service: int
    docks_occupied: int = 0
    handling_rate: float = 0.0
    dock_obs_time: float = float("-inf")
    dock_obs_id: str = ""
    rate_obs_time: float = float("-inf")
    rate_obs_id: str = ""
    #: first and last time a reading showed the site below its nominal docks or handling rate
    degraded_from: float | None = None
    degraded_to: float | None = None

    def degraded(self, time: float) -> None:
        """Record a reading below nominal capacity (kept as an interval: order does not matter)."""
        self.degraded_from = time if self.degraded_from is None else min(self.degraded_from, time)
        self.degraded_to = time if self.degraded_to is None else max(self.degraded_to, time)
