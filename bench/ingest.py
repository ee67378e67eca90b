"""Ingest benchmark: events applied per second by the live twin, against raw SimPy.

    python bench/ingest.py [--runs 5] [--scenario regional-day]

Replays the scenario's events (generated in memory first; decoding is not timed) through a
fresh live twin per run and prints the median events/s (and CPU time per event, less sensitive
to other work on a shared machine than wall time); in the same run, the baseline: raw SimPy
executing the same number of bare timeouts. Also prints peak memory of the replay.

The twin's modules run compiled (``twin.compiled``, printed first); the same replays are also
timed with them run from source (``TWIN_PURE_PYTHON=1``, in a child process, after this
process's own runs; ``--no-interpreted-baseline`` leaves it out), and the ratio printed, with
the load average before and after.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import simpy  # noqa: E402

from bench.interpreted import add_flags, run_child  # noqa: E402
from scenarios.generate import generate  # noqa: E402
from scenarios.spec import load_scenario  # noqa: E402
from twin import compiled  # noqa: E402
from twin.live import LiveTwin  # noqa: E402


def simpy_timeouts(n: int) -> float:
    """Seconds for raw SimPy to process ``n`` bare timeouts in one process."""
    env = simpy.Environment()

    def proc():
        timeout = env.timeout
        for _ in range(n):
            yield timeout(1)

    env.process(proc())
    start = time.perf_counter()
    env.run()
    return time.perf_counter() - start


def replay_once(network, events) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process) of one replay through a fresh live twin."""
    twin = LiveTwin(network)
    gc.collect()
    start, start_cpu = time.perf_counter(), time.process_time()
    rejected = twin.apply_all(events)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    assert not rejected, rejected[:3]
    assert twin.stats.applied_total == len(events)
    return elapsed, cpu


def replays(network, events, runs: int) -> tuple[list[float], list[float]]:
    """Events/s (wall clock) and CPU microseconds per event of ``runs`` replays."""
    rates, cpu_us = [], []
    for _ in range(runs):
        wall, cpu = replay_once(network, events)
        rates.append(len(events) / wall)
        cpu_us.append(cpu / len(events) * 1e6)
    return rates, cpu_us


def interpreted_baseline(args: argparse.Namespace) -> dict:
    """The same replays in a child that runs the twin's modules from source."""
    return run_child(__file__, ["--runs", str(args.runs), "--scenario", args.scenario])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--scenario", default="regional-day")
    add_flags(ap, "the replays")
    args = ap.parse_args()

    gen = generate(load_scenario(args.scenario))
    events, network = gen.events, gen.network
    n = len(events)
    if args.child:
        assert not compiled.ACTIVE, compiled.REASON
        rates, cpu_us = replays(network, events, args.runs)
        print(json.dumps({"rates": rates, "cpu_us": cpu_us}))
        return
    print(compiled.describe())
    print(f"scenario {args.scenario}: {n:,} events; python {platform.python_version()}; {args.runs} runs each")
    load_before = os.getloadavg()[0]

    twin_rates, cpu_us = replays(network, events, args.runs)
    simpy_rates = [n / simpy_timeouts(n) for _ in range(args.runs)]
    twin_med, simpy_med = statistics.median(twin_rates), statistics.median(simpy_rates)
    print(f"live twin   : {twin_med:>12,.0f} events/s  (median; runs: {', '.join(f'{r:,.0f}' for r in twin_rates)})")
    print(f"  CPU time  : {statistics.median(cpu_us):>12.2f} us/event (median)")
    print(f"raw SimPy   : {simpy_med:>12,.0f} timeouts/s (median; runs: {', '.join(f'{r:,.0f}' for r in simpy_rates)})")
    print(f"ratio       : raw SimPy is {simpy_med / twin_med:.2f}x the twin (target: within 4x)")

    tracemalloc.start()
    twin = LiveTwin(network)
    twin.apply_all(events)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"peak memory : {peak / 2**20:.1f} MiB allocated by one replay (tracemalloc); "
        f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
        "(includes the generated scenario)"
    )
    if compiled.ACTIVE and args.interpreted_baseline:
        base = interpreted_baseline(args)
        rate0, cpu0 = statistics.median(base["rates"]), statistics.median(base["cpu_us"])
        print(
            f"interpreted (baseline: the same replays with TWIN_PURE_PYTHON=1, a child process): "
            f"{rate0:,.0f} events/s, {cpu0:.2f} us/event CPU (medians; runs: "
            f"{', '.join(f'{r:,.0f}' for r in base['rates'])}); compiled is {twin_med / rate0:.2f}x the events/s "
            f"(CPU per event {cpu0 / statistics.median(cpu_us):.2f}x less)"
        )
    print(f"load average (1 min) on {os.cpu_count()} cores: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
