"""The ``twin`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scenarios.predictions import ForecastRecorder, predictions_frame
from scenarios.replay import Prepared, default_cache_dir, prepare, replay, write_run
from scenarios.spec import ScenarioError, load_scenario
from streams.errors import StreamsError
from streams.kafka_cli import add_kafka_commands
from streams.progress import ProgressPrinter
from twin import __version__, compiled
from twin.errors import TwinError
from twin.forecast import Forecaster
from twin.live import DEFAULT_LATENESS, LiveTwin

__all__ = ["main"]

DEFAULT_SCENARIO = "regional-day"


def _run(args: argparse.Namespace) -> int:
    progress = ProgressPrinter(quiet=args.quiet)
    spec = load_scenario(args.scenario)
    if args.seed is not None:
        spec = dataclasses.replace(spec, seed=args.seed)
    prepared = prepare(spec, args.cache_dir, regenerate=args.regenerate, progress=progress)
    progress.done()
    stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path("runs") / f"{spec.name}-{stamp}"
    if args.sharded:
        return _run_sharded(args, prepared, out, progress)
    twin = LiveTwin(prepared.network, lateness=args.lateness)
    recorder = None
    if args.forecast_every > 0:
        forecaster = Forecaster(
            prepared.network, horizon=args.horizon * 3600.0, replicas=args.replicas, seed=spec.forecast_seed
        )
        recorder = ForecastRecorder(forecaster, progress=progress, until=spec.duration)
    result = replay(
        prepared.network,
        prepared.events,
        twin=twin,
        progress=progress,
        on_clock=recorder,
        cadence=args.forecast_every if recorder is not None else None,
    )
    progress.done()
    summary = write_run(out, prepared, result, _run_settings(args, prepared))
    if recorder is not None:
        predictions_frame(recorder.predictions).write_parquet(out / "predictions.parquet")
        summary["forecasts"] = len(recorder.durations)
        summary["forecast_seconds_total"] = round(sum(recorder.durations), 3)
        ingest = max(result.seconds - sum(recorder.durations), 1e-9)
        summary["events_per_second"] = round(result.events / ingest)
        summary["forecast_seconds_median"] = round(sorted(recorder.durations)[len(recorder.durations) // 2], 3)
        final = [p for p in recorder.predictions if p.as_of == twin.clock and p.kind == "order"]
        summary["orders_predicted_late"] = sum(1 for p in final if p.p_late >= 0.5)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    _print_summary(spec.name, summary, out, prepared.manifest)
    return 0


def _run_settings(args: argparse.Namespace, prepared: Prepared) -> dict[str, Any]:
    """The settings of a ``twin run``, for its config.json."""
    return {
        "lateness_s": args.lateness,
        "cache_dir": str(args.cache_dir or default_cache_dir()),
        "forecast_every_s": args.forecast_every,
        "horizon_h": args.horizon,
        "replicas": args.replicas,
        "forecast_seed": prepared.spec.forecast_seed,
    }


def _run_sharded(args: argparse.Namespace, prepared: Prepared, out: Path, progress: ProgressPrinter) -> int:
    from streams.sharded_run import run_sharded
    from streams.shards import ForecastSettings

    forecast = None
    if args.forecast_every > 0:
        forecast = ForecastSettings(
            cadence=args.forecast_every,
            horizon=args.horizon * 3600.0,
            replicas=args.replicas,
            seed=prepared.spec.forecast_seed,
        )
    settings = _run_settings(args, prepared)
    summary, _ = run_sharded(
        prepared, out, lateness=args.lateness, forecast=forecast, settings=settings, progress=progress
    )
    progress.done()
    reasons = ", ".join(f"{k}: {v}" for k, v in summary["dead_lettered_by_reason"].items()) or "none"
    print(f"scenario            {prepared.spec.name} (sharded: {', '.join(summary['shards'])})")
    print(f"events applied      {summary['applied']:,} of {summary['events']:,}")
    print(f"events rejected     {summary['dead_lettered']:,} ({reasons})")
    for name, shard in summary["shards"].items():
        print(
            f"  shard {name:<12} applied {sum(shard['applied'].values()):,}, "
            f"handoffs sent {shard['handoffs_sent']:,} received {shard['handoffs_received']:,}"
            + (f", REJECTED {shard['handoffs_rejected']:,} (see the log)" if shard["handoffs_rejected"] else "")
        )
    if forecast is not None:
        print(
            f"forecasts           {summary['forecasts']} ({summary['forecast_seconds']:.1f} s in all); "
            f"{summary['predictions']:,} live predictions at the end"
        )
    print(
        f"time taken          {summary['seconds']:.2f} s "
        f"({summary['events_per_second']:,} events/s applied, forecasts excluded)"
    )
    print(f"twin modules        {_modes()}")
    print(f"output              {out}")
    return 0


def _modes() -> str:
    """How the twin's hot modules ran: compiled, or from source and why (``twin.compiled``)."""
    return f"{'compiled' if compiled.ACTIVE else 'from source'} ({compiled.REASON})"


def _print_summary(name: str, summary: dict[str, Any], out: Path, manifest: dict[str, Any]) -> None:
    rejected = summary["rejected_by_reason"] or {}
    reasons = ", ".join(f"{k}: {v}" for k, v in rejected.items()) or "none"
    print(f"scenario            {name}")
    print(f"events applied      {summary['applied']:,} of {summary['events']:,}")
    print(f"events rejected     {summary['rejected']:,} ({reasons})")
    print(f"orders              {summary['orders']:,} ({summary['delivered_orders']:,} delivered)")
    print(f"late orders so far  {summary['late_orders']:,}")
    if "forecasts" in summary:
        print(
            f"forecasts           {summary['forecasts']} (median {summary['forecast_seconds_median']:.2f} s each); "
            f"{summary['orders_predicted_late']} open orders predicted late at the end"
        )
    print(
        f"time taken          {summary['seconds']:.2f} s "
        f"({summary['events_per_second']:,} events/s applied, forecasts excluded)"
    )
    print(f"twin modules        {_modes()}")
    print(f"output              {out}")


def _generate(args: argparse.Namespace) -> int:
    progress = ProgressPrinter(quiet=args.quiet)
    spec = load_scenario(args.scenario)
    if args.seed is not None:
        spec = dataclasses.replace(spec, seed=args.seed)
    prepared = prepare(spec, args.cache_dir, regenerate=True, progress=progress)
    progress.done()
    print(json.dumps({k: v for k, v in prepared.manifest.items() if k != "files"}, indent=2))
    print(f"written to {prepared.folder}")
    return 0


def _backtest(args: argparse.Namespace) -> int:
    from scenarios.backtest import coverage_by_seed, pool_results, run_backtest, world_seeds
    from scenarios.backtest_report import write_backtest

    progress = ProgressPrinter(quiet=args.quiet)
    spec = load_scenario(args.scenario)
    if args.seed is not None:
        spec = dataclasses.replace(spec, seed=args.seed)
    extra: dict[str, Any] = {}
    if args.sharded:
        from streams.sharded_run import sharded_forecast_along

        extra = {"along": sharded_forecast_along, "label": "per-region shards (twin run --sharded)"}
    stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path("runs") / f"backtest-{spec.name}-{stamp}"
    if args.seeds < 1:
        print(f"twin: error: --seeds={args.seeds} must be at least 1", file=sys.stderr)
        return 2
    pooling = args.seeds > 1
    results = []
    for i, seed_spec in enumerate(world_seeds(spec, args.seeds)):
        if pooling:
            progress.done()
            print(f"seed {seed_spec.seed} ({i + 1} of {args.seeds})", file=sys.stderr)
        result, predictions = run_backtest(
            seed_spec,
            replicas=args.replicas,
            cadence=args.cadence,
            horizon=args.horizon * 3600.0,
            progress=progress,
            **extra,
        )
        progress.done()
        write_backtest(result, out / f"seed-{seed_spec.seed}" if pooling else out, predictions)
        results.append(result)
    if not pooling:
        print(results[0].table())
        print(f"\noutput {out} (config.json, by_lead/cascade/scored/predictions Parquet, report.md)")
        return 0
    pooled = pool_results(results)
    write_backtest(pooled, out)
    print(coverage_by_seed(results))
    print()
    print(pooled.table())
    print(f"\noutput {out} (pooled; each seed's own in seed-<seed>/)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twin",
        description="A live digital twin of a logistics network (SimPy core, Kafka edge).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "scenario",
            nargs="?",
            default=DEFAULT_SCENARIO,
            help=f"library scenario name or path to a scenario .toml (default: {DEFAULT_SCENARIO})",
        )
        p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
        p.add_argument(
            "--cache-dir",
            type=Path,
            default=None,
            help="where generated scenarios are kept [env: TWIN_CACHE_DIR] (default: ~/.cache/logistics-twin)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress output")

    run = sub.add_parser(
        "run",
        help="replay a scenario through the in-process twin (no broker needed)",
        description=(
            "Generate (or load from the cache) a scenario, replay its events through the live twin "
            "as fast as possible, print a summary, and write an output folder with the run's "
            "config.json, summary.json, orders/vehicles/rejections Parquet files."
        ),
    )
    common(run)
    run.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<scenario>-<UTC time>)")
    run.add_argument(
        "--lateness",
        type=float,
        default=DEFAULT_LATENESS,
        help=f"seconds an event may lag the twin clock and still be applied (default: {DEFAULT_LATENESS:.0f})",
    )
    run.add_argument("--regenerate", action="store_true", help="generate the scenario again even if cached")
    run.add_argument(
        "--forecast-every",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="forecast every this many seconds of event time; 0 turns forecasting off (default: 3600)",
    )
    run.add_argument("--horizon", type=float, default=12.0, metavar="HOURS", help="forecast horizon (default: 12)")
    run.add_argument("--replicas", type=int, default=32, help="Monte Carlo replicas per forecast (default: 32)")
    run.add_argument(
        "--sharded",
        action="store_true",
        help=(
            "run one twin per region with trip handoffs, as `twin worker` does on Kafka; writes "
            "final_predictions.parquet (what twin.predictions holds at the end) besides predictions.parquet"
        ),
    )
    run.set_defaults(func=_run)

    gen = sub.add_parser("generate", help="run a scenario's hidden true world and write its events and ground truth")
    common(gen)
    gen.set_defaults(func=_generate)

    bt = sub.add_parser(
        "backtest",
        help="forecast along a scenario's replay and score the forecasts against its ground truth",
        description=(
            "Generate a scenario and the same scenario without its disruptions, replay its events "
            "through the live twin forecasting every --cadence seconds of event time, and score the "
            "forecasts by lead time: p50 ETA error against two baselines, p10-p90 coverage, Brier "
            "score, cascade detection. Prints a table and writes config, Parquet and report.md."
        ),
    )
    bt.add_argument(
        "scenario",
        nargs="?",
        default=DEFAULT_SCENARIO,
        help=f"library scenario name or path to a scenario .toml (default: {DEFAULT_SCENARIO})",
    )
    bt.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    bt.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="backtest the scenario under N world seeds (its seed and the next N-1) and pool the scores",
    )
    bt.add_argument("--replicas", type=int, default=32, help="Monte Carlo replicas per forecast (default: 32)")
    bt.add_argument(
        "--cadence",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="forecast every this many seconds of event time (default: 900)",
    )
    bt.add_argument("--horizon", type=float, default=12.0, metavar="HOURS", help="forecast horizon (default: 12)")
    bt.add_argument(
        "--out", type=Path, default=None, help="output folder (default: runs/backtest-<scenario>-<UTC time>)"
    )
    bt.add_argument("--quiet", action="store_true", help="no progress output")
    bt.add_argument(
        "--sharded",
        action="store_true",
        help="score the per-region shards' predictions (what Kafka workers publish), not one whole-network twin",
    )
    bt.set_defaults(func=_backtest)
    add_kafka_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``twin`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
        return code
    except (ScenarioError, TwinError, StreamsError) as exc:
        print(f"twin: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("twin: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
