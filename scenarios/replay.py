"""Replays: feed a generated scenario's events to a live twin, in event-time order.

``prepare`` generates a scenario (or loads it from the cache when it was already generated
with the same file and code version); ``replay`` applies its events and reports progress;
``write_run`` writes the run folder (config beside results, as every run should).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from scenarios.build import build_network
from scenarios.code import code_digest, code_revision
from scenarios.eventlog import read_events
from scenarios.generate import generate, scenario_digest
from scenarios.spec import ScenarioSpec
from twin import __version__
from twin.errors import Rejection
from twin.events import Event
from twin.live import DEFAULT_LATENESS, LiveTwin
from twin.network import Network

__all__ = ["Prepared", "ReplayResult", "default_cache_dir", "prepare", "replay", "write_config", "write_run"]

Progress = Callable[[str, float], None]


def default_cache_dir() -> Path:
    """Where generated scenarios are cached: ``$TWIN_CACHE_DIR`` or ``~/.cache/logistics-twin``."""
    env = os.environ.get("TWIN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "logistics-twin"


@dataclass(slots=True)
class Prepared:
    """A generated scenario ready to replay."""

    spec: ScenarioSpec
    network: Network
    folder: Path
    events: list[Event]
    manifest: dict[str, Any]
    generated: bool


def prepare(
    spec: ScenarioSpec, cache_dir: Path | None = None, *, regenerate: bool = False, progress: Progress | None = None
) -> Prepared:
    """Generate the scenario into the cache, or load it if it is there already."""
    say = progress or (lambda _m, _f: None)
    cache = cache_dir or default_cache_dir()
    folder = cache / "scenarios" / f"{spec.name}-seed{spec.seed}-{scenario_digest(spec)}"
    manifest_path = folder / "manifest.json"
    generated = False
    if regenerate or not manifest_path.exists():
        say(f"generating scenario {spec.name!r} (seed {spec.seed}) into {folder}", 0.0)
        gen = generate(spec, folder, progress=say)
        network, events, manifest = gen.network, gen.events, gen.manifest
        generated = True
    else:
        say(f"loading generated scenario from {folder}", 0.0)
        manifest = json.loads(manifest_path.read_text())
        network = build_network(spec)
        events = read_events(folder / "events.parquet")
    return Prepared(spec, network, folder, events, manifest, generated)


@dataclass(slots=True)
class ReplayResult:
    """What a replay did."""

    twin: LiveTwin
    events: int
    rejections: list[Rejection]
    seconds: float
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        """Rejections counted by reason."""
        return dict(sorted(Counter(r.reason for r in self.rejections).items()))

    def summary(self) -> dict[str, Any]:
        """Counts and timing of the replay."""
        st = self.twin.state
        return {
            "events": self.events,
            "applied": self.twin.stats.applied_total,
            "rejected": len(self.rejections),
            "rejected_by_reason": self.rejected_by_reason,
            "clock_s": st.clock,
            "orders": len(st.orders),
            "late_orders": len(st.late_orders()),
            "delivered_orders": sum(1 for o in st.orders.values() if o.stage == "delivered"),
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events / self.seconds) if self.seconds > 0 else None,
        }


def replay(
    network: Network,
    events: Sequence[Event],
    *,
    twin: LiveTwin | None = None,
    lateness: float = DEFAULT_LATENESS,
    progress: Progress | None = None,
    progress_every: int = 20_000,
    on_clock: Callable[[LiveTwin], None] | None = None,
    cadence: float | None = None,
) -> ReplayResult:
    """Apply ``events`` in the order given (event-time order for a generated scenario).

    ``on_clock`` is called each time the twin's clock passes a multiple of ``cadence``
    seconds of event time (forecasts and checkpoints hook in there), and once at the end.
    """
    live = twin if twin is not None else LiveTwin(network, lateness=lateness)
    say = progress or (lambda _m, _f: None)
    rejections: list[Rejection] = []
    n = len(events)
    apply = live.apply
    next_tick = (live.clock // cadence + 1) * cadence if cadence else float("inf")
    start = time.perf_counter()
    done = 0
    for chunk_start in range(0, n, progress_every):
        for ev in events[chunk_start : chunk_start + progress_every]:
            if ev.time >= next_tick and on_clock is not None:
                on_clock(live)
                next_tick = (ev.time // cadence + 1) * cadence  # type: ignore[operator]
            r = apply(ev)
            if r:
                rejections.extend(r)
        done = min(n, chunk_start + progress_every)
        say(f"replayed {done:,}/{n:,} events, twin clock {live.clock / 3600:.2f} h", done / n if n else 1.0)
    rejections.extend(live.flush())
    if on_clock is not None:
        on_clock(live)
    return ReplayResult(live, n, rejections, time.perf_counter() - start)


def write_config(folder: Path, prepared: Prepared, settings: dict[str, Any]) -> None:
    """``config.json``: what produced a run (scenario, seed, code version, settings)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "scenario": prepared.spec.name,
        "scenario_file": prepared.spec.source,
        "seed": prepared.spec.seed,
        "epoch": prepared.spec.epoch.isoformat().replace("+00:00", "Z"),
        "code_version": __version__,
        "code_digest": code_digest(),
        "code_revision": code_revision(),
        "python": platform.python_version(),
        "generated_data": str(prepared.folder),
        "generated_manifest": prepared.manifest.get("files", {}),
        "settings": settings,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_run(folder: Path, prepared: Prepared, result: ReplayResult, settings: dict[str, Any]) -> dict[str, Any]:
    """Write config (what produced the run) and results (summary, final state, rejections)."""
    write_config(folder, prepared, settings)
    summary = result.summary()
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    st = result.twin.state
    pl.DataFrame(
        [
            {
                "order_id": oid,
                "stage": o.stage,
                "site_id": o.site_id,
                "trip_id": o.trip_id,
                "promised_at": o.promised_at,
                "delivered_at": o.delivered_at,
                "late": (o.delivered_at if o.delivered_at is not None else st.clock) > o.promised_at,
            }
            for oid, o in sorted(st.orders.items())
        ],
        schema_overrides={"site_id": pl.String, "trip_id": pl.String, "delivered_at": pl.Float64},
    ).write_parquet(folder / "orders.parquet")
    pl.DataFrame(
        [
            {
                "vehicle_id": vid,
                "status": v.status,
                "site_id": v.site_id,
                "lane_id": v.lane_id,
                "progress": st.vehicle_progress(vid),
                "trip_id": v.trip_id,
            }
            for vid, v in sorted(st.vehicles.items())
        ],
        schema_overrides={"site_id": pl.String, "lane_id": pl.String, "trip_id": pl.String},
    ).write_parquet(folder / "vehicles.parquet")
    pl.DataFrame(
        [
            {"event_id": r.event_id, "type": r.event_type, "reason": r.reason, "detail": r.detail}
            for r in result.rejections
        ],
        schema={"event_id": pl.String, "type": pl.String, "reason": pl.String, "detail": pl.String},
    ).write_parquet(folder / "rejections.parquet")
    return summary
