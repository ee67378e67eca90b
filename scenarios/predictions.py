"""Predictions as Parquet rows, and forecasting along a replay."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from twin.forecast import Forecaster, PredictedState
from twin.live import LiveTwin

__all__ = ["PREDICTION_SCHEMA", "ForecastRecorder", "predictions_frame", "read_predictions"]

PREDICTION_SCHEMA = pl.Schema(
    {
        "as_of": pl.Float64(),
        "kind": pl.String(),
        "id": pl.String(),
        "p10": pl.Float64(),
        "p50": pl.Float64(),
        "p90": pl.Float64(),
        "p_late": pl.Float64(),
        "expected_delay": pl.Float64(),
        "planned": pl.Float64(),
        "at_risk": pl.Int64(),
        "causes": pl.String(),
    }
)


def predictions_frame(preds: Iterable[PredictedState]) -> pl.DataFrame:
    """One row per prediction; ``causes`` is a JSON list of [mechanism, entity, seconds]."""
    rows = [
        {
            "as_of": p.as_of,
            "kind": p.kind,
            "id": p.id,
            "p10": p.p10,
            "p50": p.p50,
            "p90": p.p90,
            "p_late": p.p_late,
            "expected_delay": p.expected_delay,
            "planned": p.planned,
            "at_risk": p.at_risk,
            "causes": json.dumps([[c.mechanism, c.entity, c.seconds] for c in p.causes]),
        }
        for p in preds
    ]
    return pl.DataFrame(rows, schema=PREDICTION_SCHEMA)


def read_predictions(path: Path) -> pl.DataFrame:
    """Predictions written by a run."""
    return pl.read_parquet(path)


@dataclass(slots=True)
class ForecastRecorder:
    """``on_clock`` hook for :func:`scenarios.replay.replay`: forecast at each cadence tick."""

    forecaster: Forecaster
    progress: Callable[[str, float], None] | None = None
    #: end of the replay in event time, to show progress as a fraction
    until: float = 0.0
    predictions: list[PredictedState] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)

    def __call__(self, twin: LiveTwin) -> None:
        """Forecast from the twin's current state and keep the predictions."""
        start = time.perf_counter()
        preds = self.forecaster.forecast(twin.state)
        self.durations.append(time.perf_counter() - start)
        self.predictions.extend(preds)
        if self.progress is not None:
            late = sum(1 for p in preds if p.kind == "order" and p.p_late >= 0.5)
            self.progress(
                f"forecast at {twin.clock / 3600:.2f} h: {late} orders predicted late ({self.durations[-1]:.2f} s)",
                min(0.999, twin.clock / self.until) if self.until > 0 else 0.0,
            )
