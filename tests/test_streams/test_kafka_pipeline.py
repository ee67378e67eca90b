"""The streaming pipeline on the real broker: equivalence, dead letters, crash recovery, scale-out.

Workers run as subprocesses (`python -m streams.cli worker`), each test with its own topics and
app id; events are produced with a plain aiokafka producer. The reference is the in-process
``ShardedPipeline`` with the same settings and seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scenarios.generate import generate
from scenarios.spec import load_scenario
from streams.codec import Codec
from streams.deadletter import from_message
from streams.envelopes import PUBLISHED_SUFFIX, decode_snapshot
from streams.predictions import decode_prediction, prediction_fields
from streams.shards import ForecastSettings, Shard, ShardedPipeline
from streams.topics import Topics, input_topic
from twin.events import DockStatus, Event, OrderScanned, VehiclePosition

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_topics(kafka_topic_factory: Callable[..., str], *, input_partitions: int = 1) -> Topics:
    """Fresh input and output topics for one test (deleted when it ends)."""
    return Topics(
        sensors=kafka_topic_factory("sensors", partitions=input_partitions),
        orders=kafka_topic_factory("orders", partitions=input_partitions),
        dispatch=kafka_topic_factory("dispatch", partitions=input_partitions),
        predictions=kafka_topic_factory("predictions", partitions=2, configs={"cleanup.policy": "compact"}),
        dlq=kafka_topic_factory("dlq"),
    )


@dataclass
class WorkerProcess:
    """``python -m streams.cli worker`` as a subprocess."""

    bootstrap: str
    topics: Topics
    app_id: str
    folder: Path
    args: Sequence[str] = ()
    name: str = "w1"
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = field(default_factory=free_port)
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}-{self.starts}.log"

    def start(self) -> WorkerProcess:
        self.starts += 1
        env = {
            **os.environ,
            "TWIN_BROKER": self.bootstrap,
            "TWIN_SENSORS_TOPIC": self.topics.sensors,
            "TWIN_ORDERS_TOPIC": self.topics.orders,
            "TWIN_DISPATCH_TOPIC": self.topics.dispatch,
            "TWIN_PREDICTIONS_TOPIC": self.topics.predictions,
            "TWIN_DLQ_TOPIC": self.topics.dlq,
            "PYTHONUNBUFFERED": "1",
        }
        data = self.folder / f"{self.name}-data"
        cmd = [
            sys.executable, "-m", "streams.cli", "worker",
            "--app-id", self.app_id,
            "--metrics-port", str(self.metrics_port),
            "--data-dir", str(data),
            "--log-level", os.environ.get("TWIN_TEST_WORKER_LOG", "warn"),
            *self.args,
        ]  # fmt: skip
        out = self.log.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown at all."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait for a clean exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("twin_") and " " in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out


def unique_app_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _produce(
    bootstrap: str, items: Sequence[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]], rate: float
) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        start = time.monotonic()
        futures = []
        for i, (topic, key, value, headers) in enumerate(items):
            if rate > 0:
                wait = start + i / rate - time.monotonic()
                if wait > 0.001:
                    await asyncio.sleep(wait)
            futures.append(await producer.send(topic, value, key=key, headers=headers or None))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce(
    bootstrap: str,
    items: Sequence[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]],
    rate: float = 0.0,
) -> None:
    """Send raw messages (topic, key, value, headers) with a plain aiokafka producer."""
    asyncio.run(_produce(bootstrap, items, rate))


def encode_events(events: Iterable[Event], codec: Codec, topics: Topics) -> list[tuple[str, bytes | None, bytes, list]]:
    return [(input_topic(ev, topics), ev.subject.encode(), codec.encode(ev), []) for ev in events]


async def _read_all(bootstrap: str, topic: str) -> list[Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    # Placed with explicit seeks: seek_to_beginning right after assign races with the reset to the
    # latest offset that assign starts, and a read could come back with nothing.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        for tp, start in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, start)
        end = await consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while [tp for tp in tps if (await consumer.position(tp)) < end[tp]]:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp in tps:
                out.extend(batch.get(tp, []))
            if time.monotonic() > deadline:
                msg = f"could not read {topic} to its end in 30 s"
                raise TimeoutError(msg)
        return out
    finally:
        await consumer.stop()


async def _partition_count(bootstrap: str, topic: str) -> int:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        await consumer.stop()


def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of a topic, from its beginning to its current end."""
    return asyncio.run(_read_all(bootstrap, topic))


def final_predictions(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    """The compacted view: last value per key, tombstones removing the key.

    Every record is on the partition aiokafka's default partitioner gives its key (the worker
    builds its own batches of predictions and must place them as the producer would).
    """
    from aiokafka.partitioner import DefaultPartitioner

    records = read_all(bootstrap, topic)
    count = asyncio.run(_partition_count(bootstrap, topic))
    place = DefaultPartitioner()
    out: dict[str, dict[str, Any]] = {}
    for m in sorted(records, key=lambda m: (m.partition, m.offset)):
        assert m.partition == place(m.key, list(range(count)), list(range(count))), m.key
        key = m.key.decode()
        if m.value is None:
            out.pop(key, None)
        else:
            out[key] = prediction_fields(decode_prediction(m.value))
    return out


def latest_snapshots(bootstrap: str, app_id: str) -> dict[str, dict[str, Any]]:
    """The newest snapshot of every shard on the snapshot topic (not its ``~published`` records)."""
    out: dict[str, dict[str, Any]] = {}
    for m in sorted(read_all(bootstrap, f"{app_id}-snapshots"), key=lambda m: (m.partition, m.offset)):
        if m.value is not None and not m.key.endswith(PUBLISHED_SUFFIX.encode()):
            out[m.key.decode()] = decode_snapshot(m.value)
    return out


def wait_until_settled(
    bootstrap: str,
    app_id: str,
    shards: Sequence[str],
    expected: int,
    workers: Sequence[WorkerProcess],
    timeout: float = 180.0,
) -> dict[str, dict[str, Any]]:
    """Wait until every shard's newest snapshot accounts for ``expected`` events and is published."""
    deadline = time.monotonic() + timeout
    last: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        if not any(w.alive() for w in workers):
            break
        with contextlib.suppress(Exception):
            last = latest_snapshots(bootstrap, app_id)
        if set(last) >= set(shards):
            total = sum(_accounted(doc) for doc in last.values())
            stats = [doc["shard"]["stats"] for doc in last.values()]
            handed = sum(st["handoffs_sent"] for st in stats)
            taken = sum(st["handoffs_received"] + st["handoffs_rejected"] for st in stats)
            quiet = all(not doc["dirty"] and doc["buffered"] == 0 for doc in last.values())
            if total == expected and quiet and handed == taken:
                return last
        time.sleep(1.0)
    logs = "\n\n".join(f"--- {w.name} (alive={w.alive()}) ---\n{w.tail()}" for w in workers)
    summary = {
        k: (_accounted(v), v["dirty"], v["buffered"], v["shard"]["twin"]["state"]["clock"]) for k, v in last.items()
    }  # noqa: E501
    msg = f"shards did not settle at {expected} events: {summary}\n{logs}"
    raise AssertionError(msg)


def _accounted(doc: dict[str, Any]) -> int:
    stats = doc["shard"]["stats"]
    return sum(stats["applied"].values()) + sum(stats["dead_lettered"].values()) + stats["pending"]


# ---------------------------------------------------------------------------------- the tests

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPLICAS = 4
HORIZON_H = 6.0


def _worker_args(scenario: str, partitions: int, *extra: str) -> list[str]:
    return [
        "--scenario", scenario,
        "--partitions", str(partitions),
        "--replicas", str(REPLICAS),
        "--horizon", str(HORIZON_H),
        "--idle-after", "1.0",
        "--snapshot-every", "1.0",
        "--session-timeout", "6",
        *extra,
    ]  # fmt: skip


def _reference(gen, events):
    settings = ForecastSettings(
        cadence=3600.0, horizon=HORIZON_H * 3600.0, replicas=REPLICAS, seed=gen.spec.forecast_seed
    )
    return ShardedPipeline(gen.network, forecast=settings).run(events)


def _ref_predictions(result):
    return {k: prediction_fields(p) for k, p in result.final_predictions().items()}


def _states(network, snapshots):
    return {name: Shard.from_snapshot(network, doc["shard"]).state.snapshot() for name, doc in snapshots.items()}


@pytest.fixture(scope="module")
def mini():
    return generate(load_scenario("two-region-mini"))


def _twin_run_sharded(scenario: str, out: Path) -> tuple[dict[str, dict[str, Any]], set[tuple]]:
    """``twin run SCENARIO --sharded`` with the workers' forecast settings, in process.

    Returns its final predictions per key (``final_predictions.parquet``) and every prediction
    it published, as (key, as_of, fields) items (``predictions.parquet``).
    """
    import json

    import polars as pl

    from streams.cli import main

    argv = [
        "run", scenario, "--sharded", "--quiet", "--out", str(out),
        "--replicas", str(REPLICAS), "--horizon", str(HORIZON_H), "--forecast-every", "3600",
    ]  # fmt: skip
    assert main(argv) == 0

    def fields(row: dict[str, Any]) -> dict[str, Any]:
        row = {k: v for k, v in row.items() if k != "shard"}
        row["causes"] = [tuple(c) for c in json.loads(row["causes"])]
        return row

    final = {f"{r['kind']}:{r['id']}": fields(r) for r in pl.read_parquet(out / "final_predictions.parquet").to_dicts()}
    history = {
        (f"{r['kind']}:{r['id']}", r["as_of"], _frozen(fields(r)))
        for r in pl.read_parquet(out / "predictions.parquet").to_dicts()
    }
    return final, history


def _diff(got: Any, want: Any, path: str = "") -> list[str]:
    """Where two plain-data trees differ (the first few paths), for readable failures."""
    if isinstance(got, dict) and isinstance(want, dict):
        out: list[str] = []
        for k in sorted(set(got) | set(want), key=str):
            if k not in got or k not in want:
                out.append(f"{path}/{k}: only in {'want' if k in want else 'got'}")
            else:
                out.extend(_diff(got[k], want[k], f"{path}/{k}"))
            if len(out) >= 10:
                break
        return out
    return [] if got == want else [f"{path}: got {got!r:.200} want {want!r:.200}"]


def _frozen(fields: dict[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in fields.items()))


def test_default_day_on_kafka_equals_twin_run_sharded(kafka_bootstrap, kafka_topic_factory, default_scenario, tmp_path):
    gen = default_scenario
    topics = make_topics(kafka_topic_factory)
    app_id = unique_app_id("equiv")
    worker = WorkerProcess(kafka_bootstrap, topics, app_id, tmp_path, _worker_args("regional-day", 4)).start()
    try:
        t0 = time.monotonic()
        produce(kafka_bootstrap, encode_events(gen.events, Codec(gen.spec.epoch), topics))
        produced = time.monotonic() - t0
        want_final, want_history = _twin_run_sharded("regional-day", tmp_path / "run")
        reference = _reference(gen, gen.events)
        snaps = wait_until_settled(kafka_bootstrap, app_id, gen.network.regions, len(gen.events), [worker])
        took = time.monotonic() - t0
        records = read_all(kafka_bootstrap, topics.predictions)
        metrics = worker.metrics()
    finally:
        worker.stop()
    print(f"\n{len(gen.events):,} events produced in {produced:.1f} s, settled after {took:.1f} s")
    assert read_all(kafka_bootstrap, topics.dlq) == []
    applied = sum(v for k, v in metrics.items() if k.startswith("twin_events_total") and 'outcome="applied"' in k)
    assert applied == len(gen.events)
    got_states = _states(gen.network, snaps)
    want_states = {n: s.state.snapshot() for n, s in reference.shards.items()}
    for name in want_states:
        assert _diff(got_states[name], want_states[name]) == [], name
    got_final = final_predictions(kafka_bootstrap, topics.predictions)
    # At the end of the day only the sites are open: the compacted view holds their predictions.
    assert len(want_final) >= len(gen.network.sites)
    assert got_final == want_final
    # Every prediction twin run published along the day (hourly ticks: thousands of orders and
    # trips with their cause chains) is on the topic with the same fields. The worker may publish
    # more (a forecast when its input goes quiet), never different ones.
    got_history = {
        (m.key.decode(), f["as_of"], _frozen(f))
        for m in records
        if m.value is not None
        for f in [prediction_fields(decode_prediction(m.value))]
    }
    assert len(want_history) > 10_000
    missing = want_history - got_history
    assert not missing, f"{len(missing)} of {len(want_history)} predictions differ, e.g. {sorted(missing)[:3]}"


def test_dead_letters_carry_bytes_headers_and_reason_and_the_counts_add_up(
    kafka_bootstrap, kafka_topic_factory, mini, tmp_path
):
    topics = make_topics(kafka_topic_factory)
    codec = Codec(mini.spec.epoch)
    good = [ev for ev in mini.events if ev.time < 4 * 3600]
    pos = next(e for e in good[1000:] if isinstance(e, VehiclePosition))
    head, rest = good[:1200], good[1200:]
    unknown_type = (
        b'{"specversion":"1.0","id":"x1","source":"/s","type":"logistics.teleport.v1",'
        b'"time":"2026-03-02T01:00:00Z","subject":"V1","data":{}}'
    )
    schema = codec.encode(pos).replace(b'"vehicle_id"', b'"vehicle"')
    bad = [
        (topics.sensors, b"k1", b"{not json", [("trace", b"t-1")]),
        (topics.sensors, None, unknown_type, [("trace", b"t-2")]),
        (topics.sensors, b"k3", schema, []),
        *encode_events([pos], codec, topics),  # the same event again: a duplicate
        *encode_events(
            [
                dataclasses.replace(pos, id="unknown-vehicle", vehicle_id="NOPE"),
                DockStatus(id="too-late", time=5.0, site_id="A-HUB", occupied=0, in_service=3),
                OrderScanned(id="ghost-scan", time=pos.time, order_id="GHOST", site_id="A-HUB", kind="sorted"),
                VehiclePosition(
                    id="invalid",
                    time=pos.time,
                    vehicle_id=pos.vehicle_id,
                    site_id="A-HUB",
                    lane_id="A-WH->A-HUB",
                    progress=0.5,
                ),  # noqa: E501
            ],
            codec,
            topics,
        ),
    ]
    items = [*encode_events(head, codec, topics), *bad, *encode_events(rest, codec, topics)]
    app_id = unique_app_id("dlq")
    worker = WorkerProcess(kafka_bootstrap, topics, app_id, tmp_path, _worker_args("two-region-mini", 2)).start()
    try:
        produce(kafka_bootstrap, items)
        snaps = wait_until_settled(kafka_bootstrap, app_id, mini.network.regions, len(items), [worker])
        letters = [from_message(m.value, m.headers, m.key) for m in read_all(kafka_bootstrap, topics.dlq)]
        metrics = worker.metrics()
    finally:
        worker.stop()
    by_reason = Counter(x.reason for x in letters)
    assert by_reason == {
        "malformed-json": 1,
        "unknown-type": 1,
        "schema": 1,
        "duplicate": 1,
        "unknown-entity": 2,
        "too-late": 1,
        "invalid": 1,
    }
    malformed = next(x for x in letters if x.reason == "malformed-json")
    assert malformed.value == b"{not json" and malformed.key == b"k1"
    assert malformed.headers == (("trace", b"t-1"),)
    assert malformed.topic == topics.sensors
    assert malformed.offset == sum(1 for ev in head if input_topic(ev, topics) == topics.sensors)
    assert {x.value for x in letters} >= {b"{not json", unknown_type, schema}
    ids = {x.value for x in letters if x.reason in ("unknown-entity", "too-late", "invalid", "duplicate")}
    assert len(ids) == 5
    # consumed = applied + dead-lettered, per the shards' own (snapshotted) counts and the metrics.
    applied = sum(sum(d["shard"]["stats"]["applied"].values()) for d in snaps.values())
    dead = sum(sum(d["shard"]["stats"]["dead_lettered"].values()) for d in snaps.values())
    pending = sum(d["shard"]["stats"]["pending"] for d in snaps.values())
    assert pending == 0
    assert applied + dead == len(items)
    assert dead == len(letters) == 8
    for reason, n in by_reason.items():
        assert metrics[f'twin_dlq_events_total{{reason="{reason}"}}'] == n


def test_crash_recovery_sigkill_mid_stream_gives_the_uninterrupted_result(
    kafka_bootstrap, kafka_topic_factory, mini, tmp_path
):
    events = [ev for ev in mini.events if ev.time < 8 * 3600]
    codec = Codec(mini.spec.epoch)
    topics = make_topics(kafka_topic_factory)
    app_id = unique_app_id("crash")
    worker = WorkerProcess(kafka_bootstrap, topics, app_id, tmp_path, _worker_args("two-region-mini", 2)).start()
    reference = _reference(mini, events)
    try:
        wait_for(lambda: _metrics_up(worker), 90, worker)
        producer = Producer(kafka_bootstrap, encode_events(events, codec, topics), rate=800.0).start()
        # SIGKILL mid-stream: once snapshots account for a third of the events.
        wait_for(lambda: _accounted_total(kafka_bootstrap, app_id) >= len(events) // 3, 90, worker)
        worker.kill()
        before = _accounted_total(kafka_bootstrap, app_id)
        time.sleep(1.0)
        worker.start()
        producer.join()
        snaps = wait_until_settled(kafka_bootstrap, app_id, mini.network.regions, len(events), [worker])
        got = final_predictions(kafka_bootstrap, topics.predictions)
    finally:
        worker.stop()
    assert worker.starts == 2
    assert len(events) // 3 <= before < len(events), before
    assert _states(mini.network, snaps) == {n: s.state.snapshot() for n, s in reference.shards.items()}
    assert got == _ref_predictions(reference)
    assert read_all(kafka_bootstrap, topics.dlq) == []


def test_scale_out_two_workers_one_stopped_mid_run(kafka_bootstrap, kafka_topic_factory, mini, tmp_path):
    events = [ev for ev in mini.events if ev.time < 8 * 3600]
    codec = Codec(mini.spec.epoch)
    topics = make_topics(kafka_topic_factory, input_partitions=2)
    app_id = unique_app_id("scale")
    args = _worker_args("two-region-mini", 2)
    w1 = WorkerProcess(kafka_bootstrap, topics, app_id, tmp_path, args, name="w1").start()
    w2 = WorkerProcess(kafka_bootstrap, topics, app_id, tmp_path, args, name="w2").start()
    reference = _reference(mini, events)
    try:
        wait_for(lambda: _metrics_up(w1) and _metrics_up(w2), 90, w1, w2)
        producer = Producer(kafka_bootstrap, encode_events(events, codec, topics), rate=800.0).start()
        # Both workers host a shard (Faust spreads the two shard partitions), then w2 leaves.
        wait_for(lambda: bool(_hosted_shards(w1)) and bool(_hosted_shards(w2)), 90, w1, w2)
        hosted = {w.name: _hosted_shards(w) for w in (w1, w2)}
        wait_for(lambda: _accounted_total(kafka_bootstrap, app_id) >= len(events) // 3, 90, w1, w2)
        assert w2.stop() == 0, w2.tail()
        producer.join()
        snaps = wait_until_settled(kafka_bootstrap, app_id, mini.network.regions, len(events), [w1])
        got = final_predictions(kafka_bootstrap, topics.predictions)
    finally:
        w1.stop()
        w2.stop()
    # Each worker hosted a shard before w2 stopped; w1 finished both.
    assert hosted["w1"] and hosted["w2"] and hosted["w1"] | hosted["w2"] == set(mini.network.regions), hosted
    assert _states(mini.network, snaps) == {n: s.state.snapshot() for n, s in reference.shards.items()}
    assert got == _ref_predictions(reference)


def test_a_takeover_reads_the_snapshots_and_offsets_just_written(kafka_bootstrap, kafka_topic_factory):
    """The worker's plain reads (snapshots when it takes a shard over, a range of the shard topic)
    see everything on the partition, each time: aiokafka's seek_to_beginning right after assign
    raced with the reset to the latest offset and often read nothing (every takeover then
    rebuilt its shard from the start of the partition)."""
    from types import SimpleNamespace

    from streams.app import _read_range, _read_snapshots
    from streams.settings import KafkaSecurity

    topic = kafka_topic_factory("snapshots", partitions=2, configs={"cleanup.policy": "compact"})
    written = [(b"alpha", b"a1"), (b"beta", b"b1"), (b"alpha", b"a2"), (b"gamma", b"g1"), (b"gamma", None)]

    async def write() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for key, value in written:
                await producer.send_and_wait(topic, value, key=key, partition=1)
        finally:
            await producer.stop()

    asyncio.run(write())
    settings = SimpleNamespace(
        broker=kafka_bootstrap, security=KafkaSecurity(), snapshot_topic=topic, shard_topic=topic
    )
    worker: Any = SimpleNamespace(settings=settings)
    for _ in range(5):  # the race lost most of the time: once is not enough to trust it
        assert asyncio.run(_read_snapshots(worker, 1)) == {b"alpha": b"a2", b"beta": b"b1"}
        assert asyncio.run(_read_snapshots(worker, 0)) == {}
        got = asyncio.run(_read_range(worker, 1, 1, 4))
        assert [(offset, key, value) for offset, key, value in got] == [
            (1, b"beta", b"b1"), (2, b"alpha", b"a2"), (3, b"gamma", b"g1"),
        ]  # fmt: skip


def _hosted_shards(worker: WorkerProcess) -> set[str]:
    """Shards whose clock the worker reports (the shards it hosts)."""
    return {
        k.split('shard="')[1].split('"')[0]
        for k, v in worker.metrics().items()
        if k.startswith("twin_clock_seconds{") and v > 0
    }


def _metrics_up(worker: WorkerProcess) -> bool:
    try:
        worker.metrics()
    except OSError:
        return False
    return True


def _accounted_total(bootstrap: str, app_id: str) -> int:
    try:
        return sum(_accounted(d) for d in latest_snapshots(bootstrap, app_id).values())
    except Exception:
        return 0


def wait_for(predicate: Callable[[], bool], timeout: float, *workers: WorkerProcess) -> None:
    """Poll ``predicate`` until true; fail with the workers' logs if it never is (or they die)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if workers and not all(w.alive() for w in workers):
            break
        time.sleep(0.5)
    logs = "\n\n".join(f"--- {w.name} (alive={w.alive()}) ---\n{w.tail()}" for w in workers)
    msg = f"condition not met within {timeout:.0f} s\n{logs}"
    raise AssertionError(msg)


class Producer:
    """A plain aiokafka producer in a background thread, at a fixed rate."""

    def __init__(self, bootstrap: str, items: Sequence[tuple[str, bytes | None, bytes, list]], rate: float) -> None:
        import threading

        self._thread = threading.Thread(target=produce, args=(bootstrap, items, rate), daemon=True)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def join(self, timeout: float = 120) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "producer did not finish"


def test_the_shard_topic_takes_a_whole_poll_of_a_one_region_network(kafka_bootstrap, kafka_topic_factory):
    """One shard-topic message carries a poll's records for one shard: about 2 MB for a network
    of one region with the default 5000-record polls. The broker's default limit (1 MiB) refused
    such a message; the worker creates its shard topic to take what its producer may send."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from fixtures_services import delete_topics

    from streams.app import MAX_MESSAGE_BYTES, prepare_topics
    from streams.settings import WorkerSettings

    app_id = f"big-{uuid.uuid4().hex[:8]}"
    settings = WorkerSettings(
        broker=kafka_bootstrap, topics=make_topics(kafka_topic_factory), app_id=app_id, partitions=1
    )
    big = os.urandom(3 * 1024 * 1024)  # incompressible, larger than a one-region poll

    async def roundtrip() -> bytes:
        await prepare_topics(settings)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=MAX_MESSAGE_BYTES)
        await producer.start()
        try:
            await producer.send_and_wait(settings.shard_topic, big, key=b"poll", partition=0)
        finally:
            await producer.stop()
        tp = TopicPartition(settings.shard_topic, 0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, fetch_max_bytes=2 * MAX_MESSAGE_BYTES,
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        )  # fmt: skip
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, 0)
            batch = await consumer.getmany(tp, timeout_ms=10_000)
            return batch[tp][0].value
        finally:
            await consumer.stop()

    try:
        assert asyncio.run(asyncio.wait_for(roundtrip(), 60)) == big
    finally:
        asyncio.run(delete_topics(kafka_bootstrap, [settings.shard_topic, settings.snapshot_topic]))
