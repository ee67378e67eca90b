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

The machine is small and shared: the 1-core line also gives the CPU time this process spent
(less sensitive to other work than wall time), and the load average before and after is
printed so that a slow run can be told from a slow forecast.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scenarios.generate import generate  # noqa: E402
from scenarios.spec import load_scenario  # noqa: E402
from twin.forecast import Forecaster  # noqa: E402
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
    args = ap.parse_args()

    gen = generate(load_scenario("regional-day"))
    twin = LiveTwin(gen.network)
    cut = args.at_hours * 3600
    twin.apply_all([e for e in gen.events if e.time <= cut])
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
    print(
        "incremental update after one position event: not implemented; "
        "bench/cone.py measures its exact cone (docs/forecasting.md)"
    )
    tracemalloc.start()
    Forecaster(gen.network, **kwargs).forecast(st)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"peak memory of one forecast: {peak / 2**20:.1f} MiB (tracemalloc)")
    print(f"simulation steps per replica: {steps_per_replica(gen.network, st, kwargs):,.0f} (Model.steps)")
    print(f"load average (1 min) on {os.cpu_count()} cores: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
