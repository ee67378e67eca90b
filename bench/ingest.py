"""Ingest benchmark: events applied per second by the live twin, against raw SimPy.

    python bench/ingest.py [--runs 5] [--scenario regional-day]

Replays the scenario's events (generated in memory first; decoding is not timed) through a
fresh live twin per run and prints the median events/s; in the same run, the baseline: raw
SimPy executing the same number of bare timeouts. Also prints peak memory of the replay.
"""

from __future__ import annotations

import argparse
import gc
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import simpy  # noqa: E402

from scenarios.generate import generate  # noqa: E402
from scenarios.spec import load_scenario  # noqa: E402
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


def replay_once(network, events) -> float:
    twin = LiveTwin(network)
    gc.collect()
    start = time.perf_counter()
    rejected = twin.apply_all(events)
    elapsed = time.perf_counter() - start
    assert not rejected, rejected[:3]
    assert twin.stats.applied_total == len(events)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--scenario", default="regional-day")
    args = ap.parse_args()

    gen = generate(load_scenario(args.scenario))
    events, network = gen.events, gen.network
    n = len(events)
    print(f"scenario {args.scenario}: {n:,} events; python {platform.python_version()}; {args.runs} runs each")

    twin_rates, simpy_rates = [], []
    for _ in range(args.runs):
        twin_rates.append(n / replay_once(network, events))
        simpy_rates.append(n / simpy_timeouts(n))
    twin_med, simpy_med = statistics.median(twin_rates), statistics.median(simpy_rates)
    print(f"live twin   : {twin_med:>12,.0f} events/s  (median; runs: {', '.join(f'{r:,.0f}' for r in twin_rates)})")
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


if __name__ == "__main__":
    main()
