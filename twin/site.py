"""Sites: hubs, cross-docks, warehouses and delivery zones, with their docks and handling."""

from __future__ import annotations

from bisect import bisect_right, insort
from dataclasses import dataclass, field
from typing import Final, Literal

from mypy_extensions import mypyc_attr

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

    def __reduce__(self) -> tuple[type[Site], tuple[str, SiteKind, str, int, float, float, float]]:
        """Pickled as its fields: a compiled class is rebuilt through its constructor."""
        costs = (self.handling_rate, self.dock_seconds, self.seconds_per_order)
        return (Site, (self.id, self.kind, self.region, self.docks, *costs))


@mypyc_attr(serializable=True)  # compiled: pickled without calling __init__
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
    #: the distinct times freight was seen unloaded here (a vehicle's unloading ends with
    #: the scans of what it brought), in order: when docks were freed
    unloads: list[float] = field(default_factory=list)

    def unloaded(self, time: float) -> None:
        """Record an unloaded scan here (a set of times: the order of the scans does not matter)."""
        _add_time(self.unloads, time)

    def unloading_since(self, arrived: float, ahead: int, docks: int, clock: float) -> float | None:
        """When a vehicle still unloading here at ``clock`` took its dock (None: it is still queued).

        The vehicle arrived at ``arrived``; ``ahead`` vehicles that arrived before it still
        hold freight here; ``docks`` are in service. Docks are taken first come, first served,
        and a dock is freed when a vehicle's unloading ends (``unloads``). The ``ahead``
        vehicles hold a dock or wait before it, so with ``ahead >= docks`` it is still queued.
        Otherwise, of the ``k`` unloadings that ended since it arrived, as many as
        ``ahead + k - docks + 1`` had to end before a dock was free for it, if every one of
        them was at a dock when it arrived (the most that can have been): it took its dock
        when the last of those ended, or on arrival if none had to. That is exact with one
        dock in service (the vehicle took the dock when the one before it was done) and when
        nothing ended since it arrived; with more docks it can only be later than the truth.
        """
        if ahead >= max(1, docks):
            return None
        i = bisect_right(self.unloads, arrived)
        ended = self.unloads[i : bisect_right(self.unloads, clock)]
        need = ahead + len(ended) - max(1, docks) + 1
        return arrived if need <= 0 else ended[need - 1]

    #: the distinct times a sorting batch ended here (sorted scans; deliveries at a zone), in
    #: order: when the sorter was freed
    sorts: list[float] = field(default_factory=list)

    def sort_ended(self, time: float) -> None:
        """Record a sorted (or delivered) scan here; a set of times, whatever the order of the scans."""
        _add_time(self.sorts, time)

    def sorting_since(self, unloaded: float, clock: float) -> float:
        """When the sorter took up freight unloaded at ``unloaded`` and still unsorted at ``clock``.

        The sorter takes one batch at a time, first come, first served: freight that is next
        in line has been sorted since it was unloaded, or since the batch before it ended if
        that was later (the latest sorting that ended by ``clock``).
        """
        i = bisect_right(self.sorts, clock)
        return max(unloaded, self.sorts[i - 1]) if i else unloaded

    def degraded(self, time: float) -> None:
        """Record a reading below nominal capacity (kept as an interval: order does not matter)."""
        self.degraded_from = time if self.degraded_from is None else min(self.degraded_from, time)
        self.degraded_to = time if self.degraded_to is None else max(self.degraded_to, time)


def _add_time(times: list[float], time: float) -> None:
    """Add ``time`` to the sorted list of distinct ``times`` (nothing if it is there already)."""
    i = bisect_right(times, time)
    if i == 0 or times[i - 1] != time:
        insort(times, time, lo=i)
