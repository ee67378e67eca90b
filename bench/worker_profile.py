"""The worker's hot path without a broker: ingest polls -> shard host, timed and profiled.

    python bench/worker_profile.py [--scenario regional-day] [--poll 5000] [--partitions 4]
                                   [--gc worker|default] [--profile] [--top 30] [--forecasts]
                                   [--records lean|consumer]

Drives what a worker does per poll of the ingest stage, in process, with the scenario's
encoded messages: the poll's records read out of Kafka record batches as aiokafka's fetcher
does (``--records lean``: the C records, as the worker's ingest consumer hands them out since
2026-11-25, ``streams.fetch``; ``consumer``: a ``ConsumerRecord`` each, as before; CRCs
checked either way), ``BatchBuilder.build_polled`` (decode, route), ``encode_batch`` of every batch
(the copy the ingest stage writes to the shard topic), ``ShardHost.offer_direct`` + ``step``
(the direct hand-over to the local shards), then the shard topic's copy read back
(``ShardHost.receive``, which skips it by key) and a step per message that may change
something, as the Faust agent does;
snapshots at the worker's cadence (every ``--snapshot-every`` wall seconds). Prints events/s
per stage; with ``--profile``, cProfile's top functions (per event, microseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import struct
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords  # noqa: E402
from aiokafka.record.default_records import DefaultRecordBatchBuilder  # noqa: E402
from aiokafka.record.memory_records import MemoryRecords  # noqa: E402
from aiokafka.structs import TopicPartition  # noqa: E402

from scenarios.generate import generate  # noqa: E402
from scenarios.spec import load_scenario  # noqa: E402
from streams.codec import Codec  # noqa: E402
from streams.envelopes import encode_batch  # noqa: E402
from streams.fetch import _LeanPartition  # noqa: E402
from streams.host import HostSettings, ShardHost, input_name  # noqa: E402
from streams.ingest import BatchBuilder, SourceMessage  # noqa: E402
from streams.kafka_cli import tune_gc  # noqa: E402
from streams.metrics import TwinMetrics  # noqa: E402
from streams.shards import ForecastSettings, ShardRouter  # noqa: E402
from streams.topics import Topics, input_topic  # noqa: E402


def messages(scenario: str) -> tuple[object, Codec, list[SourceMessage]]:
    gen = generate(load_scenario(scenario))
    codec = Codec(gen.spec.epoch)
    topics = Topics()
    offsets: dict[str, int] = defaultdict(int)
    out = []
    for ev in gen.events:
        topic = input_topic(ev, topics)
        off = offsets[topic]
        offsets[topic] += 1
        out.append(SourceMessage(topic, 0, off, int(time.time() * 1000), ev.subject.encode(), codec.encode(ev)))
    return gen, codec, out


def record_batches(chunk: list[SourceMessage]) -> dict[tuple[str, int], tuple[int, bytes]]:
    """A poll's messages as the broker returns them: per partition, (first offset, v2 record batches)."""
    out: dict[tuple[str, int], tuple[int, bytes]] = {}
    by_tp: dict[tuple[str, int], list[SourceMessage]] = defaultdict(list)
    for m in chunk:
        by_tp[(m.topic, m.partition)].append(m)
    for tp, ms in by_tp.items():
        blob = bytearray()
        for i in range(0, len(ms), 1000):  # about what the producer puts in a 512 KiB batch
            part = ms[i : i + 1000]
            builder = DefaultRecordBatchBuilder(
                magic=2, compression_type=0, is_transactional=0, producer_id=-1, producer_epoch=-1,
                base_sequence=-1, batch_size=1 << 26,
            )  # fmt: skip
            for m in part:
                builder.append(m.offset - part[0].offset, timestamp=m.timestamp, key=m.key, value=m.value, headers=[])
            buf = builder.build()
            struct.pack_into(">q", buf, 0, part[0].offset)
            blob += buf
        out[tp] = (ms[0].offset, bytes(blob))
    return out


def fetch(polled: dict[tuple[str, int], tuple[int, bytes]], lean: bool) -> list[tuple[tuple[str, int], list]]:
    """The records of a poll as the ingest consumer's ``getmany`` hands them out."""
    out = []
    for (topic, partition), (first, blob) in polled.items():
        tp = TopicPartition(topic, partition)
        if lean:
            records = _LeanPartition(tp, MemoryRecords(blob), first, True)
        else:
            records = PartitionRecords(tp, MemoryRecords(blob), None, first, None, None, True, READ_UNCOMMITTED)
        out.append(((topic, partition), list(records)))
    return out


def run(gen, codec, msgs, args, fetched: list[dict[tuple[str, int], tuple[int, bytes]]]) -> dict[str, float]:
    from prometheus_client import CollectorRegistry

    net = gen.network
    topics = Topics()
    inputs = [input_name(t, 0) for t in topics.inputs]
    forecast = ForecastSettings(cadence=3600.0, horizon=12 * 3600.0, replicas=args.replicas) if args.forecasts else None
    settings = HostSettings(partitions=args.partitions, cadence=forecast.cadence if forecast else None, idle_after=1.0)
    host = ShardHost(
        net,
        codec,
        inputs=inputs,
        settings=settings,
        forecasters=(lambda _n: forecast.build(net)) if forecast else None,
        metrics=TwinMetrics.create(CollectorRegistry()),
    )
    for p in range(args.partitions):
        host.host(p)
    host.reset_direct()
    builder = BatchBuilder(ShardRouter(net), codec, args.partitions)
    timers = defaultdict(float)
    read = dict.fromkeys(topics.inputs, 0)
    totals = defaultdict(int)
    for m in msgs:
        totals[m.topic] += 1
    shard_log: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    consumed: dict[int, int] = defaultdict(int)
    last_snap = time.perf_counter()
    loop = asyncio.new_event_loop()
    pc = time.perf_counter
    polls = [msgs[i : i + args.poll] for i in range(0, len(msgs), args.poll)]
    lean = args.records == "lean"
    t_all = pc()
    cpu0 = time.process_time()
    for chunk, blobs in zip(polls, fetched, strict=True):
        for m in chunk:
            read[m.topic] = m.offset + 1
        positions = {(t, 0): (read[t], read[t] >= totals[t]) for t in topics.inputs}
        t_fetch = pc()
        polled = fetch(blobs, lean)
        t0 = pc()
        batches = builder.build_polled(polled, positions)
        t1 = pc()
        key = builder.batch_key()
        for part, batch in sorted(batches.items()):
            shard_log[part].append((key, encode_batch(batch)))
        t2 = pc()
        for part, batch in sorted(batches.items()):
            host.offer_direct(part, key, batch, builder.last_events[part])
        out = loop.run_until_complete(host.step())
        t3 = pc()
        for part, key2, value in out.shard_messages:
            shard_log[part].append((key2, value))
        # The agent: every shard-topic message (the copies, handoffs, progress), a step each
        # unless it changes nothing (a copy of a batch taken directly, a local shard's progress).
        for part in sorted(shard_log):
            log = shard_log[part]
            while consumed[part] < len(log):
                k, v = log[consumed[part]]
                host.receive(part, consumed[part], v, k)
                consumed[part] += 1
                if host.last_inert:
                    continue  # as the worker does: nothing for a step to act on
                out = loop.run_until_complete(host.step())
                for p2, k2, v2 in out.shard_messages:
                    shard_log[p2].append((k2, v2))
        t4 = pc()
        if t4 - last_snap >= args.snapshot_every:
            for p in range(args.partitions):
                host.snapshot(p)
            last_snap = pc()
        t5 = pc()
        timers["fetch (aiokafka records)"] += t0 - t_fetch
        timers["build (decode+route)"] += t1 - t0
        timers["encode batches"] += t2 - t1
        timers["direct + step"] += t3 - t2
        timers["agent: receive copies + steps"] += t4 - t3
        timers["snapshots"] += t5 - t4
    # Quiet time: every input idle, the last events released (as the worker does after idle_after).
    t0 = pc()
    positions = {(t, 0): (read[t], True) for t in topics.inputs}
    batches = builder.build([], positions, time.time() + 3600.0)
    key = builder.batch_key()
    for part, batch in sorted(batches.items()):
        host.offer_direct(part, key, batch, builder.last_events[part])
    loop.run_until_complete(host.step())
    timers["direct + step"] += pc() - t0
    timers["total"] = pc() - t_all
    timers["cpu"] = time.process_time() - cpu0
    applied = sum(sum(s.shard.stats.applied.values()) for s in host.slots.values())
    timers["applied"] = applied
    return timers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="regional-day")
    ap.add_argument("--poll", type=int, default=5000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--snapshot-every", type=float, default=5.0)
    ap.add_argument("--forecasts", action="store_true")
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument(
        "--gc",
        choices=("default", "worker"),
        default="worker",
        help="worker: tune the collector as `twin worker` does (streams.kafka_cli.tune_gc)",
    )
    ap.add_argument(
        "--records",
        choices=("lean", "consumer"),
        default="lean",
        help="lean: aiokafka's C records (the worker since 2026-11-25); consumer: a ConsumerRecord each",
    )
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--sort", default="tottime")
    args = ap.parse_args()
    gen, codec, msgs = messages(args.scenario)
    n = len(msgs)
    if args.gc == "worker":
        tune_gc()
    print(f"{args.scenario}: {n:,} messages, polls of {args.poll}")
    # The record batches a broker would return, made before anything is timed or profiled.
    fetched = [record_batches(msgs[i : i + args.poll]) for i in range(0, n, args.poll)]
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        timers = run(gen, codec, msgs, args, fetched)
        prof.disable()
        stats = pstats.Stats(prof)
        stats.sort_stats(args.sort)
        width = 0
        rows = []
        for func, (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            rows.append((tt if args.sort == "tottime" else ct, tt, ct, nc, func))
        rows.sort(reverse=True)
        print(f"{'tottime us/ev':>14} {'cumtime us/ev':>14} {'calls/ev':>9}  function")
        for _, tt, ct, nc, func in rows[: args.top]:
            file, line, name = func
            where = f"{Path(file).name}:{line}({name})" if line else name
            print(f"{tt / n * 1e6:14.2f} {ct / n * 1e6:14.2f} {nc / n:9.2f}  {where}")
            width += 1
    else:
        timers = run(gen, codec, msgs, args, fetched)
    total = timers.pop("total")
    cpu = timers.pop("cpu")
    applied = timers.pop("applied")
    print(
        f"applied {applied:,.0f}; {n / total:,.0f} events/s wall ({total:.2f} s), "
        f"{n / cpu:,.0f} events/s of CPU time ({cpu / n * 1e6:.2f} us/event)"
    )
    for name, secs in timers.items():
        print(f"  {name:32s} {secs / n * 1e6:7.2f} us/event  ({secs:.2f} s)")


if __name__ == "__main__":
    main()
