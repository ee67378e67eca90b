"""How much of a forecast one position event really changes: the exact downstream cone, measured.

    python bench/cone.py [--at-hours 9] [--events 12] [--replicas 16] [--horizon-hours 12]

An incremental update may re-forecast only what an event can change and must equal a full
forecast of the new state for what it covers. This measures the smallest such set exactly:
replays the default scenario to ``--at-hours``, then, for ``--events`` vehicle positions
spread over the next hour of the real event stream, forecasts the state just before and just
after the event (same seed, so the replicas share their draws) and counts the trips and
orders whose simulated times differ in at least one replica. That is the exact cone (nothing
outside it can differ; everything in it does). It splits the cone in two:

- ``clock``: the same state with only the clock moved to the event's time. Activities under
  way (vehicles on the road, freight being sorted) restart from the new clock, so their
  downstream changes even though nothing was reported;
- ``event``: the position itself at an unchanged clock (the vehicle's own remaining legs,
  its lane's slowdown belief, and the share of pace that persists, which is estimated from
  every traversal and so touches every leg under way).

The last line turns the cone into a floor for an exact incremental update: re-simulating
the cone's share of the trips costs at least that share of a full forecast (timed in this
run), before any bookkeeping to keep the rest of the replicas as they were.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scenarios.generate import generate  # noqa: E402
from scenarios.spec import load_scenario  # noqa: E402
from twin.events import VehiclePosition  # noqa: E402
from twin.forecast import Forecaster  # noqa: E402
from twin.live import LiveTwin  # noqa: E402
from twin.model import ModelResult  # noqa: E402
from twin.state import WorldState  # noqa: E402


def changed(base: list[ModelResult], new: list[ModelResult]) -> tuple[set[str], set[str]]:
    """Trips and orders whose simulated times differ between two runs in some replica."""
    trips: set[str] = set()
    orders: set[str] = set()
    for b, n in zip(base, new, strict=True):
        for tid, run in b.trips.items():
            other = n.trips.get(tid)
            if other is None or run.arrivals != other.arrivals or run.departures != other.departures:
                trips.add(tid)
        bo, no = b.orders, n.orders
        orders.update(o for o, v in bo.items() if o not in no or no[o].delivered_at != v.delivered_at)
    return trips, orders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--at-hours", type=float, default=9.0)
    ap.add_argument("--events", type=int, default=12, help="position events measured, spread over the next hour")
    ap.add_argument("--replicas", type=int, default=16)
    ap.add_argument("--horizon-hours", type=float, default=12.0)
    args = ap.parse_args()

    gen = generate(load_scenario("regional-day"))
    cut = args.at_hours * 3600
    before = [e for e in gen.events if e.time <= cut]
    after = [e for e in gen.events if cut < e.time <= cut + 3600]
    positions = [i for i, e in enumerate(after) if isinstance(e, VehiclePosition) and e.lane_id]
    if not positions:
        sys.exit(f"no vehicle positions between {args.at_hours:g} h and one hour later")
    step = max(1, len(positions) // args.events)
    picked = positions[::step][: args.events]
    fc = Forecaster(gen.network, horizon=args.horizon_hours * 3600, replicas=args.replicas, seed=1)

    twin = LiveTwin(gen.network)
    twin.apply_all(before)
    done = 0
    #: per event: shares of trips and orders in the cone, trips changed by the clock alone and by the event alone
    rows: list[tuple[float, float, float, float, float]] = []
    n_trips = n_orders = 0
    print(
        f"regional-day from {args.at_hours:g} h, {args.replicas} replicas, {args.horizon_hours:g} h horizon, "
        f"{len(picked)} of {len(positions)} positions in the next hour"
    )
    print(f"{'event':>8} {'vehicle':<12} {'clock +s':>8} {'cone trips':>11} {'orders':>7} {'clock':>7} {'event':>7}")
    for i in picked:
        twin.apply_all(after[done:i])
        done = i
        e = after[i]
        prev: WorldState = twin.state  # the twin's own state: read what is needed before applying ``e``
        gap = max(0.0, e.time - prev.clock)
        base = fc.run_replicas(prev)
        moved = copy.deepcopy(prev)
        moved.clock = max(prev.clock, e.time)
        clock_trips, _ = changed(base, fc.run_replicas(moved))
        at_same_clock = copy.deepcopy(twin)
        same = VehiclePosition(
            id=e.id, time=at_same_clock.state.clock, vehicle_id=e.vehicle_id, lane_id=e.lane_id, progress=e.progress
        )
        at_same_clock.apply(same)
        event_trips, _ = changed(base, fc.run_replicas(at_same_clock.state))
        twin.apply(e)
        done = i + 1
        trips, orders = changed(base, fc.run_replicas(twin.state))
        n_trips, n_orders = len(base[0].trips), len(base[0].orders)
        rows.append(
            (len(trips) / n_trips, len(orders) / n_orders, len(clock_trips) / n_trips, len(event_trips) / n_trips, gap)
        )
        print(
            f"{e.time:>8.0f} {e.vehicle_id:<12} {gap:>8.0f} {len(trips):>5} ({len(trips) / n_trips:4.0%}) "
            f"{len(orders) / n_orders:>6.0%} {len(clock_trips) / n_trips:>6.0%} {len(event_trips) / n_trips:>6.0%}"
        )
    moved_clock = [r for r in rows if r[4] > 0]
    same_clock = [r for r in rows if r[4] == 0]
    for label, group in (("moved the clock", moved_clock), ("at the clock", same_clock)):
        if group:
            print(
                f"{len(group)} events {label}: median cone "
                f"{statistics.median(r[0] for r in group):.0%} of {n_trips} trips, "
                f"{statistics.median(r[1] for r in group):.0%} of {n_orders} orders (clock move alone "
                f"{statistics.median(r[2] for r in group):.0%}, the position at an unchanged clock "
                f"{statistics.median(r[3] for r in group):.0%})"
            )
    share = statistics.median(r[0] for r in rows)
    mean = statistics.fmean(r[0] for r in rows)
    full = Forecaster(gen.network, horizon=args.horizon_hours * 3600, replicas=64, seed=1)
    full.forecast(twin.state)
    walls = []
    for _ in range(3):
        start = time.perf_counter()
        full.forecast(twin.state)
        walls.append(time.perf_counter() - start)
    m = statistics.median(walls)
    print(
        f"full forecast (64 replicas, 1 core, median of 3): {m:.3f} s; an exact incremental update re-simulating "
        f"only the cone would cost at least {share * m * 1000:.0f} ms at the median event and "
        f"{mean * m * 1000:.0f} ms on average (target: median <= 50 ms)"
    )
    print(f"load average (1 min) on {os.cpu_count()} cores: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
