"""How long things take: nominal (live mode) or drawn with common random numbers (forecasts).

All durations are whole seconds (at least one), so that times stay exact in float
arithmetic and a model rebuilt from a snapshot reproduces the original run to the second.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from statistics import NormalDist
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
from mypy_extensions import mypyc_attr

from twin.lane import Lane
from twin.site import Site

__all__ = [
    "DrawTable",
    "Durations",
    "NominalDurations",
    "StochasticDurations",
    "keyed_normal",
    "keyed_random",
    "keyed_uniform",
    "keyed_uniforms",
    "whole",
]

_MASK: Final = (1 << 64) - 1
_KEY_HASHES: dict[str, int] = {}
_INV_CDF: Final = NormalDist().inv_cdf
_CDF: Final = NormalDist().cdf


def whole(seconds: float) -> float:
    """Round a duration to whole seconds, at least one."""
    r = round(seconds)
    return float(r) if r > 1 else 1.0


def keyed_random(seed: int, replica: int, key: str) -> random.Random:
    """A generator whose draws depend only on (seed, replica, activity key).

    This is what makes common random numbers work: two runs that differ in one action
    still draw the same numbers for every activity they share.
    """
    return random.Random(f"{seed}/{replica}/{key}")


def _key_hash(key: str) -> int:
    h = _KEY_HASHES.get(key)
    if h is None:
        h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
        if len(_KEY_HASHES) < 1_000_000:
            _KEY_HASHES[key] = h
    return h


def keyed_uniform(seed: int, replica: int, key: str) -> float:
    """A uniform draw in (0, 1) that depends only on (seed, replica, activity key)."""
    z = (_key_hash(key) ^ ((seed * 0x9E3779B97F4A7C15) & _MASK) ^ ((replica * 0xBF58476D1CE4E5B9) & _MASK)) & _MASK
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    return ((z >> 11) + 0.5) / (1 << 53)


def keyed_uniforms(seed: int, replicas: Sequence[int], keys: Sequence[str]) -> npt.NDArray[np.float64]:
    """``keyed_uniform`` for every (key, replica) at once: a keys x replicas array.

    The same SplitMix64 mixing in numpy's wrapping uint64 arithmetic, so every value equals
    ``keyed_uniform(seed, replica, key)`` exactly (tested); only the work is shared.
    """
    h = np.array([_key_hash(k) for k in keys], dtype=np.uint64).reshape(-1, 1)
    s = np.uint64((seed * 0x9E3779B97F4A7C15) & _MASK)
    r = np.array([(x * 0xBF58476D1CE4E5B9) & _MASK for x in replicas], dtype=np.uint64).reshape(1, -1)
    z = (h ^ s) ^ r
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


class DrawTable:
    """The keyed uniforms of a forecast's replicas for activities known in advance.

    Built once per forecast (vectorised over keys and replicas) and shared by every
    replica; a key not in the table falls back to ``keyed_uniform``. The values are the
    same either way, so common random numbers hold whatever the table holds.
    """

    __slots__ = ("_noises", "column", "handling", "legs", "rows", "seed")

    def __init__(self, seed: int, replicas: Sequence[int], keys: Iterable[str]) -> None:
        self.seed = seed
        names = list(dict.fromkeys(keys))
        ids = list(replicas)
        #: replica -> its column in the rows
        self.column = {r: i for i, r in enumerate(ids)}
        values = keyed_uniforms(seed, ids, names).tolist() if names and ids else [[] for _ in names]
        #: activity key -> uniforms of the replicas
        self.rows: dict[str, list[float]] = dict(zip(names, values, strict=True))
        self._noises: dict[tuple[str, float], list[float]] = {}
        #: (trip, leg, sigma) -> the legs' travel noises of the replicas (empty: not in the table)
        self.legs: dict[tuple[str, int, float], list[float]] = {}
        #: (kind, sigma) -> {activity key without its kind: noises of the replicas} (``handling_noises``)
        self.handling: dict[tuple[str, float], dict[str, list[float]]] = {}

    def uniform(self, replica: int, key: str) -> float:
        """``keyed_uniform(seed, replica, key)``, from the table when it holds it."""
        row = self.rows.get(key)
        col = self.column.get(replica)
        if row is None or col is None:
            return keyed_uniform(self.seed, replica, key)
        return row[col]

    def leg_noises(self, trip_id: str, leg: int, sigma: float) -> list[float]:
        """``lognormal`` of every replica for the travel draw of a trip leg, keyed by the leg.

        Filled once per (trip, leg, sigma) and then read from ``legs`` without formatting the
        draw's key; empty when the table does not hold the leg.
        """
        noises = self.legs.get((trip_id, leg, sigma))
        if noises is None:
            key = f"travel/{trip_id}/{leg}"
            noises = self._noises.get((key, sigma))
            if noises is None:
                row = self.rows.get(key)
                noises = [] if row is None else [math.exp(sigma * _INV_CDF(u)) for u in row]
                if noises:
                    self._noises[(key, sigma)] = noises
            self.legs[(trip_id, leg, sigma)] = noises
        return noises

    def handling_noises(self, kind: str, sigma: float) -> dict[str, list[float]]:
        """The noises of every replica for draws ``f"{kind}/{key}"`` (unloading, sorting), by ``key``.

        A dictionary shared by the replicas, filled as keys are first drawn (``lognormal``'s
        values; empty for a key the table does not hold): a draw then reads it without
        formatting its full key.
        """
        memo = self.handling.get((kind, sigma))
        if memo is None:
            memo = self.handling[(kind, sigma)] = {}
        return memo

    def _fill(self, key: str, sigma: float) -> list[float]:
        """``lognormal``'s noises of every replica for ``key`` (empty: not in the table)."""
        noises = self._noises.get((key, sigma))
        if noises is None:
            row = self.rows.get(key)
            if row is None:
                return []
            noises = self._noises[(key, sigma)] = [math.exp(sigma * _INV_CDF(u)) for u in row]
        return noises

    def lognormal(self, replica: int, key: str, sigma: float) -> float:
        """``exp(sigma * inverse normal CDF(uniform(replica, key)))``, computed once per key for all replicas."""
        noises = self._noises.get((key, sigma))
        if noises is None:
            row = self.rows.get(key)
            if row is None:
                return math.exp(sigma * _INV_CDF(keyed_uniform(self.seed, replica, key)))
            noises = self._noises[(key, sigma)] = [math.exp(sigma * _INV_CDF(u)) for u in row]
        col = self.column.get(replica)
        if col is None:
            return math.exp(sigma * _INV_CDF(keyed_uniform(self.seed, replica, key)))
        return noises[col]


def keyed_normal(seed: int, replica: int, key: str) -> float:
    """A standard normal draw that depends only on (seed, replica, activity key).

    The activity key is hashed once (blake2b, cached); seed and replica are mixed in with
    SplitMix64, and the resulting uniform is mapped through the normal inverse CDF. This is
    what makes common random numbers cheap: no generator is seeded per draw.
    """
    return _INV_CDF(keyed_uniform(seed, replica, key))


class Durations(Protocol):
    """The timing of every activity in the network model."""

    def travel(self, trip_id: str, leg: int, lane: Lane, start: float, remaining: float) -> float:
        """Seconds to cover the ``remaining`` fraction of ``lane`` starting at ``start``."""
        ...

    def lane_factor(self, lane: Lane) -> float:
        """Travel-time multiplier currently believed for the lane (1 = nominal)."""
        ...

    def lane_cause(self, lane: Lane) -> tuple[str, str]:
        """(mechanism, entity) to blame for time on the lane beyond nominal."""
        ...

    def recovery(self, site: Site, start: float) -> float | None:
        """When a site that lost capacity gets it back (None: not within the run)."""
        ...

    def unload(self, site: Site, orders: int, key: str) -> float:
        """Seconds a vehicle occupies a dock to unload ``orders`` orders."""
        ...

    def unload_rest(self, site: Site, orders: int, key: str, done: float) -> float:
        """Seconds left of an unloading that has gone on for ``done`` seconds and is not over."""
        ...

    def sort(self, site: Site, orders: int, rate: float, key: str) -> float:
        """Seconds the site needs to sort a batch of ``orders`` at ``rate`` per hour."""
        ...


@mypyc_attr(allow_interpreted_subclasses=True)
class NominalDurations:
    """Expected durations: lane travel times times the given slowdown factors, no noise."""

    def __init__(
        self, lane_factors: dict[str, float] | None = None, lane_causes: dict[str, tuple[str, str]] | None = None
    ) -> None:
        self.lane_factors = lane_factors or {}
        #: lanes slowed by a reported disruption: lane id -> ("disruption", disruption id)
        self.lane_causes = lane_causes or {}

    def lane_cause(self, lane: Lane) -> tuple[str, str]:
        """A reported disruption if one is on the lane, else the lane's own slowdown."""
        return self.lane_causes.get(lane.id, ("lane_slowdown", lane.id))

    def lane_factor(self, lane: Lane) -> float:
        """Known slowdown of the lane (1 when none)."""
        return self.lane_factors.get(lane.id, 1.0)

    def travel(self, trip_id: str, leg: int, lane: Lane, start: float, remaining: float) -> float:
        """Nominal time for the remaining fraction, scaled by the lane's factor."""
        return whole(lane.travel_time * self.lane_factor(lane) * remaining)

    def recovery(self, site: Site, start: float) -> float | None:
        """Nominal runs assume lost capacity stays lost."""
        return None

    def unload(self, site: Site, orders: int, key: str) -> float:
        """Fixed dock time plus a time per order."""
        return whole(site.dock_seconds + site.seconds_per_order * orders)

    def unload_rest(self, site: Site, orders: int, key: str, done: float) -> float:
        """The nominal dock time less what is done (at least a second)."""
        return whole(max(1.0, site.dock_seconds + site.seconds_per_order * orders - done))

    def sort(self, site: Site, orders: int, rate: float, key: str) -> float:
        """Batch size over the handling rate."""
        return whole(3600.0 * orders / rate)


@mypyc_attr(allow_interpreted_subclasses=True)
class StochasticDurations(NominalDurations):
    """Lognormal noise around the nominal durations, keyed per activity (common random numbers).

    Travel uses the lane's ``sigma``; dock and sorting times use ``handling_sigma``.
    """

    def __init__(
        self,
        seed: int,
        replica: int,
        lane_factors: dict[str, float] | None = None,
        handling_sigma: float = 0.1,
        lane_causes: dict[str, tuple[str, str]] | None = None,
        draws: DrawTable | None = None,
    ) -> None:
        super().__init__(lane_factors, lane_causes)
        self.seed = seed
        self.replica = replica
        self.handling_sigma = handling_sigma
        #: precomputed keyed uniforms (same values as computing them one by one)
        self.draws = draws if draws is not None and draws.seed == seed else None
        #: this replica's column in the draw table (None: draws one by one)
        self._column = self.draws.column.get(replica) if self.draws is not None else None
        self._legs: dict[tuple[str, int, float], list[float]] = self.draws.legs if self.draws is not None else {}
        #: the table's unloading and sorting noises by key (``DrawTable.handling_noises``)
        self._unloads = self.draws.handling_noises("unload", handling_sigma) if self.draws is not None else {}
        self._sorts = self.draws.handling_noises("sort", handling_sigma) if self.draws is not None else {}

    def _uniform(self, key: str) -> float:
        if self.draws is not None:
            return self.draws.uniform(self.replica, key)
        return keyed_uniform(self.seed, self.replica, key)

    def _noise(self, key: str, sigma: float) -> float:
        if sigma <= 0:
            return 1.0
        if self.draws is not None:
            return self.draws.lognormal(self.replica, key, sigma)
        return math.exp(sigma * _INV_CDF(keyed_uniform(self.seed, self.replica, key)))

    def _travel_noise(self, trip_id: str, leg: int, sigma: float) -> float:
        """``_noise(f"travel/{trip_id}/{leg}", sigma)``, from the table's per-leg noises when it can."""
        if sigma <= 0:
            return 1.0
        col = self._column
        if col is not None:
            noises = self._legs.get((trip_id, leg, sigma))
            if noises is None and self.draws is not None:
                noises = self.draws.leg_noises(trip_id, leg, sigma)
            if noises:
                return noises[col]
        return self._noise(f"travel/{trip_id}/{leg}", sigma)

    def travel(self, trip_id: str, leg: int, lane: Lane, start: float, remaining: float) -> float:
        """Nominal time times a lognormal draw for this trip leg."""
        noise = self._travel_noise(trip_id, leg, lane.sigma)
        return whole(lane.travel_time * self.lane_factor(lane) * remaining * noise)

    def _handling_noise(self, kind: str, memo: dict[str, list[float]], key: str) -> float:
        """``_noise(f"{kind}/{key}", handling_sigma)``, from the table's noises by key when it can."""
        sigma = self.handling_sigma
        if sigma <= 0:
            return 1.0
        col = self._column
        if col is not None and self.draws is not None:
            noises = memo.get(key)
            if noises is None:
                noises = memo[key] = self.draws._fill(f"{kind}/{key}", sigma)
            if noises:
                return noises[col]
        return self._noise(f"{kind}/{key}", sigma)

    def unload(self, site: Site, orders: int, key: str) -> float:
        """Nominal dock time times a lognormal draw for this unloading."""
        noise = self._handling_noise("unload", self._unloads, key)
        return whole((site.dock_seconds + site.seconds_per_order * orders) * noise)

    def unload_rest(self, site: Site, orders: int, key: str, done: float) -> float:
        """The rest of an unloading known to have gone on for ``done`` seconds without ending.

        Its whole duration is drawn from the lognormal of :meth:`unload` given that it is
        longer than ``done``: the activity's keyed uniform ``u`` is mapped into the upper part
        of the distribution, ``F(done) + u * (1 - F(done))``, so the draw stays keyed (common
        random numbers) and equals :meth:`unload`'s when ``done`` is 0.
        """
        nominal = site.dock_seconds + site.seconds_per_order * orders
        sigma = self.handling_sigma
        if sigma <= 0 or done <= 0:
            return whole(max(1.0, self.unload(site, orders, key) - max(0.0, done)))
        noise = self._handling_noise("unload", self._unloads, key)
        u = _CDF(math.log(noise) / sigma)
        f0 = _CDF(math.log(done / nominal) / sigma)
        total = nominal * math.exp(sigma * _INV_CDF(min(f0 + u * (1.0 - f0), 1.0 - 1e-12)))
        return whole(max(1.0, total - done))

    def sort(self, site: Site, orders: int, rate: float, key: str) -> float:
        """Nominal sorting time times a lognormal draw for this batch."""
        noise = self._handling_noise("sort", self._sorts, key)
        return whole(3600.0 * orders / rate * noise)
