"""Write a backtest's results: config beside results, Parquet tables, a markdown report.

Plots are drawn when matplotlib is installed (it is not a dependency); without it the report
is written without them and says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from scenarios.backtest import CASCADE_LEAD, LATE_THRESHOLD, BacktestResult

__all__ = ["write_backtest"]


def write_backtest(result: BacktestResult, folder: Path, predictions: pl.DataFrame | None = None) -> list[Path]:
    """Write ``config.json``, the result tables as Parquet, ``table.txt`` and ``report.md``.

    Returns the files written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def out(name: str) -> Path:
        p = folder / name
        written.append(p)
        return p

    out("config.json").write_text(json.dumps(result.config, indent=2, sort_keys=True) + "\n")
    result.by_lead.write_parquet(out("by_lead.parquet"))
    result.cascade.write_parquet(out("cascade.parquet"))
    result.rows.write_parquet(out("scored.parquet"))
    if predictions is not None:
        predictions.write_parquet(out("predictions.parquet"))
    table = result.table()
    out("table.txt").write_text(table + "\n")
    plots = _plots(result, folder)
    written.extend(plots)
    out("report.md").write_text(_markdown(result, table, [p.name for p in plots]))
    return written


def _markdown(result: BacktestResult, table: str, plots: list[str]) -> str:
    c: dict[str, Any] = result.config
    s = c.get("settings", {})
    lines = [
        f"# Backtest: {c.get('scenario', '?')}",
        "",
        f"Scenario `{c.get('scenario', '?')}` (seed {c.get('seed', '?')}), code version "
        f"{c.get('code_version', '?')} (commit {c.get('code_revision') or 'unknown'}, source digest "
        f"{c.get('code_digest', '?')}); {s.get('replicas', '?')} replicas per forecast, a forecast every "
        f"{s.get('cadence_s', 0):g} s of event time, horizon {s.get('horizon_s', 0) / 3600:g} h. "
        "The full config is in `config.json`.",
        "",
        "For each delivered order and lead time L, the forecast scored is the latest one made at least L "
        "before the actual delivery. Baselines use only what was observable at that forecast's time: "
        "the planned arrival, and the planned arrival plus the latest observed departure or arrival "
        "delay of a trip on the order's planned path (current delay carried forward). "
        f"An order is predicted late when p_late >= {LATE_THRESHOLD:g}; disruption-late orders are late "
        "here but on time in the same scenario generated without its disruptions.",
        "",
        "## Accuracy by lead time",
        "",
        _md_table(
            result.by_lead,
            {
                "lead_s": ("lead", lambda v: f"{v / 3600:g} h"),
                "orders": ("orders", lambda v: f"{v:,}"),
                "mae_p50": ("MAE p50 (s)", _num),
                "mae_planned": ("MAE planned (s)", _num),
                "mae_carried": ("MAE carried (s)", _num),
                "improvement_vs_planned": ("vs planned", _pct),
                "improvement_vs_carried": ("vs carried", _pct),
                "coverage": ("p10-p90 coverage", _pct),
                "brier": ("Brier", lambda v: "-" if v is None else f"{v:.4f}"),
                "bias_p50": ("bias p50 (s)", lambda v: f"{v:+,.0f}"),
                "beyond_horizon": ("p50 beyond horizon", lambda v: f"{v:,}"),
            },
        ),
        "",
    ]
    if result.cascade.height:
        lines += [
            f"## Cascade detection (acceptance at {CASCADE_LEAD / 3600:g} h lead)",
            "",
            f"Targets: {', '.join(f'`{t}`' for t in c.get('disruption_targets', []))}.",
            "",
            _md_table(
                result.cascade,
                {
                    "lead_s": ("lead", lambda v: f"{v / 3600:g} h"),
                    "disruption_late": ("disruption-late", lambda v: f"{v:,}"),
                    "predicted_late": ("predicted late", lambda v: f"{v:,}"),
                    "detected": ("... with target in chain", lambda v: f"{v:,}"),
                    "recall": ("recall", _pct),
                    "flagged": ("flagged", lambda v: f"{v:,}"),
                    "precision": ("precision", _pct),
                },
            ),
            "",
        ]
    lines += ["## Acceptance (issue 3)", ""]
    for name, v, rule, ok in result.acceptance():
        lines.append(f"- {'met' if ok else '**missed**'}: {name}: {_pct(v)} (needs {rule})")
    lines += ["", "## Plots", ""]
    if plots:
        lines += [f"![{p}]({p})" for p in plots]
    else:
        lines.append("matplotlib is not installed, so this report has no plots (the tables above hold the numbers).")
    lines += ["", "## As printed", "", "```", table, "```", ""]
    return "\n".join(lines)


def _md_table(frame: pl.DataFrame, columns: dict[str, tuple[str, Any]]) -> str:
    heads = [h for h, _ in columns.values()]
    rows = [
        "| " + " | ".join(heads) + " |",
        "|" + "|".join("---:" for _ in heads) + "|",
    ]
    for r in frame.iter_rows(named=True):
        rows.append(
            "| " + " | ".join(fmt(r.get(k)) if r.get(k) is not None else "-" for k, (_, fmt) in columns.items()) + " |"
        )
    return "\n".join(rows)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _plots(result: BacktestResult, folder: Path) -> list[Path]:
    """MAE by lead time and a reliability diagram of p_late, if matplotlib is there."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    bl = result.by_lead.filter(pl.col("orders") > 0)
    if bl.height:
        hours = (bl.get_column("lead_s") / 3600).to_list()
        fig, ax = plt.subplots(figsize=(6, 4))
        for col, label in (("mae_p50", "twin p50"), ("mae_planned", "planned"), ("mae_carried", "delay carried")):
            ax.plot(hours, (bl.get_column(col) / 60).to_list(), marker="o", label=label)
        ax.set_xlabel("lead time (h)")
        ax.set_ylabel("mean absolute ETA error (min)")
        ax.set_title(f"ETA error by lead time: {result.config.get('scenario', '')}")
        ax.legend()
        fig.tight_layout()
        p = folder / "mae_by_lead.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p)
    rows = result.rows.filter(pl.col("lead_s") == CASCADE_LEAD) if result.rows.height else result.rows
    if rows.height:
        binned = (
            rows.with_columns((pl.col("p_late") * 10).floor().clip(0, 9).alias("bin"))
            .group_by("bin")
            .agg(pl.col("p_late").mean().alias("predicted"), pl.col("late").mean().alias("observed"), pl.len())
            .sort("bin")
        )
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        ax.scatter(binned.get_column("predicted").to_list(), binned.get_column("observed").to_list(), s=20)
        ax.set_xlabel("predicted p_late")
        ax.set_ylabel("observed late share")
        ax.set_title(f"Reliability at {CASCADE_LEAD / 3600:g} h lead")
        fig.tight_layout()
        p = folder / "reliability.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out.append(p)
    return out
