"""The hidden true world: the network model with real randomness and the hidden disruptions."""

from __future__ import annotations

import math

from twin.durations import StochasticDurations, whole
from twin.lane import Lane

__all__ = ["TrueWorldDurations", "Windows"]

#: (start, end, factor) periods during which a lane's travel time is multiplied by factor;
#: factor ``inf`` means closed.
Windows = list[tuple[float, float, float]]


class TrueWorldDurations(StochasticDurations):
    """Stochastic durations plus the scenario's hidden lane disruptions.

    A vehicle covers a lane at a speed that changes while a disruption is in force: if it
    enters a slow stretch mid-leg, only the part driven under the disruption is slowed.
    """

    def __init__(self, seed: int, lane_windows: dict[str, Windows], handling_sigma: float = 0.1) -> None:
        super().__init__(seed, replica=0, handling_sigma=handling_sigma)
        self.lane_windows = lane_windows
        #: nominal seconds per unit of progress of each trip leg (lane time times its noise)
        self.base: dict[tuple[str, int], float] = {}

    def travel(self, trip_id: str, leg: int, lane: Lane, start: float, remaining: float) -> float:
        """Time to cover the rest of the lane, driving through any disruption windows."""
        base = lane.travel_time * self._noise(f"travel/{trip_id}/{leg}", lane.sigma)
        self.base[(trip_id, leg)] = base
        end = advance(start, remaining * base, self.lane_windows.get(lane.id, []))
        return whole(end - start)

    def covered(self, lane_id: str, start: float, end: float) -> float:
        """Nominal-speed seconds of driving done on the lane between ``start`` and ``end``."""
        return _work(start, end, self.lane_windows.get(lane_id, []))


def _rate(t: float, windows: Windows) -> float:
    """Speed multiplier at time t (1 normally, 1/factor in a window, 0 when closed)."""
    f = 1.0
    for a, b, factor in windows:
        if a <= t < b:
            f = max(f, factor)
    return 0.0 if math.isinf(f) else 1.0 / f


def _breaks(start: float, end: float, windows: Windows) -> list[float]:
    points = {start, end}
    for a, b, _ in windows:
        for p in (a, b):
            if start < p < end:
                points.add(p)
    return sorted(points)


def _work(start: float, end: float, windows: Windows) -> float:
    """Integral of the speed multiplier over [start, end]."""
    if end <= start:
        return 0.0
    pts = _breaks(start, end, windows)
    return sum((b - a) * _rate(a, windows) for a, b in zip(pts, pts[1:], strict=False))


def advance(start: float, work: float, windows: Windows) -> float:
    """The time at which ``work`` nominal seconds of driving are done, starting at ``start``."""
    t = start
    remaining = work
    edges = sorted({p for a, b, _ in windows for p in (a, b) if p > start})
    for edge in edges:
        rate = _rate(t, windows)
        if rate > 0 and t + remaining / rate <= edge:
            return t + remaining / rate
        remaining -= (edge - t) * rate
        t = edge
    rate = _rate(t, windows)
    return t + remaining / rate
