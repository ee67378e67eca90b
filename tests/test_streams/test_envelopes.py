"""The shard topic's messages: a poll's batch travels compressed, and every message decodes back."""

from __future__ import annotations

import gc
import zlib
from collections import defaultdict

import msgspec
import pytest

from streams.codec import Codec
from streams.envelopes import (
    COMPRESS_FROM,
    Batch,
    Compressed,
    Progress,
    compress_message,
    decode_message,
    encode_batch,
    encode_message,
)
from streams.ingest import BatchBuilder, SourceMessage
from streams.shards import ShardRouter
from streams.topics import Topics, input_topic


@pytest.fixture(scope="module")
def poll_batches(mini_scenario) -> dict[int, Batch]:
    """The batches of one poll of 2000 records of the small scenario, for 2 shard partitions."""
    codec = Codec(mini_scenario.spec.epoch)
    topics = Topics()
    offsets: dict[str, int] = defaultdict(int)
    messages = []
    for ev in mini_scenario.events[:2000]:
        topic = input_topic(ev, topics)
        value = codec.encode(ev)
        messages.append(SourceMessage(topic, 0, offsets[topic], 1_764_000_000_000, ev.subject.encode(), value))
        offsets[topic] += 1
    builder = BatchBuilder(ShardRouter(mini_scenario.network), codec, 2)
    return builder.build(messages, {(t, 0): (offsets[t], False) for t in topics.inputs}, 1_764_000_000.0)


def test_a_poll_batch_goes_compressed_and_decodes_to_the_same_batch(poll_batches):
    for batch in poll_batches.values():
        plain = encode_message(batch)
        packed = encode_batch(batch)
        wrapper = msgspec.msgpack.decode(packed)
        assert wrapper["type"] == "compressed"
        assert zlib.decompress(wrapper["data"]) == plain
        # CloudEvents JSON with the same attribute names in every record: it shrinks a lot
        # (what the broker has to write and serve again).
        assert len(packed) * 5 < len(plain)
        assert decode_message(packed) == batch


def test_small_messages_go_as_they_are():
    heartbeat = Batch("ingest-1", [], [], 1.0)
    assert len(encode_message(heartbeat)) < COMPRESS_FROM
    assert encode_batch(heartbeat) == encode_message(heartbeat)
    assert decode_message(encode_batch(heartbeat)) == heartbeat
    progress = encode_message(Progress(from_shard="north", time=3600.0))
    assert compress_message(progress) == progress


def test_an_uncompressed_batch_still_decodes(poll_batches):
    """A shard topic written before batches were compressed is read as before."""
    batch = poll_batches[0]
    assert decode_message(encode_message(batch)) == batch


@pytest.mark.parametrize(
    "raw",
    [
        msgspec.msgpack.encode(Compressed(b"not zlib at all")),
        msgspec.msgpack.encode(Compressed(zlib.compress(b"\x93not a message"))),
        msgspec.msgpack.encode(Compressed(zlib.compress(msgspec.msgpack.encode(Compressed(zlib.compress(b"x")))))),
    ],
    ids=["bad-zlib", "bad-inside", "nested"],
)
def test_a_bad_compressed_message_is_a_decode_error(raw):
    """The host skips what it cannot decode (a msgspec.DecodeError): never a crash."""
    with pytest.raises(msgspec.DecodeError):
        decode_message(raw)


def test_records_and_marks_are_not_tracked_by_the_garbage_collector(poll_batches):
    """One record per event: untracked, they do not count towards the worker's gen-0 collections
    (they hold only strings, numbers, bytes and header tuples, so they can be in no cycle)."""
    batch = poll_batches[0]
    assert batch.records and batch.marks
    assert not any(gc.is_tracked(rec) for rec in batch.records)
    assert not any(gc.is_tracked(mark) for mark in batch.marks)
    decoded = decode_message(encode_batch(batch))
    assert isinstance(decoded, Batch)
    assert not any(gc.is_tracked(rec) for rec in decoded.records)
