"""The internal shard topic's messages, and the snapshot blobs of the snapshot topic.

Nothing outside the worker reads these, so they are compact msgpack (``msgspec.msgpack``), not
CloudEvents. Three kinds of message travel on the shard topic, each to the partition of the
shard(s) it is for:

``batch``
    What the ingest stage read from the input topics in one poll, for the shards of one
    partition: the records routed there (the original bytes, key, headers, source topic,
    partition and offset, and which copy is accountable) and the progress of *every* input
    partition the ingest instance owns (last offset read, newest event time, caught up or not).
    A batch with no records is a heartbeat.
``handoff``
    A :class:`~twin.events.TripHandoff` from one shard to another (CloudEvents JSON, via the
    codec, so it is as inspectable as any event).
``progress``
    "Shard S has applied every event before time T and emitted its handoffs before T": what
    another shard waits for before it moves past T (event-time alignment across shards).

A batch of some size travels compressed (:func:`encode_batch`): a ``compressed`` message holds
its msgpack bytes, zlib-compressed, and :func:`decode_message` returns the batch inside. The
records are CloudEvents JSON with the same attribute names over and over, so a poll's batch
shrinks about 14 times (the default day: 46 MB of copies in all, 3.2 MB compressed). Writing
those bytes was most of the broker's CPU in a worker run (about 1.3 s of a core for the default
day, against the worker's 2), on a machine where the broker and the worker share two cores.

Snapshots are a msgpack document compressed with zlib; see ``streams.host``. Next to each
shard's snapshot (key ``<shard>``) the snapshot topic holds the newest forecast tick the shard
published (key ``<shard>~published``, :func:`encode_published`), written once the tick's
predictions are on the broker: whoever hosts the shard next replays the ticks up to there
without publishing them again (a replayed tick would overwrite the newer predictions of keys
handed off to another shard since).
"""

from __future__ import annotations

import zlib
from typing import Any, Final

import msgspec

__all__ = [
    "ACCOUNTABLE",
    "BROADCAST_DYNAMIC",
    "COPY",
    "Batch",
    "Compressed",
    "Handoff",
    "Progress",
    "SourceMark",
    "WireRecord",
    "compress_message",
    "decode_message",
    "decode_snapshot",
    "encode_batch",
    "encode_message",
    "encode_snapshot",
    "PUBLISHED_SUFFIX",
    "decode_published",
    "encode_published",
    "published_key",
]

#: ``WireRecord.accountable`` values: the copy that counts, a broadcast copy, or decided later.
COPY: Final = 0
ACCOUNTABLE: Final = 1
BROADCAST_DYNAMIC: Final = 2


class WireRecord(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One input message routed to a shard (or, with ``reason``, refused by the codec).

    Not tracked by the cyclic garbage collector (``gc=False``): it holds strings, numbers, bytes
    and a list of (str, bytes) headers, so it can be in no reference cycle, and the worker makes
    one per event (each tracked one counts towards the next gen-0 collection).
    """

    shard: str
    accountable: int
    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    headers: list[tuple[str, bytes]]
    value: bytes
    reason: str | None = None
    detail: str = ""


class SourceMark(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """Where the ingest stage is in one input partition (scalars only: not tracked by the collector)."""

    topic: str
    partition: int
    #: last offset read (-1: none yet)
    offset: int
    #: newest event time read from this partition (-inf: none yet)
    max_time: float
    #: every event of this partition before this time has been read (see ``streams.ingest``)
    watermark: float


class Batch(msgspec.Struct, tag="batch", frozen=True):
    """Records for the shards of one partition, and the ingest instance's input progress."""

    source: str
    records: list[WireRecord]
    marks: list[SourceMark]
    #: wall time (Unix seconds) the batch was produced
    sent_at: float


class Handoff(msgspec.Struct, tag="handoff", frozen=True):
    """A trip handed from one shard to another."""

    to_shard: str
    event: bytes


class Progress(msgspec.Struct, tag="progress", frozen=True):
    """A shard's alignment promise: everything before ``time`` is applied and handed off."""

    from_shard: str
    time: float


class Compressed(msgspec.Struct, tag="compressed", frozen=True):
    """Another message (a batch), msgpack-encoded and then zlib-compressed."""

    data: bytes


Message = Batch | Handoff | Progress | Compressed
_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(Message)
#: Encoded messages shorter than this go as they are (heartbeats, a few records: not worth it).
COMPRESS_FROM: Final = 4096
#: zlib's level for batches: 1-3 are its fast strategy; on the default day's batches level 3
#: compressed 14.6 times at 230 MB/s, level 1 12.8 times at 180-215 MB/s (2026-11-25).
COMPRESS_LEVEL: Final = 3


def encode_message(message: Batch | Handoff | Progress) -> bytes:
    """The bytes of a shard-topic message (uncompressed; see :func:`encode_batch`)."""
    return _ENCODER.encode(message)


def compress_message(raw: bytes) -> bytes:
    """An encoded message as a :class:`Compressed` one, if it is large enough to be worth it (else as is)."""
    if len(raw) < COMPRESS_FROM:
        return raw
    return _ENCODER.encode(Compressed(zlib.compress(raw, COMPRESS_LEVEL)))


def encode_batch(batch: Batch) -> bytes:
    """The bytes of a batch on the shard topic: compressed unless it is small."""
    return compress_message(_ENCODER.encode(batch))


def decode_message(raw: bytes) -> Batch | Handoff | Progress:
    """A shard-topic message (a compressed one decompressed); raises ``msgspec.DecodeError`` if it is not one."""
    message: Batch | Handoff | Progress | Compressed = _DECODER.decode(raw)
    if isinstance(message, Compressed):
        try:
            inner = zlib.decompress(message.data)
        except zlib.error as exc:
            msg = f"a compressed shard-topic message that zlib cannot read: {exc}"
            raise msgspec.DecodeError(msg) from None
        message = _DECODER.decode(inner)
        if isinstance(message, Compressed):
            msg = "a compressed shard-topic message inside another"
            raise msgspec.DecodeError(msg)
    return message


def encode_snapshot(doc: dict[str, Any]) -> bytes:
    """A snapshot document as compressed msgpack."""
    return zlib.compress(_ENCODER.encode(doc), 1)


def decode_snapshot(blob: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_snapshot`."""
    doc: dict[str, Any] = msgspec.msgpack.decode(zlib.decompress(blob))
    return doc


#: suffix of a shard's published-tick key on the snapshot topic
PUBLISHED_SUFFIX: Final = "~published"


def published_key(shard: str) -> bytes:
    """Snapshot-topic key of the newest tick ``shard`` published."""
    return (shard + PUBLISHED_SUFFIX).encode()


def encode_published(tick: float) -> bytes:
    """The value of a :func:`published_key`: the tick's event time (seconds)."""
    return msgspec.msgpack.encode({"tick": tick})


def decode_published(blob: bytes) -> float:
    """Inverse of :func:`encode_published`."""
    tick: float = msgspec.msgpack.decode(blob)["tick"]
    return tick
