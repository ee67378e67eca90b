"""Lanes between sites, and how the twin learns their current slowdown from observations."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mypy_extensions import mypyc_attr

__all__ = ["Lane", "LaneSample", "LaneState", "PacePersistence", "SplitTotals", "lane_id", "pace_persistence"]

#: Observations need at least this much elapsed time and progress before they count as a
#: speed estimate (shorter spans are dominated by rounding and dwell).
MIN_SAMPLE_SECONDS = 300.0
MIN_SAMPLE_PROGRESS = 0.05
#: Samples older than this (relative to the lane's newest) no longer describe the lane.
SAMPLE_WINDOW_SECONDS = 3 * 3600.0
#: Paces before and after halfway further apart than this many standard deviations of the
#: variation along the road mean the pace changed during the traversal (``LaneSample.recent``).
CHANGE_Z = 2.0
#: A drop in progress larger than this starts a new traversal of the lane.
PROGRESS_EPS = 1e-6
#: A traversal's pace is compared before and after its first observation at or past this
#: progress (see :func:`pace_persistence`).
HALFWAY = 0.5


def lane_id(origin: str, destination: str) -> str:
    """The canonical id of the lane from ``origin`` to ``destination``."""
    return f"{origin}->{destination}"


@dataclass(frozen=True, slots=True)
class Lane:
    """A directed road connection with a nominal travel time and its variability.

    ``sigma`` is the standard deviation of the log of the travel-time multiplier
    (a lognormal with median 1).
    """

    id: str
    origin: str
    destination: str
    travel_time: float
    sigma: float = 0.1

    def __reduce__(self) -> tuple[type[Lane], tuple[str, str, str, float, float]]:
        """Pickled as its fields: a compiled class is rebuilt through its constructor."""
        return (Lane, (self.id, self.origin, self.destination, self.travel_time, self.sigma))


@mypyc_attr(serializable=True)  # compiled: pickled without calling __init__
@dataclass(slots=True)
class LaneSample:
    """First and last observation of one vehicle's latest traversal of a lane.

    Also its first observation at or past halfway (``mid_time`` inf until there is one),
    which splits the traversal in two spans whose paces say how much of a vehicle's pace
    on a leg persists from one part of the leg to the rest.
    """

    first_time: float
    first_progress: float
    last_time: float
    last_progress: float
    mid_time: float = math.inf
    mid_progress: float = 1.0

    def ratio(self, travel_time: float) -> float | None:
        """Observed travel-time multiplier, or None while the span is too short to tell."""
        return _span_ratio(travel_time, self.first_time, self.first_progress, self.last_time, self.last_progress)

    def recent(self, travel_time: float, sigma: float, persistence: float) -> tuple[float, float] | None:
        """The pace that speaks for the rest of the traversal: its ratio and the fraction of the lane it spans.

        The whole span (:meth:`ratio`), unless the paces before and after halfway differ by
        more than ``CHANGE_Z`` standard deviations of the variation along the road (the
        difference's variance is ``(1 - persistence) * sigma**2 * (1/p1 + 1/p2)``, see
        :func:`pace_persistence`): then the pace changed during the traversal (a slowdown
        that ended or began while the vehicle was on the lane) and the second half alone
        speaks for the rest. A steady traversal keeps all it has shown; one that crossed the
        end of a slowdown stops reporting it. None while the span is too short to tell.
        """
        whole = self.ratio(travel_time)
        if whole is None:
            return None
        h = self.halves(travel_time) if sigma > 0 else None
        if h is not None:
            y1, y2, p1, p2 = h
            var = max(0.0, 1.0 - persistence) * sigma * sigma * (1.0 / p1 + 1.0 / p2)
            if (y2 - y1) ** 2 > CHANGE_Z * CHANGE_Z * var:
                return math.exp(y2), p2
        return whole, self.last_progress - self.first_progress

    def halves(self, travel_time: float) -> tuple[float, float, float, float] | None:
        """Log pace ratios before and after halfway, and the fractions of the lane they span.

        None unless both spans are long enough to tell (as for :meth:`ratio`).
        """
        if not math.isfinite(self.mid_time):
            return None
        a = _span_ratio(travel_time, self.first_time, self.first_progress, self.mid_time, self.mid_progress)
        b = _span_ratio(travel_time, self.mid_time, self.mid_progress, self.last_time, self.last_progress)
        if a is None or b is None:
            return None
        return (
            math.log(max(a, 1e-9)),
            math.log(max(b, 1e-9)),
            self.mid_progress - self.first_progress,
            self.last_progress - self.mid_progress,
        )

    def unexplained(self) -> float | None:
        """The traversal's evidence on how much of its pace varies along the road.

        ``d**2 / (1/p1 + 1/p2)`` for the difference ``d`` of the log paces before and after
        halfway (:meth:`halves`) and the fractions of the lane they span; divided by the
        lane's ``sigma**2`` it estimates ``1 - share`` (:func:`pace_persistence`). The lane's
        nominal travel time cancels in ``d``, so the term can be kept without it. None
        unless both halves are long enough to tell.
        """
        h = self.halves(1.0)
        if h is None:
            return None
        y1, y2, p1, p2 = h
        return (y1 - y2) ** 2 / (1.0 / p1 + 1.0 / p2)

    @classmethod
    def starting(cls, time: float, progress: float) -> LaneSample:
        """A traversal seen once, at ``time`` and ``progress``."""
        s = cls(time, progress, time, progress)
        s._note_mid(time, progress)
        return s

    def _note_mid(self, time: float, progress: float) -> None:
        if progress >= HALFWAY and time < self.mid_time:
            self.mid_time, self.mid_progress = time, progress


def _span_ratio(travel_time: float, t0: float, p0: float, t1: float, p1: float) -> float | None:
    """Travel-time multiplier between two observations, None if the span is too short."""
    dt = t1 - t0
    dp = p1 - p0
    if dt < MIN_SAMPLE_SECONDS or dp < MIN_SAMPLE_PROGRESS:
        return None
    return (dt / travel_time) / dp


def _extend(s: LaneSample, time: float, progress: float) -> bool:
    """Fold an observation into the traversal ``s``; False if it starts a later traversal.

    Observations that fit neither end of the span nor within it are ignored.
    """
    if time >= s.last_time:
        if progress < s.last_progress - PROGRESS_EPS:
            return False
        s.last_time, s.last_progress = time, progress
    elif time <= s.first_time and progress <= s.first_progress + PROGRESS_EPS:
        s.first_time, s.first_progress = time, progress
    elif not s.first_progress - PROGRESS_EPS <= progress <= s.last_progress + PROGRESS_EPS:
        return True
    s._note_mid(time, progress)
    return True


@mypyc_attr(serializable=True)  # compiled: pickled without calling __init__
@dataclass(slots=True)
class SplitTotals:
    """A vehicle's finished split traversals of a lane: how many, and the sum of their terms.

    The terms are :meth:`LaneSample.unexplained`. Kept per vehicle, whose traversals of a
    lane finish one after another in the same order whatever order the observations arrive
    in, so the sum is the same to the last bit.
    """

    traversals: int = 0
    unexplained: float = 0.0


@mypyc_attr(serializable=True)  # compiled: pickled without calling __init__
@dataclass(slots=True)
class LaneState:
    """Per-vehicle samples of the lane plus known disruption factors.

    ``samples`` holds each vehicle's newest traversal (what the lane's current slowdown is
    judged by, :meth:`observed_belief`); ``previous`` the traversal before it, kept whole so
    that a late observation of it still lands where it belongs; older traversals are only
    counted, per vehicle in ``finished``, for :func:`pace_persistence`, which rests on every
    split traversal of the lane, not only the newest per vehicle. A late observation is
    lost only if the vehicle has begun two more traversals of the lane by the time it
    arrives (two round trips at least: far beyond the twin's lateness window).
    """

    samples: dict[str, LaneSample] = field(default_factory=dict)
    latest_time: float = float("-inf")
    #: travel-time factor from reported disruptions (1.0 when none), and closure flag
    disruption_factor: float = 1.0
    closed: bool = False
    #: each vehicle's traversal before its newest one
    previous: dict[str, LaneSample] = field(default_factory=dict)
    #: per vehicle, its split traversals older than ``previous``
    finished: dict[str, SplitTotals] = field(default_factory=dict)

    def observe(self, vehicle_id: str, time: float, progress: float) -> None:
        """Fold one position (time, progress) of a vehicle on this lane.

        The result does not depend on the order observations arrive in: each vehicle keeps
        the earliest and latest observation of its newest traversal and of the one before
        it (progress only grows within a traversal; a drop means a new one). An observation
        older than the newest traversal's first belongs to the one before; when a new
        traversal starts, the one before the newest is folded into the lane's counts.
        """
        if time > self.latest_time:
            self.latest_time = time
        s = self.samples.get(vehicle_id)
        if s is None:
            self.samples[vehicle_id] = LaneSample.starting(time, progress)
            return
        if time < s.first_time:
            prev = self.previous.get(vehicle_id)
            if prev is not None and (time <= prev.last_time or progress >= prev.last_progress - PROGRESS_EPS):
                _extend(prev, time, progress)
            elif progress <= s.first_progress + PROGRESS_EPS:
                _extend(s, time, progress)
            elif prev is None:
                self.previous[vehicle_id] = LaneSample.starting(time, progress)
            return
        if not _extend(s, time, progress):
            done = self.previous.get(vehicle_id)
            if done is not None:
                u = done.unexplained()
                if u is not None:
                    totals = self.finished.get(vehicle_id)
                    if totals is None:
                        totals = self.finished[vehicle_id] = SplitTotals()
                    totals.traversals += 1
                    totals.unexplained += u
            self.previous[vehicle_id] = s
            self.samples[vehicle_id] = LaneSample.starting(time, progress)

    def observed_belief(self, travel_time: float, sigma: float = 0.0) -> tuple[float, float] | None:
        """Observed travel-time multiplier of the lane over recent traversals, None if no evidence.

        Each traversal's ratio is the lane's slowdown times that vehicle's own chance
        variation (a lognormal with the lane's ``sigma``, which a later trip does not share).
        The estimate is the mean log ratio, shrunk toward what the twin believes without
        observations (the reported disruption factor, else 1) by the noise it carries:
        positive-part James-Stein with the known variance ``sigma**2 / n`` of a mean of
        ``n`` traversals, ``m * max(0, 1 - sigma**2 / (n * m**2))`` for a deviation ``m``.
        A single traversal within one sigma of it is taken as noise; several in the same
        direction, or one far beyond sigma, are a slowdown. With ``sigma`` 0 every
        observation is believed as it is.

        Returns ``(factor, spread)``: the estimate and the standard deviation of its log, the
        empirical-Bayes posterior ``sqrt((1 - B) * sigma**2 / n)`` for the shrinkage ``B``
        above. A few traversals leave the slowdown uncertain (on a lane that is not slowed at
        all, two of them put the estimate anywhere within about +-10 %), and a forecast that took
        the estimate as certain would be too sure of every later trip on the lane.
        """
        horizon = self.latest_time - SAMPLE_WINDOW_SECONDS
        logs: list[float] = []
        for s in self.samples.values():
            if s.last_time < horizon:
                continue
            r = s.ratio(travel_time)
            if r is not None:
                logs.append(math.log(max(r, 1e-9)))
        if not logs:
            return None
        n = len(logs)
        prior = math.log(self.disruption_factor) if math.isfinite(self.disruption_factor) else 0.0
        m = sum(logs) / n - prior
        spread = 0.0
        if sigma > 0 and m != 0.0:
            keep = max(0.0, 1.0 - sigma * sigma / (n * m * m))
            m *= keep
            spread = math.sqrt(keep * sigma * sigma / n)
        return math.exp(prior + m), spread

    def factor(self, travel_time: float, sigma: float = 0.0) -> float:
        """The slowdown the twin currently believes in: observed, else reported, else 1."""
        return self.belief(travel_time, sigma)[0]

    def belief(self, travel_time: float, sigma: float = 0.0) -> tuple[float, float]:
        """:meth:`factor` and the standard deviation of its log (0 unless observed)."""
        observed = self.observed_belief(travel_time, sigma)
        if observed is not None:
            return max(observed[0], 0.1), observed[1]
        return self.disruption_factor, 0.0


@dataclass(frozen=True, slots=True)
class PacePersistence:
    """How much of a vehicle's pace on a leg persists over the rest of the leg.

    ``share`` is the part of a leg's travel-time variance (``sigma**2``, log scale) that is
    the vehicle's own pace for the whole leg; the rest varies along the leg, independently
    from one stretch to the next. ``traversals`` is how many split traversals it rests on.
    """

    share: float
    traversals: int

    def __reduce__(self) -> tuple[type[PacePersistence], tuple[float, int]]:
        """Pickled as its fields: a compiled class is rebuilt through its constructor."""
        return (PacePersistence, (self.share, self.traversals))


#: Until traversals say otherwise, a pace is assumed not to persist at all (each stretch of
#: a leg its own luck): the estimate starts as this many pseudo-traversals at share 0.
PERSISTENCE_PRIOR_TRAVERSALS = 2.0


def pace_persistence(lanes: list[tuple[Lane, LaneState]]) -> PacePersistence:
    """Estimate, from traversals split at halfway, how much of a leg's pace persists.

    Model: a vehicle's log pace over a stretch covering a fraction ``p`` of a lane is the
    lane's slowdown, plus its own pace for the leg (variance ``share * sigma**2``), plus the
    mean of independent variation along the road (variance ``(1 - share) * sigma**2 / p``),
    which adds up to the lane's ``sigma**2`` over a whole leg. The lane's slowdown and the
    vehicle's own pace cancel in the difference ``d`` between the log paces before and after
    halfway, whose variance is ``(1 - share) * sigma**2 * (1/p1 + 1/p2)``: so
    ``d**2 / (sigma**2 * (1/p1 + 1/p2))`` estimates ``1 - share``, unbiased, and their mean
    over traversals of every lane is the estimate (with ``PERSISTENCE_PRIOR_TRAVERSALS`` at
    share 0, so a handful of traversals cannot claim full persistence on their own).
    A slowdown that starts or ends during a traversal shows as variation along the road.

    Every split traversal of the day counts: each vehicle's newest and the one before it
    (``LaneState.samples`` and ``previous``) and the older ones' running totals
    (``LaneState.finished``), with no time window: how much of a pace persists along a leg is
    a property of the roads, not of the current slowdown (which the lane belief judges by
    recent traversals only), so evidence accumulates over the day and overrules the prior.
    """
    total = PERSISTENCE_PRIOR_TRAVERSALS
    n = 0
    for lane, state in lanes:
        if lane.sigma <= 0:
            continue
        var = lane.sigma**2
        for samples in (state.samples, state.previous):
            for s in samples.values():
                u = s.unexplained()
                if u is not None:
                    total += min(u / var, 1e6)
                    n += 1
        for done in state.finished.values():
            total += min(done.unexplained / var, 1e6 * done.traversals)
            n += done.traversals
    unexplained = total / (n + PERSISTENCE_PRIOR_TRAVERSALS)
    return PacePersistence(max(0.0, 1.0 - unexplained), n)
