"""The scenario generator: run the hidden true world, write what the twin may observe.

Output folder:

- ``events.parquet``: the observable event stream, in event-time order;
- ``truth_trips.parquet``, ``truth_orders.parquet``, ``truth_vehicles.parquet``: ground truth
  (actual departures, arrivals, deliveries; where every vehicle is every three hours and at
  the end);
- ``manifest.json``: scenario, seed, code version, counts, and a digest of each file.

The same scenario and seed give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import polars as pl
import simpy

from scenarios.build import PlannedOrder, build_network, draw_orders
from scenarios.code import code_digest, code_revision
from scenarios.eventlog import write_events
from scenarios.spec import ScenarioSpec
from scenarios.truth import TrueWorldDurations, Windows
from twin import __version__
from twin.events import (
    DisruptionCleared,
    DisruptionReported,
    DockStatus,
    Event,
    OrderCreated,
    OrderDelivered,
    OrderScanned,
    ScanKind,
    SiteThroughput,
    VehicleArrived,
    VehicleDeparted,
    VehiclePosition,
)
from twin.model import Model
from twin.network import Network
from twin.state import WorldState

__all__ = ["GeneratedScenario", "generate", "scenario_digest"]

Progress = Callable[[str, float], None]
#: Ground-truth vehicle positions are recorded this often (seconds of scenario time).
CHECKPOINT_EVERY = 3 * 3600.0


@dataclass(slots=True)
class GeneratedScenario:
    """What the generator produced, in memory (also written to ``folder`` if given)."""

    spec: ScenarioSpec
    network: Network
    events: list[Event]
    orders: list[PlannedOrder]
    truth_trips: pl.DataFrame
    truth_orders: pl.DataFrame
    truth_vehicles: pl.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)


def scenario_digest(spec: ScenarioSpec) -> str:
    """A short digest of the scenario file and the code that generates it (names cache folders).

    The code is its source (``code_digest``), not the package version, which stays the same
    from one commit to the next: a scenario cached by other code is generated again.
    """
    h = hashlib.sha256(Path(spec.source).read_bytes() if Path(spec.source).exists() else spec.name.encode())
    h.update(__version__.encode())
    h.update(code_digest().encode())
    return h.hexdigest()[:12]


class _Recorder:
    """Observer that turns model transitions into the events a real network would send."""

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.events: list[Event] = []
        self.blocked: dict[str, int] = {}
        self.occupied: dict[str, int] = {}

    def _id(self) -> str:
        return f"e{len(self.events) + 1:07d}"

    def departed(self, t: float, trip_id: str, leg: int, vehicle_id: str, site_id: str) -> None:
        self.events.append(
            VehicleDeparted(id=self._id(), time=t, vehicle_id=vehicle_id, trip_id=trip_id, leg=leg, site_id=site_id)
        )

    def arrived(self, t: float, trip_id: str, leg: int, vehicle_id: str, site_id: str) -> None:
        self.events.append(
            VehicleArrived(id=self._id(), time=t, vehicle_id=vehicle_id, trip_id=trip_id, leg=leg, site_id=site_id)
        )

    def scanned(self, t: float, order_id: str, site_id: str, kind: str, trip_id: str | None) -> None:
        scan = cast(ScanKind, kind)  # the model scans only "loaded", "unloaded" and "sorted"
        self.events.append(
            OrderScanned(id=self._id(), time=t, order_id=order_id, site_id=site_id, kind=scan, trip_id=trip_id)
        )

    def delivered(self, t: float, order_id: str, site_id: str) -> None:
        self.events.append(OrderDelivered(id=self._id(), time=t, order_id=order_id, site_id=site_id))

    def docks(self, t: float, site_id: str, occupied: int, in_service: int) -> None:
        self.occupied[site_id] = occupied

    def rolled(self, t: float, order_id: str, from_trip: str, to_trip: str | None) -> None:
        pass

    def emit(self, cls: type[Event], **fields: Any) -> None:
        """Record an event of ``cls`` with the next id."""
        self.events.append(cls(id=self._id(), **fields))


def generate(spec: ScenarioSpec, folder: Path | None = None, progress: Progress | None = None) -> GeneratedScenario:
    """Run the scenario's true world and return (and optionally write) its outputs."""
    say = progress or (lambda _msg, _frac: None)
    network = build_network(spec)
    say(f"network: {len(network.sites)} sites, {len(network.vehicles)} vehicles, {len(network.trips)} trips", 0.0)
    orders = draw_orders(spec, network)
    say(f"demand: {len(orders)} orders routed", 0.05)

    windows: dict[str, Windows] = {}
    for d in spec.disruptions:
        if d.kind in ("lane_slowdown", "lane_closure"):
            factor = math.inf if d.kind == "lane_closure" else d.factor
            windows.setdefault(d.target, []).append((d.start, d.end, factor))
    durations = TrueWorldDurations(spec.seed, windows)
    state = WorldState(network, 0.0)
    env = simpy.Environment(initial_time=0.0)
    rec = _Recorder(env)
    model = Model(state, durations, env=env, observer=rec).build()
    tel = spec.telemetry

    def creations() -> Any:
        for o in orders:
            if o.created_at > env.now:
                yield env.timeout(o.created_at - env.now)
            rec.emit(
                OrderCreated,
                time=env.now,
                order_id=o.id,
                origin=o.origin,
                destination=o.destination,
                promised_at=o.promised_at,
                path=o.path,
            )
            boards = _boards(network, o)
            model.add_order(o.id, o.origin, o.destination, o.promised_at, list(o.path), boards)

    def positions() -> Any:
        tick = 0
        idle_every = max(1, round(tel.idle_position_interval_s / tel.position_interval_s))
        while True:
            t = env.now
            for vid in sorted(network.vehicles):
                leg = model.vehicle_leg.get(vid)
                if leg is not None:
                    lane_id, start, p0, end = leg
                    done = durations.covered(lane_id, start, t)
                    total = durations.covered(lane_id, start, end)
                    p = p0 + (1.0 - p0) * (done / total if total > 0 else 1.0)
                    p = min(round(p, 4), 0.9999)
                    rec.emit(VehiclePosition, time=t, vehicle_id=vid, lane_id=lane_id, progress=p)
                elif tick % idle_every == 0 and model.vehicle_site.get(vid):
                    site = model.vehicle_site[vid]
                    rec.emit(VehiclePosition, time=t, vehicle_id=vid, site_id=site)
            tick += 1
            yield env.timeout(tel.position_interval_s)

    def site_sensors() -> Any:
        every = tel.dock_status_interval_s
        rate_every = max(1, round(tel.throughput_interval_s / every))
        tick = 0
        while True:
            for sid in sorted(network.sites):
                docks = model.docks[sid]
                blocked = rec.blocked.get(sid, 0)
                rec.emit(
                    DockStatus,
                    time=env.now,
                    site_id=sid,
                    occupied=max(0, docks.count - blocked),
                    in_service=docks.capacity - blocked,
                )
                if tick % rate_every == 0:
                    rec.emit(SiteThroughput, time=env.now, site_id=sid, rate_per_hour=model.rates[sid])
            tick += 1
            yield env.timeout(every)

    def site_outage(d: Any) -> Any:
        site = network.sites[d.target]
        keep = max(1, math.ceil(site.docks * d.factor))
        yield env.timeout(d.start - env.now)
        full_rate = model.rates[d.target]
        model.rates[d.target] = full_rate * max(d.factor, 0.05)
        reqs = []
        for _ in range(site.docks - keep):
            req = model.docks[d.target].request()
            reqs.append(req)
        for req in reqs:
            yield req
            rec.blocked[d.target] = rec.blocked.get(d.target, 0) + 1
        if env.now < d.end:
            yield env.timeout(d.end - env.now)
        for req in reqs:
            model.docks[d.target].release(req)
        rec.blocked[d.target] = 0
        model.rates[d.target] = full_rate

    def announce(d: Any) -> Any:
        yield env.timeout(d.start - env.now)
        rec.emit(
            DisruptionReported,
            time=env.now,
            disruption_id=d.id,
            kind=d.kind,
            target_id=d.target,
            factor=d.factor,
            expected_end=d.end,
        )
        yield env.timeout(d.end - env.now)
        rec.emit(DisruptionCleared, time=env.now, disruption_id=d.id)

    def report_progress() -> Any:
        step = spec.duration / 20
        while True:
            yield env.timeout(step)
            say(
                f"true world at {env.now / 3600:.1f} h: {len(rec.events):,} events", 0.1 + 0.8 * env.now / spec.duration
            )

    env.process(creations())
    env.process(positions())
    env.process(site_sensors())
    env.process(report_progress())
    vehicles: list[dict[str, Any]] = []

    def checkpoints() -> Any:
        while True:
            yield env.timeout(CHECKPOINT_EVERY)
            if env.now < spec.duration:
                vehicles.extend(_positions_now(model, durations, network, env.now))

    env.process(checkpoints())
    for d in spec.disruptions:
        if d.kind == "site_capacity":
            env.process(site_outage(d))
        if d.reported:
            env.process(announce(d))
    model.run(spec.duration)
    events = sorted(rec.events, key=lambda e: (e.time, e.id))
    result = model.collect()

    truth_trips = pl.DataFrame(
        [
            {
                "trip_id": tid,
                "vehicle_id": network.trips[tid].vehicle_id,
                "leg": i,
                "origin": leg.origin,
                "destination": leg.destination,
                "planned_departure": leg.planned_departure,
                "planned_arrival": leg.planned_arrival,
                "actual_departure": run.departures[i],
                "actual_arrival": run.arrivals[i],
            }
            for tid, run in sorted(result.trips.items())
            for i, leg in enumerate(network.trips[tid].legs)
        ],
        schema_overrides={"actual_departure": pl.Float64, "actual_arrival": pl.Float64},
    )
    planned = {o.id: o for o in orders}
    truth_orders = pl.DataFrame(
        [
            {
                "order_id": oid,
                "origin": run.origin,
                "destination": run.destination,
                "created_at": planned[oid].created_at,
                "promised_at": run.promised_at,
                "planned_arrival": planned[oid].planned_arrival,
                "delivered_at": run.delivered_at,
                "final_stage": run.stage,
                "final_site": run.site,
                "final_trip": run.trip,
                "rolls": run.rolls,
                "late": run.delivered_at is None or run.delivered_at > run.promised_at,
                "planned_path": list(planned[oid].path),
                "actual_path": list(run.path),
            }
            for oid, run in sorted(result.orders.items())
        ],
        schema_overrides={"delivered_at": pl.Float64, "final_site": pl.String, "final_trip": pl.String},
    )
    vehicles.extend(_positions_now(model, durations, network, spec.duration))
    truth_vehicles = pl.DataFrame(
        vehicles, schema_overrides={"site_id": pl.String, "lane_id": pl.String, "progress": pl.Float64}
    )

    counts: dict[str, int] = {}
    for ev in events:
        counts[ev.TYPE] = counts.get(ev.TYPE, 0) + 1
    manifest: dict[str, Any] = {
        "scenario": spec.name,
        "source": Path(spec.source).name,
        "seed": spec.seed,
        "epoch": spec.epoch.isoformat().replace("+00:00", "Z"),
        "duration_s": spec.duration,
        "code_version": __version__,
        "code_digest": code_digest(),
        "code_revision": code_revision(),
        "sites": len(network.sites),
        "vehicles": len(network.vehicles),
        "trips": len(network.trips),
        "orders": len(orders),
        "events": len(events),
        "events_by_type": dict(sorted(counts.items())),
        "late_orders": int(truth_orders.get_column("late").sum()),
    }
    gen = GeneratedScenario(spec, network, events, orders, truth_trips, truth_orders, truth_vehicles, manifest)
    if folder is not None:
        write_generated(gen, folder)
    say(f"done: {len(events):,} events, {manifest['late_orders']} late orders in the true world", 1.0)
    return gen


def write_generated(gen: GeneratedScenario, folder: Path) -> None:
    """Write the generator's outputs and a manifest with their digests."""
    folder.mkdir(parents=True, exist_ok=True)
    write_events(gen.events, folder / "events.parquet")
    for name, frame in (
        ("truth_trips", gen.truth_trips),
        ("truth_orders", gen.truth_orders),
        ("truth_vehicles", gen.truth_vehicles),
    ):
        frame.write_parquet(folder / f"{name}.parquet", compression="zstd", statistics=False)
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}
    gen.manifest["files"] = digests
    (folder / "manifest.json").write_text(json.dumps(gen.manifest, indent=2, sort_keys=True) + "\n")


def _positions_now(model: Model, durations: TrueWorldDurations, network: Network, at: float) -> list[dict[str, Any]]:
    """Where every vehicle truly is at ``at`` (a ground-truth checkpoint)."""
    rows: list[dict[str, Any]] = []
    for vid in sorted(network.vehicles):
        leg = model.vehicle_leg.get(vid)
        if leg is not None:
            lane_id, start, p0, stop = leg
            total = durations.covered(lane_id, start, stop)
            p = p0 + (1 - p0) * (durations.covered(lane_id, start, at) / total if total else 1.0)
            rows.append(
                {"at": at, "vehicle_id": vid, "status": "en_route", "site_id": None, "lane_id": lane_id, "progress": p}
            )
        else:
            rows.append(
                {
                    "at": at,
                    "vehicle_id": vid,
                    "status": "at_site",
                    "site_id": model.vehicle_site.get(vid),
                    "lane_id": None,
                    "progress": None,
                }
            )
    return rows


def _boards(network: Network, o: PlannedOrder) -> list[str]:
    boards = [o.origin]
    for a, b in zip(o.path, o.path[1:], strict=False):
        stops_a = network.trips[a].stops()
        here = boards[-1]
        after = stops_a[stops_a.index(here) + 1 :]
        nxt = network.trips[b].stops()[:-1]
        boards.append(next(s for s in after if s in nxt))
    return boards
