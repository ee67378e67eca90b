"""Backtests: join the forecasts made along a replay with the scenario's ground truth.

For every delivered order and every lead time ``L`` the backtest takes the latest forecast
the twin had published at least ``L`` before the actual delivery (``as_of <= delivered_at -
L``) and scores it against what happened:

- the p50 ETA's mean absolute error, next to two baselines built only from what was
  observable at that ``as_of``: the schedule's planned arrival, and the planned arrival plus
  the order's *current delay* (the latest departure or arrival delay observed by ``as_of`` on
  a trip of its planned path: "current delay carried forward");
- the share of actual delivery times inside the p10-p90 interval (calibration);
- the Brier score of ``p_late`` against actual lateness;
- cascade detection: of the orders late in the disrupted world but on time in the same
  scenario without its disruptions (*disruption-late*), the share predicted late
  (``p_late >= 0.5``) with a cause chain naming a disrupted lane or site (recall), and of the
  orders so flagged, the share that really were disruption-late (precision).

A quantile beyond the forecast horizon is ``None`` in the predictions; it is scored as the
horizon's end (p10, p50) or as unbounded (p90), which is what the forecast said.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import polars as pl

from scenarios.code import code_digest, code_revision
from scenarios.generate import GeneratedScenario, generate
from scenarios.predictions import ForecastRecorder, predictions_frame
from scenarios.replay import replay
from scenarios.spec import ScenarioSpec
from twin import __version__
from twin.forecast import Forecaster

__all__ = [
    "CASCADE_LEAD",
    "COVERAGE_RANGE",
    "DEFAULT_LEAD_TIMES",
    "LATE_THRESHOLD",
    "MIN_CASCADE_RECALL",
    "MIN_IMPROVEMENT",
    "BacktestResult",
    "backtest",
    "backtest_seeds",
    "carried_delay",
    "coverage_by_chance",
    "coverage_by_seed",
    "cascade_metrics",
    "disruption_targets",
    "forecast_along",
    "lead_metrics",
    "names_target",
    "pool_results",
    "predictions_at_lead",
    "run_backtest",
    "world_seeds",
]

DEFAULT_LEAD_TIMES: Final = (1800.0, 3600.0, 7200.0, 14400.0)
DEFAULT_HORIZON: Final = 12 * 3600.0
#: An order counts as predicted late from this probability of missing its promise.
LATE_THRESHOLD: Final = 0.5
#: Issue 3's acceptance: p50 beats both baselines by this share at every lead >= 1 h ...
MIN_IMPROVEMENT: Final = 0.30
IMPROVEMENT_FROM_LEAD: Final = 3600.0
#: ... the p10-p90 interval holds the actual time this often ...
COVERAGE_RANGE: Final = (0.75, 0.85)
#: ... and this share of disruption-late orders is flagged with the cause at 2 h lead.
MIN_CASCADE_RECALL: Final = 0.80
CASCADE_LEAD: Final = 7200.0

Progress = Callable[[str, float], None]


# ---------------------------------------------------------------------- forecasting along a replay
def forecast_along(
    gen: GeneratedScenario,
    forecaster_kwargs: dict[str, Any] | None = None,
    cadence: float = 1800.0,
    progress: Progress | None = None,
) -> pl.DataFrame:
    """Replay the scenario's events into a fresh live twin, forecasting every ``cadence`` s of event time."""
    if not cadence > 0:
        msg = f"cadence={cadence} must be > 0 seconds of event time"
        raise ValueError(msg)
    forecaster = Forecaster(gen.network, **(forecaster_kwargs or {}))
    recorder = ForecastRecorder(forecaster, progress=progress, until=gen.spec.duration)
    replay(gen.network, gen.events, on_clock=recorder, cadence=cadence)
    return predictions_frame(recorder.predictions)


def disruption_targets(spec: ScenarioSpec) -> tuple[str, ...]:
    """What a cause chain may name for a scenario's disruptions: lane and site ids, disruption ids."""
    return tuple(sorted({d.target for d in spec.disruptions} | {d.id for d in spec.disruptions}))


# ---------------------------------------------------------------------- metric building blocks
def predictions_at_lead(predictions: pl.DataFrame, delivered: pl.DataFrame, lead: float) -> pl.DataFrame:
    """Per delivered order: the latest order prediction with ``as_of <= delivered_at - lead``.

    ``delivered`` needs ``order_id`` and ``delivered_at``; its other columns are kept. Orders
    with no prediction that early are left out.
    """
    preds = (
        predictions.filter(pl.col("kind") == "order")
        .select("as_of", pl.col("id").alias("order_id"), "p10", "p50", "p90", "p_late", "causes")
        .sort("as_of")
    )
    left = delivered.filter(pl.col("delivered_at").is_not_null()).with_columns(
        (pl.col("delivered_at") - lead).alias("_anchor")
    )
    joined = left.sort("_anchor").join_asof(
        preds, left_on="_anchor", right_on="as_of", by="order_id", strategy="backward", check_sortedness=False
    )
    return (
        joined.filter(pl.col("as_of").is_not_null())
        .drop("_anchor")
        .with_columns(pl.lit(float(lead)).alias("lead_s"))
        .sort("order_id")
    )


def _trip_observations(truth_trips: pl.DataFrame) -> pl.DataFrame:
    """Every observed departure and arrival: (trip_id, seen_at, delay against the plan)."""
    dep = truth_trips.select(
        "trip_id",
        pl.col("actual_departure").alias("seen_at"),
        (pl.col("actual_departure") - pl.col("planned_departure")).alias("delay"),
        pl.lit(0).alias("_kind"),
    )
    arr = truth_trips.select(
        "trip_id",
        pl.col("actual_arrival").alias("seen_at"),
        (pl.col("actual_arrival") - pl.col("planned_arrival")).alias("delay"),
        pl.lit(1).alias("_kind"),
    )
    return pl.concat([dep, arr]).drop_nulls("seen_at").sort("seen_at", "_kind")


def carried_delay(rows: pl.DataFrame, truth_trips: pl.DataFrame) -> pl.Series:
    """Per row (``as_of``, ``planned_path``): the order's current delay as observable at ``as_of``.

    The latest departure or arrival delay (actual minus planned, seconds) observed at or
    before ``as_of`` on any trip of the order's planned path; 0 when none was observed yet.
    """
    obs = _trip_observations(truth_trips)
    paths = (
        rows.select("as_of", "planned_path")
        .with_row_index("_row")
        .explode("planned_path")
        .rename({"planned_path": "trip_id"})
        .drop_nulls("trip_id")
        .sort("as_of")
    )
    seen = paths.join_asof(
        obs, left_on="as_of", right_on="seen_at", by="trip_id", strategy="backward", check_sortedness=False
    )
    latest = seen.drop_nulls("seen_at").sort("_row", "seen_at", "_kind").group_by("_row").agg(pl.col("delay").last())
    out = pl.DataFrame({"_row": pl.int_range(rows.height, dtype=pl.UInt32, eager=True)}).join(
        latest, on="_row", how="left"
    )
    out = out.sort("_row")
    return out.get_column("delay").fill_null(0.0).alias("current_delay")


def names_target(targets: Iterable[str], column: str = "causes") -> pl.Expr:
    """True where the JSON cause chain names one of ``targets`` as an entity (exact match)."""
    exprs = [pl.col(column).str.contains(json.dumps(t), literal=True) for t in targets]
    return pl.any_horizontal(exprs) if exprs else pl.col(column).is_not_null() & pl.lit(False)


def _scored(rows: pl.DataFrame, horizon: float) -> pl.DataFrame:
    """Add the effective quantiles (beyond the horizon filled in) and each forecast's errors."""
    end = pl.col("as_of") + horizon
    return rows.with_columns(
        pl.col("p50").is_null().alias("beyond_horizon"),
        pl.col("p50").fill_null(end).alias("p50_eff"),
        pl.col("p10").fill_null(end).alias("p10_eff"),
        pl.col("p90").fill_null(float("inf")).alias("p90_eff"),
        (pl.col("planned_arrival") + pl.col("current_delay")).alias("carried"),
    ).with_columns(
        (pl.col("p50_eff") - pl.col("delivered_at")).alias("err_p50"),
        (pl.col("planned_arrival") - pl.col("delivered_at")).alias("err_planned"),
        (pl.col("carried") - pl.col("delivered_at")).alias("err_carried"),
        pl.col("delivered_at").is_between(pl.col("p10_eff"), pl.col("p90_eff")).alias("covered"),
        (pl.col("delivered_at") > pl.col("promised_at")).alias("late"),
    )


def lead_metrics(scored: pl.DataFrame) -> dict[str, Any]:
    """Accuracy of one lead time's scored rows (see :func:`backtest` for the columns)."""
    n = scored.height
    if n == 0:
        return {"orders": 0}
    m = scored.select(
        pl.col("err_p50").abs().mean().alias("mae_p50"),
        pl.col("err_planned").abs().mean().alias("mae_planned"),
        pl.col("err_carried").abs().mean().alias("mae_carried"),
        pl.col("err_p50").mean().alias("bias_p50"),
        pl.col("err_planned").mean().alias("bias_planned"),
        pl.col("err_carried").mean().alias("bias_carried"),
        pl.col("covered").mean().alias("coverage"),
        ((pl.col("p_late") - pl.col("late").cast(pl.Float64)) ** 2).mean().alias("brier"),
        pl.col("late").mean().alias("late_share"),
        (pl.col("delivered_at") - pl.col("as_of")).mean().alias("mean_lead_s"),
        pl.col("beyond_horizon").sum().alias("beyond_horizon"),
        # Orders delivered by the same van share one fate and one forecast: the number of
        # independent outcomes behind coverage is the number of such groups, not of orders.
        pl.struct("as_of", "delivered_at").n_unique().alias("outcomes"),
    ).row(0, named=True)
    out: dict[str, Any] = {"orders": n, **m}
    out["improvement_vs_planned"] = _improvement(m["mae_p50"], m["mae_planned"])
    out["improvement_vs_carried"] = _improvement(m["mae_p50"], m["mae_carried"])
    return out


def _improvement(mae: float, baseline: float) -> float | None:
    return None if baseline <= 0 else 1.0 - mae / baseline


def cascade_metrics(scored: pl.DataFrame, targets: Sequence[str]) -> dict[str, Any]:
    """Detection of disruption-late orders in one lead time's rows (needs ``disruption_late``)."""
    flags = scored.select(
        pl.col("disruption_late"),
        (pl.col("p_late") >= LATE_THRESHOLD).alias("predicted"),
        names_target(targets).alias("named"),
    ).with_columns((pl.col("predicted") & pl.col("named")).alias("flagged"))
    dl = flags.filter(pl.col("disruption_late"))
    n_dl, n_flagged = dl.height, int(flags.get_column("flagged").sum())
    hits = int(dl.get_column("flagged").sum())
    return {
        "disruption_late": n_dl,
        "predicted_late": int(dl.get_column("predicted").sum()),
        "detected": hits,
        "recall": hits / n_dl if n_dl else None,
        "recall_p_late_only": int(dl.get_column("predicted").sum()) / n_dl if n_dl else None,
        "flagged": n_flagged,
        "precision": hits / n_flagged if n_flagged else None,
    }


# ---------------------------------------------------------------------- the backtest
def _code(config: dict[str, Any]) -> str:
    """The code a result came from, as printed: version, and the commit when it is known."""
    rev = config.get("code_revision")
    version = config.get("code_version", "?")
    return f"{version} at {rev[:12]}{'+dirty' if rev.endswith('+dirty') else ''}" if rev else str(version)


@dataclass(slots=True)
class BacktestResult:
    """Per-lead accuracy, cascade detection, the scored rows, and the config that produced them."""

    by_lead: pl.DataFrame
    cascade: pl.DataFrame
    rows: pl.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    def acceptance(self) -> list[tuple[str, float | None, str, bool]]:
        """Issue 3's criteria: (criterion, measured value, threshold, met)."""
        out: list[tuple[str, float | None, str, bool]] = []
        lo, hi = COVERAGE_RANGE
        for r in self.by_lead.iter_rows(named=True):
            h = _hours(r["lead_s"])
            if r["lead_s"] >= IMPROVEMENT_FROM_LEAD:
                for base in ("planned", "carried"):
                    v = r[f"improvement_vs_{base}"]
                    ok = v is not None and v >= MIN_IMPROVEMENT
                    out.append((f"p50 MAE vs {base} @ {h}", v, f">= {MIN_IMPROVEMENT:.0%}", ok))
            cov = r["coverage"]
            out.append((f"p10-p90 coverage @ {h}", cov, f"{lo:.0%}-{hi:.0%}", cov is not None and lo <= cov <= hi))
        for r in self.cascade.filter(pl.col("lead_s") == CASCADE_LEAD).iter_rows(named=True):
            v = r["recall"]
            ok = v is not None and v >= MIN_CASCADE_RECALL
            out.append((f"disruption-late detected @ {_hours(CASCADE_LEAD)}", v, f">= {MIN_CASCADE_RECALL:.0%}", ok))
        return out

    @property
    def passed(self) -> bool:
        """True when every acceptance criterion is met."""
        return all(ok for *_, ok in self.acceptance())

    def table(self) -> str:
        """The results as aligned text (what ``twin backtest`` prints)."""
        c = self.config
        s = c.get("settings", {})
        seeds = c.get("seeds")
        seed = f"seeds {', '.join(str(x) for x in seeds)}, pooled" if seeds else f"seed {c.get('seed', '?')}"
        lines = [
            f"backtest of {c.get('scenario', '?')} ({seed}, code {_code(c)}): "
            f"{s.get('replicas', '?')} replicas, forecast every {s.get('cadence_s', 0):g} s, "
            f"horizon {s.get('horizon_s', 0) / 3600:g} h",
            "",
            f"{'lead':>6} {'orders':>7} {'groups':>6} {'MAE p50':>9} {'MAE plan':>9} {'MAE carried':>11} "
            f"{'vs plan':>8} {'vs carried':>10} {'p10-p90':>8} {'Brier':>7} {'bias p50':>9} {'late':>6}",
        ]
        for r in self.by_lead.iter_rows(named=True):
            if not r["orders"]:
                lines.append(f"{_hours(r['lead_s']):>6} {0:>7}")
                continue
            lines.append(
                f"{_hours(r['lead_s']):>6} {r['orders']:>7,} {r['outcomes']:>6,} {_secs(r['mae_p50']):>9} "
                f"{_secs(r['mae_planned']):>9} {_secs(r['mae_carried']):>11} "
                f"{_pct(r['improvement_vs_planned'], True):>8} {_pct(r['improvement_vs_carried'], True):>10} "
                f"{_pct(r['coverage']):>8} {r['brier']:>7.4f} "
                f"{_secs(r['bias_p50'], True):>9} {_pct(r['late_share']):>6}"
            )
        if self.cascade.height:
            lines += [
                "",
                "cascade detection (disruption-late: late here, on time without the disruptions; "
                f"targets: {', '.join(c.get('disruption_targets', []))})",
                f"{'lead':>6} {'disr.-late':>10} {'pred. late':>10} {'+ cause':>8} {'recall':>7} "
                f"{'flagged':>8} {'precision':>9}",
            ]
            for r in self.cascade.iter_rows(named=True):
                lines.append(
                    f"{_hours(r['lead_s']):>6} {r['disruption_late']:>10,} {r['predicted_late']:>10,} "
                    f"{r['detected']:>8,} {_pct(r['recall']):>7} {r['flagged']:>8,} {_pct(r['precision']):>9}"
                )
        lines += ["", "acceptance (issue 3)"]
        for name, v, rule, ok in self.acceptance():
            lines.append(f"  {'ok  ' if ok else 'MISS'} {name:<34} {_pct(v):>7}  (needs {rule})")
        if self.rows.height and "lead_s" in self.rows.columns:
            chance = coverage_by_chance(self.rows)
            lo, hi = COVERAGE_RANGE
            every = math.prod(chance.values())
            lines += [
                "",
                f"how much the coverage says: a forecast whose p10-p90 holds exactly 80 % would score "
                f"{lo:.0%}-{hi:.0%} on these groups of orders with probability",
                "  "
                + ", ".join(f"{_pct(p)} at {_hours(lead)}" for lead, p in chance.items())
                + f"; at every lead at once {_pct(every)} if the leads were independent",
            ]
        return "\n".join(lines)


def backtest(
    predictions: pl.DataFrame,
    truth_orders: pl.DataFrame,
    truth_trips: pl.DataFrame,
    *,
    calm_truth_orders: pl.DataFrame | None = None,
    disruption_targets: Sequence[str] = (),
    lead_times: Sequence[float] = DEFAULT_LEAD_TIMES,
    horizon: float = DEFAULT_HORIZON,
) -> BacktestResult:
    """Score ``predictions`` (a :func:`scenarios.predictions.predictions_frame`) against ground truth.

    ``calm_truth_orders`` is the truth of the same scenario generated without disruptions;
    with it and ``disruption_targets`` the result also holds cascade detection.
    ``horizon`` is the forecasts' horizon (seconds), used to score quantiles beyond it.
    """
    delivered = truth_orders.select(
        "order_id", "promised_at", "planned_arrival", "delivered_at", "planned_path"
    ).filter(pl.col("delivered_at").is_not_null())
    with_calm = calm_truth_orders is not None and len(disruption_targets) > 0
    if calm_truth_orders is not None:
        calm = calm_truth_orders.select("order_id", pl.col("late").alias("calm_late"))
        delivered = delivered.join(calm, on="order_id", how="left")
    frames, leads, cascades = [], [], []
    for lead in lead_times:
        rows = predictions_at_lead(predictions, delivered, lead)
        rows = rows.with_columns(carried_delay(rows, truth_trips))
        scored = _scored(rows, horizon)
        if calm_truth_orders is not None:
            scored = scored.with_columns(
                (pl.col("late") & ~pl.col("calm_late").fill_null(False)).alias("disruption_late")
            )
        leads.append({"lead_s": float(lead), **lead_metrics(scored)})
        if with_calm:
            cascades.append({"lead_s": float(lead), **cascade_metrics(scored, disruption_targets)})
        frames.append(scored)
    by_lead = pl.DataFrame(leads, schema=_LEAD_SCHEMA)
    cascade = pl.DataFrame(cascades, schema=_CASCADE_SCHEMA)
    rows = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    config = {"lead_times_s": [float(x) for x in lead_times], "disruption_targets": list(disruption_targets)}
    return BacktestResult(by_lead, cascade, rows, config)


def pool_results(results: Sequence[BacktestResult]) -> BacktestResult:
    """One result that scores the rows of several backtests together.

    For the same scenario under several world seeds: one seed's coverage rests on a few dozen
    independent outcomes (see the ``outcomes`` column), so a pooled figure is what says whether
    the intervals are calibrated. Each result's rows get a ``seed`` column; the config is the
    first result's, with ``seeds`` and every run's ``counts``.
    """
    if not results:
        msg = "pool_results needs at least one backtest result"
        raise ValueError(msg)
    frames = [r.rows.with_columns(pl.lit(r.config.get("seed")).alias("seed")) for r in results]
    rows = pl.concat(frames, how="diagonal_relaxed")
    first = results[0].config
    targets = first.get("disruption_targets", [])
    leads, cascades = [], []
    lead_times = first.get("settings", {}).get("lead_times_s") or sorted(rows.get_column("lead_s").unique())
    for lead in lead_times:
        scored = rows.filter(pl.col("lead_s") == lead)
        leads.append({"lead_s": float(lead), **lead_metrics(scored)})
        if targets and "disruption_late" in rows.columns:
            cascades.append({"lead_s": float(lead), **cascade_metrics(scored, targets)})
    config = {
        **first,
        "seed": None,
        "seeds": [r.config.get("seed") for r in results],
        "runs": [{"seed": r.config.get("seed"), "counts": r.config.get("counts")} for r in results],
    }
    config.pop("counts", None)
    return BacktestResult(
        pl.DataFrame(leads, schema=_LEAD_SCHEMA), pl.DataFrame(cascades, schema=_CASCADE_SCHEMA), rows, config
    )


def coverage_by_chance(
    scored: pl.DataFrame,
    nominal: float = 0.8,
    band: tuple[float, float] = COVERAGE_RANGE,
    draws: int = 20_000,
    seed: int = 0,
) -> dict[float, float]:
    """Per lead: how often a forecast whose p10-p90 holds exactly ``nominal`` would score in ``band``.

    Coverage is counted by order, but the orders delivered by one van at one moment and scored
    against one forecast share one outcome (``outcomes`` in :func:`lead_metrics`): the interval
    holds all of them or none. So a perfectly calibrated forecast's coverage on these rows is a
    weighted mean of independent Bernoulli(``nominal``) draws, one per such group, weighted by
    its orders; this simulates it (``draws`` times, a fixed ``seed``: the same rows give the same
    figures) and returns the share of draws inside ``band`` at each lead. Groups are keyed by
    ``seed`` too when the rows carry one (pooled backtests). What it says: how much a coverage
    figure of these rows can tell a calibrated forecast from one that is not.
    """
    rng = np.random.default_rng(seed)
    keys = [c for c in ("seed", "as_of", "delivered_at") if c in scored.columns]
    lo, hi = band
    out: dict[float, float] = {}
    for lead in sorted(scored.get_column("lead_s").unique().to_list()):
        sizes = scored.filter(pl.col("lead_s") == lead).group_by(keys).len().get_column("len").to_numpy()
        weights = sizes / sizes.sum()
        inside = 0
        done = 0
        chunk = max(1, min(draws, 4_000_000 // max(1, len(weights))))
        while done < draws:
            k = min(chunk, draws - done)
            coverage = (rng.random((k, len(weights))) < nominal) @ weights
            inside += int(np.count_nonzero((coverage >= lo - 1e-12) & (coverage <= hi + 1e-12)))
            done += k
        out[float(lead)] = inside / draws
    return out


def coverage_by_seed(results: Sequence[BacktestResult]) -> str:
    """Each backtest's p10-p90 coverage per lead, with its number of independent outcomes."""
    lines = ["per seed: p10-p90 coverage at each lead (groups of orders sharing one outcome)"]
    for r in results:
        cells = "  ".join(
            f"{_hours(row['lead_s'])} {100 * (row['coverage'] or 0):5.1f}% ({row['outcomes']})"
            for row in r.by_lead.iter_rows(named=True)
        )
        lines.append(f"  seed {r.config.get('seed')}: {cells}")
    return "\n".join(lines)


_LEAD_SCHEMA = pl.Schema(
    {
        "lead_s": pl.Float64(),
        "orders": pl.Int64(),
        "mae_p50": pl.Float64(),
        "mae_planned": pl.Float64(),
        "mae_carried": pl.Float64(),
        "improvement_vs_planned": pl.Float64(),
        "improvement_vs_carried": pl.Float64(),
        "coverage": pl.Float64(),
        "brier": pl.Float64(),
        "bias_p50": pl.Float64(),
        "bias_planned": pl.Float64(),
        "bias_carried": pl.Float64(),
        "late_share": pl.Float64(),
        "mean_lead_s": pl.Float64(),
        "beyond_horizon": pl.Int64(),
        "outcomes": pl.Int64(),
    }
)
_CASCADE_SCHEMA = pl.Schema(
    {
        "lead_s": pl.Float64(),
        "disruption_late": pl.Int64(),
        "predicted_late": pl.Int64(),
        "detected": pl.Int64(),
        "recall": pl.Float64(),
        "recall_p_late_only": pl.Float64(),
        "flagged": pl.Int64(),
        "precision": pl.Float64(),
    }
)


def run_backtest(
    spec: ScenarioSpec,
    *,
    replicas: int = 32,
    cadence: float = 1800.0,
    horizon: float = DEFAULT_HORIZON,
    forecast_seed: int | None = None,
    lead_times: Sequence[float] = DEFAULT_LEAD_TIMES,
    progress: Progress | None = None,
    along: Callable[..., pl.DataFrame] = forecast_along,
    label: str = "whole-network twin",
) -> tuple[BacktestResult, pl.DataFrame]:
    """Generate the scenario (and its calm twin), forecast along its replay, and backtest.

    ``along`` makes the predictions (default :func:`forecast_along`: one twin of the whole
    network; ``streams`` passes its per-region shards), called as
    ``along(gen, forecaster_kwargs, cadence, progress=...)``; ``label`` names it in the config.
    Returns the result (with its config: scenario, seed, code version, settings) and the
    predictions frame it scored.
    """
    import time

    say = progress or (lambda _m, _f: None)
    start = time.perf_counter()
    say(f"generating {spec.name!r} (seed {spec.seed}) and its calm twin", 0.0)
    gen = generate(spec)
    calm = generate(dataclasses.replace(spec, disruptions=())) if spec.disruptions else gen
    seed = spec.forecast_seed if forecast_seed is None else forecast_seed
    kwargs = {"horizon": horizon, "replicas": replicas, "seed": seed}
    forecast_start = time.perf_counter()
    predictions = along(gen, kwargs, cadence, progress=say)
    forecast_seconds = time.perf_counter() - forecast_start
    targets = disruption_targets(spec)
    result = backtest(
        predictions,
        gen.truth_orders,
        gen.truth_trips,
        calm_truth_orders=calm.truth_orders,
        disruption_targets=targets,
        lead_times=lead_times,
        horizon=horizon,
    )
    result.config = {
        "scenario": spec.name,
        "scenario_file": spec.source,
        "seed": spec.seed,
        "code_version": __version__,
        "code_digest": code_digest(),
        "code_revision": code_revision(),
        "python": platform.python_version(),
        "disruption_targets": list(targets),
        "forecasts_by": label,
        "settings": {
            "replicas": replicas,
            "cadence_s": cadence,
            "horizon_s": horizon,
            "forecast_seed": seed,
            "lead_times_s": [float(x) for x in lead_times],
            "late_threshold": LATE_THRESHOLD,
        },
        "counts": {
            "orders": gen.truth_orders.height,
            "delivered": int(gen.truth_orders.get_column("delivered_at").is_not_null().sum()),
            "late": int(gen.truth_orders.get_column("late").sum()),
            "late_without_disruptions": int(calm.truth_orders.get_column("late").sum()) if calm is not gen else None,
            "forecasts": predictions.get_column("as_of").n_unique(),
            "predictions": predictions.height,
        },
        "timing_s": {
            "forecasting": round(forecast_seconds, 2),
            "total": round(time.perf_counter() - start, 2),
        },
    }
    say("backtest done", 1.0)
    return result, predictions


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} h"


def _secs(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+,.0f} s" if signed else f"{v:,.0f} s"


def _pct(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:+.1f}%" if signed else f"{100 * v:.1f}%"


def backtest_seeds(
    spec: ScenarioSpec,
    seeds: int,
    *,
    jobs: int = 1,
    progress: Progress | None = None,
    **settings: Any,
) -> list[BacktestResult]:
    """Backtest the scenario under ``seeds`` world seeds: its own and the next ``seeds - 1``.

    Each is :func:`run_backtest` of the scenario with that seed (so each forecasts with the
    seed derived from it, never the world's); ``settings`` are its keyword arguments
    (``replicas``, ``cadence``, ...). ``jobs`` > 1 runs that many seeds at once in separate
    processes (``progress`` then only says which seeds are done). Pool the results with
    :func:`pool_results`: one seed's coverage rests on a few dozen groups of orders
    (:func:`coverage_by_chance`).
    """
    if seeds < 1:
        msg = f"seeds={seeds} must be at least 1"
        raise ValueError(msg)
    if jobs < 1:
        msg = f"jobs={jobs} must be at least 1"
        raise ValueError(msg)
    specs = world_seeds(spec, seeds)
    say = progress or (lambda _m, _f: None)
    if jobs == 1 or seeds == 1:
        out = []
        for i, s in enumerate(specs):
            say(f"seed {s.seed} ({i + 1} of {seeds})", i / seeds)
            out.append(run_backtest(s, progress=progress, **settings)[0])
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawned, not forked: the caller may hold threads (a test session's brokers, a web server)
    with ProcessPoolExecutor(min(jobs, seeds), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_backtest_result, s, settings) for s in specs]
        results = []
        for i, fut in enumerate(futures):
            results.append(fut.result())
            say(f"seed {specs[i].seed} done ({i + 1} of {seeds})", (i + 1) / seeds)
    return results


def world_seeds(spec: ScenarioSpec, n: int) -> list[ScenarioSpec]:
    """The scenario under ``n`` world seeds: its own and the next ``n - 1`` (``twin backtest --seeds``)."""
    return [dataclasses.replace(spec, seed=spec.seed + i) for i in range(n)]


def _backtest_result(spec: ScenarioSpec, settings: dict[str, Any]) -> BacktestResult:
    """:func:`run_backtest` in a worker process; only the result comes back (not the predictions)."""
    return run_backtest(spec, **settings)[0]
