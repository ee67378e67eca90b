"""Forecasting cascading delays: Monte Carlo replicas of the network model from the live state.

``Forecaster.forecast(state)`` rebuilds a fresh SimPy model from the world state for every
replica, draws stochastic durations with common random numbers (the same seed gives every
replica the same draw for the same activity), runs each to ``now + horizon`` and aggregates
per order, trip and site: ETA quantiles, the probability of being late, the expected delay,
and a cause chain taken from the provenance the replicas recorded (not guessed afterwards).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from twin.durations import StochasticDurations, whole
from twin.lane import Lane
from twin.model import ROOT_CAUSES, Ledger, Model, ModelResult
from twin.network import Network
from twin.state import WorldState

__all__ = [
    "Cause",
    "ForecastDurations",
    "Forecaster",
    "PredictedState",
    "lane_beliefs",
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


def lane_beliefs(state: WorldState) -> tuple[dict[str, float], dict[str, tuple[str, str]]]:
    """The slowdown factor the twin believes for every lane, and the lanes a disruption explains.

    Lanes with a reported disruption are blamed on the disruption, the rest on the lane.
    """
    factors: dict[str, float] = {}
    causes: dict[str, tuple[str, str]] = {}
    for lid, lane in state.network.lanes.items():
        ls = state.lanes[lid]
        f = ls.factor(lane.travel_time)
        if f != 1.0:
            factors[lid] = f
    for did, d in state.disruptions.items():
        if d.cleared_at is None and d.kind in ("lane_slowdown", "lane_closure") and d.target_id in state.lanes:
            causes[d.target_id] = ("disruption", did)
    return factors, causes


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
    ) -> None:
        super().__init__(seed, replica, lane_factors, handling_sigma, lane_causes)
        self.now = now
        self.memory = memory

    def factor_at(self, lane: Lane, t: float) -> float:
        """The lane's slowdown expected at time ``t``: the belief now, fading toward 1."""
        f0 = self.lane_factor(lane)
        if f0 == 1.0 or self.memory <= 0:
            return f0
        return 1.0 + (f0 - 1.0) * math.exp(-max(0.0, t - self.now) / self.memory)

    def travel(self, trip_id: str, leg: int, lane: Lane, start: float, remaining: float) -> float:
        """Nominal time times the fading slowdown at departure times the keyed noise."""
        noise = self._noise(f"travel/{trip_id}/{leg}", lane.sigma)
        return whole(lane.travel_time * self.factor_at(lane, start) * remaining * noise)


@dataclass(slots=True)
class _Samples:
    values: list[float] = field(default_factory=list)
    late: int = 0
    delay: float = 0.0
    ledgers: list[Ledger] = field(default_factory=list)


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

    # ------------------------------------------------------------------ running
    def run_replicas(self, state: WorldState, replicas: Sequence[int] | None = None) -> list[ModelResult]:
        """Run the model once per replica from the state; return each replica's records."""
        factors, causes = lane_beliefs(state)
        until = state.clock + self.horizon
        out = []
        for r in replicas if replicas is not None else range(self.replicas):
            durations = ForecastDurations(
                self.seed, r, state.clock, factors, causes, self.slowdown_memory, self.handling_sigma
            )
            model = Model(state, durations).build()
            model.run(until)
            result = model.collect()
            result.ledgers = _ledgers(model)
            out.append(result)
        return out

    def forecast(self, state: WorldState) -> list[PredictedState]:
        """Full forecast: every open order, every trip not yet completed, every site."""
        return self.aggregate(state, self.run_replicas(state))

    # ------------------------------------------------------------------ aggregation
    def aggregate(self, state: WorldState, results: list[ModelResult]) -> list[PredictedState]:
        """Per-entity predictions from the replicas' records."""
        n = len(results)
        as_of = state.clock
        end = as_of + self.horizon
        orders: dict[str, _Samples] = {}
        trips: dict[str, _Samples] = {}
        sites: dict[str, _Samples] = {}
        for res in results:
            ledgers = res.ledgers
            for oid, o in res.orders.items():
                s = orders.get(oid)
                if s is None:
                    s = orders[oid] = _Samples()
                t = o.delivered_at if o.delivered_at is not None else math.inf
                s.values.append(t)
                lateness = (t if t != math.inf else end) - o.promised_at
                if t > o.promised_at and (t != math.inf or end > o.promised_at):
                    s.late += 1
                    s.delay += max(0.0, lateness)
                    s.ledgers.append(ledgers.get(("order", oid), {}))
            for tid, run in res.trips.items():
                if state.trips[tid].status in ("completed", "cancelled"):
                    continue
                trip = self.network.trips[tid]
                s = trips.get(tid)
                if s is None:
                    s = trips[tid] = _Samples()
                arr = run.arrivals[-1]
                t = arr if arr is not None else math.inf
                s.values.append(t)
                if t > trip.planned_arrival + SCHEDULE_GRACE and (t != math.inf or end > trip.planned_arrival):
                    s.late += 1
                    s.delay += (t if t != math.inf else end) - trip.planned_arrival
                    s.ledgers.append(ledgers.get(("trip", tid), {}))
            waits: dict[str, list[float]] = {}
            for tid, run in res.trips.items():
                for leg, w in run.dock_wait_at.items():
                    waits.setdefault(self.network.trips[tid].legs[leg].destination, []).append(w)
            for sid in self.network.sites:
                s = sites.get(sid)
                if s is None:
                    s = sites[sid] = _Samples()
                ws = waits.get(sid, [])
                s.values.extend(ws)
                worst = max(ws, default=0.0)
                if worst > SCHEDULE_GRACE:
                    s.late += 1
                    s.delay += worst
                    s.ledgers.append({("dock_queue", sid): [worst, as_of]})

        out: list[PredictedState] = []
        order_preds: dict[str, PredictedState] = {}
        for oid in sorted(orders):
            p = _prediction("order", oid, as_of, orders[oid], n, state.orders[oid].promised_at)
            order_preds[oid] = p
            out.append(p)
        for tid in sorted(trips):
            out.append(_prediction("trip", tid, as_of, trips[tid], n, self.network.trips[tid].planned_arrival))
        for sid in sorted(sites):
            s = sites[sid]
            risk = sum(
                1
                for oid, o in state.orders.items()
                if o.site_id == sid and o.trip_id is None and oid in order_preds and order_preds[oid].p_late >= 0.5
            )
            out.append(_prediction("site", sid, as_of, s, n, None, at_risk=risk, quantiles_of_time=False))
        return out


def _ledgers(model: Model) -> dict[tuple[str, str], Ledger]:
    """Per-entity provenance of one replica: orders (composed at the end) and trips."""
    out: dict[tuple[str, str], Ledger] = {}
    for oid, o in model.orders.items():
        out[("order", oid)] = model.order_ledger(o)
    for tid, run in model.trips.items():
        legs = model.network_trip_legs(tid)
        out[("trip", tid)] = run.arrival_ledgers.get(legs - 1, run.ledger)
    return out


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    k = (len(sorted_values) - 1) * q
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
                e[1] = min(e[1], at)
    items = [(at, key, secs / n) for key, (secs, at) in total.items() if secs / n >= MIN_CAUSE_SECONDS]
    items.sort(key=lambda x: (x[0], x[1][0] not in ROOT_CAUSES, x[1]))
    if len(items) > MAX_CAUSES:
        keep = sorted(items, key=lambda x: -x[2])[:MAX_CAUSES]
        items = sorted(keep, key=lambda x: (x[0], x[1][0] not in ROOT_CAUSES, x[1]))
    return tuple(Cause(key[0], key[1], round(secs, 1)) for _, key, secs in items)


def _prediction(
    kind: EntityKind,
    eid: str,
    as_of: float,
    s: _Samples,
    n: int,
    planned: float | None,
    *,
    at_risk: int = 0,
    quantiles_of_time: bool = True,
) -> PredictedState:
    values = sorted(s.values)

    def q(x: float) -> float | None:
        v = _quantile(values, x)
        return None if math.isinf(v) or math.isnan(v) else v

    denominator = n if quantiles_of_time else max(n, 1)
    return PredictedState(
        kind=kind,
        id=eid,
        as_of=as_of,
        p10=q(0.1),
        p50=q(0.5),
        p90=q(0.9),
        p_late=s.late / denominator,
        expected_delay=s.delay / n,
        causes=_chain(s.ledgers, n),
        planned=planned,
        at_risk=at_risk,
    )
