"""Forecast benchmark: a full Monte Carlo forecast of a mid-day state of the default scenario.

    python bench/forecast.py [--replicas 64] [--horizon-hours 12] [--at-hours 9] [--runs 5]

Replays the default scenario up to ``--at-hours`` (about 100 vehicles, 450 trips, 5,000
orders in the system at 09:00), then times full forecasts (median of ``--runs``) on one core
and with replicas in a 2-process pool (this process computes what the replicas start from,
sends it to one worker, runs half the replicas while the worker runs the other half and
sends back only their tallies), and prints peak memory and the number of simulation steps
(SimPy events processed) per replica. The naive way to keep predictions current is a full
re-forecast after every event: its cost per event is the full forecast's, printed alongside
(with the faster of one core and the pool, and both).

Then the incremental forecast (``twin.incremental``): from a full refresh at ``--at-hours``,
the event stream goes on and the forecast is updated after each of the next ``--positions``
vehicle positions. A position at the clock of the forecast is an incremental update (timed:
median, mean, 90th percentile, against the naive full re-forecast); one that moves the clock
takes a full refresh (timed and counted apart). Every other kind of event also takes a
refresh: the forecast is refreshed, untimed, before the next position is applied. With
``--check`` each incremental update is compared with a full forecast of the new state.

The twin's hot modules run compiled (``twin.compiled``); the same 1-core forecast is also
timed with them run from source (``TWIN_PURE_PYTHON=1``, in a child process, after this
process's own runs; ``--no-interpreted-baseline`` leaves it out), and the ratio printed.

The machine is small and shared: the 1-core line also gives the CPU time this process spent
(less sensitive to other work than wall time), and the load average before and after is
printed so that a slow run can be told from a slow forecast.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.interpreted import add_flags, run_child  # noqa: E402
from scenarios.generate import generate  # noqa: E402
from scenarios.spec import load_scenario  # noqa: E402
from twin import compiled  # noqa: E402
from twin.events import VehiclePosition  # noqa: E402
from twin.forecast import Forecaster  # noqa: E402
from twin.incremental import IncrementalForecaster  # noqa: E402
from twin.live import LiveTwin  # noqa: E402


def timed(fc: Forecaster, state, runs: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds (this process) of ``runs`` full forecasts."""
    fc.forecast(state)  # warm-up (and pool start)
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fc.forecast(state)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def steps_per_replica(network, state, kwargs: dict, replicas: int = 4) -> float:
    """SimPy steps (events processed) per replica of a forecast of ``state``."""
    from twin.model import Model

    count = 0
    run = Model.run

    def counted(self: Model, until: float) -> Model:
        nonlocal count
        out = run(self, until)
        count += self.steps
        return out

    Model.run = counted  # type: ignore[method-assign]
    try:
        Forecaster(network, **{**kwargs, "replicas": replicas}).forecast(state)
    finally:
        Model.run = run  # type: ignore[method-assign]
    return count / replicas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=64)
    ap.add_argument("--horizon-hours", type=float, default=12.0)
    ap.add_argument("--at-hours", type=float, default=9.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--positions", type=int, default=60, help="position events for the incremental measurement")
    ap.add_argument("--check", action="store_true", help="compare each incremental update with a full forecast")
    add_flags(ap, "the 1-core forecast")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    print(compiled.describe())

    gen, twin = bench_state(args.at_hours)
    st = twin.state
    open_orders = sum(1 for o in st.orders.values() if o.stage not in ("delivered", "cancelled"))
    open_trips = sum(1 for t in st.trips.values() if t.status != "completed")
    print(
        f"state at {args.at_hours:g} h: {len(st.vehicles)} vehicles, {open_trips} trips not completed, "
        f"{open_orders} open orders; {args.replicas} replicas, {args.horizon_hours:g} h horizon, {args.runs} runs"
    )
    kwargs = {"horizon": args.horizon_hours * 3600, "replicas": args.replicas, "seed": 1}
    load_before = os.getloadavg()[0]
    one, one_cpu = timed(Forecaster(gen.network, **kwargs), st, args.runs)
    with Forecaster(gen.network, workers=2, **kwargs) as pool:
        two, _ = timed(pool, st, args.runs)
    m1, m2 = statistics.median(one), statistics.median(two)
    print(
        f"full forecast, 1 core     : median {m1:.3f} s (runs: {', '.join(f'{x:.3f}' for x in one)})  target <= 0.5 s"
    )
    print(f"                  CPU time: median {statistics.median(one_cpu):.3f} s")
    print(f"full forecast, 2 processes: median {m2:.3f} s (runs: {', '.join(f'{x:.3f}' for x in two)})")
    print(f"2 processes vs 1 core     : {m1 / m2:.2f}x ({'pool' if m2 < m1 else '1 core'} is faster on this run)")
    best = min(m1, m2)
    print(
        f"naive upkeep (full re-forecast after every event): {best:.3f} s per event, {1 / best:.2f} events/s "
        f"(1 core: {m1:.3f} s, {1 / m1:.2f} events/s; 2 processes: {m2:.3f} s, {1 / m2:.2f} events/s)"
    )
    tracemalloc.start()
    Forecaster(gen.network, **kwargs).forecast(st)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"peak memory of one forecast: {peak / 2**20:.1f} MiB (tracemalloc)")
    baseline = interpreted_baseline(args) if compiled.ACTIVE and args.interpreted_baseline else None
    if baseline is not None:
        m0, cpu0 = statistics.median(baseline["wall"]), statistics.median(baseline["cpu"])
        print(
            f"interpreted (baseline: the same forecast with TWIN_PURE_PYTHON=1, 1 core, a child process): median "
            f"{m0:.3f} s, CPU {cpu0:.3f} s (runs: {', '.join(f'{x:.3f}' for x in baseline['wall'])}); "
            f"compiled is {m0 / m1:.2f}x faster (CPU {cpu0 / statistics.median(one_cpu):.2f}x)"
        )
        steps = baseline["steps"]
    else:
        steps = steps_per_replica(gen.network, st, kwargs)
    print(f"simulation steps per replica: {steps:,.0f} (Model.steps)")
    incremental(gen, twin, kwargs, args, m1)
    print(f"load average (1 min) on {os.cpu_count()} cores: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")


def bench_state(at_hours: float) -> tuple:
    """The default scenario replayed to ``at_hours``: (generated scenario, live twin)."""
    gen = generate(load_scenario("regional-day"))
    twin = LiveTwin(gen.network)
    cut = at_hours * 3600
    twin.apply_all([e for e in gen.events if e.time <= cut])
    return gen, twin


def interpreted_baseline(args: argparse.Namespace) -> dict:
    """The 1-core forecast timed in a child that runs the twin's modules from source (and its steps)."""
    return run_child(
        __file__,
        [
            "--replicas",
            str(args.replicas),
            "--runs",
            str(args.runs),
            "--horizon-hours",
            str(args.horizon_hours),
            "--at-hours",
            str(args.at_hours),
        ],
    )


def child(args: argparse.Namespace) -> None:
    """The interpreted baseline's side: time the 1-core forecast, count the steps, print JSON."""
    assert not compiled.ACTIVE, compiled.REASON
    gen, twin = bench_state(args.at_hours)
    kwargs = {"horizon": args.horizon_hours * 3600, "replicas": args.replicas, "seed": 1}
    wall, cpu = timed(Forecaster(gen.network, **kwargs), twin.state, args.runs)
    steps = steps_per_replica(gen.network, twin.state, kwargs)
    print(json.dumps({"wall": wall, "cpu": cpu, "steps": steps}))


def incremental(gen, twin: LiveTwin, kwargs: dict, args: argparse.Namespace, naive: float) -> None:
    """Time incremental updates after single position events, from the state ``twin`` is at."""
    fc = Forecaster(gen.network, **kwargs)
    inc = IncrementalForecaster(fc)
    inc.attach(twin)
    tracemalloc.start()
    probe = IncrementalForecaster(fc)  # a refresh once for its memory: tracemalloc slows it down
    probe.refresh(twin.state)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del probe
    start = time.perf_counter()
    inc.refresh(twin.state)
    refresh = time.perf_counter() - start
    updates: list[float] = []
    clock_moves: list[float] = []
    patched = rerun = changed = checked = 0
    reasons: dict[str, int] = {}
    cut = twin.clock
    for e in [e for e in gen.events if e.time > cut]:
        if isinstance(e, VehiclePosition) and e.lane_id is not None:
            if inc.last.kind != "unchanged" and inc._other:
                inc.update(twin.state)  # the refresh other events need, untimed
            twin.apply(e)
            start = time.perf_counter()
            out = inc.update(twin.state)
            took = time.perf_counter() - start
            st = inc.last
            if st.kind == "refresh":
                clock_moves.append(took)
            elif st.kind == "incremental":
                updates.append(took)
                patched += st.patched
                rerun += st.rerun
                changed += len(out)
                for k, v in st.rerun_reasons.items():
                    reasons[k] = reasons.get(k, 0) + v
                if args.check:
                    if inc.predictions() != fc.forecast(twin.state, inc.beliefs):
                        sys.exit(f"incremental update after {e.id} differs from a full forecast")
                    checked += 1
            if len(updates) + len(clock_moves) >= args.positions:
                break
        else:
            twin.apply(e)
    print(
        f"incremental forecast: refresh {refresh:.3f} s; it keeps {kept / 2**20:.1f} MiB of replica records "
        f"(peak {peak / 2**20:.1f} MiB, tracemalloc)"
    )
    n = len(updates) + len(clock_moves)
    if updates:
        ms = sorted(x * 1000 for x in updates)
        med = statistics.median(ms)
        print(
            f"incremental update after one position event ({len(updates)} of {n} positions, at the forecast's clock): "
            f"median {med:.1f} ms, mean {statistics.fmean(ms):.1f} ms, p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms, "
            f"max {ms[-1]:.1f} ms  target <= 50 ms"
        )
        print(f"  naive full re-forecast (1 core, above): {naive * 1000:.0f} ms; ratio {naive * 1000 / med:.0f}x")
        total = patched + rerun
        print(
            f"  replicas patched from their records: {patched} of {total} ({100 * patched / max(1, total):.0f} %); "
            f"run again: {rerun} ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))})"
        )
        print(f"  predictions changed per update: {changed / len(updates):.1f} on average")
        if args.check:
            print(f"  each of the {checked} updates equals a full forecast of the new state (--check)")
    if clock_moves:
        print(
            f"positions that moved the clock ({len(clock_moves)} of {n}): a full refresh, "
            f"median {statistics.median(clock_moves):.3f} s"
        )
    every = sorted(updates + clock_moves)
    if every:
        print(f"all {n} positions: median {statistics.median(every) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
