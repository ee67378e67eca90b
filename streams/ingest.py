"""The ingest stage: input topics -> events re-keyed by shard on the shard topic.

Faust's own consumer path costs about 200 microseconds per message on these machines (a task
and an event-loop round trip per message), which caps a worker near 5,000 events/s. So the
input topics are read with a plain aiokafka consumer in its own consumer group, in polls of up
to thousands of messages: each poll is decoded with the codec in one pass, routed
(``streams.shards.ShardRouter``), and written to the shard topic as *one* message per shard
partition (``streams.envelopes.Batch``), which the Faust agent then handles as one event.
Bytes the codec refuses go along too, with the reason, so the shard that accounts for them
dead-letters them (and counts them exactly once, in its snapshot).

Every batch also carries the progress of every input partition this instance owns, so shards
know how far each input has been read; when nothing arrives, a batch with no records goes out
every ``heartbeat`` seconds. A partition's *watermark* says "every event of this partition
before this time has been read", assuming each partition is written in event-time order and
producers write in event-time order overall:

- until it has had no new message for ``idle_after`` seconds: the newest event time read
  from it, even when it is caught up (nothing more to read right now). Being caught up says
  nothing about what the producers are about to write: a producer writing several topics in
  event-time order sends them in separate batches, so the broker may hold a sensor reading at
  T while the order event just before T is still on its way. Replayed faster than real time
  (a day in seconds), a few milliseconds of that race are many minutes of event time, beyond
  the lateness;
- once it is caught up and has had no new message for ``idle_after`` seconds: no bound at all
  (an idle input does not hold the others back; Kafka Streams' ``max.task.idle.ms``). Caught
  up is judged on a fresh highwater only (:func:`caught_up`): during a group rebalance the
  consumer fetches nothing for seconds, its partitions look idle, and the last highwater it
  knows is long past.

So an input that goes quiet holds the others back for at most ``idle_after`` wall seconds.

Shards hosted by the same worker take each poll's batches directly, decoded events included, so
the shard topic's copy is only read back (and skipped, by its key) or replayed after a restart.

Delivery is at-least-once: input offsets are committed only after the batches made from them
are acknowledged by the broker; a record delivered twice is dropped by the shard (it keeps the
highest source offset it has seen per input partition).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from streams.codec import Codec
from streams.envelopes import ACCOUNTABLE, BROADCAST_DYNAMIC, COPY, Batch, SourceMark, WireRecord, encode_batch
from streams.errors import DecodeError
from streams.fetch import lean_records
from streams.host import input_name, shard_partitions
from streams.shards import ShardRouter
from twin.events import Event

__all__ = ["BatchBuilder", "Ingest", "SourceMessage"]

log = logging.getLogger(__name__)

DEFAULT_MAX_RECORDS: Final = 5000
#: Shared by every record without headers (never mutated; msgpack writes it as an empty array).
_NO_HEADERS: Final[list[tuple[str, bytes]]] = []
DEFAULT_HEARTBEAT: Final = 0.5
#: a partition counts as caught up only on a highwater fetched this recently (seconds): while the
#: consumer does not fetch (a group rebalance takes seconds), the last known highwater is stale
#: and the partition may hold many new records
CAUGHT_UP_FRESH: Final = 0.5
#: Polls whose shard-topic batches may be unacknowledged at once (their offsets uncommitted): the
#: broker's acknowledgement of a poll's batches is waited for only after the next poll is processed.
INFLIGHT_POLLS: Final = 2

#: ``send(topic, key, value, partition) -> awaitable delivery``
Send = Callable[[str, bytes | None, bytes, int], Awaitable[Awaitable[Any]]]
#: ``direct(key, batches, events)``: hand a poll's batches to the shards hosted in this process
Direct = Callable[[bytes, dict[int, Batch], dict[int, list[Event | None]]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SourceMessage:
    """One input message (aiokafka's ``ConsumerRecord`` has the same attributes and is used as is)."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(slots=True)
class _Source:
    offset: int = -1
    max_time: float = -math.inf
    #: wall time of its newest message (or of when it was first seen, if it has none)
    last_message: float | None = None
    #: the last batch said it no longer bounds the watermark (idle)
    idle: bool = False


@dataclass(slots=True)
class BatchBuilder:
    """Decode and route a poll of input messages into one :class:`Batch` per shard partition (pure)."""

    router: ShardRouter
    codec: Codec
    partitions: int
    #: seconds caught up after which a partition no longer bounds the watermark
    idle_after: float = 1.0
    source: str = field(default_factory=lambda: f"ingest-{uuid.uuid4().hex[:8]}")
    sources: dict[tuple[str, int], _Source] = field(default_factory=dict)
    partition_of: dict[str, int] = field(init=False)
    used_partitions: list[int] = field(init=False)
    #: the decoded events of the last build, per partition, aligned with its batch's records
    #: (None for a record the codec refused): a local shard host takes them without decoding
    last_events: dict[int, list[Event | None]] = field(default_factory=dict)
    batches: int = 0
    #: the wall time the last build was made at (-inf: none yet)
    last_build: float = -math.inf

    def __post_init__(self) -> None:
        self.partition_of = shard_partitions(self.router.regions, self.partitions)
        #: the shard-topic partitions some shard lives on (more partitions than shards leaves some empty)
        self.used_partitions = sorted(set(self.partition_of.values()))

    def forget(self, tps: Iterable[tuple[str, int]]) -> None:
        """Input partitions no longer owned (revoked)."""
        for tp in tps:
            self.sources.pop(tp, None)

    def build(
        self,
        messages: Sequence[Any],
        positions: dict[tuple[str, int], tuple[int, bool]],
        now: float | None = None,
    ) -> dict[int, Batch]:
        """One batch per shard-topic partition that holds a shard (records or not).

        ``messages`` have ``topic`` and ``partition`` besides :data:`streams.fetch.LEAN_ATTRIBUTES`
        (:class:`SourceMessage`, aiokafka's ``ConsumerRecord``). ``positions``: for every input
        partition owned, (next offset to read, caught up).
        """
        return self.build_polled(_runs(messages), positions, now)

    def build_polled(
        self,
        polled: Iterable[tuple[tuple[str, int], Sequence[Any]]],
        positions: dict[tuple[str, int], tuple[int, bool]],
        now: float | None = None,
    ) -> dict[int, Batch]:
        """:meth:`build` from a poll's records grouped by input partition, in order.

        ``polled``: ``((topic, partition), records)`` pairs, one per partition of a ``getmany``;
        records need only :data:`streams.fetch.LEAN_ATTRIBUTES`, so a lean consumer's C records do.
        """
        now = time.time() if now is None else now
        used = self.used_partitions
        by_part: dict[int, list[WireRecord]] = {p: [] for p in used}
        evs_part: dict[int, list[Event | None]] = {p: [] for p in used}
        groups = [(tp, records) for tp, records in polled if records]
        events, errors = self.codec.decode_many([m.value for _, records in groups for m in records])
        failed = dict(errors)
        route = self.router.route
        #: shard -> appenders of its partition's records and decoded events
        sinks = {name: (by_part[p].append, evs_part[p].append) for name, p in self.partition_of.items()}
        part_of = self.partition_of
        sources = self.sources
        i = 0  # the message's index in the poll (the codec's errors are by it)
        j = 0  # the next decoded event
        for (topic, partition), records in groups:
            # A poll's records of one partition come together: the source is looked up once
            # per partition, and its newest event time tracked in a local.
            src_key = (topic, partition)
            src = sources.get(src_key)
            if src is None:
                src = sources[src_key] = _Source()
            src.last_message = now
            max_time = src.max_time
            for m in records:
                headers = [(k, v) for k, v in m.headers] if m.headers else _NO_HEADERS
                if failed:
                    err: DecodeError | None = failed.get(i)
                    i += 1
                    if err is not None:
                        shard = self.router.fallback(input_name(topic, partition))
                        rec = WireRecord(
                            shard, ACCOUNTABLE, topic, partition, m.offset, m.timestamp, m.key, headers, m.value,
                            err.reason, err.detail,
                        )  # fmt: skip
                        by_part[part_of[shard]].append(rec)
                        evs_part[part_of[shard]].append(None)
                        continue
                ev = events[j]
                j += 1
                t = ev.time
                if t > max_time:
                    max_time = t
                r = route(ev)
                accountable = r.accountable
                shards = r.shards
                if len(shards) == 1:  # almost every event: one shard
                    name = shards[0]
                    add_record, add_event = sinks[name]
                    if accountable is None:
                        acct = BROADCAST_DYNAMIC
                    else:
                        acct = ACCOUNTABLE if name == accountable else COPY
                    add_record(WireRecord(name, acct, topic, partition, m.offset, m.timestamp, m.key, headers, m.value))
                    add_event(ev)
                    continue
                for name in shards:
                    if accountable is None:
                        acct = BROADCAST_DYNAMIC
                    else:
                        acct = ACCOUNTABLE if name == accountable else COPY
                    add_record, add_event = sinks[name]
                    add_record(WireRecord(name, acct, topic, partition, m.offset, m.timestamp, m.key, headers, m.value))
                    add_event(ev)
            if max_time > src.max_time:
                src.max_time = max_time
        sent_at = now
        marks = []
        for (topic, part), (position, caught_up) in sorted(positions.items()):
            seen = sources.get((topic, part))
            if seen is None:
                seen = sources[(topic, part)] = _Source()
            seen.offset = max(seen.offset, position - 1)
            if seen.last_message is None:
                seen.last_message = now
            seen.idle = caught_up and now - seen.last_message >= self.idle_after
            watermark = math.inf if seen.idle else seen.max_time
            marks.append(SourceMark(topic, part, seen.offset, seen.max_time, watermark))
        self.last_events = evs_part
        self.batches += 1
        self.last_build = now
        return {p: Batch(self.source, recs, marks, sent_at) for p, recs in by_part.items()}

    def next_idle(self) -> float:
        """The wall time a partition may turn idle at if nothing new arrives (inf: none will).

        The earliest ``last message + idle_after`` of the partitions the last build did not call
        idle, among those it could not have judged yet (a later one than that build): a build then
        tells the shards at once, instead of at the next heartbeat. (A partition not caught up at
        its moment turns idle at a heartbeat after it has caught up.)
        """
        after = self.last_build
        idle_after = self.idle_after
        soonest = math.inf
        for src in self.sources.values():
            if src.idle or src.last_message is None:
                continue
            due = src.last_message + idle_after
            if after < due < soonest:
                soonest = due
        return soonest

    def batch_key(self) -> bytes:
        """The shard-topic key of the last build's batches: ``<source>:<build number>``."""
        return f"{self.source}:{self.batches}".encode()


def _runs(messages: Sequence[Any]) -> list[tuple[tuple[str, int], Sequence[Any]]]:
    """Messages with ``topic`` and ``partition``, grouped into runs of one partition, in order."""
    runs: list[tuple[tuple[str, int], Sequence[Any]]] = []
    start = 0
    for i in range(1, len(messages) + 1):
        if i == len(messages) or (messages[i].topic, messages[i].partition) != (
            messages[start].topic,
            messages[start].partition,
        ):
            runs.append(((messages[start].topic, messages[start].partition), messages[start:i]))
            start = i
    return runs


def caught_up(position: int, highwater: int | None, polled_ms: int | None, now: float) -> bool:
    """True if the partition is read to its end, by a highwater fetched in the last :data:`CAUGHT_UP_FRESH` s.

    ``polled_ms``: when the highwater was last updated (aiokafka's ``last_poll_timestamp``, Unix ms).
    """
    if highwater is None or polled_ms is None or position < highwater:
        return False
    return now - polled_ms / 1000.0 <= CAUGHT_UP_FRESH


class Ingest:
    """Reads the input topics with aiokafka (its own consumer group) and feeds the shard topic."""

    def __init__(
        self,
        builder: BatchBuilder,
        *,
        consumer_factory: Callable[[], Any],
        send: Send,
        topics: Sequence[str],
        shard_topic: str,
        max_records: int = DEFAULT_MAX_RECORDS,
        heartbeat: float = DEFAULT_HEARTBEAT,
        on_batch: Callable[[int, float], None] | None = None,
        direct: Direct | None = None,
        on_assigned: Callable[[], None] | None = None,
    ) -> None:
        self.builder = builder
        self.consumer_factory = consumer_factory
        self.send = send
        self.topics = list(topics)
        self.shard_topic = shard_topic
        self.max_records = max_records
        self.heartbeat = heartbeat
        self.on_batch = on_batch
        self.direct = direct
        self.on_assigned = on_assigned
        self.consumer: Any = None
        self._inflight: list[tuple[list[Awaitable[Any]], dict[Any, int]]] = []
        #: offsets whose batches are on the broker, not committed yet (the newest per partition)
        self._to_commit: dict[Any, int] = {}
        self._committing: asyncio.Future[None] | None = None
        self._stopping = asyncio.Event()
        #: set when :meth:`run` has returned (its last batches on the broker, offsets committed)
        self.stopped = asyncio.Event()
        self.messages = 0

    async def run(self) -> None:
        """Poll, route, forward, commit, until :meth:`stop`."""
        from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

        ingest = self

        class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                await ingest._drain()
                ingest.builder.forget((tp.topic, tp.partition) for tp in revoked)

            async def on_partitions_assigned(self, assigned: Any) -> None:
                if ingest.on_assigned is not None:
                    ingest.on_assigned()

        self.consumer = consumer = self.consumer_factory()
        consumer.subscribe(self.topics, listener=_Listener())
        await consumer.start()
        if isinstance(consumer, AIOKafkaConsumer):
            # aiokafka's C records instead of a ConsumerRecord built per record in Python (about
            # 1 us per event of the main thread; streams.fetch says what it relies on).
            lean_records(consumer)
        last_sent = 0.0
        builder = self.builder
        try:
            while not self._stopping.is_set():
                # Wait for records at most half a heartbeat, and not past the moment a quiet
                # partition turns idle: the shards then hear of it at once. At the end of a
                # replay, the events after the last one of a topic that ended earlier (the orders
                # of the default day end at 18:00) wait for that; a heartbeat later was up to
                # half a second more.
                wait = self.heartbeat / 2
                idle_at = builder.next_idle()
                if idle_at != math.inf:
                    wait = min(wait, max(idle_at - time.time(), 0.001))
                records = await consumer.getmany(timeout_ms=max(1, round(wait * 1000)), max_records=self.max_records)
                now = time.time()
                if not any(records.values()) and now - last_sent < self.heartbeat and now < builder.next_idle():
                    continue
                await self._forward([((tp.topic, tp.partition), recs) for tp, recs in records.items()], now)
                last_sent = now
        finally:
            with contextlib.suppress(Exception):
                await self._drain()
            await consumer.stop()
            self.stopped.set()

    async def stop(self) -> None:
        """Finish the current poll and stop."""
        self._stopping.set()

    async def _forward(self, poll: list[tuple[tuple[str, int], Sequence[Any]]], now: float) -> None:
        consumer = self.consumer
        positions: dict[tuple[str, int], tuple[int, bool]] = {}
        commit: dict[Any, int] = {}
        for tp in consumer.assignment():
            pos = await consumer.position(tp)
            hw = consumer.highwater(tp)
            polled = consumer.last_poll_timestamp(tp)
            positions[(tp.topic, tp.partition)] = (pos, caught_up(pos, hw, polled, now))
            commit[tp] = pos
        batches = self.builder.build_polled(poll, positions, now)
        count = sum(len(records) for _, records in poll)
        key = self.builder.batch_key()
        futures = []
        for part, batch in sorted(batches.items()):
            futures.append(await self.send(self.shard_topic, key, encode_batch(batch), part))
        if self.direct is not None:
            # Shards hosted here take the batch now (the copy on the shard topic is for recovery
            # and for shards hosted elsewhere; a host skips the copy of a batch it took directly).
            await self.direct(key, batches, self.builder.last_events)
        self.messages += count
        if self.on_batch is not None:
            self.on_batch(count, now)
        self._inflight.append((futures, commit))
        # Commit the offsets of the polls whose batches are on the broker, keeping this poll and
        # the previous one in flight, and without waiting for the commit's round trip.
        await self._drain(keep=INFLIGHT_POLLS)

    async def _drain(self, keep: int = 0) -> None:
        """Commit the input offsets of the polls in flight once the broker has their batches.

        Waits for the oldest polls until at most ``keep`` are in flight (and for those already
        acknowledged). With ``keep`` 0 (revocation, stop) it also waits for the commits; otherwise
        one commit runs in the background and offsets ready meanwhile go with the next.
        """
        inflight = self._inflight
        while inflight and (len(inflight) > keep or all(_done(f) for f in inflight[0][0])):
            futures, commit = inflight.pop(0)
            await asyncio.gather(*futures)
            self._to_commit.update(commit)
        task = self._committing
        if task is not None and (keep == 0 or task.done()):
            self._committing = None
            await task
        if self._to_commit and self._committing is None and self.consumer is not None:
            offsets, self._to_commit = self._to_commit, {}
            if keep == 0:
                await self._commit(offsets)
            else:
                self._committing = asyncio.ensure_future(self._commit(offsets))

    async def _commit(self, offsets: dict[Any, int]) -> None:
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:  # a rebalance: the next owner reads from the last commit
            log.warning("ingest: offset commit failed (%s); records may be read again", exc)


def _done(future: Awaitable[Any]) -> bool:
    done = getattr(future, "done", None)
    return bool(done()) if callable(done) else False
