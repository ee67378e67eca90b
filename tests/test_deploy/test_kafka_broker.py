"""The real local Kafka broker (deploy/kafka/run-local) works for what the twin needs.

No mocks: produce/consume through aiokafka against the session broker (``kafka_bootstrap``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

pytestmark = [pytest.mark.kafka]

N_MESSAGES = 1000
N_PARTITIONS = 3


async def _produce_and_consume(bootstrap: str, topic: str) -> None:
    sent = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = []
        for i in range(N_MESSAGES):
            key = f"shipment-{i:04d}".encode()
            value = f'{{"seq": {i}, "event": "scan"}}'.encode()
            sent[key] = value
            futures.append(await producer.send(topic, value, key=key))
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    produced_per_partition: dict[int, int] = defaultdict(int)
    for md in metadata:
        produced_per_partition[md.partition] += 1
    assert set(produced_per_partition) == set(range(N_PARTITIONS)), produced_per_partition

    group = f"test-group-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: dict[bytes, bytes] = {}
    per_partition_seq: dict[int, list[int]] = defaultdict(list)
    try:
        deadline = time.monotonic() + 60
        total = 0
        while total < N_MESSAGES:
            assert time.monotonic() < deadline, f"only {total}/{N_MESSAGES} consumed in 60 s"
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, records in batches.items():
                for rec in records:
                    assert rec.key not in received, f"duplicate {rec.key!r}"
                    received[rec.key] = rec.value
                    per_partition_seq[tp.partition].append(int(rec.key.split(b"-")[1]))
                    total += 1
        await consumer.commit()
        partitions = [TopicPartition(topic, p) for p in range(N_PARTITIONS)]
        end_offsets = await consumer.end_offsets(partitions)
        for tp in partitions:
            assert await consumer.committed(tp) == end_offsets[tp]
    finally:
        await consumer.stop()

    assert received == sent
    assert sum(end_offsets.values()) == N_MESSAGES
    for partition, seqs in per_partition_seq.items():
        assert seqs == sorted(seqs), f"partition {partition} out of order"
        assert len(seqs) == produced_per_partition[partition]

    # The group's committed offsets are durable: a new member of the group gets nothing more.
    again = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await again.start()
    try:
        leftovers = await again.getmany(timeout_ms=1500)
        assert not any(leftovers.values()), leftovers
    finally:
        await again.stop()


def test_produce_consume_1000_messages_in_a_group(kafka_bootstrap, kafka_topic_factory):
    topic = kafka_topic_factory("roundtrip", partitions=N_PARTITIONS)
    asyncio.run(asyncio.wait_for(_produce_and_consume(kafka_bootstrap, topic), 120))


async def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    (resource,) = responses[0].to_object()["resources"]
    assert resource["error_code"] == 0, resource
    return {e["config_names"]: e["config_value"] for e in resource["config_entries"]}


async def _read_all(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[tuple[bytes, bytes]] = []
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            out.extend((r.key, r.value) for r in batch.get(tp, []))
        return out
    finally:
        await consumer.stop()


async def _compaction(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    keys = [f"vehicle-{k}".encode() for k in range(10)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for version in range(5):
            for key in keys:
                await producer.send(topic, f"v{version}".encode(), key=key)
        await producer.flush()

        # Compaction only cleans closed segments: with segment.ms=100 a later write rolls the
        # segment; the broker's cleaner (log.cleaner.backoff.ms=1000 in our template) then
        # keeps one record per key.
        deadline = time.monotonic() + 45
        while True:
            await asyncio.sleep(0.5)
            await producer.send_and_wait(topic, b"tick", key=b"__roll__")
            records = [(k, v) for k, v in await _read_all(bootstrap, topic) if k != b"__roll__"]
            if len(records) == len(keys) or time.monotonic() > deadline:
                return records
    finally:
        await producer.stop()


def test_compacted_topic_keeps_latest_value_per_key(kafka_bootstrap, kafka_topic_factory):
    topic = kafka_topic_factory(
        "compacted",
        partitions=1,
        configs={
            "cleanup.policy": "compact",
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.01",
            "min.compaction.lag.ms": "0",
            "delete.retention.ms": "100",
        },
    )
    config = asyncio.run(_topic_config(kafka_bootstrap, topic))
    assert config["cleanup.policy"] == "compact"
    assert config["segment.ms"] == "100"

    records = asyncio.run(asyncio.wait_for(_compaction(kafka_bootstrap, topic), 90))
    latest: dict[bytes, bytes] = {}
    for key, value in records:
        latest[key] = value
    # Whatever the cleaner has done, the last value read per key is the latest written ...
    assert latest == {f"vehicle-{k}".encode(): b"v4" for k in range(10)}
    # ... and within the wait the cleaner removed every older version.
    assert sorted(records) == sorted(latest.items()), f"not compacted: {len(records)} records"
