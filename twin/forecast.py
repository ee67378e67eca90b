"""Forecasting cascading delays: Monte Carlo replicas of the network model from the live state.

``Forecaster.forecast(state)`` rebuilds a fresh SimPy model from the world state for every
replica, draws stochastic durations with common random numbers (the same seed gives every
replica the same draw for the same activity), runs each to ``now + horizon`` and aggregates
per order, trip and site: ETA quantiles, the probability of being late, the expected delay,
and a cause chain taken from the provenance the replicas recorded (not guessed afterwards).
"""

from __future__ import annotations

import gc
import math
import pickle
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from twin.durations import DrawTable, StochasticDurations, whole
from twin.lane import MIN_SAMPLE_PROGRESS, Lane, pace_persistence
from twin.model import Model, ModelTemplate, Trace
from twin.network import Network
from twin.placement import Placement, detachable, freight_free, place
from twin.provenance import ROOT_CAUSES, Ledger
from twin.records import ModelResult, OrderInfo, TripRun, frozen_rows
from twin.site import Site
from twin.state import WorldState

__all__ = [
    "Beliefs",
    "Cause",
    "ForecastDurations",
    "Forecaster",
    "PredictedState",
    "lane_beliefs",
    "leg_paces",
]

#: A trip counts as off schedule when it arrives more than this late (seconds).
SCHEDULE_GRACE: Final = 300.0
#: Causes smaller than this (seconds, averaged over replicas) are left out of a chain.
MIN_CAUSE_SECONDS: Final = 30.0
MAX_CAUSES: Final = 6
#: Observed lane slowdowns fade back to nominal with this time constant (seconds).
SLOWDOWN_MEMORY: Final = 3 * 3600.0

EntityKind = Literal["order", "trip", "site"]


@dataclass(frozen=True, slots=True)
class Cause:
    """One link of a cause chain: a mechanism at an upstream entity, and the seconds it added.

    Root mechanisms (``lane_slowdown``, ``disruption``, ``dock_queue``, ``handling_backlog``)
    add up to the delay they explain; link mechanisms (``vehicle_rotation``,
    ``held_departure``, ``missed_connection``) show how many seconds were passed along.
    """

    mechanism: str
    entity: str
    seconds: float


@dataclass(frozen=True, slots=True)
class PredictedState:
    """The forecast for one order, trip or site, as of an event-time watermark.

    Orders: ``p10/p50/p90`` are delivery-time quantiles (seconds since epoch, None when beyond
    the horizon in that share of replicas), ``p_late`` the probability of missing the promise,
    ``expected_delay`` the mean lateness past the promise (seconds, 0 when on time).
    Trips: the same for the arrival at the last stop against the schedule.
    Sites: quantiles of the dock wait of arriving vehicles (seconds), ``p_late`` the share of
    replicas in which some vehicle waits for a dock longer than the schedule grace, and
    ``at_risk`` the orders at the site likely to be late.
    """

    kind: EntityKind
    id: str
    as_of: float
    p10: float | None
    p50: float | None
    p90: float | None
    p_late: float
    expected_delay: float
    causes: tuple[Cause, ...] = ()
    planned: float | None = None
    at_risk: int = 0

    @property
    def key(self) -> str:
        """The key of this prediction on the compacted predictions topic."""
        return f"{self.kind}:{self.id}"


def _new_predictions(
    kind: EntityKind,
    ids: Sequence[str],
    as_of: float,
    p10: Sequence[float | None],
    p50: Sequence[float | None],
    p90: Sequence[float | None],
    p_late: Sequence[float],
    delay: Sequence[float],
    causes: Sequence[tuple[Cause, ...]],
    planned: Sequence[float | None],
) -> list[PredictedState]:
    """``[PredictedState(kind, ids[k], as_of, p10[k], ..., causes[k], planned[k]) for k ...]``, the same objects.

    Built by ``frozen_rows`` (a forecast makes one per order and trip, 5,000 or more;
    tested equal to the constructor, field by field): about a quarter of the cost.
    """
    n = len(ids)
    columns = (repeat(kind, n), ids, repeat(as_of, n), p10, p50, p90, p_late, delay, causes, planned, repeat(0, n))
    return frozen_rows(PredictedState, n, columns)


def lane_beliefs(
    state: WorldState,
) -> tuple[dict[str, float], dict[str, tuple[str, str]], dict[str, float]]:
    """What the twin believes of every lane: slowdowns, their causes, and how sure it is.

    Returns the slowdown factors, the lanes a disruption explains, and how uncertain each
    observed slowdown is (the standard deviation of its log). Lanes with a reported
    disruption are blamed on the disruption, the rest on the lane.
    """
    factors, spreads = _lane_slowdowns(state)
    return factors, lane_causes(state), spreads


def _lane_slowdowns(state: WorldState) -> tuple[dict[str, float], dict[str, float]]:
    """Each lane's believed slowdown (lanes at 1 left out) and the spread of its log."""
    factors: dict[str, float] = {}
    spreads: dict[str, float] = {}
    for lid, lane in state.network.lanes.items():
        f, spread = state.lanes[lid].belief(lane.travel_time, lane.sigma)
        if f != 1.0:
            factors[lid] = f
            if spread > 0.0:
                spreads[lid] = spread
    return factors, spreads


def lane_causes(state: WorldState) -> dict[str, tuple[str, str]]:
    """The lanes a reported disruption explains: lane -> ("disruption", its id)."""
    causes: dict[str, tuple[str, str]] = {}
    for did, d in state.disruptions.items():
        if d.cleared_at is None and d.kind in ("lane_slowdown", "lane_closure") and d.target_id in state.lanes:
            causes[d.target_id] = ("disruption", did)
    return causes


@dataclass(frozen=True, slots=True)
class Beliefs:
    """What the twin has learned from the observations, as a forecast reads it.

    Each lane's slowdown and how sure the twin is of it (``lane_beliefs``), the slowdown the
    vehicles on each lane are dead-reckoned at (``LaneState.factor``), and the share of a
    leg's pace that persists along it (``pace_persistence``). A forecast computes them from
    the state (``Beliefs.of``) unless it is given them. An incremental forecast
    (``twin.incremental``) keeps those of its last full refresh until the next one: a
    vehicle's position then changes what that vehicle has shown, not what every lane and
    every leg under way has taught (see docs/forecasting.md, "Incremental updates").
    """

    #: lane -> believed slowdown (lanes at 1 are left out)
    factors: Mapping[str, float]
    #: lane -> standard deviation of the log of an observed slowdown
    spreads: Mapping[str, float]
    #: lane -> slowdown its vehicles are dead-reckoned at (lanes with a vehicle on the road)
    reckoning: Mapping[str, float]
    #: share of a leg's travel-time variance that persists along the leg
    persistence: float

    @classmethod
    def of(cls, state: WorldState) -> Beliefs:
        """What the state's observations teach now."""
        factors, spreads = _lane_slowdowns(state)  # the causes are read from the state per forecast
        net = state.network
        persistence = pace_persistence([(lane, state.lanes[lid]) for lid, lane in net.lanes.items()])
        reckoning: dict[str, float] = {}
        for v in state.vehicles.values():
            lid = v.lane_id
            if v.status == "en_route" and lid is not None and lid not in reckoning:
                reckoning[lid] = state.lanes[lid].factor(net.lanes[lid].travel_time)
        return cls(factors, spreads, reckoning, persistence.share)

    def progress(self, state: WorldState) -> dict[str, float] | None:
        """Dead-reckoned progress of every vehicle on the road (None: a lane it does not know)."""
        out: dict[str, float] = {}
        for vid, v in state.vehicles.items():
            if v.status == "en_route" and v.lane_id is not None:
                f = self.reckoning.get(v.lane_id)
                if f is None:
                    return None
                out[vid] = state.vehicle_progress(vid, factor=f)
        return out


def leg_paces(state: WorldState, persistence: float = 0.0) -> dict[tuple[str, int], tuple[float, float]]:
    """The pace each vehicle on the road has shown so far on its current leg.

    ``(trip, leg) -> (log travel-time ratio, fraction of the lane)`` observed from the leg's
    departure to the vehicle's latest position (its lane sample), or from halfway when the
    paces before and after halfway differ beyond the variation along the road (a slowdown
    that ended during the leg must not keep the rest of it slow; ``LaneSample.recent``, with
    the share of pace that persists, ``persistence``).
    """
    out: dict[tuple[str, int], tuple[float, float]] = {}
    net = state.network
    for vid, v in state.vehicles.items():
        if v.status != "en_route" or v.lane_id is None or v.trip_id is None:
            continue
        legs = net.trips[v.trip_id].legs
        ts = state.trips[v.trip_id]
        if not 0 <= v.leg < len(legs) or legs[v.leg].lane_id != v.lane_id:
            continue
        dep = ts.departures[v.leg]
        sample = state.lanes[v.lane_id].samples.get(vid)
        if dep is None or ts.arrivals[v.leg] is not None or sample is None or sample.first_time < dep:
            continue
        lane = net.lanes[v.lane_id]
        r = sample.recent(lane.travel_time, lane.sigma, persistence)
        if r is not None:
            out[(v.trip_id, v.leg)] = (math.log(max(r[0], 1e-9)), r[1])
    return out


def lane_ends(state: WorldState) -> dict[str, float]:
    """Reported end of the disruption on each lane that has one."""
    out: dict[str, float] = {}
    for d in state.disruptions.values():
        if d.cleared_at is None and d.expected_end is not None and d.target_id in state.lanes:
            out[d.target_id] = max(out.get(d.target_id, 0.0), d.expected_end)
    return out


class ForecastDurations(StochasticDurations):
    """Replica durations: keyed lognormal noise, and observed slowdowns fading with time."""

    def __init__(
        self,
        seed: int,
        replica: int,
        now: float,
        lane_factors: dict[str, float],
        lane_causes: dict[str, tuple[str, str]],
        memory: float = SLOWDOWN_MEMORY,
        handling_sigma: float = 0.1,
        lane_ends: dict[str, float] | None = None,
        draws: DrawTable | None = None,
        lane_spreads: dict[str, float] | None = None,
        paces: dict[tuple[str, int], tuple[float, float]] | None = None,
        persistence: float = 0.0,
    ) -> None:
        super().__init__(seed, replica, lane_factors, handling_sigma, lane_causes, draws)
        self.now = now
        self.memory = memory
        #: reported end of a disruption on a lane
        self.lane_ends = lane_ends or {}
        #: uncertainty (sd of the log) of each observed slowdown: each replica draws its own
        self.lane_spreads = lane_spreads or {}
        #: end of each slowed lane's slowdown in this replica (drawn once per lane)
        self._ends: dict[str, float] = {}
        #: each slowed lane's slowdown in this replica
        self._factors: dict[str, float] = {}
        #: pace shown so far by vehicles on the road: (trip, leg) -> (log ratio, fraction)
        self.paces = paces or {}
        #: share of a leg's travel-time variance that persists along the leg (``pace_persistence``)
        self.persistence = persistence

    def _believed(self, lane: Lane) -> float:
        """The lane's slowdown now in this replica (before any fading)."""
        f0 = self._factors.get(lane.id)
        if f0 is None:
            f0 = self.lane_factor(lane)
            spread = self.lane_spreads.get(lane.id, 0.0)
            if spread > 0.0 and f0 != 1.0:
                # How slow the lane is, is itself uncertain: each replica draws it (keyed).
                f0 *= self._noise(f"belief/{lane.id}", spread)
            self._factors[lane.id] = f0
        return f0

    def factor_at(self, lane: Lane, t: float) -> float:
        """The lane's slowdown at time ``t`` in this replica.

        The believed slowdown lasts until its reported end, or, for one only observed, for a
        duration drawn per replica (exponential, mean ``memory``): the replicas spread over
        how long it lasts instead of all assuming the same.
        """
        f0 = self._believed(lane)
        if f0 == 1.0:
            return f0
        end = self._ends.get(lane.id)
        if end is None:
            end = self.lane_ends.get(lane.id)
            if end is None:
                if self.memory <= 0:
                    return f0
                end = self.now - self.memory * math.log(self._uniform(f"recover/{lane.id}"))
            self._ends[lane.id] = end
        return f0 if t < end else 1.0

    def recovery(self, site: Site, start: float) -> float | None:
        """A site's lost capacity returns after a drawn time (exponential, mean ``memory``)."""
        if self.memory <= 0:
            return None
        return start - self.memory * math.log(self._uniform(f"recover/{site.id}"))

    def travel(self, trip_id: str, leg: int, lane: Lane, start: float, remaining: float) -> float:
        """Nominal time times the fading slowdown at departure times the keyed noise.

        For the rest of a leg a vehicle is already driving, the noise is the vehicle's own
        pace given what it has shown so far (:meth:`pace_rest`).
        """
        sigma = lane.sigma
        seen = self.paces.get((trip_id, leg)) if remaining < 1.0 else None
        if seen is not None and sigma > 0:
            noise = self.pace_rest(f"travel/{trip_id}/{leg}", lane, seen[0], seen[1], remaining)
        else:
            # ``_travel_noise``, its common case inlined: the leg's noises from the table
            col = self._column
            if sigma > 0 and col is not None and (noises := self._legs.get((trip_id, leg, sigma))):
                noise = noises[col]
            else:
                noise = self._travel_noise(trip_id, leg, sigma)
        work = lane.travel_time * remaining * noise
        if self._factors.get(lane.id) == 1.0:
            # as ``drive_time`` of a lane this replica believes not slowed; ``whole(work)``
            r = round(work)
            return float(r) if r > 1 else 1.0
        return whole(self.drive_time(lane, start, work))

    def drive_time(self, lane: Lane, start: float, work: float) -> float:
        """Seconds to do ``work`` seconds of driving at nominal speed, from ``start``.

        The vehicle drives at the slowed speed until the slowdown ends in this replica, and
        at its own speed after that: a slowdown that ends while a vehicle is on the road
        shortens the rest of its drive (as it does in the world), instead of lasting to the
        end of every leg that started under it.
        """
        f = self.factor_at(lane, start)
        if f == 1.0:
            return work
        end = self._ends.get(lane.id, math.inf)
        if start + work * f <= end:
            return work * f
        return (end - start) + work - (end - start) / f

    def pace_rest(self, key: str, lane: Lane, log_ratio: float, seen: float, remaining: float) -> float:
        """The travel-time multiplier (beyond the lane's slowdown) of the rest of a leg.

        Model (``twin.lane.pace_persistence``): the log pace over a stretch covering a
        fraction ``p`` of the lane is the lane's slowdown, plus the vehicle's own pace for the
        leg ``b`` (variance ``rho * sigma**2``, ``rho`` the persistence), plus variation along
        the road averaged over the stretch (variance ``(1 - rho) * sigma**2 / p``). The
        vehicle has shown ``y``, its log pace over the fraction ``seen`` less the replica's
        slowdown of the lane; the posterior of ``b`` has mean ``k * y`` and variance
        ``rho * sigma**2 * (1 - k)`` with ``k = rho / (rho + (1 - rho) / seen)``, and the rest
        adds its own variation over the fraction ``remaining`` (taken as at least
        ``MIN_SAMPLE_PROGRESS``). With full persistence the vehicle keeps the pace it has
        shown; with none each stretch is fresh luck. The same keyed normal draw as the leg's
        noise (common random numbers).
        """
        s2 = lane.sigma * lane.sigma
        rho = self.persistence
        y = log_ratio - math.log(self._believed(lane))
        k = rho / (rho + (1.0 - rho) / seen) if rho > 0.0 else 0.0
        var = rho * s2 * (1.0 - k) + (1.0 - rho) * s2 / max(remaining, MIN_SAMPLE_PROGRESS)
        return math.exp(k * y) * self._noise(key, math.sqrt(var))


class Forecaster:
    """Monte Carlo forecasts of a network's cascading delays from its live state."""

    def __init__(
        self,
        network: Network,
        *,
        horizon: float = 12 * 3600.0,
        replicas: int = 64,
        seed: int = 0,
        handling_sigma: float = 0.1,
        slowdown_memory: float = SLOWDOWN_MEMORY,
        workers: int = 1,
    ) -> None:
        if horizon <= 0:
            msg = f"horizon={horizon} must be > 0 seconds"
            raise ValueError(msg)
        if replicas < 1:
            msg = f"replicas={replicas} must be at least 1"
            raise ValueError(msg)
        self.network = network
        self.horizon = horizon
        self.replicas = replicas
        self.seed = seed
        self.handling_sigma = handling_sigma
        self.slowdown_memory = slowdown_memory
        if workers < 1:
            msg = f"workers={workers} must be at least 1"
            raise ValueError(msg)
        #: processes that run replicas in parallel (1: run them in this process)
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def close(self) -> None:
        """Stop the worker processes, if any."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Forecaster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ running
    def run_replicas(self, state: WorldState, replicas: Sequence[int] | None = None) -> list[ModelResult]:
        """Run the model once per replica from the state; return each replica's records.

        Each result carries the provenance (ledgers) of the orders and trips that came out
        late in that replica.
        """
        ids = list(replicas) if replicas is not None else list(range(self.replicas))
        if self.workers == 1 or len(ids) < 2:
            return self._run_here(state, ids)
        pool = self._ensure_pool()
        snap = state.snapshot()
        k = self.workers
        chunks = [ids[i::k] for i in range(k) if ids[i::k]]
        futures = [pool.submit(_run_in_worker, snap, chunk) for chunk in chunks]
        by_replica: dict[int, ModelResult] = {}
        for chunk, fut in zip(chunks, futures, strict=True):
            by_replica.update(zip(chunk, fut.result(), strict=True))
        info = place(state).info
        out = [by_replica[r] for r in ids]
        for res in out:
            res.info = info
        return out

    def _settings(self) -> dict[str, float | int]:
        return {
            "horizon": self.horizon,
            "replicas": self.replicas,
            "seed": self.seed,
            "handling_sigma": self.handling_sigma,
            "slowdown_memory": self.slowdown_memory,
        }

    def _run_here(self, state: WorldState, ids: Sequence[int]) -> list[ModelResult]:
        out: list[ModelResult] = []
        lots: _LotIndex | None = None
        with _gc_paused():
            for placement, model in self._replicas(state, ids):
                if lots is None:
                    lots = _LotIndex(placement.info)
                result = model.collect()
                result.ledgers, result.lot_ledgers = _late_ledgers(model, lots)
                out.append(result)
        return out

    def _setup(self, state: WorldState, beliefs: Beliefs | None = None) -> _Setup:
        """What every replica of a forecast of the state starts from, computed once.

        ``beliefs``: what the twin has learned (default: ``Beliefs.of(state)``).
        """
        b = Beliefs.of(state) if beliefs is None else beliefs
        progress = b.progress(state)
        if progress is None:
            msg = "beliefs= do not know the lane of a vehicle on the road: take Beliefs.of(state) again"
            raise ValueError(msg)
        causes = lane_causes(state)
        paces = leg_paces(state, b.persistence)
        placement = place(state, causes)
        # trips no freight can ride: computed, not simulated (during the run, or after it
        # for those after each vehicle's last trip that freight can ride)
        free = freight_free(state, placement)
        return _Setup(
            state.clock + self.horizon, dict(b.factors), causes, dict(b.spreads), lane_ends(state), paces,
            b.persistence, progress, placement, free, detachable(state, placement, free),
            # the records and lots every replica starts from, copied per replica
            ModelTemplate.of(state, placement),
        )  # fmt: skip

    def _replicas(
        self,
        state: WorldState,
        ids: Sequence[int],
        setup: _Setup | None = None,
        draws: DrawTable | None = None,
        *,
        trace: bool = False,
    ) -> Iterator[tuple[Placement, Model]]:
        """Run the replicas one after the other; yield each one's model as it finishes.

        The model is closed (``Model.close``) once the caller asks for the next one; its
        records stay. ``draws``: a table holding these replicas' draws (default: a new one);
        ``trace``: each model records a ``Trace`` (for ``twin.incremental``).
        """
        s = self._setup(state) if setup is None else setup
        if draws is None:
            draws = DrawTable(self.seed, ids, _draw_keys(state))
        for r in ids:
            durations = self._durations(state, s, draws, r)
            model = Model(
                state, durations, detached=s.detached, vehicles_last=True, coast=s.free, template=s.template,
                progress=s.progress, trace=Trace() if trace else None,
            ).build()  # fmt: skip
            model.run(s.until)
            try:
                yield s.placement, model
            finally:
                model.close()

    def _durations(self, state: WorldState, s: _Setup, draws: DrawTable, replica: int) -> ForecastDurations:
        """The durations of one replica of a forecast of the state."""
        return ForecastDurations(
            self.seed, replica, state.clock, s.factors, s.causes, self.slowdown_memory, self.handling_sigma,
            s.ends, draws, s.spreads, s.paces, s.persistence,
        )  # fmt: skip

    def _tally_here(
        self, state: WorldState, ids: Sequence[int], setup: _Setup | None = None
    ) -> tuple[_Keys | None, list[_Tally]]:
        """Run the replicas and keep only their tallies (records are dropped as they come)."""
        keys: _Keys | None = None
        out: list[_Tally] = []
        for placement, model in self._replicas(state, ids, setup):
            if keys is None:
                keys = _Keys(state, placement.info, model.template)
            out.append(_tally_model(model, keys))
        return keys, out

    def forecast(self, state: WorldState, beliefs: Beliefs | None = None) -> list[PredictedState]:
        """Full forecast: every open order, every trip not yet completed, every site.

        ``beliefs``: what the twin has learned from the observations (default: what the
        state's observations teach now, ``Beliefs.of(state)``).

        With ``workers > 1`` this process runs one share of the replicas while the workers
        run the others and send back only their tallies.
        """
        with _gc_paused():
            # the replicas' tallies are dropped when ``_forecast`` returns, before the
            # collector resumes: it then has only the predictions to scan
            return self._forecast(state, beliefs)

    def _forecast(self, state: WorldState, beliefs: Beliefs | None = None) -> list[PredictedState]:
        ids = list(range(self.replicas))
        if self.workers == 1:
            keys, tallies = self._tally_here(state, ids, self._setup(state, beliefs))
        else:
            pool = self._ensure_pool()
            k = self.workers
            chunks = [ids[i::k] for i in range(k)]
            # the workers get what the replicas start from, computed here once, rather than
            # the whole state to redo it from (its 5,000 orders took 0.1-0.2 s to send and
            # to place again before a worker could start)
            setup = self._setup(state, beliefs)
            # pickled here, once: the executor would pickle it in a thread of this process,
            # taking turns with the replicas below while the workers wait for it
            shipped = pickle.dumps(_ship(state, setup), protocol=pickle.HIGHEST_PROTOCOL)
            futures = [pool.submit(_tally_in_worker, shipped, chunk) for chunk in chunks[1:] if chunk]
            keys, mine = self._tally_here(state, chunks[0], setup)
            by_replica = dict(zip(chunks[0], mine, strict=True))
            for chunk, fut in zip(chunks[1:], futures, strict=False):
                by_replica.update(zip(chunk, fut.result(), strict=True))
            tallies = [by_replica[r] for r in ids]
        if keys is None:
            return []
        return self._aggregate(state, keys, tallies)

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, initializer=_init_worker, initargs=(self.network, self._settings())
            )
        return self._pool

    # ------------------------------------------------------------------ aggregation
    def aggregate(self, state: WorldState, results: list[ModelResult]) -> list[PredictedState]:
        """Per-entity predictions from the replicas' records."""
        if not results:
            return []
        keys = _Keys(state, results[0].info)
        return self._aggregate(state, keys, [_tally(res, keys) for res in results])

    def _aggregate(self, state: WorldState, keys: _Keys, tallies: list[_Tally]) -> list[PredictedState]:
        """Per-entity predictions from the replicas' tallies (in replica order)."""
        n = len(tallies)
        as_of = state.clock
        end = as_of + self.horizon
        out: list[PredictedState] = []
        if n == 0:
            return out
        order_ids, trip_ids = keys.order_ids, keys.trip_ids
        # which recorded ledger explains each (replica, entity): an index into ``found``, or -1
        found: list[Ledger] = []
        order_which, trip_which = [], []
        for t in tallies:
            off = len(found)
            found.extend(t.ledgers)
            order_which.append(np.where(t.order_ledger >= 0, t.order_ledger + off, -1))
            trip_which.append(np.where(t.trip_ledger >= 0, t.trip_ledger + off, -1))
        promised = keys.promised
        delivered = np.array([t.delivered for t in tallies], dtype=float).reshape(n, len(order_ids))
        which = np.array(order_which, dtype=np.intp).reshape(n, len(order_ids))
        order_preds, order_late = self._time_predictions(
            "order", order_ids, delivered, promised, as_of, end, 0.0, which, found
        )  # fmt: skip
        out.extend(order_preds)
        planned = keys.trip_planned
        arrivals = np.array([t.arrivals for t in tallies], dtype=float).reshape(n, len(trip_ids))
        which = np.array(trip_which, dtype=np.intp).reshape(n, len(trip_ids))
        out.extend(
            self._time_predictions("trip", trip_ids, arrivals, planned, as_of, end, SCHEDULE_GRACE, which, found)[0]
        )
        out.extend(self._site_predictions(state, tallies, order_ids, order_late))
        return out

    def _site_predictions(
        self,
        state: WorldState,
        tallies: Sequence[_Tally],
        order_ids: list[str],
        order_late: npt.NDArray[np.float64],
        sites: Sequence[str] | None = None,
    ) -> list[PredictedState]:
        """Per site (all, or ``sites`` in that order): dock waits of arriving vehicles, orders at risk.

        ``order_late``: each order's probability of being late (in ``order_ids`` order).
        """
        n = len(tallies)
        as_of = state.clock
        out: list[PredictedState] = []
        # orders likely late (in half the replicas or more) waiting at a site, counted per site
        risk: dict[str, int] = {}
        orders = state.orders
        for k in np.flatnonzero(order_late >= 0.5).tolist():
            o = orders.get(order_ids[k])
            if o is not None and o.site_id is not None and o.trip_id is None:
                risk[o.site_id] = risk.get(o.site_id, 0) + 1
        waits: dict[str, list[float]] = {sid: [] for sid in self.network.sites}
        worst: dict[str, list[float]] = {sid: [] for sid in self.network.sites}
        for t in tallies:
            per_site: dict[str, float] = {}
            for sid, w in t.waits:
                waits[sid].append(w)
                # ``max(per_site.get(sid, 0.0), w)`` without the call (a site left out reads 0.0)
                if w > per_site.get(sid, 0.0):
                    per_site[sid] = w
            for sid, worst_here in worst.items():
                worst_here.append(per_site.get(sid, 0.0))
        for sid in sorted(self.network.sites) if sites is None else sites:
            ws = sorted(waits[sid])
            bad = [w for w in worst[sid] if w > SCHEDULE_GRACE]
            chain = (
                (Cause("dock_queue", sid, round(sum(bad) / n, 1)),) if bad and sum(bad) / n >= MIN_CAUSE_SECONDS else ()
            )
            out.append(
                PredictedState(
                    "site", sid, as_of,
                    _q(ws, 0.1), _q(ws, 0.5), _q(ws, 0.9),
                    len(bad) / n, sum(bad) / n, chain, None, risk.get(sid, 0),
                )
            )  # fmt: skip
        return out

    def _time_predictions(
        self,
        kind: EntityKind,
        ids: list[str],
        times: npt.NDArray[np.float64],
        due: npt.NDArray[np.float64],
        as_of: float,
        end: float,
        grace: float,
        which: npt.NDArray[np.intp],
        found: list[Ledger],
    ) -> tuple[list[PredictedState], npt.NDArray[np.float64]]:
        """Quantiles, lateness probability, expected delay and causes from a replicas x entities matrix.

        Returns the predictions and the lateness probabilities (``p_late``) as an array.

        ``which[r, k]`` is the index in ``found`` of the ledger replica ``r`` recorded for
        entity ``k`` (-1: none); the chain averages those of the replicas where it was late.
        """
        n = times.shape[0]
        if not ids:
            return [], np.zeros(0)
        ordered = np.sort(times, axis=0)
        qs = {q: _column_quantile(ordered, q) for q in (0.1, 0.5, 0.9)}
        effective = np.where(np.isinf(times), end, times)
        late = (times > due + grace) & (np.isfinite(times) | (end > due + grace))
        p_late = late.sum(axis=0) / n
        delay = np.where(late, np.maximum(effective - due, 0.0), 0.0).sum(axis=0) / n
        # per entity, the ledgers of the replicas in which it was late (-1: none)
        chosen = np.ascontiguousarray(np.where(late, which, -1).T)
        # orders of one lot share their ledgers in every replica: compute their chain once
        memo: dict[bytes, tuple[Cause, ...]] = {}
        chains: list[tuple[Cause, ...]] = [()] * len(ids)
        for k in np.flatnonzero(p_late > 0).tolist():
            col = chosen[k]
            key = col.tobytes()
            known = memo.get(key)
            if known is None:
                known = memo[key] = _chain([found[i] for i in col.tolist() if i >= 0], n)
            chains[k] = known
        # Python floats (the same values): numpy scalars are slow to convert
        preds = _new_predictions(
            kind, ids, as_of, qs[0.1], qs[0.5], qs[0.9], p_late.tolist(), delay.tolist(), chains, due.tolist()
        )
        return preds, p_late


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while replicas pile up records.

    Every replica allocates tens of thousands of objects that stay alive until aggregation,
    so the collector would keep re-scanning a growing heap for nothing (about a fifth of a
    forecast's time). Reference counting frees everything else: a closed model leaves no
    cycles (``Model.close``), and the forecast drops its tallies before the collector
    resumes, which then has only the predictions to scan.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_WORKER: dict[str, Forecaster] = {}


def _init_worker(network: Network, settings: dict[str, float]) -> None:
    _WORKER["forecaster"] = Forecaster(
        network,
        horizon=settings["horizon"],
        replicas=int(settings["replicas"]),
        seed=int(settings["seed"]),
        handling_sigma=settings["handling_sigma"],
        slowdown_memory=settings["slowdown_memory"],
    )


def _run_in_worker(snapshot: dict[str, object], replicas: list[int]) -> list[ModelResult]:
    fc = _WORKER["forecaster"]
    state = WorldState.from_snapshot(fc.network, snapshot)
    out = fc._run_here(state, replicas)
    for res in out:
        res.info = {}
    return out


def _draw_keys(state: WorldState) -> list[str]:
    """Keys of the draws a replica may make: legs not yet arrived, slowed lanes, sites."""
    keys = [f"recover/{lid}" for lid in state.network.lanes]
    keys += [f"recover/{sid}" for sid in state.network.sites]
    for tid, ts in state.trips.items():
        for leg, arrived in enumerate(ts.arrivals):
            if arrived is None:
                keys += (f"travel/{tid}/{leg}", f"unload/{tid}/{leg}", f"sort/{tid}/{leg}")
    return keys


class _LotIndex:
    """Per-forecast facts about the order lists of lots, shared by every replica.

    Replicas copy their lots from one placement, so most lots of every replica share an
    order list object; splits make new ones. Entries looked up by a list's ``id`` keep their
    list alive, so an ``id`` is never reused for another list while the memo exists.
    """

    def __init__(self, info: dict[str, OrderInfo], order_ids: list[str] | None = None) -> None:
        self.info = info
        self.position = {oid: i for i, oid in enumerate(order_ids)} if order_ids is not None else {}
        self._promises: dict[int, tuple[list[str], float, float, list[tuple[str, str]]]] = {}
        self._columns: dict[int, tuple[list[str], npt.NDArray[np.intp]]] = {}
        self._facts: dict[tuple[str, int], tuple[list[str], npt.NDArray[np.intp], float]] = {}

    def promises(self, ids: list[str]) -> tuple[float, float, list[tuple[str, str]]]:
        """Earliest and latest promise of the orders, and their ledger keys."""
        e = self._promises.get(id(ids))
        if e is None or e[0] is not ids:
            info = self.info
            ps = [info[oid].promised_at for oid in ids]
            e = self._promises[id(ids)] = (ids, min(ps), max(ps), [("order", oid) for oid in ids])
        return e[1], e[2], e[3]

    def facts(self, ids: list[str]) -> tuple[npt.NDArray[np.intp], float]:
        """Positions of the orders in the forecast's order list, and their earliest promise.

        Looked up by the orders, not by the list: a split makes a new order list in every
        replica, and most replicas make the same splits (the same orders in the same order).
        A lot's orders are a stretch of one template lot's (splits cut a list in two), so the
        first order and the length find it; the entry is used only if its orders are equal.
        """
        key = (ids[0], len(ids))
        e = self._facts.get(key)
        if e is None or e[0] != ids:
            info, pos = self.info, self.position
            e = self._facts[key] = (
                ids,
                np.array([pos[oid] for oid in ids], dtype=np.intp),
                min(info[oid].promised_at for oid in ids),
            )
        return e[1], e[2]

    def columns(self, ids: list[str]) -> npt.NDArray[np.intp]:
        """Positions of the orders in the forecast's order list."""
        e = self._columns.get(id(ids))
        if e is None or e[0] is not ids:
            pos = self.position
            e = self._columns[id(ids)] = (ids, np.array([pos[oid] for oid in ids], dtype=np.intp))
        return e[1]


class _Keys:
    """The entities a forecast of one state reports on, in the order of its matrices."""

    def __init__(self, state: WorldState, info: dict[str, OrderInfo], template: ModelTemplate | None = None) -> None:
        self.info = info
        self.order_ids = sorted(info)
        self.trip_ids = sorted(t for t, ts in state.trips.items() if ts.status not in ("completed", "cancelled"))
        self.lots = _LotIndex(info, self.order_ids)
        #: per order (``order_ids``), its promise
        self.promised = np.array([info[oid].promised_at for oid in self.order_ids], dtype=float)
        # The lots every replica starts from (copies of the template's, which share its order
        # lists until a split gives a lot a new one): their orders' positions and earliest
        # promise, and the lot of every order, computed once; a replica's tally then looks up
        # only the lots whose order list is not the template's (-1: an order in no lot).
        #: the template's order list of each lot (compared by identity)
        self.base_ids: list[list[str]] = []
        #: the earliest promise of each of those lots
        self.base_first: list[float] = []
        #: per order (``order_ids``), the index of its template lot (-1: none)
        self.base_owner = np.full(len(self.order_ids), -1, dtype=np.intp)
        lens = [len(lot.ids) for lot in template.lots] if template is not None else []
        if template is not None and lens and min(lens) > 0:
            lots = template.lots
            self.base_ids = [lot.ids for lot in lots]
            pos = self.lots.position
            flat = [oid for ids in self.base_ids for oid in ids]
            where = np.array([pos[oid] for oid in flat], dtype=np.intp)
            self.base_owner[where] = np.repeat(np.arange(len(lots)), lens)
            # each lot's earliest promise, over its stretch of the flat list
            promised = self.promised[where]
            starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
            self.base_first = np.minimum.reduceat(promised, starts).tolist()
        self.network = state.network
        trips = state.network.trips
        #: per trip: its planned arrival, the arrival beyond which it is late, and its last leg
        self.trip_planned = np.array([trips[t].planned_arrival for t in self.trip_ids], dtype=float)
        self.trip_due = self.trip_planned + SCHEDULE_GRACE
        self.trip_last = [len(trips[t].legs) - 1 for t in self.trip_ids]


@dataclass(slots=True)
class _Tally:
    """One replica's outcome reduced to what aggregation reads (cheap to send between processes).

    Per order (``_Keys.order_ids``) the delivery time (inf: not delivered) and the index in
    ``ledgers`` of its provenance (-1: none, or on time); per open trip the final arrival and
    its provenance index; and the dock wait of every arrival, by site (in no particular
    order).
    """

    delivered: npt.NDArray[np.float64]
    order_ledger: npt.NDArray[np.intp]
    arrivals: npt.NDArray[np.float64]
    trip_ledger: npt.NDArray[np.intp]
    ledgers: list[Ledger]
    waits: list[tuple[str, float]]


def _tally(res: ModelResult, keys: _Keys) -> _Tally:
    """Reduce one replica's records to a tally."""
    lots = keys.lots
    found = res.lots
    # the lot of every order (each order is in one lot; len(found): in none), then per-lot
    # values spread to the orders in one indexing each
    cols = [lots.columns(lot.ids) for lot in found]
    owner = np.full(len(keys.order_ids), len(found), dtype=np.intp)
    if cols:
        owner[np.concatenate(cols)] = np.repeat(np.arange(len(found)), [len(c) for c in cols])
    times = [math.inf if lot.delivered_at is None else lot.delivered_at for lot in found]
    times.append(math.inf)
    delivered = np.array(times, dtype=float)[owner]
    per_lot = np.full(len(found) + 1, -1, dtype=np.intp)
    ledgers: list[Ledger] = []
    for i, led in enumerate(_lot_ledgers(res)):
        if led:
            per_lot[i] = len(ledgers)
            ledgers.append(led)
    order_ledger = per_lot[owner]
    arrivals: list[float] = []
    trip_ledger = np.full(len(keys.trip_ids), -1, dtype=np.intp)
    trips = res.trips
    for k, tid in enumerate(keys.trip_ids):
        arr = trips[tid].arrivals[-1]
        arrivals.append(math.inf if arr is None else arr)
        led = res.ledgers.get(("trip", tid))
        if led:
            trip_ledger[k] = len(ledgers)
            ledgers.append(led)
    waits = _dock_waits(trips, keys.network)
    return _Tally(delivered, order_ledger, np.array(arrivals, dtype=float), trip_ledger, ledgers, waits)


def _tally_model(model: Model, keys: _Keys) -> _Tally:
    """One replica's tally straight from its model, in one pass.

    The same tally as ``_tally`` of its records with their late ledgers (``_late_ledgers``;
    tested), without the per-entity map in between.
    """
    found = model.lots
    # lots whose order list is not the template's (split, or no template): (index, positions)
    patches: list[tuple[int, npt.NDArray[np.intp]]] = []
    times: list[float] = []
    per_lot = np.full(len(found) + 1, -1, dtype=np.intp)
    ledgers: list[Ledger] = []
    facts = keys.lots.facts
    base_ids, base_first = keys.base_ids, keys.base_first
    nbase = len(base_ids)
    inf = math.inf
    for i, lot in enumerate(found):
        ids = lot.ids
        if i < nbase and ids is base_ids[i]:
            first = base_first[i]
        else:
            col, first = facts(ids)
            patches.append((i, col))
        t = lot.delivered_at
        if t is None:
            t = inf
        times.append(t)
        if t > first:
            led = model.order_ledger(lot)
            if led:
                per_lot[i] = len(ledgers)
                ledgers.append(led)
    times.append(inf)
    # the lot of every order; -1 (an order in no lot) reads the last entries: inf, no ledger
    owner = keys.base_owner
    if patches:
        owner = owner.copy()
        for i, col in patches:
            owner[col] = i
    delivered = np.array(times, dtype=float)[owner]
    order_ledger = per_lot[owner]
    trip_ledger = np.full(len(keys.trip_ids), -1, dtype=np.intp)
    trips = model.trips
    trip_ids = keys.trip_ids
    arrivals = np.array([inf if (a := trips[tid].arrivals[-1]) is None else a for tid in trip_ids], dtype=float)
    # late: not arrived (inf), or after the schedule's grace; in trip order
    for k in np.flatnonzero(arrivals > keys.trip_due).tolist():
        run = trips[trip_ids[k]]
        led = run.arrival_ledgers.get(keys.trip_last[k], run.ledger)
        if led:
            trip_ledger[k] = len(ledgers)
            ledgers.append(led)
    # the dock waits as the model recorded them (in the order they happened, not by trip:
    # aggregation sorts them and takes maxima, so the order does not matter)
    return _Tally(delivered, order_ledger, arrivals, trip_ledger, ledgers, model.dock_waits)


def _dock_waits(trips: Mapping[str, TripRun], network: Network) -> list[tuple[str, float]]:
    """(site, seconds) of every wait for a dock in one replica's trip records."""
    waits: list[tuple[str, float]] = []
    net_trips = network.trips
    for tid, run in trips.items():
        if run.dock_wait_at:
            legs = net_trips[tid].legs
            waits.extend((legs[leg].destination, w) for leg, w in run.dock_wait_at.items())
    return waits


def _lot_ledgers(res: ModelResult) -> list[Ledger | None]:
    """The order ledgers of a result's lots (from ``ledgers`` when not recorded per lot)."""
    if len(res.lot_ledgers) == len(res.lots):
        return res.lot_ledgers
    out: list[Ledger | None] = []
    for lot in res.lots:
        out.append(next((led for oid in lot.ids if (led := res.ledgers.get(("order", oid)))), None))
    return out


@dataclass(slots=True)
class _Setup:
    """What every replica of a forecast of one state starts from (``Forecaster._setup``)."""

    until: float
    factors: dict[str, float]
    causes: dict[str, tuple[str, str]]
    spreads: dict[str, float]
    ends: dict[str, float]
    #: (trip, leg) -> the pace shown so far on a leg in progress (``leg_paces``)
    paces: dict[tuple[str, int], tuple[float, float]]
    #: the share of a leg's pace that persists along it (``pace_persistence``)
    persistence: float
    #: vehicle -> dead-reckoned progress on its lane (``Beliefs.progress``)
    progress: dict[str, float]
    placement: Placement
    free: frozenset[str]
    detached: frozenset[str]
    template: ModelTemplate


def _ship(state: WorldState, setup: _Setup) -> tuple[object, ...]:
    """A forecast's setup as a worker process needs it, quick to pickle.

    The state without its orders (a model reads them only to build the template, which is
    sent as it is) and the orders' promises as plain tuples.
    """
    shell = WorldState(state.network, state.clock)
    shell.sites, shell.lanes, shell.vehicles = state.sites, state.lanes, state.vehicles
    shell.trips, shell.disruptions = state.trips, state.disruptions
    t = setup.template
    info = {oid: (i.origin, i.destination, i.promised_at) for oid, i in t.info.items()}
    return (
        shell.snapshot(), setup.until, setup.factors, setup.causes, setup.spreads, setup.ends, setup.paces,
        setup.persistence, setup.progress, setup.free, setup.detached, info,
        t.trips, t.lots, t.booked, t.onboard, t.batches, t.operating, t.frozen,
    )  # fmt: skip


def _unship(network: Network, shipped: tuple[Any, ...]) -> tuple[WorldState, _Setup]:
    """The state (without orders) and the setup that ``_ship`` sent."""
    snap, until, factors, causes, spreads, ends, paces, persistence, progress, free, detached, promises, *parts = (
        shipped
    )
    trips, lots, booked, onboard, batches, operating, frozen = parts
    state = WorldState.from_snapshot(network, snap)
    info = {oid: OrderInfo(*p) for oid, p in promises.items()}
    placement = Placement(info, [], [], [])
    template = ModelTemplate(
        state, placement, trips, lots, info, booked, onboard, batches, operating, frozen
    )  # fmt: skip
    setup = _Setup(
        until, factors, causes, spreads, ends, paces, persistence, progress, placement, free, detached, template
    )  # fmt: skip
    return state, setup


def _tally_in_worker(shipped: bytes, replicas: list[int]) -> list[_Tally]:
    fc = _WORKER["forecaster"]
    state, setup = _unship(fc.network, pickle.loads(shipped))  # bytes this forecaster pickled
    with _gc_paused():
        return fc._tally_here(state, replicas, setup)[1]


def _late_ledgers(
    model: Model, lots: _LotIndex | None = None
) -> tuple[dict[tuple[str, str], Ledger], list[Ledger | None]]:
    """Provenance of one replica, for the orders and trips that may count as late.

    Also the same order ledgers per lot, parallel to ``model.lots`` (None: no late order).
    """
    out: dict[tuple[str, str], Ledger] = {}
    memo = lots if lots is not None else _LotIndex(model.info)
    info = model.info
    per_lot: list[Ledger | None] = []
    for lot in model.lots:
        t = lot.delivered_at if lot.delivered_at is not None else math.inf
        first, last, keys = memo.promises(lot.ids)
        if t <= first:
            per_lot.append(None)
            continue
        led = model.order_ledger(lot)
        per_lot.append(led)
        if t > last:
            out.update(dict.fromkeys(keys, led))
        else:
            for oid, key in zip(lot.ids, keys, strict=True):
                if t > info[oid].promised_at:
                    out[key] = led
    for tid, run in model.trips.items():
        trip = model.net.trips[tid]
        arr = run.arrivals[-1]
        if arr is None or arr > trip.planned_arrival + SCHEDULE_GRACE:
            out[("trip", tid)] = run.arrival_ledgers.get(len(trip.legs) - 1, run.ledger)
    return out, per_lot


def _position(n: int, q: float) -> float:
    """Where the ``q`` quantile of the next outcome lies among ``n`` sorted replicas (0-based).

    Weibull's plotting position ``q * (n + 1)`` (1-based), not the sample quantile's
    ``q * (n - 1)``: the k-th smallest of n draws has ``k / (n + 1)`` of the distribution
    below it on average, so with these positions the p10-p90 interval of a forecast whose
    replicas are drawn from the true distribution holds the actual outcome 80 % of the time.
    The sample quantile's interval is narrower: with 32 replicas it holds it only about 75 %
    of the time, with 8 about 62 % (numpy: ``method="weibull"``). The median is the same.
    """
    return min(max(q * (n + 1) - 1.0, 0.0), n - 1.0)


def _column_quantile(ordered: npt.NDArray[np.float64], q: float) -> list[float | None]:
    """Per-column quantile of column-sorted values (see :func:`_position`), None if infinite."""
    n = ordered.shape[0]
    k = _position(n, q)
    lo, hi = math.floor(k), math.ceil(k)
    a, b = ordered[lo], ordered[hi]
    with np.errstate(invalid="ignore"):
        v = np.where(a == b, a, a + (b - a) * (k - lo))
    v = np.where(np.isinf(a) | np.isinf(b), np.where(k - lo < 0.5, a, b), v)
    out: list[float | None] = v.tolist()
    for i in np.flatnonzero(~np.isfinite(v)).tolist():
        out[i] = None
    return out


def _q(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = _quantile(values, q)
    return None if math.isinf(v) or math.isnan(v) else v


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    k = _position(len(sorted_values), q)
    lo, hi = math.floor(k), math.ceil(k)
    a, b = sorted_values[lo], sorted_values[hi]
    if a == b or math.isinf(a) or math.isinf(b):
        return a if k - lo < 0.5 else b
    return a + (b - a) * (k - lo)


def _chain(ledgers: list[Ledger], n: int) -> tuple[Cause, ...]:
    """Average the replicas' provenance into an ordered chain (upstream first)."""
    total: dict[tuple[str, str], list[float]] = {}
    for led in ledgers:
        for key, (secs, at) in led.items():
            e = total.get(key)
            if e is None:
                total[key] = [secs, at]
            else:
                e[0] += secs
                if at < e[1]:  # ``min(e[1], at)`` without the call
                    e[1] = at
    items = [(at, key, secs / n) for key, (secs, at) in total.items() if secs / n >= MIN_CAUSE_SECONDS]
    items.sort(key=lambda x: (x[0], x[1][0] not in ROOT_CAUSES, x[1]))
    if len(items) > MAX_CAUSES:
        keep = sorted(items, key=lambda x: -x[2])[:MAX_CAUSES]
        items = sorted(keep, key=lambda x: (x[0], x[1][0] not in ROOT_CAUSES, x[1]))
    return tuple(Cause(key[0], key[1], round(secs, 1)) for _, key, secs in items)
