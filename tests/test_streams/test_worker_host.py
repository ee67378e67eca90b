"""The worker's shard stage without a broker: ingest batches -> hosts -> predictions.

An in-memory stand-in for the topics drives the real ``BatchBuilder`` and ``ShardHost``; the
in-process ``ShardedPipeline`` is the reference. The same stage runs on the real broker in
``test_kafka_pipeline.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import pickle
import random
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest

from scenarios.generate import generate
from scenarios.spec import load_scenario
from streams.codec import Codec
from streams.deadletter import from_message
from streams.envelopes import Batch, Handoff, Progress, decode_message, decode_snapshot, encode_batch, encode_message
from streams.host import HostSettings, ShardHost, input_name
from streams.ingest import BatchBuilder, SourceMessage
from streams.predictions import decode_prediction, encode_predictions, prediction_fields
from streams.shards import ForecastSettings, ShardedPipeline, ShardRouter
from streams.topics import Topics, input_topic
from twin.events import DockStatus, OrderScanned, TripHandoff, VehiclePosition

FAST = ForecastSettings(cadence=3600.0, horizon=6 * 3600.0, replicas=4, seed=7)
CUT = 6 * 3600.0
TOPICS = Topics()


@pytest.fixture(scope="module")
def mini():
    return generate(load_scenario("two-region-mini"))


@pytest.fixture(scope="module")
def events(mini):
    return [ev for ev in mini.events if ev.time < CUT]


@pytest.fixture(scope="module")
def reference(mini, events):
    return ShardedPipeline(mini.network, forecast=FAST).run(events)


class Cluster:
    """Input topics, the shard topic and the output topics in memory, and the workers' hosts."""

    def __init__(self, mini, *, partitions=2, workers=None, skew=300.0, direct=None, forecasts=True):
        self.net = mini.network
        self.forecasts = forecasts
        self.codec = Codec(mini.spec.epoch)
        self.partitions = partitions
        self.now = [1000.0]
        self.settings = HostSettings(
            partitions=partitions, cadence=FAST.cadence, skew=skew, idle_after=1e9, announce_every=1e9
        )
        self.inputs: dict[tuple[str, int], list[SourceMessage]] = {(t, 0): [] for t in TOPICS.inputs}
        self.read: dict[tuple[str, int], int] = dict.fromkeys(self.inputs, 0)
        self.builder = BatchBuilder(ShardRouter(self.net), self.codec, partitions)
        #: partition -> [(key, value)]
        self.shard_log: dict[int, list[tuple[bytes | None, bytes]]] = {p: [] for p in range(partitions)}
        #: the worker whose ingest stage hands its batches to its own host directly (None: nobody)
        self.direct = direct
        self.predictions: list[tuple[bytes, bytes | None]] = []
        self.dlq = []
        self.workers = workers or {"w1": set(range(partitions))}
        self.hosts = {w: self._new_host() for w in self.workers}
        self.consumed = {w: dict.fromkeys(parts, 0) for w, parts in self.workers.items()}
        self.snapshots: dict[str, bytes] = {}
        #: shard -> newest tick published (the worker's ``<shard>~published`` records)
        self.published: dict[str, float] = {}

    def _new_host(self):
        names = [input_name(t, p) for t, p in self.inputs]
        return ShardHost(
            self.net,
            self.codec,
            inputs=names,
            settings=self.settings,
            forecasters=(lambda _name: FAST.build(self.net)) if self.forecasts else None,
            clock=lambda: self.now[0],
        )

    # ------------------------------------------------------------------ producing and ingesting
    def produce(self, events, raw=None):
        for ev in events:
            topic = input_topic(ev, TOPICS)
            log = self.inputs[(topic, 0)]
            value = raw if raw is not None else self.codec.encode(ev)
            log.append(SourceMessage(topic, 0, len(log), int(self.now[0] * 1000), ev.subject.encode(), value))

    def produce_raw(self, topic, value):
        log = self.inputs[(topic, 0)]
        log.append(SourceMessage(topic, 0, len(log), int(self.now[0] * 1000), None, value, [("h", b"1")]))

    def ingest(self, take: dict[str, int] | None = None, *, again: int = 0):
        """One poll: up to ``take[topic]`` messages of each input (all by default)."""
        msgs = []
        for (topic, part), log in self.inputs.items():
            start = self.read[(topic, part)] - again
            n = len(log) - start if take is None else take.get(topic, 0)
            chunk = log[max(0, start) : start + n]
            msgs.extend(chunk)
            self.read[(topic, part)] = max(self.read[(topic, part)], start + len(chunk))
        positions = {tp: (self.read[tp], self.read[tp] >= len(log)) for tp, log in self.inputs.items()}
        batches = self.builder.build(msgs, positions, self.now[0])
        key = self.builder.batch_key()
        for part, batch in batches.items():
            self.shard_log[part].append((key, _encode(batch)))
        if self.direct is not None:
            host = self.hosts[self.direct]
            for part, batch in batches.items():
                host.offer_direct(part, key, batch, self.builder.last_events[part])

    # ------------------------------------------------------------------ workers
    #: wall seconds that pass per pumping round (0: time stands still unless a test moves it)
    round_seconds = 0.0

    def _run(self, coro):
        return asyncio.run(coro)

    def pump(self, rounds=50):
        for _ in range(rounds):
            self.now[0] += self.round_seconds
            busy = False
            for w, host in self.hosts.items():
                for part in sorted(self.consumed[w]):
                    log = self.shard_log[part]
                    if part not in host.hosted_partitions():
                        host.host(part, {n: self.snapshots.get(n) for n in host.shards_on(part)}, self.published)
                    while self.consumed[w][part] < len(log):
                        off = self.consumed[w][part]
                        host.receive(part, off, log[off][1], log[off][0])
                        self.consumed[w][part] += 1
                        busy = True
                busy = self._collect(self._run(host.step())) or busy
            if not busy:
                # Nothing to read: what the forecasts in flight publish is next (the worker steps
                # when one is done; here, wait for them).
                pending = [h for h in self.hosts.values() if h.in_flight]
                if not pending:
                    return
                for host in pending:
                    self._collect(self._run(host.settle()))

    def _collect(self, out) -> bool:
        self.dlq.extend(out.dead_letters)
        self.predictions.extend(out.predictions)
        self.published.update(out.ticks)
        for part, key, value in out.shard_messages:
            self.shard_log[part].append((key, value))
        return bool(out.shard_messages)

    def quiet(self):
        """Time passes with no input: the ingest stage's heartbeat marks every input idle, and
        every shard publishes its final set."""
        self.now[0] += 1e10
        self.ingest({})
        self.pump()
        self.now[0] += 1e10
        self.pump()

    def snapshot_all(self):
        for host in self.hosts.values():
            for part in host.hosted_partitions():
                self.snapshots.update(host.snapshot(part))

    def crash(self, worker, *, rewind=50):
        """The worker dies; it restarts from its snapshots and re-reads from their offsets.

        Its ingest stage restarts too (state lost), ``rewind`` records before where it was on
        every input (its last commits), and reads unevenly again.
        """
        self.builder = BatchBuilder(ShardRouter(self.net), self.codec, self.partitions)
        for tp in self.read:
            self.read[tp] = max(0, self.read[tp] - rewind)
        self.hosts[worker] = self._new_host()
        for part in self.consumed[worker]:
            names = [n for n in self.hosts[worker].shards_on(part) if n in self.snapshots]
            offs = [decode_snapshot(self.snapshots[n])["offset"] for n in names]
            self.consumed[worker][part] = min(offs) + 1 if offs else 0

    def final(self):
        out = {}
        for key, value in self.predictions:
            if value is None:
                out.pop(key.decode(), None)
            else:
                out[key.decode()] = prediction_fields(decode_prediction(value))
        return out

    def states(self):
        return {n: s.shard.state.snapshot() for h in self.hosts.values() for n, s in h.slots.items()}


def _encode(batch: Batch) -> bytes:
    return encode_batch(batch)  # as the ingest stage writes it


def _ref_final(result):
    return {k: prediction_fields(p) for k, p in result.final_predictions().items()}


def _ref_states(result):
    return {n: s.state.snapshot() for n, s in result.shards.items()}


def _feed_skewed(cluster, events, rng, polls=40):
    """Sensors and orders read in uneven chunks: one topic runs hours ahead of the other."""
    cluster.produce(events)
    sizes = {t: len(cluster.inputs[(t, 0)]) for t in TOPICS.inputs}
    for _ in range(polls):
        take = {t: rng.randint(0, max(1, 3 * sizes[t] // polls)) for t in TOPICS.inputs}
        cluster.ingest(take)
        cluster.pump()
    cluster.ingest()
    cluster.pump()
    cluster.quiet()


# ---------------------------------------------------------------------------------- equivalence


def test_one_worker_equals_the_in_process_pipeline_whatever_the_fetch_order(mini, events, reference):
    cluster = Cluster(mini)
    _feed_skewed(cluster, events, random.Random(3))
    assert cluster.states() == _ref_states(reference)
    assert cluster.final() == _ref_final(reference)
    assert len(cluster.final()) > 100
    assert cluster.dlq == []
    # Every tick publication of the reference was published, in the same order per key.
    published = defaultdict(list)
    for key, value in cluster.predictions:
        if value is not None:
            published[key.decode()].append(prediction_fields(decode_prediction(value)))
    for pub in reference.publications:
        if pub.prediction is not None:
            assert prediction_fields(pub.prediction) in published[pub.key], pub.key


def test_a_caught_up_input_holds_the_others_back_until_it_is_idle(mini, events, reference):
    """A producer writing two topics in event-time order: the broker may already have the
    sensor readings of the next hours while the orders before them are still on their way. An
    input that is caught up for the moment must not let the others run past it (the race that a
    day replayed in seconds turns into hours of event time) until it has been quiet for
    ``idle_after``."""
    cluster = Cluster(mini)
    cluster.builder.idle_after = 5.0
    half = events[len(events) // 2].time
    orders_late = [ev for ev in events if input_topic(ev, TOPICS) == TOPICS.orders and ev.time >= half]
    cluster.produce([ev for ev in events if ev not in orders_late])
    cluster.ingest()  # everything there is, read: every input is caught up
    cluster.pump()
    held = max(s.shard.clock for h in cluster.hosts.values() for s in h.slots.values())
    assert held < half
    cluster.now[0] += 1.0  # less than idle_after: the orders input is still a bound
    cluster.produce(orders_late)
    cluster.ingest()
    cluster.pump()
    cluster.quiet()
    assert cluster.dlq == []
    assert cluster.states() == _ref_states(reference)
    assert cluster.final() == _ref_final(reference)


def test_batches_taken_directly_by_the_local_host_give_the_same_result(mini, events, reference):
    cluster = Cluster(mini, direct="w1")
    _feed_skewed(cluster, events, random.Random(4))
    assert cluster.states() == _ref_states(reference)
    assert cluster.final() == _ref_final(reference)
    host = cluster.hosts["w1"]
    assert host.direct_batches > 20
    assert not any(host._direct.values()), "every directly taken batch was matched by its copy"


def test_two_workers_on_separate_partitions_agree(mini, events, reference):
    cluster = Cluster(mini, workers={"w1": {0}, "w2": {1}})
    _feed_skewed(cluster, events, random.Random(5))
    assert cluster.states() == _ref_states(reference)
    assert cluster.final() == _ref_final(reference)


def test_progress_goes_on_the_topic_only_to_partitions_hosted_elsewhere(mini, events, reference):
    """Shards of one worker read each other's progress in memory: no Progress message between them
    (each would be read back and skipped); their peer records still get it, for their snapshots."""

    def progress_messages(cluster):
        messages = [decode_message(value) for log in cluster.shard_log.values() for _, value in log]
        return [m for m in messages if isinstance(m, Progress)]

    alone = Cluster(mini)
    _feed_skewed(alone, events, random.Random(3))
    assert alone.states() == _ref_states(reference)
    assert progress_messages(alone) == []
    host = alone.hosts["w1"]
    for name, slot in host.slots.items():
        (other,) = [n for n in host.slots if n != name]
        assert -math.inf < slot.peers[other] <= host.promise(host.slots[other])
        assert decode_snapshot(host.snapshot(slot.partition)[name])["peers"] == slot.peers

    apart = Cluster(mini, workers={"w1": {0}, "w2": {1}})
    _feed_skewed(apart, events, random.Random(3))
    assert apart.states() == _ref_states(reference)
    assert {m.from_shard for m in progress_messages(apart)} == set(apart.states())


def test_shards_sharing_one_partition(mini, events, reference):
    cluster = Cluster(mini, partitions=1)
    _feed_skewed(cluster, events, random.Random(7))
    assert cluster.states() == _ref_states(reference)
    assert cluster.final() == _ref_final(reference)


def test_more_partitions_than_shards(mini, events, reference):
    """The worker's default is 4 shard-topic partitions; the mini network has 2 regions."""
    cluster = Cluster(mini, partitions=4)
    _feed_skewed(cluster, events, random.Random(8))
    assert all(not cluster.shard_log[p] for p in (2, 3))  # nothing is written where no shard lives
    assert cluster.states() == _ref_states(reference)
    assert cluster.final() == _ref_final(reference)


def test_a_shard_never_runs_more_than_the_skew_ahead(mini, events):
    cluster = Cluster(mini, workers={"w1": {0}, "w2": {1}}, skew=120.0)
    cluster.produce(events)
    # Only w1 runs: its shard may not get more than the skew past where w2's shard has announced.
    cluster.ingest()
    host = cluster.hosts["w1"]
    for _ in range(3):
        for part in (0,):
            if part not in host.hosted_partitions():
                host.host(part)
            log = cluster.shard_log[part]
            while cluster.consumed["w1"][part] < len(log):
                off = cluster.consumed["w1"][part]
                host.receive(part, off, log[off][1], log[off][0])
                cluster.consumed["w1"][part] += 1
        asyncio.run(host.step())
    (slot,) = host.slots.values()
    assert slot.shard.clock == -float("inf") or slot.shard.clock <= 0  # nothing: beta never announced
    cluster.pump()
    cluster.quiet()
    assert max(s.shard.clock for h in cluster.hosts.values() for s in h.slots.values()) == max(e.time for e in events)


# ---------------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("direct", [None, "w1"])
def test_restart_from_snapshots_mid_stream_gives_the_uninterrupted_result(mini, events, reference, direct):
    rng = random.Random(9)
    cluster = Cluster(mini, workers={"w1": {0}, "w2": {1}}, direct=direct)
    cluster.produce(events)
    sizes = {t: len(cluster.inputs[(t, 0)]) for t in TOPICS.inputs}
    for i in range(30):
        take = {t: rng.randint(0, max(1, 3 * sizes[t] // 30)) for t in TOPICS.inputs}
        cluster.ingest(take)
        if i % 7 == 3:
            cluster.ingest(take, again=rng.randint(1, 40))  # the ingest stage reads some records again
        cluster.pump()
        if i % 5 == 0:
            cluster.snapshot_all()
        if i in (12, 21):
            cluster.crash("w2" if i == 12 else "w1")
    cluster.ingest()
    cluster.pump()
    cluster.quiet()
    assert cluster.states() == _ref_states(reference)
    assert cluster.final() == _ref_final(reference)
    stats = [s.shard.stats for h in cluster.hosts.values() for s in h.slots.values()]
    assert sum(sum(s.applied.values()) for s in stats) == len(events)


def test_a_shard_taken_over_does_not_publish_its_old_ticks_again(mini, events, reference):
    """A shard restored from an old snapshot replays hours of ticks. Published again, a replayed
    tick would overwrite the newer predictions of orders it has handed off since (their new owner
    published its last tick before): the compacted topic would end with stale predictions."""
    cluster = Cluster(mini, workers={"w1": {0}, "w2": {1}})
    cluster.produce(events)
    sizes = {t: len(cluster.inputs[(t, 0)]) for t in TOPICS.inputs}
    for i in range(30):
        cluster.ingest({t: max(1, sizes[t] // 30) for t in TOPICS.inputs})
        cluster.pump()
        if i == 3:
            cluster.snapshot_all()  # the only snapshots: hours before the end
    cluster.ingest()
    cluster.pump()
    cluster.quiet()
    assert cluster.final() == _ref_final(reference)
    for w in ("w2", "w1"):  # then each worker dies in turn, and its shards replay hours
        before = len(cluster.predictions)
        cluster.crash(w)
        cluster.ingest()
        cluster.pump()
        cluster.quiet()
        assert cluster.states() == _ref_states(reference)
        assert cluster.final() == _ref_final(reference)
        assert len(cluster.predictions) > before  # the restored shard's final set, published again


def test_a_restored_shard_publishes_nothing_older_than_its_last_host_did(mini, events, reference):
    """A restored shard that is quiet before it has replayed up to its old host's last published
    tick (its records not read back yet, on a slow start) must not publish its old state: the
    replayed ticks after it are not sent again, so their tombstones would not follow, and the
    keys they closed would stay on the compacted topic with hours-old predictions. Seen on the
    real broker under load (the crash-recovery test)."""
    cluster = Cluster(mini, workers={"w1": {0}, "w2": {1}})
    split = len(events) // 3
    cluster.produce(events[:split])
    cluster.ingest()
    cluster.pump()
    cluster.quiet()  # the input paused: everything routed is applied
    cluster.snapshot_all()  # the only snapshots: hours before the end
    cluster.produce(events[split:])
    cluster.ingest()
    cluster.pump()
    cluster.quiet()
    assert cluster.final() == _ref_final(reference)
    for w in ("w2", "w1"):
        cluster.crash(w)
        host = cluster.hosts[w]
        for part in cluster.consumed[w]:
            host.host(part, {n: cluster.snapshots.get(n) for n in host.shards_on(part)}, cluster.published)
        cluster.now[0] += 2e9  # quiet for longer than idle_after, nothing read back yet
        before = len(cluster.predictions)
        cluster._collect(cluster._run(host.step()))
        assert len(cluster.predictions) == before
        cluster.ingest()
        cluster.pump()
        cluster.quiet()
        assert cluster.states() == _ref_states(reference)
        assert cluster.final() == _ref_final(reference)


def test_a_worker_without_forecasts_keeps_no_produce_timestamps(mini, events, reference):
    """Produce timestamps wait for the publication that covers them (the latency metric): with
    forecasts off there is none, and they must not pile up for the life of the worker."""
    cluster = Cluster(mini, forecasts=False)
    _feed_skewed(cluster, events, random.Random(5))
    assert cluster.states() == _ref_states(reference)
    assert cluster.predictions == []
    assert all(slot.unpublished == [] for slot in cluster.hosts["w1"].slots.values())


def test_snapshot_blob_holds_the_whole_slot(mini, events):
    cluster = Cluster(mini)
    cluster.produce(events[:3000])
    cluster.ingest({TOPICS.sensors: 5000, TOPICS.orders: 200})  # orders lag: sensors wait in the buffer
    cluster.pump()
    host = cluster.hosts["w1"]
    assert sum(len(s.routed) for s in host.slots.values()) > 100
    blobs = {}
    for part in host.hosted_partitions():
        blobs.update(host.snapshot(part))
    again = cluster._new_host()
    for part in host.hosted_partitions():
        again.host(part, blobs)
    for name, slot in host.slots.items():
        other = again.slots[name]
        assert other.shard.state.snapshot() == slot.shard.state.snapshot()
        assert [(src, t, seq) for src, (t, seq, _, _) in other.routed.items()] == [
            (src, t, seq) for src, (t, seq, _, _) in slot.routed.items()
        ]
        assert other.offset == slot.offset
        # Offsets and newest times survive; idleness does not (it was true when the mark was made).
        assert {k: v[:2] for k, v in other.sources.items()} == {k: v[:2] for k, v in slot.sources.items()}
        assert all(v[2] <= v[1] for v in other.sources.values())


# ---------------------------------------------------------------------------------- dead letters


def test_bad_input_is_dead_lettered_with_its_bytes_headers_and_reason(mini, events):
    cluster = Cluster(mini)
    good = events[:2500]
    pos = next(e for e in good[1000:] if isinstance(e, VehiclePosition))
    cluster.produce(good[:1200])
    cluster.produce_raw(TOPICS.sensors, b"{not json")
    unknown = (
        b'{"specversion":"1.0","id":"x","source":"/s","type":"no.such.type",'
        b'"time":"2026-03-02T01:00:00Z","subject":"s","data":{}}'
    )
    cluster.produce_raw(TOPICS.sensors, unknown)
    cluster.produce_raw(TOPICS.orders, cluster.codec.encode(pos).replace(b'"vehicle_id"', b'"vehicle"'))
    cluster.produce([pos])  # a duplicate of an event already produced
    cluster.produce([dataclasses.replace(pos, id="unknown-vehicle", vehicle_id="NOPE")])
    cluster.produce([DockStatus(id="too-late", time=5.0, site_id="A-HUB", occupied=0, in_service=3)])
    cluster.produce([OrderScanned(id="ghost-scan", time=pos.time, order_id="GHOST", site_id="A-HUB", kind="sorted")])
    cluster.produce(good[1200:])
    cluster.ingest()
    cluster.pump()
    cluster.quiet()
    letters = [from_message(m.value, m.headers, m.key) for m in cluster.dlq]
    reasons = Counter(x.reason for x in letters)
    assert reasons == {
        "malformed-json": 1,
        "unknown-type": 1,
        "schema": 1,
        "duplicate": 1,
        "unknown-entity": 2,
        "too-late": 1,
    }
    raw = {x.value for x in letters}
    assert b"{not json" in raw
    bad = next(x for x in letters if x.reason == "malformed-json")
    assert bad.headers == (("h", b"1"),) and bad.topic == TOPICS.sensors and bad.offset is not None
    consumed = sum(len(log) for log in cluster.inputs.values())
    stats = [s.shard.stats for h in cluster.hosts.values() for s in h.slots.values()]
    applied = sum(sum(s.applied.values()) for s in stats)
    dead = sum(sum(s.dead_lettered.values()) for s in stats)
    assert applied + dead == consumed
    assert dead == len(letters) == 7


def test_a_shard_topic_message_the_worker_cannot_read_is_skipped_with_a_warning(mini, events, reference, caplog):
    cluster = Cluster(mini)
    half = len(events) // 2
    cluster.produce(events[:half])
    cluster.ingest()
    cluster.shard_log[0].append((b"someone", b"\xc1 not msgpack"))
    cluster.produce(events[half:])
    cluster.ingest()
    with caplog.at_level("WARNING", logger="streams.host"):
        cluster.pump()
        cluster.quiet()
    (record,) = [r for r in caplog.records if "skipped shard-topic message" in r.getMessage()]
    assert "partition 0" in record.getMessage()
    assert cluster.final() == _ref_final(reference)


def test_a_handoff_its_shard_cannot_take_is_dead_lettered_not_dropped(mini, events):
    """A handoff is not input, but losing one loses a trip: it goes to the DLQ with its reason,
    outside the input accounting, and is counted as a rejected handoff."""
    from prometheus_client import CollectorRegistry

    from streams.metrics import TwinMetrics

    registry = CollectorRegistry()
    cluster = Cluster(mini, forecasts=False)
    for host in cluster.hosts.values():
        host.metrics = TwinMetrics.create(registry)
    good = events[:2000]
    cluster.produce(good)
    cluster.ingest()
    cluster.pump()
    host = cluster.hosts["w1"]
    beta = host.slots["beta"]
    t = beta.shard.clock
    ghost = TripHandoff(
        id="handoff-ghost", time=t, trip_id="NO-SUCH-TRIP", leg=0, vehicle_id="V", departed_at=t,
        from_shard="alpha", to_shard="beta",
    )  # fmt: skip
    ghost_raw = cluster.codec.encode(ghost)
    not_a_handoff = cluster.codec.encode(next(e for e in good if isinstance(e, VehiclePosition)))
    for raw in (ghost_raw, not_a_handoff, b"{broken"):
        cluster.shard_log[beta.partition].append((b"beta", encode_message(Handoff(to_shard="beta", event=raw))))
    cluster.pump()
    cluster.quiet()
    letters = [from_message(m.value, m.headers, m.key) for m in cluster.dlq]
    assert [(x.reason, x.value) for x in letters] == [
        ("schema", not_a_handoff),
        ("malformed-json", b"{broken"),
        ("unknown-entity", ghost_raw),
    ]
    assert all(x.topic == host.settings.shard_topic and x.key == b"beta" for x in letters)
    assert "NO-SUCH-TRIP" in letters[2].detail and "alpha" in letters[2].detail
    assert beta.shard.stats.handoffs_rejected == 1
    # Input accounting is untouched: every input event applied, none dead-lettered.
    stats = [s.shard.stats for h in cluster.hosts.values() for s in h.slots.values()]
    assert sum(sum(s.applied.values()) for s in stats) == len(good)
    assert sum(sum(s.dead_lettered.values()) for s in stats) == 0
    value = registry.get_sample_value
    assert value("twin_handoffs_total", {"shard": "beta", "outcome": "rejected"}) == 3
    assert value("twin_dlq_events_total", {"reason": "unknown-entity"}) == 1
    sent = sum(value("twin_handoffs_total", {"shard": s, "outcome": "sent"}) or 0 for s in ("alpha", "beta"))
    received = sum(value("twin_handoffs_total", {"shard": s, "outcome": "received"}) or 0 for s in ("alpha", "beta"))
    assert sent == received == sum(s.handoffs_sent for s in stats) > 0


# ---------------------------------------------------------------------------------- background refreshes


class _BackgroundCluster(Cluster):
    """Wall-clock refreshes run in the background (as with ``--forecast-in process``): the runner
    copies the state when called and forecasts the copy in another thread while events flow."""

    def __init__(self, mini, **kw):
        self.loop = asyncio.new_event_loop()
        self.pool = ThreadPoolExecutor(1)
        self.copies = 0
        super().__init__(mini, **kw)
        self.settings = dataclasses.replace(self.settings, refresh_every=0.5, background_refresh=True)
        self.hosts = {w: self._new_host() for w in self.workers}

    def _new_host(self):
        host = super()._new_host()
        fc = FAST.build(self.net)

        def runner(name, state, incremental):
            self.copies += 1
            copy = pickle.loads(pickle.dumps(state))  # noqa: S301
            return self.loop.run_in_executor(self.pool, fc.forecast, copy)

        host.runner = runner
        return host

    round_seconds = 1.0  # wall time passes: refreshes fall due

    def _run(self, coro):
        return self.loop.run_until_complete(coro)

    def close(self):
        self.pool.shutdown()
        self.loop.close()


def test_background_refreshes_publish_while_events_flow_and_change_no_final_result(mini, events, reference):
    cluster = _BackgroundCluster(mini, direct="w1")
    try:
        _feed_skewed(cluster, events, random.Random(11))
        host = cluster.hosts["w1"]
        assert host.in_flight == 0
        assert cluster.states() == _ref_states(reference)
        assert cluster.final() == _ref_final(reference)
        reference_publications = len(reference.publications)
        assert cluster.copies > 2 * len(host.slots)  # refreshes besides the ticks and the quiet-time sets
        assert len(cluster.predictions) > reference_publications
        # A refresh is labelled with the offsets of the state it forecast, never beyond what was applied.
        for _key, value in cluster.predictions:
            if value is not None:
                p = decode_prediction(value)
                assert all(off < len(cluster.inputs[(tp.split("/")[0], 0)]) for tp, off in p.offsets.items())
    finally:
        cluster.close()


class _FailingCluster(_BackgroundCluster):
    """Background forecasts of which some fail (as when the forecast process dies or loses its copy)."""

    def __init__(self, mini, fail, **kw):
        self.fail = fail  # call numbers (from 1) that raise
        self.calls = 0
        super().__init__(mini, **kw)

    def _new_host(self):
        host = super()._new_host()
        inner = host.runner

        def runner(name, state, incremental):
            self.calls += 1
            if self.calls in self.fail:
                future = self.loop.create_future()
                future.set_exception(RuntimeError(f"forecast {self.calls} failed"))
                return future
            return inner(name, state, incremental)

        host.runner = runner
        return host


def test_a_failed_forecast_publishes_nothing_is_counted_and_the_worker_goes_on(mini, events, reference, caplog):
    from prometheus_client import CollectorRegistry

    from streams.metrics import TwinMetrics

    registry = CollectorRegistry()
    cluster = _FailingCluster(mini, fail={2, 3, 7}, direct="w1")
    for host in cluster.hosts.values():
        host.metrics = TwinMetrics.create(registry)
    try:
        _feed_skewed(cluster, events, random.Random(11))
        assert cluster.calls > 7
        failed = {
            s: registry.get_sample_value("twin_forecast_failures_total", {"shard": s, "reason": "RuntimeError"}) or 0
            for s in ("alpha", "beta")
        }
        assert sum(failed.values()) == 3
        assert sum("failed: forecast 2 failed" in r.getMessage() for r in caplog.records) == 1
        # every event applied, and the forecasts after the failures published: the last word is the reference's
        assert cluster.states() == _ref_states(reference)
        assert cluster.final() == _ref_final(reference)
    finally:
        cluster.close()


class _LateForecastCluster(Cluster):
    """Ticks forecast in the background (``--forecast-in process``) and finish late: a forecast
    is done only a few event-loop turns after it started, that is, after the host has gone on
    applying events for a few more steps. No threads: the same interleaving on every run."""

    def __init__(self, mini, turns=(3,), encoded=False, **kw):
        self.loop = asyncio.new_event_loop()
        self.turns = itertools.cycle(turns)
        #: send the predictions back encoded, as the worker's forecast process does
        self.encoded = encoded
        self.applied_while_in_flight = 0
        super().__init__(mini, **kw)
        self.settings = dataclasses.replace(self.settings, background_refresh=True, background_ticks=True, in_flight=3)
        self.hosts = {w: self._new_host() for w in self.workers}

    def _new_host(self):
        host = super()._new_host()
        fc = FAST.build(self.net)

        def runner(name, state, incremental):
            copy = pickle.loads(pickle.dumps(state))  # noqa: S301 - the copy is made when called
            turns = next(self.turns)

            async def later():
                for _ in range(turns):
                    await asyncio.sleep(0)
                predictions = fc.forecast(copy)
                return encode_predictions(predictions, epoch=self.codec.epoch) if self.encoded else predictions

            return later()

        host.runner = runner
        return host

    def _applied(self):
        return sum(sum(s.shard.stats.applied.values()) for h in self.hosts.values() for s in h.slots.values())

    def _run(self, coro):
        if not any(h.in_flight for h in self.hosts.values()):
            return self.loop.run_until_complete(coro)
        before = self._applied()
        out = self.loop.run_until_complete(coro)
        self.applied_while_in_flight += self._applied() - before
        return out

    def close(self):
        self.loop.close()


def _history(pairs):
    out = defaultdict(list)
    for key, prediction in pairs:
        out[key].append(None if prediction is None else prediction_fields(prediction))
    return dict(out)


@pytest.mark.parametrize(
    ("workers", "turns"),
    [(None, (3,)), ({"w1": {0}, "w2": {1}}, (3,)), (None, (6, 1, 3))],
    ids=["one-worker", "two-workers", "finishing-out-of-order"],
)
def test_background_ticks_publish_exactly_what_waiting_for_them_publishes(mini, events, reference, workers, turns):
    """Events go on being applied while a tick is forecast; each key still gets the same
    publications in the same order (ownership and offsets as at the tick; a handoff waits for
    the ticks before it, so the new owner never speaks before the old owner's last word). With
    several forecast processes a later forecast can finish first: it is published in its turn."""
    cluster = _LateForecastCluster(mini, workers=workers, turns=turns)
    try:
        _feed_skewed(cluster, events, random.Random(12))
        assert all(h.in_flight == 0 for h in cluster.hosts.values())
        assert cluster.applied_while_in_flight > 500  # ticks really overlapped the events after them
        assert cluster.states() == _ref_states(reference)
        assert cluster.final() == _ref_final(reference)
        got = _history((k.decode(), None if v is None else decode_prediction(v)) for k, v in cluster.predictions)
        assert got == _history((p.key, p.prediction) for p in reference.publications)
    finally:
        cluster.close()


def test_predictions_sent_back_encoded_publish_the_same_bytes(mini, events):
    """The forecast process encodes its predictions (all but shard and offsets); the records the
    host publishes are byte for byte those it makes of the PredictedState objects itself."""
    runs = {}
    for encoded in (False, True):
        cluster = _LateForecastCluster(mini, turns=(6, 1, 3), encoded=encoded)
        try:
            _feed_skewed(cluster, events, random.Random(12))
            runs[encoded] = cluster.predictions
        finally:
            cluster.close()
    assert len(runs[True]) > 100
    assert runs[True] == runs[False]


# ---------------------------------------------------------------------------------- snapshots and forecasts in flight


class _HeldForecastCluster(Cluster):
    """Background refreshes whose forecasts finish only when the test says so (``release``)."""

    def __init__(self, mini, **kw):
        self.loop = asyncio.new_event_loop()
        #: (shard, future, predictions) of every forecast started, in order
        self.started: list = []
        super().__init__(mini, **kw)
        self.settings = dataclasses.replace(
            self.settings, refresh_every=0.5, background_refresh=True, parallel_forecasts=2
        )
        self.hosts = {w: self._new_host() for w in self.workers}

    def _new_host(self):
        host = super()._new_host()
        fc = FAST.build(self.net)

        def runner(name, state, incremental):
            future = self.loop.create_future()
            self.started.append((name, future, fc.forecast(state)))
            return future

        host.runner = runner
        return host

    def _run(self, coro):
        return self.loop.run_until_complete(coro)

    def release(self, index):
        name, future, predictions = self.started[index]
        future.set_result(predictions)

    def close(self):
        self.loop.close()


def test_a_snapshot_waits_only_for_the_forecasts_of_its_partition_and_those_before(mini, events):
    cluster = _HeldForecastCluster(mini, partitions=2)
    try:
        host = cluster.hosts["w1"]
        cluster.produce([ev for ev in events if ev.time < 3000.0])  # before the first tick
        cluster.ingest()
        cluster.now[0] += 2.0
        cluster.ingest({})  # the inputs are idle: everything read may be applied
        for part in range(2):
            host.host(part)
        for _ in range(3):  # deliver the batches, then two steps, each starting one refresh
            for part, log in cluster.shard_log.items():
                for off in range(host.next_offset(part), len(log)):
                    host.receive(part, off, log[off][1], log[off][0])
            cluster.now[0] += 1.0
            cluster._collect(cluster._run(host.step()))
        assert [name for name, _, _ in cluster.started] == ["alpha", "beta"]
        first, second = (host.partition_of[name] for name, _, _ in cluster.started)
        assert first != second
        assert host.forecasting(first) and host.forecasting(second)

        # The second shard's periodic snapshot is put off while its forecast is in flight (up to
        # twice the period); the quiet-time one is not.
        slot = host.slots["beta"]
        slot.last_snapshot = cluster.now[0] - 6.0
        assert not host.snapshot_due(second, every=5.0)
        assert not host.snapshot_due(second, every=5.0, unacked=1500)
        assert host.snapshot_due(second, every=5.0, unacked=2000)
        slot.last_snapshot = cluster.now[0] - 11.0
        assert host.snapshot_due(second, every=5.0)
        slot.last_snapshot = cluster.now[0]
        slot.want_snapshot = True
        assert host.snapshot_due(second, every=5.0)
        slot.want_snapshot = False

        # The first partition's snapshot needs only its own forecast: the other stays in flight.
        cluster.release(0)
        out = cluster._run(asyncio.wait_for(host.settle(first), timeout=10.0))  # beta's never finishes
        assert out.predictions and {decode_prediction(v).shard for _, v in out.predictions if v} == {"alpha"}
        assert host.in_flight == 1 and not host.forecasting(first)
        assert set(host.snapshot(first)) == {"alpha"}
        with pytest.raises(RuntimeError, match="in flight"):
            host.snapshot(second)

        # A forecast started before the partition's own is published first (publication order).
        cluster.now[0] += 1.0
        cluster._collect(cluster._run(host.step()))  # starts alpha's next refresh, after beta's
        assert [name for name, _, _ in cluster.started] == ["alpha", "beta", "alpha"]
        cluster.release(1)
        cluster.release(2)
        out = cluster._run(host.settle(first))
        assert [decode_prediction(v).shard for _, v in out.predictions if v][:1] == ["beta"]
        assert {decode_prediction(v).shard for _, v in out.predictions if v} == {"alpha", "beta"}
        assert host.in_flight == 0
    finally:
        cluster.close()
