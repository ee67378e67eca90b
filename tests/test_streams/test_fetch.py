"""streams.fetch: the ingest consumer's lean records against aiokafka's own.

The aiokafka internals it relies on are pinned by their source: an aiokafka upgrade that
changes any of them fails :func:`test_the_aiokafka_internals_streams_fetch_relies_on_are_unchanged`,
and then ``streams/fetch.py`` has to be checked against the new source (and the digests here
updated). The other tests check, in memory and through the real broker, that a lean consumer
hands out the same records, in the same order, with the same positions, as aiokafka.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import inspect
import struct
import uuid
from typing import Any

import pytest
from aiokafka.consumer.fetcher import READ_COMMITTED, READ_UNCOMMITTED, Fetcher, FetchResult, PartitionRecords
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from streams.fetch import LEAN_ATTRIBUTES, _LeanPartition, _LeanResults, lean_records

TP = TopicPartition("sensors", 0)

#: sha256 of the source of each function ``streams.fetch`` mirrors or relies on (aiokafka 0.14.0)
PINNED = {
    "PartitionRecords.__init__": "8ec1c2ae6ea1af875db73e6d01604f3e",
    "PartitionRecords.__next__": "63ac34a08c309098fe6f0a08bc2870a6",
    "PartitionRecords._unpack_records": "b803e6d46480732c7a7faa8e784b338b",
    "FetchResult.check_assignment": "b5340df67e3f330f998e01e49adc7fd0",
    "FetchResult._update_position": "83fb1473bf10027b406893b9a90527f3",
    "FetchResult.getone": "3fc6f963223135d240785156577c9168",
    "FetchResult.getall": "3e717e30de5068d549dd41b231928c67",
    "FetchResult.has_more": "a25ee8ab93405df69de3ab43c0a3b7be",
    "Fetcher.next_record": "b86d8af8abb5e3f91d18016d017dab35",
    "Fetcher.fetched_records": "be4348896b9b66afe048de954e2be91c",
    "Fetcher._proc_fetch_request": "59bf948fff47eed580671971252454da",
}


def _digest(name: str) -> str:
    owner, attr = name.split(".")
    obj = {"PartitionRecords": PartitionRecords, "FetchResult": FetchResult, "Fetcher": Fetcher}[owner]
    return hashlib.sha256(inspect.getsource(getattr(obj, attr)).encode()).hexdigest()[:32]


def test_the_aiokafka_internals_streams_fetch_relies_on_are_unchanged():
    changed = {name: _digest(name) for name, want in PINNED.items() if _digest(name) != want}
    assert not changed, (
        f"aiokafka's fetcher changed where streams/fetch.py relies on it: {sorted(changed)}; check "
        f"streams/fetch.py against the new source, then update PINNED to {changed}"
    )
    # Where the fetcher keeps its results, and how it fills them.
    init = inspect.getsource(Fetcher.__init__)
    assert "self._records = collections.OrderedDict()" in init
    fill = inspect.getsource(Fetcher._proc_fetch_request)
    assert "self._records[tp] = FetchResult(" in fill


def _batch(
    base_offset: int, offsets: list[int], *, compression: int = 0, control: bool = False, corrupt: bool = False
) -> bytes:
    """A v2 record batch holding records at ``offsets`` (deltas from ``base_offset``; gaps as compaction leaves)."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=compression, is_transactional=0, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=1 << 24,
    )  # fmt: skip
    for off in offsets:
        headers = [("h", f"{off}".encode()), ("e", b"")] if off % 3 == 0 else []
        key = None if off % 5 == 0 else f"k{off}".encode()
        value = None if off % 7 == 6 else b'{"n": %d}' % off
        builder.append(off - base_offset, timestamp=1_700_000_000_000 + off, key=key, value=value, headers=headers)
    buf = builder.build()
    struct.pack_into(">q", buf, 0, base_offset)
    if control:  # attributes: bit 5 marks a control batch
        (attributes,) = struct.unpack_from(">h", buf, 21)
        struct.pack_into(">h", buf, 21, attributes | 0x20)
    struct.pack_into(">I", buf, 17, calc_crc32c(bytes(buf[21:])))  # the CRC covers the attributes on
    if corrupt:  # a byte flipped after the CRC was computed
        buf[-1] ^= 0xFF
    return bytes(buf)


def _fields(record: Any) -> tuple[Any, ...]:
    return tuple(tuple(getattr(record, a)) if a == "headers" else getattr(record, a) for a in LEAN_ATTRIBUTES)


def _aiokafka(data: bytes, fetch_offset: int, isolation: int = READ_UNCOMMITTED) -> PartitionRecords:
    return PartitionRecords(TP, MemoryRecords(data), None, fetch_offset, None, None, True, isolation)


def _both(data: bytes, fetch_offset: int) -> tuple[PartitionRecords, _LeanPartition]:
    return _aiokafka(data, fetch_offset), _LeanPartition(TP, MemoryRecords(data), fetch_offset, True)


LAYOUTS = {
    "plain": (_batch(0, list(range(10))) + _batch(10, list(range(10, 25))), 0),
    "gzip, fetched mid-batch": (_batch(0, list(range(12)), compression=1) + _batch(12, [12, 13, 14], compression=1), 5),
    "compacted gaps": (_batch(0, [0, 2, 3, 7]) + _batch(8, [9, 11]), 0),
    "a control batch between": (_batch(0, [0, 1, 2]) + _batch(3, [3], control=True) + _batch(4, [4, 5]), 0),
    "a control batch last": (_batch(0, [0, 1]) + _batch(2, [2], control=True), 0),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_lean_partition_hands_out_aiokafkas_records_and_positions(layout):
    data, fetch_offset = LAYOUTS[layout]
    theirs, ours = _both(data, fetch_offset)
    got_theirs, got_ours = [], []
    for record in theirs:
        got_theirs.append((_fields(record), theirs.next_fetch_offset))
    for record in ours:
        got_ours.append((_fields(record), ours.next_fetch_offset))
    assert got_ours == got_theirs
    assert got_ours  # something to compare
    assert ours.next_fetch_offset == theirs.next_fetch_offset


class _State:
    def __init__(self) -> None:
        self.position = 0
        self.paused = False

    def consumed_to(self, offset: int) -> None:
        self.position = offset


class _Assignment:
    active = True

    def __init__(self) -> None:
        self.state = _State()

    def state_value(self, tp: Any) -> _State:
        return self.state


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("max_records", [1, 4, None])
def test_fetch_results_read_a_lean_partition_as_aiokafkas_own(layout, max_records):
    """``FetchResult.getall`` in polls of ``max_records``, and ``getone``: same records, same positions."""
    data, fetch_offset = LAYOUTS[layout]
    polls: dict[str, list[Any]] = {}
    for name, partition in zip(("theirs", "ours"), _both(data, fetch_offset), strict=True):
        assignment = _Assignment()
        assignment.state.position = fetch_offset
        result = FetchResult(TP, assignment=assignment, partition_records=partition, backoff=0)
        out = polls[name] = []
        while result.has_more():
            got = result.getall(max_records)
            out.append(([_fields(r) for r in got], assignment.state.position))
        assignment.state.position = fetch_offset
        result = FetchResult(
            TP, assignment=assignment, partition_records=_both(data, fetch_offset)[name == "ours"], backoff=0
        )
        while (one := result.getone()) is not None:
            out.append(([_fields(one)], assignment.state.position))
    assert polls["ours"] == polls["theirs"]


def test_a_corrupt_batch_is_refused_as_aiokafka_refuses_it():
    data = _batch(0, [0, 1]) + _batch(2, [2, 3], corrupt=True)
    theirs, ours = _both(data, 0)
    with pytest.raises(CorruptRecordException):
        list(theirs)
    with pytest.raises(CorruptRecordException):
        list(ours)


def test_only_plain_read_uncommitted_partitions_are_made_lean():
    results = _LeanResults()
    data = _batch(0, [0, 1])
    for isolation, lean in ((READ_UNCOMMITTED, True), (READ_COMMITTED, False)):
        partition = _aiokafka(data, 0, isolation)
        results[TP] = FetchResult(TP, assignment=_Assignment(), partition_records=partition, backoff=0)
        assert isinstance(results[TP]._partition_records, _LeanPartition) is lean
    with_deserializer = PartitionRecords(TP, MemoryRecords(data), None, 0, None, bytes, True, READ_UNCOMMITTED)
    results[TP] = FetchResult(TP, assignment=_Assignment(), partition_records=with_deserializer, backoff=0)
    assert results[TP]._partition_records is with_deserializer


def test_anything_else_is_left_alone():
    class _Other:
        _fetcher = None

    assert lean_records(_Other()) is False


async def _read(bootstrap: str, topic: str, n: int, lean: bool) -> tuple[bool, list[tuple[Any, ...]]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"lean-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest",
        enable_auto_commit=False, max_partition_fetch_bytes=4096,
    )  # fmt: skip
    await consumer.start()
    try:
        made = lean_records(consumer) if lean else False
        got: list[tuple[Any, ...]] = []
        deadline = asyncio.get_running_loop().time() + 30
        while len(got) < n and asyncio.get_running_loop().time() < deadline:
            polled = await consumer.getmany(timeout_ms=500, max_records=7)
            for tp, records in polled.items():
                got.extend((tp.topic, tp.partition, *_fields(r), type(r).__name__) for r in records)
        return made, got
    finally:
        await consumer.stop()


@pytest.mark.kafka
@pytest.mark.slow
def test_a_lean_consumer_reads_what_a_plain_one_reads_from_the_broker(kafka_bootstrap, kafka_topic_factory):
    from aiokafka import AIOKafkaProducer

    topic = kafka_topic_factory("lean", partitions=2)
    n = 400

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5, compression_type="gzip")
        await producer.start()
        try:
            for i in range(n):
                headers = [("h", f"{i}".encode())] if i % 3 == 0 else []
                await producer.send(topic, b'{"n": %d}' % i, key=f"k{i % 9}".encode(), headers=headers)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(produce())
    made, lean = asyncio.run(_read(kafka_bootstrap, topic, n, lean=True))
    _, plain = asyncio.run(_read(kafka_bootstrap, topic, n, lean=False))
    assert made
    assert {r[-1] for r in lean} == {"DefaultRecord"}
    assert {r[-1] for r in plain} == {"ConsumerRecord"}
    by_partition: dict[str, dict[int, list[Any]]] = {
        "lean": collections.defaultdict(list),
        "plain": collections.defaultdict(list),
    }
    for name, rows in (("lean", lean), ("plain", plain)):
        for row in rows:
            by_partition[name][row[1]].append(row[:-1])
    assert len(lean) == len(plain) == n
    assert by_partition["lean"] == by_partition["plain"]
