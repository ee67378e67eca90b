"""Codec throughput on vehicle position events: decodes/s and encodes/s, json.loads as a baseline.

Run: python bench/codec.py [--events N] [--runs R]

Each figure is the median of R runs over the same N messages, on one core. ``json.loads`` parses
the same bytes into plain dicts without any validation; it is there to say what "fast" means on
this machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from streams.codec import Codec
from twin.events import VehiclePosition


def _events(n: int) -> list[VehiclePosition]:
    out = []
    for i in range(n):
        moving = i % 5 != 0
        out.append(
            VehiclePosition(
                id=f"pos-{i:09d}",
                time=i * 0.75 + (i % 1000) / 1_000_000,
                vehicle_id=f"V{i % 400:04d}",
                lane_id=f"L{i % 60:03d}" if moving else None,
                progress=(i % 997) / 997 if moving else None,
                site_id=None if moving else f"S{i % 30:02d}",
            )
        )
    return out


def _rate(fn: Callable[[Any], object], items: Sequence[Any], runs: int) -> float:
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for item in items:
            fn(item)
        rates.append(len(items) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    codec = Codec(datetime(2026, 3, 2, tzinfo=UTC))
    events = _events(args.events)
    raws = [codec.encode(ev) for ev in events]
    assert [codec.decode(r) for r in raws] == events, "round trip failed"
    mean_size = sum(map(len, raws)) / len(raws)

    decode = _rate(codec.decode, raws, args.runs)
    encode = _rate(codec.encode, events, args.runs)
    baseline = _rate(json.loads, raws, args.runs)

    print(f"python {platform.python_version()}, msgspec {msgspec.__version__}, {platform.machine()}")
    print(f"{args.events:,} position events, {mean_size:.0f} bytes each on average; median of {args.runs} runs")
    print(f"codec.decode        {decode:>12,.0f} /s")
    print(f"codec.encode        {encode:>12,.0f} /s")
    print(f"json.loads (base)   {baseline:>12,.0f} /s")
    print(f"decode / json.loads {decode / baseline:>12.2f} x")


if __name__ == "__main__":
    main()
