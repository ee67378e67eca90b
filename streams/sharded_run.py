"""``twin run --sharded``: the Kafka deployment's pipeline (one twin per region), in one process.

The same :class:`~streams.shards.Shard` objects and routing as ``twin worker``, without a
broker: what a worker publishes to ``twin.predictions`` for a stream is what this writes to
``final_predictions.parquet`` for the same events and settings (the Kafka equivalence test
checks it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from scenarios.predictions import predictions_frame
from scenarios.replay import Prepared, write_config
from streams.shards import ForecastSettings, PipelineResult, ShardedPipeline
from twin.events import Event

__all__ = ["run_sharded", "sharded_forecast_along"]

Progress = Callable[[str, float], None]


def run_sharded(
    prepared: Prepared,
    out: Path,
    *,
    lateness: float,
    forecast: ForecastSettings | None,
    settings: dict[str, Any],
    progress: Progress | None = None,
    progress_every: int = 20_000,
) -> tuple[dict[str, Any], PipelineResult]:
    """Replay ``prepared`` through a :class:`ShardedPipeline`; write the run folder.

    Writes ``config.json``, ``summary.json``, ``rejections.parquet`` (the dead letters),
    ``predictions.parquet`` (every published prediction with its ``as_of`` and shard) and
    ``final_predictions.parquet`` (the last live prediction per entity: what the compacted
    predictions topic holds at the end). Returns the summary and the pipeline's result.
    """
    say = progress or (lambda _m, _f: None)
    pipeline = ShardedPipeline(prepared.network, lateness=lateness, forecast=forecast)
    events = prepared.events
    n = len(events)
    start = time.perf_counter()
    result = _run(pipeline, events, say, progress_every)
    seconds = time.perf_counter() - start
    say(f"sharded replay: {n:,} events in {seconds:.1f} s", 1.0)

    write_config(out, prepared, settings | {"sharded": True, "shards": list(result.shards)})
    summary = result.summary()
    summary["seconds"] = round(seconds, 3)
    ingest = max(seconds - result.forecast_seconds, 1e-9)
    summary["events_per_second"] = round(n / ingest)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    pl.DataFrame(
        [
            {"event_id": r.event_id, "type": r.event_type, "reason": r.reason, "detail": r.detail}
            for r in result.dead_letters
        ],
        schema={"event_id": pl.String, "type": pl.String, "reason": pl.String, "detail": pl.String},
    ).write_parquet(out / "rejections.parquet")
    if forecast is not None:
        live = [(p.shard, p.prediction) for p in result.publications if p.prediction is not None]
        frame = predictions_frame(pred for _, pred in live)
        frame.with_columns(pl.Series("shard", [shard for shard, _ in live], dtype=pl.String)).write_parquet(
            out / "predictions.parquet"
        )
        final = result.final_predictions()
        predictions_frame(final[k] for k in sorted(final)).write_parquet(out / "final_predictions.parquet")
    return summary, result


def sharded_forecast_along(
    gen: Any,
    forecaster_kwargs: dict[str, Any],
    cadence: float,
    progress: Progress | None = None,
) -> pl.DataFrame:
    """What the Kafka workers would publish along a scenario's replay, as a predictions frame.

    The sharded counterpart of ``scenarios.backtest.forecast_along`` (``twin backtest
    --sharded``): every shard forecasts every ``cadence`` seconds of event time and publishes
    what it owns.
    """
    say = progress or (lambda _m, _f: None)
    settings = ForecastSettings(cadence=cadence, **forecaster_kwargs)
    pipeline = ShardedPipeline(gen.network, forecast=settings)
    result = _run(pipeline, gen.events, say, max(1, len(gen.events) // 200))
    return predictions_frame(p.prediction for p in result.publications if p.prediction is not None)


def _run(pipeline: ShardedPipeline, events: Sequence[Event], say: Progress, every: int) -> PipelineResult:
    """Apply every event, reporting progress every ``every`` events; finish; release the pool."""
    n = len(events)
    try:
        for chunk in range(0, n, every):
            for ev in events[chunk : chunk + every]:
                pipeline.apply(ev)
            done = min(n, chunk + every)
            at = events[done - 1].time / 3600
            msg = f"sharded replay: {done:,} of {n:,} events ({at:.2f} h), {pipeline.forecasts} forecasts"
            say(msg, done / n * 0.999)
        return pipeline.finish()
    finally:
        pipeline.close()
