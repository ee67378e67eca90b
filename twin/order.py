"""Orders: the promise, the planned path, and where the freight is now."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from mypy_extensions import mypyc_attr

__all__ = ["ORDER_STAGES", "OrderState", "stage_rank"]

OrderStage = Literal["created", "loaded", "unloaded", "sorted", "delivered", "cancelled"]
ORDER_STAGES: Final = ("created", "loaded", "unloaded", "sorted", "delivered", "cancelled")
_TERMINAL: Final = {"delivered": 2, "cancelled": 1}


def stage_rank(stage: str) -> int:
    """Terminal stages outrank any scan, whatever its time (delivered over cancelled)."""
    return _TERMINAL.get(stage, 0)


@mypyc_attr(serializable=True)  # compiled: pickled without calling __init__
@dataclass(slots=True)
class OrderState:
    """An order as the twin knows it.

    ``path`` lists the trips the order is planned to ride, in order; ``hop`` is the index
    in ``path`` of the trip it rides or waits for next, ``boards[i]`` the site where it
    boards ``path[i]``. ``site_id`` is where it is (None
    while on a vehicle), ``trip_id`` the trip it is loaded on.
    """

    origin: str
    destination: str
    promised_at: float
    created_at: float
    path: list[str]
    boards: list[str]
    stage: OrderStage = "created"
    site_id: str | None = None
    trip_id: str | None = None
    hop: int = 0
    delivered_at: float | None = None
    #: latest unloaded and sorted scans (how long the freight waited for the sorter)
    unloaded_at: float | None = None
    sorted_at: float | None = None
    #: connections it missed, seen from loaded scans on later trips: [booked trip, site, time]
    misses: list[list[object]] = field(default_factory=list)
    obs_time: float = float("-inf")
    obs_id: str = ""

    def newer(self, stage: str, time: float, event_id: str) -> bool:
        """True if an observation of ``stage`` supersedes the current stage."""
        rank, current = stage_rank(stage), stage_rank(self.stage)
        if rank != current:
            return rank > current
        return time > self.obs_time or (time == self.obs_time and event_id > self.obs_id)
