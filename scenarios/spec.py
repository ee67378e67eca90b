"""The scenario file format (TOML), validated with errors that name the field and the rule.

A scenario describes a network (sites, lanes), a fleet and schedule (services: vehicles
running back and forth over a route), demand (how many orders, between which kinds of site,
created when), the disruptions the twin is *not* told about, the telemetry cadence, a seed
and a duration. README.md lists every field; ``library/two-region-mini/scenario.toml`` is a
commented example.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twin.errors import TwinError
from twin.site import SITE_KINDS

__all__ = [
    "DemandSpec",
    "DisruptionSpec",
    "LaneSpec",
    "ScenarioError",
    "ScenarioSpec",
    "ServiceSpec",
    "SiteSpec",
    "TelemetrySpec",
    "derive_seed",
    "library_path",
    "load_scenario",
    "parse_scenario",
]

LIBRARY = Path(__file__).parent / "library"


class ScenarioError(TwinError, ValueError):
    """A scenario file is invalid; the message names the file, the field and the rule."""


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """A site as written in the scenario."""

    id: str
    kind: str
    region: str
    docks: int
    handling_rate: float
    dock_seconds: float
    seconds_per_order: float


@dataclass(frozen=True, slots=True)
class LaneSpec:
    """A lane (``both_ways`` adds the return lane with the same figures)."""

    origin: str
    destination: str
    minutes: float
    sigma: float
    both_ways: bool


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """Vehicles that run a route forth and back (a shuttle when the route has two stops)."""

    id: str
    route: tuple[str, ...]
    vehicles: int
    capacity: int
    first_departure: float
    headway_minutes: float
    trips_per_vehicle: int
    turnaround_minutes: float
    hold_minutes: float
    start_at_both_ends: bool


@dataclass(frozen=True, slots=True)
class DemandSpec:
    """How orders are drawn."""

    orders: int
    from_kind: str
    to_kind: str
    created_from: float
    created_until: float
    min_connection_minutes: float
    promise_slack_minutes: float


@dataclass(frozen=True, slots=True)
class DisruptionSpec:
    """A disruption of the true world; ``reported`` ones are also announced as events."""

    id: str
    kind: str
    target: str
    factor: float
    start: float
    end: float
    reported: bool


@dataclass(frozen=True, slots=True)
class TelemetrySpec:
    """How often the true world reports positions, docks and throughput."""

    position_interval_s: float = 60.0
    idle_position_interval_s: float = 300.0
    dock_status_interval_s: float = 600.0
    throughput_interval_s: float = 1800.0


def derive_seed(seed: int, purpose: str) -> int:
    """A 31-bit seed for ``purpose`` derived from ``seed`` (stable across runs and machines)."""
    digest = hashlib.blake2b(f"{seed}/{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


@dataclass(frozen=True, slots=True)
class ScenarioSpec:
    """A whole scenario, validated."""

    name: str
    description: str
    seed: int
    epoch: datetime
    duration: float
    sites: tuple[SiteSpec, ...]
    lanes: tuple[LaneSpec, ...]
    services: tuple[ServiceSpec, ...]
    demand: DemandSpec
    disruptions: tuple[DisruptionSpec, ...]
    telemetry: TelemetrySpec = field(default_factory=TelemetrySpec)
    source: str = ""

    @property
    def forecast_seed(self) -> int:
        """The forecasts' default seed: derived from the scenario's seed, never equal to it.

        The generated world draws its noise with the scenario's seed and the same keyed draws
        (``twin.durations.keyed_uniform``) that a forecast's replica 0 uses: forecasting with the
        world's seed would hand one replica the world's own luck, which flatters every backtest.
        """
        return derive_seed(self.seed, "forecast")


def library_path(name: str) -> Path:
    """Path of a library scenario's file."""
    return LIBRARY / name / "scenario.toml"


def load_scenario(name_or_path: str | Path) -> ScenarioSpec:
    """Load a scenario by library name (``regional-day``) or by path to a ``.toml`` file."""
    path = Path(name_or_path)
    if not path.suffix:
        lib = library_path(str(name_or_path))
        if not lib.exists():
            names = sorted(p.name for p in LIBRARY.iterdir() if (p / "scenario.toml").exists())
            msg = f"no scenario {str(name_or_path)!r}: give a .toml path or one of {names}"
            raise ScenarioError(msg)
        path = lib
    if not path.exists():
        msg = f"scenario file {str(path)!r} does not exist"
        raise ScenarioError(msg)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        msg = f"{path}: not valid TOML: {exc}"
        raise ScenarioError(msg) from exc
    return parse_scenario(data, source=str(path))


class _Reader:
    """Reads one table of the file, naming ``where`` in every error."""

    def __init__(self, data: Any, where: str, source: str) -> None:
        if not isinstance(data, dict):
            self._fail(where, source, "must be a table")
        self.data: dict[str, Any] = data
        self.where = where
        self.source = source
        self.used: set[str] = set()

    @staticmethod
    def _fail(where: str, source: str, rule: str) -> None:
        msg = f"{source}: {where}: {rule}"
        raise ScenarioError(msg)

    def fail(self, key: str, rule: str) -> None:
        """Raise naming the field."""
        self._fail(f"{self.where}.{key}", self.source, rule)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        """A field of the given type; required unless ``default`` is given."""
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                self.fail(key, "is required")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.fail(key, f"must be {names}, got {value!r}")
        return value

    def positive(self, key: str, kind: type, default: Any = ..., allow_zero: bool = False) -> Any:
        """A number > 0 (or >= 0)."""
        value = self.get(key, kind, default)
        if value < 0 or (value == 0 and not allow_zero):
            self.fail(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
        return value

    def clock(self, key: str, default: Any = ...) -> float:
        """A time of day "HH:MM" (or "D+HH:MM" for later days) as seconds since the epoch."""
        value = self.get(key, str, default)
        if not isinstance(value, str):
            return float(value)
        day, _, hm = value.rpartition("+")
        try:
            h, m = hm.split(":")
            seconds = (int(day or 0) * 24 + int(h)) * 3600 + int(m) * 60
        except ValueError:
            self.fail(key, f"must be a time of day like '06:30' (or '1+06:30' for the next day), got {value!r}")
        if not 0 <= int(m) < 60:
            self.fail(key, f"minutes must be 0-59, got {value!r}")
        return float(seconds)

    def done(self) -> None:
        """Unknown keys are errors: a typo should not silently fall back to a default."""
        extra = sorted(set(self.data) - self.used)
        if extra:
            self._fail(self.where, self.source, f"unknown field(s) {extra}; check the spelling")


def _tables(data: dict[str, Any], key: str, source: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        msg = f"{source}: {key}: must be an array of tables ([[{key}]])"
        raise ScenarioError(msg)
    return value


def parse_scenario(data: dict[str, Any], source: str = "<scenario>") -> ScenarioSpec:
    """Validate parsed TOML data into a :class:`ScenarioSpec`."""
    top = _Reader(data, "file", source)
    for key in ("scenario", "telemetry", "site", "lane", "service", "demand", "disruption"):
        top.used.add(key)
    top.done()

    head = _Reader(data.get("scenario"), "scenario", source)
    name = head.get("name", str)
    description = head.get("description", str, "")
    seed = head.get("seed", int)
    epoch_text = head.get("epoch", str, "2026-01-05T00:00:00Z")
    try:
        epoch = datetime.fromisoformat(epoch_text.replace("Z", "+00:00"))
    except ValueError:
        head.fail("epoch", f"must be an ISO 8601 UTC time like '2026-01-05T00:00:00Z', got {epoch_text!r}")
    if epoch.tzinfo is None or epoch.utcoffset() != UTC.utcoffset(None):
        head.fail("epoch", "must be in UTC (end it with 'Z')")
    duration = head.positive("duration_hours", float, 24.0) * 3600.0
    head.done()

    tel = _Reader(data.get("telemetry", {}), "telemetry", source)
    telemetry = TelemetrySpec(
        tel.positive("position_interval_s", float, 60.0),
        tel.positive("idle_position_interval_s", float, 300.0),
        tel.positive("dock_status_interval_s", float, 600.0),
        tel.positive("throughput_interval_s", float, 1800.0),
    )
    tel.done()

    sites: list[SiteSpec] = []
    ids: set[str] = set()
    for i, raw in enumerate(_tables(data, "site", source)):
        r = _Reader(raw, f"site[{i}]", source)
        sid = r.get("id", str)
        if sid in ids:
            r.fail("id", f"{sid!r} is used twice; site ids must be unique")
        ids.add(sid)
        kind = r.get("kind", str)
        if kind not in SITE_KINDS:
            r.fail("kind", f"must be one of {list(SITE_KINDS)}, got {kind!r}")
        sites.append(
            SiteSpec(
                sid,
                kind,
                r.get("region", str),
                r.positive("docks", int),
                r.positive("handling_rate", float),
                r.positive("dock_seconds", float, 600.0, True),
                r.positive("seconds_per_order", float, 2.0, True),
            )
        )
        r.done()
    if not sites:
        top.fail("site", "a scenario needs at least one [[site]]")

    lanes: list[LaneSpec] = []
    pairs: set[tuple[str, str]] = set()
    for i, raw in enumerate(_tables(data, "lane", source)):
        r = _Reader(raw, f"lane[{i}]", source)
        a, b = r.get("from", str), r.get("to", str)
        for key, sid in (("from", a), ("to", b)):
            if sid not in ids:
                r.fail(key, f"site {sid!r} is not defined in [[site]]")
        if a == b:
            r.fail("to", "a lane must join two different sites")
        both = r.get("both_ways", bool, True)
        for pair in [(a, b), (b, a)] if both else [(a, b)]:
            if pair in pairs:
                r.fail("to", f"lane {pair[0]}->{pair[1]} is defined twice")
            pairs.add(pair)
        lanes.append(LaneSpec(a, b, r.positive("minutes", float), r.positive("sigma", float, 0.1, True), both))
        r.done()

    services: list[ServiceSpec] = []
    sids: set[str] = set()
    for i, raw in enumerate(_tables(data, "service", source)):
        r = _Reader(raw, f"service[{i}]", source)
        svc_id = r.get("id", str)
        if svc_id in sids:
            r.fail("id", f"{svc_id!r} is used twice")
        sids.add(svc_id)
        route = r.get("route", list)
        if len(route) < 2 or not all(isinstance(s, str) for s in route):
            r.fail("route", "must list at least two site ids")
        for a, b in zip(route, route[1:], strict=False):
            if (a, b) not in pairs or (b, a) not in pairs:
                r.fail("route", f"needs lanes both ways between {a!r} and {b!r}; add a [[lane]]")
        services.append(
            ServiceSpec(
                svc_id,
                tuple(route),
                r.positive("vehicles", int),
                r.positive("capacity", int),
                r.clock("first_departure"),
                r.positive("headway_minutes", float, 60.0, True),
                r.positive("trips_per_vehicle", int),
                r.positive("turnaround_minutes", float, 30.0, True),
                r.positive("hold_minutes", float, 30.0, True),
                r.get("start_at_both_ends", bool, False),
            )
        )
        r.done()
    if not services:
        top.fail("service", "a scenario needs at least one [[service]] (vehicles and their trips)")

    d = _Reader(data.get("demand"), "demand", source)
    demand = DemandSpec(
        d.positive("orders", int, allow_zero=True),
        d.get("from_kind", str, "warehouse"),
        d.get("to_kind", str, "zone"),
        d.clock("created_from"),
        d.clock("created_until"),
        d.positive("min_connection_minutes", float, 30.0, True),
        d.positive("promise_slack_minutes", float, 120.0, True),
    )
    for key, kind in (("from_kind", demand.from_kind), ("to_kind", demand.to_kind)):
        if not any(s.kind == kind for s in sites):
            d.fail(key, f"no site has kind {kind!r}")
    if demand.created_until <= demand.created_from:
        d.fail("created_until", "must be after created_from")
    d.done()

    disruptions: list[DisruptionSpec] = []
    for i, raw in enumerate(_tables(data, "disruption", source)):
        r = _Reader(raw, f"disruption[{i}]", source)
        kind = r.get("kind", str)
        target = r.get("target", str)
        factor = r.positive("factor", float, allow_zero=True)
        if kind in ("lane_slowdown", "lane_closure"):
            a, _, b = target.partition("->")
            if (a, b) not in pairs:
                r.fail("target", f"lane {target!r} is not defined (write it as 'FROM->TO')")
            if kind == "lane_slowdown" and factor < 1:
                r.fail("factor", "a lane_slowdown multiplies travel time: use a factor >= 1")
        elif kind == "site_capacity":
            if target not in ids:
                r.fail("target", f"site {target!r} is not defined")
            if factor > 1:
                r.fail("factor", "site_capacity is the fraction of docks and handling kept, in [0, 1]")
        else:
            r.fail("kind", f"must be lane_slowdown, lane_closure or site_capacity, got {kind!r}")
        start, end = r.clock("start"), r.clock("end")
        if end <= start:
            r.fail("end", "must be after start")
        disruptions.append(
            DisruptionSpec(r.get("id", str), kind, target, factor, start, end, r.get("reported", bool, False))
        )
        r.done()

    return ScenarioSpec(
        name,
        description,
        seed,
        epoch,
        duration,
        tuple(sites),
        tuple(lanes),
        tuple(services),
        demand,
        tuple(disruptions),
        telemetry,
        source,
    )
