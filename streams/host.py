"""The shard stage of a worker: the shards it hosts, fed from the shard topic, in event time.

Kafka-agnostic: the Faust agent (``streams.app``) hands :meth:`ShardHost.receive` every message
of the shard topic and sends what :meth:`ShardHost.step` returns. Tests drive it directly.

Per hosted shard (a *slot*) the host keeps:

- a buffer of routed events, one queue per input partition in arrival order, and the incoming
  handoffs; the next event applied is the queue head (or handoff) with the earliest event time,
  so events of different topics interleave in event time whatever the fetch order, while an
  event that arrives late within its own partition is still late (Kafka Streams' rule);
- the progress of every input partition (from the ingest stage's marks): an event at time t is
  applied only when every input partition has reached t or is caught up (the input watermark),
  so events from different topics interleave in event time whatever the fetch order;
- the progress every other shard has announced: a shard does not run more than ``skew``
  seconds of event time ahead of the slowest other shard, and never fires a forecast tick at T
  before every other shard has passed T, so handoffs always arrive in time and a tick sees
  exactly the events before it (the same state as in the in-process pipeline);
- the highest source offset seen per input partition, to drop records the ingest stage
  delivers twice (at-least-once), and the ids of the handoffs received, to drop repeats;
- the original bytes of parked events, to dead-letter them if their entity never shows up.

Shards hosted by the same worker see each other's progress and handoffs in memory (no round
trip through Kafka); the handoff is still written to the shard topic so a restored shard finds it,
progress only to the partitions hosted elsewhere.

Snapshots (:meth:`ShardHost.snapshot`) capture a slot completely: the shard (twin, ownership,
ticks, counters), its buffer, input and peer progress, and the shard-topic offset it has
consumed through. Restored, a slot skips shard-topic messages up to that offset and continues
exactly where it was; everything it sends again on the way is deduplicated downstream (handoff
ids) or idempotent (predictions keyed by entity).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from streams.codec import Codec
from streams.deadletter import DLQ_TOPIC, DeadLetter, DlqMessage, to_message
from streams.envelopes import (
    Batch,
    Handoff,
    Progress,
    WireRecord,
    decode_message,
    decode_snapshot,
    encode_message,
    encode_snapshot,
)
from streams.errors import DecodeError
from streams.metrics import TwinMetrics
from streams.predictions import EncodedPrediction, encode_body, encode_tail
from streams.shards import CLEAN, ForecasterLike, Publication, PublicationTicket, Shard, ShardRouter
from twin.errors import Rejection
from twin.events import Event, TripHandoff, event_from_dict, event_to_dict
from twin.live import DEFAULT_LATENESS
from twin.network import Network
from twin.state import WorldState

__all__ = ["DEFAULT_SKEW", "HostOutput", "HostSettings", "ShardHost", "input_name", "shard_partitions"]

log = logging.getLogger(__name__)

#: WireRecord.accountable -> the ``accountable`` argument of ``Shard.apply``.
_ACCOUNTABILITY: Final = (False, True, None)
#: How far (event-time seconds) a shard may run ahead of the slowest other shard.
DEFAULT_SKEW: Final = 300.0
SNAPSHOT_VERSION: Final = 2
#: How long (event-time seconds) received handoff ids are remembered, to drop repeats.
HANDOFF_MEMORY: Final = 2 * 86400.0
_NEG_INF: Final = -math.inf

#: ``forecast(shard, state, incremental) -> predictions``; the worker runs it off the event loop.
ForecastRunner = Callable[[str, WorldState, bool], Awaitable[Sequence[Any]]]


def input_name(topic: str, partition: int) -> str:
    """How an input partition is named in marks, offsets and snapshots: ``topic/partition``."""
    return f"{topic}/{partition}"


def shard_partitions(regions: Sequence[str], partitions: int) -> dict[str, int]:
    """Shard -> partition of the shard topic: region ``i`` (sorted) on partition ``i % partitions``."""
    if partitions < 1:
        msg = f"partitions={partitions} must be at least 1"
        raise ValueError(msg)
    return {region: i % partitions for i, region in enumerate(sorted(regions))}


@dataclass(frozen=True, slots=True)
class HostSettings:
    """How the shard stage behaves (the worker fills it from its settings)."""

    #: shard-topic partitions (shard ``i`` lives on partition ``i % partitions``)
    partitions: int = 1
    lateness: float = DEFAULT_LATENESS
    #: forecast tick cadence in event time (None: no forecasts)
    cadence: float | None = 3600.0
    skew: float = DEFAULT_SKEW
    #: publish a full forecast after this many seconds without new events (the quiet-time refresh)
    idle_after: float = 1.0
    #: also publish at least this often (wall seconds) while events flow; 0: only at ticks and when idle
    refresh_every: float = 0.0
    #: re-announce progress to the other shards this often (wall seconds) even if it did not move
    announce_every: float = 1.0
    #: run the ``refresh_every`` refreshes in the background: the runner copies the state when
    #: called and returns an awaitable (a forecast in another process), events keep flowing while
    #: it runs, and its predictions are published, with the input offsets of that copy, by the
    #: first step after it is done (see ``ShardHost.on_refresh_done``)
    background_refresh: bool = False
    #: with ``background_refresh``, forecast ticks may run in the background too: the tick's state is
    #: copied and events after it go on being applied while it is forecast; its predictions are
    #: published, in order, when it is done (with the ownership and input offsets of the tick).
    #: At most this many forecasts may be in flight before applying waits for the oldest.
    in_flight: int = 4
    background_ticks: bool = False
    #: forecasts the runner can work on at once (child processes): a refresh starts only while
    #: fewer than this many are in flight
    parallel_forecasts: int = 1
    shard_topic: str = "twin.shards"
    dlq_topic: str = DLQ_TOPIC


@dataclass(slots=True)
class HostOutput:
    """What a step produced, in the order it must be sent."""

    dead_letters: list[DlqMessage] = field(default_factory=list)
    #: (key, value or None for a tombstone) for the predictions topic
    predictions: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    #: (partition, key, value) for the shard topic: handoffs, then progress announcements
    shard_messages: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    #: produce timestamps (Unix seconds) of the input records applied in this step, per publication
    publication_lags: list[float] = field(default_factory=list)
    #: shard -> the newest forecast tick published in this output (to record once it is sent)
    ticks: dict[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.dead_letters or self.predictions or self.shard_messages or self.ticks)


#: A routed record waiting in an inbox: (event time, arrival seq, record, decoded event).
_Item = tuple[float, int, WireRecord, Event]


class _Inbox:
    """Routed records per input partition, each queue in arrival order."""

    __slots__ = ("queues", "size")

    def __init__(self) -> None:
        self.queues: dict[str, deque[_Item]] = {}
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def queue(self, source: str) -> deque[_Item]:
        q = self.queues.get(source)
        if q is None:
            q = self.queues[source] = deque()
        return q

    def head(self) -> tuple[float, int, str]:
        """(time, seq, source) of the earliest queue head; (inf, 0, "") when empty."""
        best_t, best_seq, best_src = math.inf, 0, ""
        for source, q in self.queues.items():
            if q:
                t, seq = q[0][0], q[0][1]
                if t < best_t or (t == best_t and seq < best_seq):
                    best_t, best_seq, best_src = t, seq, source
        return best_t, best_seq, best_src

    def second(self, source: str) -> float:
        """Earliest head time among the queues other than ``source``."""
        best = math.inf
        for src, q in self.queues.items():
            if q and src != source and q[0][0] < best:
                best = q[0][0]
        return best

    def items(self) -> list[tuple[str, _Item]]:
        return [(src, item) for src, q in sorted(self.queues.items()) for item in q]


class _Slot:
    """One hosted shard and its stream state."""

    def __init__(self, shard: Shard, partition: int) -> None:
        self.shard = shard
        self.partition = partition
        self.routed = _Inbox()
        self.handoffs: list[tuple[float, int, TripHandoff]] = []
        self.seq = 0
        #: input partition -> [last offset seen, newest event time, watermark]
        self.sources: dict[str, list[Any]] = {}
        #: other shard -> progress it announced
        self.peers: dict[str, float] = {}
        #: handoff id -> its event time (dedup)
        self.handoff_ids: dict[str, float] = {}
        #: event id -> the record of a parked accountable event (to dead-letter it later)
        self.parked: dict[str, WireRecord] = {}
        #: last shard-topic offset consumed into this slot (-1: none)
        self.offset = -1
        self.announced = _NEG_INF
        self.announced_at = 0.0
        #: forecast ticks up to this time were published by an earlier host of the shard: replayed,
        #: they are forecast again (for the shard's bookkeeping) but not published again
        self.published_through = _NEG_INF
        self.dirty = False
        self.last_apply = 0.0
        self.last_publish = 0.0
        self.last_snapshot = time.time()
        self.want_snapshot = False
        #: something besides input marks changed since the last snapshot
        self.changed = False
        #: produce timestamps (Unix milliseconds) of records applied since the last publication
        self.unpublished: list[int] = []
        #: background ticks started and published (handoffs wait for the ticks before them)
        self.ticks_started = 0
        self.ticks_published = 0
        #: shard-topic messages of handoffs emitted while a tick before them was in flight:
        #: (ticks started when emitted, handoff time, message), sent once those ticks are published
        self.held: deque[tuple[int, float, tuple[int, bytes, bytes]]] = deque()

    @property
    def name(self) -> str:
        return self.shard.name

    @property
    def replaying(self) -> bool:
        """True until the shard has replayed the last tick its previous host published.

        Its state is then older than what that host left on the predictions topic: published,
        it would put back keys that the replayed ticks closed (those ticks are not sent again, so
        their tombstones would not follow). Refreshes and the quiet-time set wait until it has
        passed that tick.
        """
        return self.shard.next_tick <= self.published_through


@dataclass(slots=True)
class _InFlight:
    """A forecast running in the background, and what its publication needs."""

    slot: _Slot
    future: asyncio.Future[Sequence[Any]]
    #: input offsets and produce timestamps of the state it forecasts
    offsets: dict[str, int]
    unpublished: list[int]
    started: float
    ticket: PublicationTicket
    #: the time of the forecast tick (a full publication) it is; None for a refresh
    tick: float | None


class ShardHost:
    """The shards a worker hosts (see the module docstring)."""

    def __init__(
        self,
        network: Network,
        codec: Codec,
        *,
        inputs: Iterable[str],
        settings: HostSettings,
        forecasters: Callable[[str], ForecasterLike] | None = None,
        runner: ForecastRunner | None = None,
        metrics: TwinMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.network = network
        self.codec = codec
        self.epoch = codec.epoch
        self.router = ShardRouter(network)
        self.inputs = sorted(inputs)
        if not self.inputs:
            msg = "ShardHost needs the names of its input partitions (topic/partition); got none"
            raise ValueError(msg)
        self.settings = settings
        self.partition_of = shard_partitions(self.router.regions, settings.partitions)
        self.slots: dict[str, _Slot] = {}
        self._forecaster_factory = forecasters
        self.forecasters: dict[str, ForecasterLike] = {}
        self.runner = runner if runner is not None else self._run_inline
        self.metrics = metrics
        self.clock = clock
        self._reported: dict[str, Counter[str]] = {}
        #: dead letters decided while receiving (codec refusals), sent with the next step's
        self._pending_letters: list[DlqMessage] = []
        #: keys of ingest batches taken directly, per partition, whose shard-topic copy is still to come
        self._direct: dict[int, set[bytes]] = {}
        self.direct_batches = 0
        #: keys of ingest batches sent through the topic only, not read back yet, per partition
        self._awaiting: dict[int, set[bytes]] = {}
        #: partitions whose next ingest batch must go through the topic
        self._barrier: set[int] = set(range(settings.partitions))
        self.forecast_seconds: list[float] = []
        #: True if the last message :meth:`receive` took changes nothing a step acts on (the copy
        #: of a batch taken directly, progress announced by a shard hosted here): the caller may
        #: skip the step after it
        self.last_inert = False
        #: called (from the event loop) when a background forecast is done: the caller should step
        self.on_refresh_done: Callable[[], None] | None = None
        #: background forecasts in the order they started (they are published in that order)
        self._in_flight: deque[_InFlight] = deque()

    # ------------------------------------------------------------------ hosting
    def shards_on(self, partition: int) -> list[str]:
        """The shards that live on a partition of the shard topic."""
        return sorted(s for s, p in self.partition_of.items() if p == partition)

    def host(
        self,
        partition: int,
        snapshots: dict[str, bytes | None] | None = None,
        published: dict[str, float] | None = None,
    ) -> None:
        """Start hosting the shards of ``partition``, restored from their snapshot blobs when given.

        ``published``: per shard, the newest forecast tick an earlier host published (its
        ``~published`` record): ticks up to it are replayed without being published again.
        """
        for name in self.shards_on(partition):
            if name in self.slots:
                continue
            blob = (snapshots or {}).get(name)
            slot = self._restore(name, blob) if blob else _Slot(self._new_shard(name), partition)
            slot.published_through = (published or {}).get(name, _NEG_INF)
            self.slots[name] = slot
            self._barrier.add(partition)
            self._attach_forecaster(slot)

    def release(self, partition: int) -> None:
        """Stop hosting the shards of ``partition`` (revoked); their snapshots carry on elsewhere."""
        self._direct.pop(partition, None)
        self._awaiting.pop(partition, None)
        for name in self.shards_on(partition):
            self.slots.pop(name, None)
            self.forecasters.pop(name, None)

    def hosted_partitions(self) -> set[int]:
        """Partitions whose shards are hosted here."""
        return {s.partition for s in self.slots.values()}

    def _new_shard(self, name: str) -> Shard:
        s = self.settings
        return Shard(name, self.network, self.router, lateness=s.lateness, cadence=s.cadence)

    def _attach_forecaster(self, slot: _Slot) -> None:
        if self._forecaster_factory is None or self.settings.cadence is None:
            return
        fc = self._forecaster_factory(slot.name)
        self.forecasters[slot.name] = fc
        mark = getattr(fc, "mark", None)
        if callable(mark):
            slot.shard.marker = mark

    # ------------------------------------------------------------------ input
    def next_offset(self, partition: int) -> int:
        """The shard-topic offset the partition's shards need next (messages are contiguous)."""
        offsets = [self.slots[n].offset for n in self.shards_on(partition) if n in self.slots]
        return min(offsets) + 1 if offsets else 0

    def offer_direct(self, partition: int, key: bytes, batch: Batch, events: Sequence[Event | None]) -> bool:
        """Take an ingest batch straight from the ingest stage in this process (already decoded).

        Its copy on the shard topic, recognised by ``key``, is then skipped. Only when nothing
        else is pending on the partition: the partition is hosted, every batch sent since the
        last :meth:`reset_direct` without being taken directly has been read from the topic
        (so no older batch can come after this one). Otherwise the batch is left to the topic
        and False returned.
        """
        slots = [self.slots[n] for n in self.shards_on(partition) if n in self.slots]
        if not slots:
            return False  # hosted elsewhere (or not yet): its host reads it from the topic
        awaiting = self._awaiting.setdefault(partition, set())
        if awaiting or partition in self._barrier:
            awaiting.add(key)
            self._barrier.discard(partition)
            return False
        for slot in slots:
            self._take_batch(slot, batch, events)
        self._direct.setdefault(partition, set()).add(key)
        self.direct_batches += 1
        return True

    def direct_blocked(self) -> bool:
        """True while a hosted partition waits for a batch to be read back from the topic."""
        return any(self._awaiting.get(s.partition) for s in self.slots.values())

    def reset_direct(self) -> None:
        """Input or shard partitions changed hands: the next batches go through the topic.

        Direct batches resume on a partition once its next batch has been read back from the
        topic (everything sent before it has then been read too).
        """
        self._barrier = set(range(self.settings.partitions))

    def receive(self, partition: int, offset: int, value: bytes, key: bytes | None = None) -> bool:
        """Take one shard-topic message; False if it was already consumed (a redelivery)."""
        slots = [self.slots[n] for n in self.shards_on(partition) if n in self.slots]
        if not slots:
            msg = f"partition {partition} is not hosted here; call host({partition}) first"
            raise KeyError(msg)
        self.last_inert = False
        fresh = [s for s in slots if offset > s.offset]
        if not fresh:
            return False
        direct = self._direct.get(partition)
        if key is not None and direct and key in direct:
            direct.discard(key)
            for slot in fresh:
                slot.offset = offset
            self.last_inert = True
            return True
        if key is not None:
            self._awaiting.get(partition, set()).discard(key)
        try:
            message = decode_message(value)
        except msgspec.DecodeError as exc:
            # Not ours (someone wrote to the internal topic, or a worker of another version: the
            # compressed batch is newer than 2026-11-25): skip it, never crash, but say so loudly.
            log.warning(
                "skipped shard-topic message at partition %d offset %d that this worker cannot read "
                "(%s); if a worker of another version shares this app id, its batches are lost here",
                partition, offset, exc,
            )  # fmt: skip
            for slot in fresh:
                slot.offset = offset
            return True
        for slot in fresh:
            slot.offset = offset
            if isinstance(message, Batch):
                self._take_batch(slot, message)
            elif isinstance(message, Handoff):
                if message.to_shard == slot.name:
                    self._take_handoff_bytes(slot, message.event)
            elif message.from_shard != slot.name:
                prev = slot.peers.get(message.from_shard, _NEG_INF)
                slot.peers[message.from_shard] = max(prev, message.time)
        # Progress of a shard hosted here: its slot's own progress is read in memory instead.
        self.last_inert = isinstance(message, Progress) and message.from_shard in self.slots
        return True

    def _take_batch(self, slot: _Slot, batch: Batch, decoded: Sequence[Event | None] | None = None) -> None:
        sources = slot.sources
        name = slot.name
        inbox = slot.routed
        seq = slot.seq
        floor = -1
        queue: deque[_Item] = deque()
        #: read back from the topic: the records to decode, with their queues
        undecoded: list[tuple[WireRecord, deque[_Item]]] = []
        taken = 0
        last_topic: str | None = None
        last_partition = -1
        for i, rec in enumerate(batch.records):
            if rec.shard != name:
                continue
            if rec.partition != last_partition or rec.topic != last_topic:
                last_topic, last_partition = rec.topic, rec.partition
                source = input_name(last_topic, last_partition)
                src = sources.get(source)
                floor = src[0] if src is not None else -1
                queue = inbox.queue(source)
            if rec.offset <= floor:
                continue  # delivered twice by the ingest stage
            if rec.reason is not None:
                self._dead_letter_decode(slot, rec)
            elif decoded is None:
                undecoded.append((rec, queue))
            else:
                ev = decoded[i]
                assert ev is not None
                seq += 1
                queue.append((ev.time, seq, rec, ev))
                taken += 1
        if undecoded:
            events, errors = self.codec.decode_many([rec.value for rec, _ in undecoded])
            bad = {k for k, _ in errors}
            for k, err in errors:
                self._dead_letter_decode(slot, _with_reason(undecoded[k][0], err))
            it = iter(events)
            for k, (rec, queue) in enumerate(undecoded):
                if k in bad:
                    continue
                ev = next(it)
                seq += 1
                queue.append((ev.time, seq, rec, ev))
                taken += 1
            slot.changed = True
        if taken:
            inbox.size += taken
            slot.seq = seq
            slot.changed = True
        for mark in batch.marks:
            mkey = input_name(mark.topic, mark.partition)
            src = sources.get(mkey)
            if src is None:
                sources[mkey] = [mark.offset, mark.max_time, mark.watermark]
            elif mark.offset >= src[0]:
                src[0] = mark.offset
                src[1] = max(src[1], mark.max_time)
                src[2] = mark.watermark

    def _take_handoff_bytes(self, slot: _Slot, raw: bytes) -> None:
        try:
            ev = self.codec.decode(raw)
        except DecodeError as exc:
            self._pending_letters.append(self._handoff_letter(slot, raw, exc.reason, exc.detail))
            return
        if isinstance(ev, TripHandoff):
            self._take_handoff(slot, ev)
        else:
            detail = f"a handoff message must hold a {TripHandoff.TYPE} event, not {type(ev).TYPE}"
            self._pending_letters.append(self._handoff_letter(slot, raw, "schema", detail))

    def _take_handoff(self, slot: _Slot, handoff: TripHandoff) -> None:
        if handoff.id in slot.handoff_ids:
            return
        slot.handoff_ids[handoff.id] = handoff.time
        slot.changed = True
        slot.seq += 1
        heapq.heappush(slot.handoffs, (handoff.time, slot.seq, handoff))

    # ------------------------------------------------------------------ watermarks
    def input_watermark(self, slot: _Slot) -> float:
        """Every routed event before this time has been received (min over input partitions)."""
        wm = math.inf
        sources = slot.sources
        for name in self.inputs:
            src = sources.get(name)
            if src is None:
                return _NEG_INF
            if src[2] < wm:
                wm = src[2]
        return wm

    def progress(self, slot: _Slot) -> float:
        """The slot has applied every routed event before this time (its alignment promise).

        Never beyond the newest event time the slot knows was read: an idle input says nothing
        about events not written yet, so another shard that has read newer events must still
        wait for this one to read them too.
        """
        wm = self.input_watermark(slot)
        if slot.routed.size:
            wm = min(wm, slot.routed.head()[0])
        if wm == math.inf:
            wm = max((src[1] for src in slot.sources.values()), default=_NEG_INF)
        return wm

    def promise(self, slot: _Slot) -> float:
        """What the slot promises the other shards: its progress, but not past a handoff it holds back."""
        p = self.progress(slot)
        if slot.held:
            p = min(p, slot.held[0][1])
        return p

    def _peer_floor(self, slot: _Slot, out: HostOutput) -> float:
        floor = math.inf
        for other in self.router.regions:
            if other == slot.name:
                continue
            peer = self.slots.get(other)
            if peer is not None:
                self._emit_handoffs(peer, self.progress(peer), out)
                p = self.promise(peer)
            else:
                p = slot.peers.get(other, _NEG_INF)
            floor = min(floor, p)
        return floor

    # ------------------------------------------------------------------ stepping
    async def step(self) -> HostOutput:
        """Apply everything the watermarks allow, publish, hand off, announce progress."""
        out = HostOutput(dead_letters=self._pending_letters)
        self._pending_letters = []
        await self._finish(out, wait=False)
        moved = True
        while moved:
            moved = False
            for name in sorted(self.slots):
                if await self._release(self.slots[name], out):
                    moved = True
        now = self.clock()
        for name in sorted(self.slots):
            slot = self.slots[name]
            self._emit_handoffs(slot, self.progress(slot), out)
        for name in sorted(self.slots):
            slot = self.slots[name]
            await self._maybe_refresh(slot, now, out)
            self._announce(slot, now, out)
        await self._maybe_refresh_busy(now, out)
        self._report(now)
        return out

    async def _release(self, slot: _Slot, out: HostOutput) -> bool:
        shard = slot.shard
        floor = self._peer_floor(slot, out)
        limit = min(self.input_watermark(slot), floor + self.settings.skew)
        inbox = slot.routed
        handoffs = slot.handoffs
        moved = False
        while inbox.size or handoffs:
            t_r, seq_r, source = inbox.head() if inbox.size else (math.inf, 0, "")
            t_h = handoffs[0][0] if handoffs else math.inf
            t = min(t_r, t_h)
            if t > limit:
                break
            if t >= shard.next_tick:
                if shard.next_tick > floor:
                    break  # a tick sees every handoff before it: wait for the other shards
                self._emit_handoffs(slot, t, out)
                if (
                    self.settings.background_ticks
                    and self.settings.background_refresh
                    and slot.name in self.forecasters
                ):
                    await self._start_tick(slot, out)
                else:
                    await self._publish(slot, out, full=True, tick=shard.next_tick)
                shard.ticked(t)
            moved = True
            if handoffs and (t_h, handoffs[0][1]) < (t_r, seq_r):
                self._emit_handoffs(slot, t_h, out)
                _, _, handoff = heapq.heappop(handoffs)
                result = shard.receive(handoff)
                rejected = result.rejected
                if rejected is not None:
                    log.warning(
                        "shard %s could not take handoff %s of trip %s from %s: %s (%s); dead-lettered",
                        slot.name, handoff.id, handoff.trip_id, handoff.from_shard, rejected.reason, rejected.detail,
                    )  # fmt: skip
                    detail = f"handoff of trip {handoff.trip_id} from shard {handoff.from_shard}: {rejected.detail}"
                    out.dead_letters.append(
                        self._handoff_letter(slot, self.codec.encode(handoff), rejected.reason, detail)
                    )
                elif self.metrics is not None:
                    self.metrics.handoffs.labels(slot.name, "received").inc()
                self._settle(slot, result.settled, result.dead_letters, None, out)
                continue
            # A run of events from one input partition, up to the next event of any other kind.
            bound = min(limit, t_h, inbox.second(source), shard.next_tick)
            self._apply_run(slot, inbox.queues[source], t_r, bound, out)
        if moved:
            slot.dirty = True
            slot.changed = True
            slot.last_apply = self.clock()
        return moved

    def _apply_run(self, slot: _Slot, queue: deque[_Item], first: float, bound: float, out: HostOutput) -> None:
        """Apply the queue's events from its head while their time is within ``bound`` (the head always)."""
        shard = slot.shard
        apply = shard.apply
        next_tick = shard.next_tick  # ticks are taken between runs, never inside one
        # Produce timestamps wait for the publication that covers them (the latency metric); a
        # shard with no forecasts publishes nothing, so they would pile up forever.
        unpublished = slot.unpublished if slot.name in self.forecasters else None
        popleft = queue.popleft
        accountability = _ACCOUNTABILITY
        inbox = slot.routed
        n = 0
        while queue:
            item = popleft()
            t, _, rec, ev = item
            if n and (t > bound or t >= next_tick):
                queue.appendleft(item)
                break
            n += 1
            if shard.pending_handoffs:
                self._emit_handoffs(slot, t, out)
            acct = accountability[rec.accountable]
            result = apply(ev, accountable=acct)
            if result is not CLEAN:
                if result.parked and acct is not False:
                    slot.parked[ev.id] = rec
                self._settle(slot, result.settled, result.dead_letters, rec, out)
            if unpublished is not None:
                ts = rec.timestamp
                if ts is not None:
                    unpublished.append(ts)
        inbox.size -= n

    def _settle(
        self,
        slot: _Slot,
        settled: list[str],
        dead: list[Rejection],
        current: WireRecord | None,
        out: HostOutput,
    ) -> None:
        records: dict[str, WireRecord] = {}
        for eid in settled:
            rec = slot.parked.pop(eid, None)
            if rec is not None:
                records[eid] = rec
        for rej in dead:
            rec = records.get(rej.event_id)
            if rec is None and current is not None:
                rec = current
            if rec is None:  # pragma: no cover - every accountable rejection has its record
                continue
            out.dead_letters.append(self._letter(rec, rej.reason, rej.detail))
            if self.metrics is not None:
                self.metrics.dlq.labels(rej.reason).inc()
                self.metrics.events.labels(slot.name, rej.event_type, "dead-lettered").inc()

    def _dead_letter_decode(self, slot: _Slot, rec: WireRecord) -> None:
        assert rec.reason is not None
        slot.shard.stats.dead_lettered[rec.reason] += 1
        slot.dirty = True
        self._pending_letters.append(self._letter(rec, rec.reason, rec.detail))
        if self.metrics is not None:
            self.metrics.dlq.labels(rec.reason).inc()
            self.metrics.events.labels(slot.name, "unknown", "dead-lettered").inc()

    def _letter(self, rec: WireRecord, reason: str, detail: str) -> DlqMessage:
        return self._dead_letter(
            rec.value, reason, detail,
            headers=tuple(rec.headers), key=rec.key, topic=rec.topic, partition=rec.partition, offset=rec.offset,
        )  # fmt: skip

    def _handoff_letter(self, slot: _Slot, raw: bytes, reason: str, detail: str) -> DlqMessage:
        """A dead letter for a handoff the shard could not take.

        It goes to the DLQ like bad input, but it is not input: it is counted under
        ``twin_handoffs_total{outcome="rejected"}``, not ``twin_events_total``.
        """
        if self.metrics is not None:
            self.metrics.dlq.labels(reason).inc()
            self.metrics.handoffs.labels(slot.name, "rejected").inc()
        return self._dead_letter(
            raw, reason, detail, key=slot.name.encode(), topic=self.settings.shard_topic, partition=slot.partition
        )

    def _dead_letter(self, value: bytes, reason: str, detail: str, **where: Any) -> DlqMessage:
        """The DLQ message of ``value``, dead-lettered now; ``where``: ``DeadLetter``'s headers, key, source."""
        letter = DeadLetter(
            value=value, reason=reason, detail=detail, time=datetime.fromtimestamp(self.clock(), tz=UTC), **where
        )
        return to_message(letter, topic=self.settings.dlq_topic)

    # ------------------------------------------------------------------ handoffs and progress
    def _emit_handoffs(self, slot: _Slot, frontier: float, out: HostOutput) -> None:
        if not slot.shard.pending_handoffs or not slot.shard.handoff_due(frontier):
            return
        for handoff in slot.shard.take_handoffs(frontier):
            if self.metrics is not None:
                self.metrics.handoffs.labels(slot.name, "sent").inc()
            raw = self.codec.encode(handoff)
            dest = self.slots.get(handoff.to_shard)
            if dest is not None:
                self._take_handoff(dest, handoff)
            part = self.partition_of[handoff.to_shard]
            msg = (part, handoff.to_shard.encode(), encode_message(Handoff(to_shard=handoff.to_shard, event=raw)))
            if slot.ticks_published < slot.ticks_started:
                # A tick before it is still being forecast: the handoff goes out after that tick's
                # predictions, so its new owner never publishes a key before the old owner's last word.
                slot.held.append((slot.ticks_started, handoff.time, msg))
            else:
                out.shard_messages.append(msg)

    def _announce(self, slot: _Slot, now: float, out: HostOutput) -> None:
        p = self.promise(slot)
        if p == _NEG_INF or p == slot.announced and now - slot.announced_at < self.settings.announce_every:
            return
        slot.announced = p
        slot.announced_at = now
        raw: bytes | None = None
        for part in sorted({self.partition_of[r] for r in self.router.regions if r != slot.name}):
            local = [other for other in self.slots.values() if other.partition == part and other is not slot]
            if local:
                # Hosted here: its shards read this one's progress in memory (_peer_floor), and
                # the message would only be read back and skipped by this worker. With 4 shards
                # that was 12 messages per step, each sent and read back through Faust: sending
                # them alone took 8% of an instrumented worker's time on the default day. Their
                # peer records get what the message would have left there, for their snapshots
                # (whoever hosts them next reads this shard's progress from the topic again:
                # partitions hosted elsewhere get the message).
                for other in local:
                    if other.peers.get(slot.name, _NEG_INF) < p:
                        other.peers[slot.name] = p
                continue
            if raw is None:
                raw = encode_message(Progress(from_shard=slot.name, time=p))
            out.shard_messages.append((part, slot.name.encode(), raw))

    # ------------------------------------------------------------------ forecasting and publishing
    async def _maybe_refresh(self, slot: _Slot, now: float, out: HostOutput) -> None:
        if not slot.dirty:
            return
        if slot.name not in self.forecasters:
            if not slot.routed.size and not slot.handoffs and now - slot.last_apply >= self.settings.idle_after:
                slot.dirty = False
                slot.want_snapshot = True  # quiet: persist the state even without forecasts
            return
        idle = not slot.routed.size and not slot.handoffs and now - slot.last_apply >= self.settings.idle_after
        if idle and not slot.replaying:
            await self._publish(slot, out, full=True)
            slot.want_snapshot = True

    async def _maybe_refresh_busy(self, now: float, out: HostOutput) -> None:
        """While events flow: refresh the stalest due shard (one per step, so applying never stalls long)."""
        every = self.settings.refresh_every
        if every <= 0:
            return
        background = self.settings.background_refresh
        if background and len(self._in_flight) >= self.settings.parallel_forecasts:
            return  # a tick's forecast never queues behind several refreshes
        due = [
            s
            for s in self.slots.values()
            if s.dirty and s.name in self.forecasters and now - s.last_publish >= every and not s.replaying
        ]
        if not due:
            return
        slot = min(due, key=lambda s: (s.last_publish, s.name))
        if background:
            self._start_background(slot, tick=None)
            slot.last_publish = now
            return
        incremental = callable(getattr(self.forecasters[slot.name], "update", None))
        await self._publish(slot, out, full=not incremental)

    def _start_background(self, slot: _Slot, *, tick: float | None) -> None:
        """Start forecasting the slot's state as it is now (the runner copies it before returning)."""
        ticket = slot.shard.ticket()
        future = asyncio.ensure_future(self.runner(slot.name, slot.shard.state, False))
        self._in_flight.append(
            _InFlight(slot, future, self.applied_offsets(slot), slot.unpublished, time.perf_counter(), ticket, tick)
        )
        slot.unpublished = []
        callback = self.on_refresh_done
        if callback is not None:
            future.add_done_callback(lambda _f: callback())

    async def _start_tick(self, slot: _Slot, out: HostOutput) -> None:
        """A forecast tick in the background; waits for the oldest forecast if too many are in flight."""
        self._start_background(slot, tick=slot.shard.next_tick)
        slot.ticks_started += 1
        slot.last_publish = self.clock()
        slot.dirty = False
        while len(self._in_flight) > max(self.settings.in_flight, 1):
            await self._finish_one(out)

    @property
    def in_flight(self) -> int:
        """Background forecasts started and not yet published."""
        return len(self._in_flight)

    async def _finish(self, out: HostOutput, *, wait: bool) -> None:
        """Publish the background forecasts that are done, in the order they started (with ``wait``: all)."""
        while self._in_flight and (wait or self._in_flight[0].future.done()):
            await self._finish_one(out)

    async def _finish_one(self, out: HostOutput) -> None:
        job = self._in_flight[0]
        try:
            preds: Sequence[Any] | None = await job.future
        except Exception as exc:  # a failed forecast publishes nothing; the next one (or tick) will
            self._failed(job.slot, exc, "background forecast")
            preds = None
        finally:
            self._in_flight.popleft()
        slot = job.slot
        if self.slots.get(slot.name) is not slot:
            return  # released meanwhile: its next owner forecasts again from the snapshot
        took = time.perf_counter() - job.started
        if preds is not None:
            # A refresh is not a full set: the state has moved on since the copy, so it neither
            # tombstones nor counts as the quiet-time publication (ticks and quiet time do).
            self._emit_publication(
                slot, preds, out, job.offsets, job.unpublished, took,
                full=job.tick is not None, ticket=job.ticket, tick=job.tick,
            )  # fmt: skip
        if job.tick is not None:
            slot.ticks_published += 1
            held = slot.held
            while held and held[0][0] <= slot.ticks_published:
                out.shard_messages.append(held.popleft()[2])

    async def settle(self, partition: int | None = None) -> HostOutput:
        """Wait for the background forecasts a snapshot of ``partition`` needs published; what they publish.

        Those of the partition's shards, and the ones started before them (publications keep
        the order the forecasts started in); with no partition, all of them. A snapshot used to
        wait for every forecast in flight: with ticks of four shards queued behind one child
        process, that held the worker (and so the input) for 200-300 ms at a time, about a fifth
        of a latency run's wall time.
        """
        out = HostOutput()
        if partition is None:
            await self._finish(out, wait=True)
            return out
        needed = sum(1 for _ in self._jobs_through(partition))
        for _ in range(needed):
            await self._finish_one(out)
        return out

    def _jobs_through(self, partition: int) -> Iterable[_InFlight]:
        """The forecasts in flight up to the last one of a shard on ``partition`` (none if it has none)."""
        last = -1
        for i, job in enumerate(self._in_flight):
            if job.slot.partition == partition:
                last = i
        for i, job in enumerate(self._in_flight):
            if i > last:
                return
            yield job

    def forecasting(self, partition: int) -> bool:
        """True while a forecast of a shard on ``partition`` is in flight (a snapshot would wait for it)."""
        return any(job.slot.partition == partition for job in self._in_flight)

    async def _publish(self, slot: _Slot, out: HostOutput, *, full: bool, tick: float | None = None) -> None:
        if slot.name not in self.forecasters:
            return
        await self._finish(out, wait=True)  # publications stay in order
        start = time.perf_counter()
        try:
            preds = await self.runner(slot.name, slot.shard.state, not full)
        except Exception as exc:  # as a background one: nothing published, the slot stays dirty
            self._failed(slot, exc, "forecast")
            return
        took = time.perf_counter() - start
        offsets = self.applied_offsets(slot)
        self._emit_publication(slot, preds, out, offsets, slot.unpublished, took, full=full, tick=tick)
        slot.unpublished = []
        slot.last_publish = self.clock()
        if full:
            slot.dirty = False

    def _failed(self, slot: _Slot, exc: BaseException, what: str) -> None:
        """A forecast that failed: logged with its traceback, counted by shard and exception class."""
        log.error("shard %s: %s failed: %s", slot.name, what, exc, exc_info=exc)
        if self.metrics is not None:
            self.metrics.forecast_failures.labels(slot.name, type(exc).__name__).inc()

    def _emit_publication(
        self,
        slot: _Slot,
        preds: Sequence[Any],
        out: HostOutput,
        offsets: dict[str, int],
        unpublished: list[int],
        took: float,
        *,
        full: bool,
        ticket: PublicationTicket | None = None,
        tick: float | None = None,
    ) -> None:
        self.forecast_seconds.append(took)
        pubs = slot.shard.publish(preds, full=full, ticket=ticket)
        if tick is not None:
            if tick <= slot.published_through:
                # Published by the shard's previous host: sent again, it would overwrite what the
                # new owners of the keys handed off since have published.
                return
            out.ticks[slot.name] = tick
        out.predictions.extend(self._encode_publications(pubs, offsets))
        now = self.clock()
        out.publication_lags.extend(now - ts / 1000.0 for ts in unpublished)
        m = self.metrics
        if m is None:
            return
        m.forecast_duration.labels(slot.name).observe(took)
        # Counted per kind, not per record: a label lookup per record was a few ms per forecast.
        kinds = Counter(pub.prediction.kind for pub in pubs if pub.prediction is not None)
        for kind, n in sorted(kinds.items()):
            m.predictions_published.labels(kind).inc(n)
        if full:
            owns = slot.shard.owns if ticket is None else ticket.owns
            late = sum(1 for p in preds if p.kind == "order" and p.p_late >= 0.5 and owns(p.key))
            m.predicted_late_orders.labels(slot.name).set(late)
            for p in preds:
                if p.kind == "site" and owns(p.key):
                    m.at_risk_orders.labels(p.id).set(p.at_risk)
            replicas = getattr(self.forecasters.get(slot.name), "replicas", None)
            if isinstance(replicas, int):
                m.forecast_replicas.labels(slot.name).set(replicas)

    @staticmethod
    def applied_offsets(slot: _Slot) -> dict[str, int]:
        """Per input partition, the offset up to which every record for this shard is applied."""
        out: dict[str, int] = {}
        for name, src in sorted(slot.sources.items()):
            q = slot.routed.queues.get(name)
            out[name] = q[0][2].offset - 1 if q else int(src[0])
        return out

    def _encode_publications(
        self, pubs: Sequence[Publication], offsets: dict[str, int]
    ) -> list[tuple[bytes, bytes | None]]:
        """(key, value) records of a publication; the same as ``encode_prediction`` of each.

        Every record of a publication ends with the same shard and input offsets: they are
        encoded once and appended to each prediction's body (encoded by the forecast process
        already when it sends :class:`EncodedPrediction`s).
        """
        tails: dict[str, bytes] = {}
        out: list[tuple[bytes, bytes | None]] = []
        epoch = self.epoch
        for pub in pubs:
            key = pub.key.encode()
            p = pub.prediction
            if p is None:
                out.append((key, None))
                continue
            tail = tails.get(pub.shard)
            if tail is None:
                tail = tails[pub.shard] = encode_tail(pub.shard, offsets)
            body = p.body if isinstance(p, EncodedPrediction) else encode_body(p, epoch=epoch)
            out.append((key, body + tail))
        return out

    async def _run_inline(self, name: str, state: WorldState, incremental: bool) -> Sequence[Any]:
        fc = self.forecasters[name]
        if incremental:
            update = getattr(fc, "update", None)
            if callable(update):
                result: Sequence[Any] = update(state)
                return result
        return fc.forecast(state)

    # ------------------------------------------------------------------ metrics
    def _report(self, now: float) -> None:
        m = self.metrics
        if m is None:
            return
        for name, slot in self.slots.items():
            seen = self._reported.setdefault(name, Counter())
            for etype, n in slot.shard.stats.applied.items():
                if n > seen[etype]:
                    m.events.labels(name, etype, "applied").inc(n - seen[etype])
                    seen[etype] = n
            clock = slot.shard.clock
            if math.isfinite(clock) and clock > 0:
                wall = (self.epoch + timedelta(seconds=clock)).timestamp()
                m.clock.labels(name).set(wall)
                m.event_lag.labels(name).set(now - wall)
            m.snapshot_age.labels(name).set(now - slot.last_snapshot)

    # ------------------------------------------------------------------ snapshots
    def snapshot_due(self, partition: int, every: float, unacked: int = 0, max_unacked: int = 1000) -> bool:
        """True if the partition's shards should be snapshotted now.

        When something changed and the last snapshot is older than ``every`` seconds, after a
        quiet-time publication, or when ``unacked`` messages (input marks only, say) pile up.
        While a forecast of the partition's shards is in flight (the snapshot would wait for
        it, and the input with it), the periodic and the unacked snapshots are put off, up to
        twice their bound; the quiet-time one is not.
        """
        now = self.clock()
        busy = self.forecasting(partition)
        for name in self.shards_on(partition):
            slot = self.slots.get(name)
            if slot is None:
                continue
            if slot.want_snapshot:
                return True
            if unacked >= (2 * max_unacked if busy else max_unacked):
                return True
            if slot.changed and now - slot.last_snapshot >= (2 * every if busy else every):
                return True
        return False

    def snapshot(self, partition: int) -> dict[str, bytes]:
        """Snapshot blobs of the shards of ``partition`` (table key -> value); :meth:`settle` first."""
        if any(job.slot.partition == partition for job in self._in_flight):
            msg = f"partition {partition} has forecasts in flight: settle() it before taking its snapshot"
            raise RuntimeError(msg)
        out: dict[str, bytes] = {}
        now = self.clock()
        for name in self.shards_on(partition):
            slot = self.slots.get(name)
            if slot is None:
                continue
            out[name] = encode_snapshot(self._snapshot_doc(slot))
            slot.last_snapshot = now
            slot.want_snapshot = False
            slot.changed = False
        return out

    def _snapshot_doc(self, slot: _Slot) -> dict[str, Any]:
        # A restored peer re-sends the handoffs made since its snapshot, which may be hours of
        # event time back: remember ids for two days of event time (handoffs are few).
        horizon = slot.shard.clock - HANDOFF_MEMORY
        slot.handoff_ids = {k: t for k, t in slot.handoff_ids.items() if t >= horizon}
        return {
            "version": SNAPSHOT_VERSION,
            "shard": slot.shard.snapshot(),
            "partition": slot.partition,
            "offset": slot.offset,
            "seq": slot.seq,
            "sources": {k: list(v) for k, v in sorted(slot.sources.items())},
            "peers": dict(sorted(slot.peers.items())),
            "handoff_ids": dict(sorted(slot.handoff_ids.items())),
            "routed": [[src, t, seq, _record_list(rec)] for src, (t, seq, rec, _) in slot.routed.items()],
            "handoffs": [[t, seq, event_to_dict(h)] for t, seq, h in sorted(slot.handoffs)],
            "parked": {eid: _record_list(rec) for eid, rec in sorted(slot.parked.items())},
            "saved_at": self.clock(),
            #: False once the state has been published after it last changed (quiet time)
            "dirty": slot.dirty,
            "buffered": len(slot.routed) + len(slot.handoffs),
        }

    def _restore(self, name: str, blob: bytes) -> _Slot:
        doc = decode_snapshot(blob)
        if doc.get("version") != SNAPSHOT_VERSION:
            msg = f"snapshot of shard {name!r} has version {doc.get('version')!r}; this worker reads {SNAPSHOT_VERSION}"
            raise ValueError(msg)
        shard = Shard.from_snapshot(self.network, doc["shard"], self.router)
        slot = _Slot(shard, self.partition_of[name])
        slot.offset = doc["offset"]
        slot.seq = doc["seq"]
        # Idleness is a fact about the moment a mark was made, not about now: until the ingest
        # stage says otherwise, an input is only known to be read up to its newest event.
        slot.sources = {k: [v[0], v[1], min(v[2], v[1])] for k, v in doc["sources"].items()}
        slot.peers = dict(doc["peers"])
        slot.handoff_ids = dict(doc["handoff_ids"])
        for src, t, seq, values in doc["routed"]:
            rec = _record_from_list(values)
            slot.routed.queue(src).append((t, seq, rec, self.codec.decode(rec.value)))
            slot.routed.size += 1
        slot.handoffs = [(t, seq, _as_handoff(event_from_dict(d))) for t, seq, d in doc["handoffs"]]
        heapq.heapify(slot.handoffs)
        slot.parked = {eid: _record_from_list(r) for eid, r in doc["parked"].items()}
        slot.dirty = True
        slot.last_snapshot = doc["saved_at"]
        return slot

    # ------------------------------------------------------------------ reading
    def stats(self) -> dict[str, dict[str, Any]]:
        """Per hosted shard: counters, clock, buffer sizes, watermarks."""
        out: dict[str, dict[str, Any]] = {}
        for name, slot in sorted(self.slots.items()):
            out[name] = slot.shard.stats.as_dict() | {
                "clock": slot.shard.clock,
                "buffered": len(slot.routed) + len(slot.handoffs),
                "input_watermark": self.input_watermark(slot),
                "progress": self.progress(slot),
                "offset": slot.offset,
            }
        return out


def _with_reason(rec: WireRecord, err: DecodeError) -> WireRecord:
    return msgspec.structs.replace(rec, reason=err.reason, detail=err.detail)


def _record_list(rec: WireRecord) -> list[Any]:
    return list(msgspec.structs.astuple(rec))


def _record_from_list(values: list[Any]) -> WireRecord:
    vals = list(values)
    vals[7] = [tuple(h) for h in vals[7]]
    return WireRecord(*vals)


def _as_handoff(ev: Event) -> TripHandoff:
    if not isinstance(ev, TripHandoff):  # pragma: no cover - only handoffs are stored as handoffs
        msg = f"expected a TripHandoff in the snapshot, got {type(ev).__name__}"
        raise TypeError(msg)
    return ev
