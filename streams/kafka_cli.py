"""The Kafka subcommands of ``twin``: ``worker``, ``replay`` and ``tail``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import sys
import time
from pathlib import Path

from streams.errors import ConfigurationError
from streams.settings import ReplaySettings, TailSettings, WorkerSettings, add_options

__all__ = ["add_kafka_commands"]

BROKER_WAIT_S = 60.0
#: Allocations between two gen-0 collections in a worker (CPython's default: 700); see tune_gc.
GC_GEN0_THRESHOLD = 200_000


def _print_settings(name: str, masked: dict[str, object]) -> None:
    print(f"{name} settings: {json.dumps(masked, sort_keys=True, default=str)}", file=sys.stderr)


def _worker(args: argparse.Namespace) -> int:
    from streams.app import create_app, prepare_topics

    settings = WorkerSettings.from_args(args)
    _print_settings("twin worker", settings.masked())
    deadline = time.monotonic() + args.broker_wait
    while True:
        try:
            inputs = asyncio.run(prepare_topics(settings))
            break
        except Exception as exc:  # the broker is not up yet: wait for it (Faust would exit at once)
            if time.monotonic() >= deadline:
                print(f"twin: error: broker {settings.broker} not usable: {exc}", file=sys.stderr)
                return 1
            time.sleep(1.0)
    worker = create_app(settings, inputs)
    print(
        f"twin worker: app {settings.app_id}, shards {list(worker.host.router.regions)} on "
        f"{settings.partitions} partitions of {settings.shard_topic}, inputs {inputs}",
        file=sys.stderr,
    )
    tune_gc()
    worker.run()
    return 0


def tune_gc() -> None:
    """Make CPython's cyclic garbage collector cheap for a long-running worker.

    The shard stage allocates a few short-lived objects per event (records, events, queue
    items) against a large long-lived heap (the network, every shard's world state, Faust's
    machinery). With the default gen-0 threshold (700 allocations) the collector runs every
    few hundred events and its older generations rescan that heap: about a quarter of the hot
    path's CPU time (``bench/worker_profile.py``). The start-up heap is frozen out of collection
    and the gen-0 threshold raised; nothing else changes (reference cycles are still collected).

    The threshold counts tracked objects allocated and not yet freed, so what triggers a
    collection is objects that stay alive: the world state's growth (about 46,000 objects over
    the default day) and, while a worker catches up, the events waiting in its buffers. At
    50,000 a worker catching up on the default day ran one to four gen-0 collections, 56-280 ms
    in all (wall, load average 7-8), inside ``bench/kafka_pipeline.py``'s window, each scanning
    the backlog it was draining; at 200,000 and above none (2026-11-25). The price: a
    collection, when one runs, scans up to four times as many young objects (tens of
    milliseconds more), and cyclic garbage waits that much longer to be freed.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 10)


def _replay(args: argparse.Namespace) -> int:
    from scenarios.replay import prepare
    from scenarios.spec import load_scenario
    from streams.codec import Codec
    from streams.progress import ProgressPrinter
    from streams.replayer import replay_to_kafka

    if not args.to_kafka:
        print(
            "twin replay: error: it writes a scenario's events to Kafka: add --to-kafka "
            "(to replay in process, use `twin run SCENARIO --sharded`)",
            file=sys.stderr,
        )
        return 2
    progress = ProgressPrinter(quiet=args.quiet)
    spec = load_scenario(args.scenario)
    if args.seed is not None:
        spec = dataclasses.replace(spec, seed=args.seed)
    prepared = prepare(spec, args.cache_dir, progress=progress)
    progress.done()
    settings = ReplaySettings.from_args(args)
    _print_settings("twin replay", settings.masked())
    report = asyncio.run(replay_to_kafka(prepared.events, Codec(spec.epoch), settings, progress=progress))
    progress.done()
    print(
        f"sent {report.events:,} events of {spec.name} in {report.seconds:.2f} s "
        f"({report.rate:,.0f} events/s): {report.by_topic}"
    )
    return 0


def _tail(args: argparse.Namespace) -> int:
    from streams.tail import run_tail

    settings = TailSettings.from_args(args)
    run_tail(args.what, settings)
    return 0


def add_kafka_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``worker``, ``replay`` and ``tail`` to the ``twin`` parser."""
    worker = sub.add_parser(
        "worker",
        help="run a Kafka worker: input topics -> sharded live twins -> predictions and dead letters",
        description=(
            "Run the Faust worker: read the input topics, apply every event on its region's shard "
            "(one live twin per shard, several shards per worker), publish predicted states to the "
            "compacted predictions topic and bad input to the dead-letter topic, snapshot each shard "
            "into a compacted snapshot topic. Start more workers with the same --app-id to share the "
            "shards. Every option can be set in the environment instead, as shown."
        ),
    )
    add_options(worker, WorkerSettings.OPTIONS)
    worker.add_argument(
        "--broker-wait",
        type=float,
        default=BROKER_WAIT_S,
        metavar="SECONDS",
        help=f"wait this long for the broker before giving up (default: {BROKER_WAIT_S:.0f})",
    )
    worker.set_defaults(func=_worker)

    replay = sub.add_parser(
        "replay",
        help="write a scenario's events to the Kafka input topics (--to-kafka), paced by event time",
        description=(
            "With --to-kafka, write a scenario's events to the input topics, paced by event time "
            "(--speed) or at a fixed rate (--rate), or as fast as possible. To replay a scenario "
            "in process instead, use `twin run SCENARIO` (or `--sharded`, as the workers do)."
        ),
    )
    replay.add_argument("scenario", help="library scenario name or path to a scenario .toml")
    replay.add_argument("--to-kafka", action="store_true", help="produce the events to the input topics")
    replay.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    replay.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where generated scenarios are kept [env: TWIN_CACHE_DIR] (default: ~/.cache/logistics-twin)",
    )
    replay.add_argument("--quiet", action="store_true", help="no progress output")
    add_options(replay, ReplaySettings.OPTIONS)
    replay.set_defaults(func=_replay)

    tail = sub.add_parser(
        "tail",
        help="print the predictions (or dead letters) the workers publish",
        description="Follow the predictions topic (or the dead-letter topic), one line per record.",
    )
    tail.add_argument("what", choices=("predictions", "dlq"), help="which topic to follow")
    add_options(tail, TailSettings.OPTIONS)
    tail.set_defaults(func=_tail)


def config_errors() -> tuple[type[Exception], ...]:
    """Errors the ``twin`` command reports as usage errors (exit 2)."""
    return (ConfigurationError,)
