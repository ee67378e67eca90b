"""The Kafka worker: a Faust app built by a factory (no module-level app).

Data flow (DESIGN.md, "Layers and the way data flows")::

    logistics.sensors / .orders / .dispatch      raw CloudEvents JSON bytes
        |  ingest (aiokafka consumer group, polls of thousands, codec.decode_many, ShardRouter)
        v
    <app id>-shards   (internal, one partition per shard group)  Batch | Handoff | Progress
        |  Faust agent "shards" (concurrency 1, manual acks) -> ShardHost.step()
        v
    twin.predictions (compacted, key kind:id)   twin.dlq (original bytes + twin.dlq.* headers)
    <app id>-snapshots (compacted, key shard)    per-shard snapshots and newest published ticks
                                                 (key <shard>~published), written and read by the worker

Why the ingest stage is not a Faust agent: Faust's consumer costs about 200 microseconds per
message here (see ``streams.ingest``); the shard topic carries one message per poll and
partition, so the Faust agent's per-message cost is paid per batch, not per event.

Delivery is at-least-once everywhere; application is idempotent: the ingest stage commits input
offsets after the broker has its batches, the shard agent acks shard-topic messages only once a
snapshot that includes them is on the snapshot topic (so Faust's committed offset never passes
the newest snapshot), shards drop redelivered records by source offset and repeated handoffs by id,
and predictions are keyed by entity on a compacted topic. A shard taken over replays the forecast
ticks its previous host published without publishing them again (``<shard>~published``): a
replayed tick would overwrite what the new owners of keys handed off since have published.
Faust's exactly-once mode is not used (FAUST-NOTES.md). Faust's web server is off (its ``/table``
and ``/router`` endpoints would expose table data); metrics are served by prometheus-client on
``--metrics-port``.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry

from scenarios.build import build_network
from scenarios.spec import load_scenario
from streams.codec import Codec
from streams.envelopes import Batch, decode_published, encode_published, published_key
from streams.forecast_process import (
    ForecastProcesses,
    RemoteForecaster,
    forecast_mirrored,
    forget_mirror,
    mirror_request,
)
from streams.host import HostOutput, HostSettings, ShardHost, input_name
from streams.ingest import BatchBuilder, Ingest
from streams.metrics import TwinMetrics
from streams.settings import WorkerSettings
from streams.shards import ForecasterLike, ForecastSettings, ShardRouter
from twin.events import Event
from twin.network import Network
from twin.state import WorldState

__all__ = ["TwinWorker", "create_app", "prepare_topics"]

log = logging.getLogger(__name__)

#: The largest message the worker sends (producer ``max_request_size``), and what the shard and
#: snapshot topics it creates accept (``max.message.bytes``).
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024


async def prepare_topics(settings: WorkerSettings) -> list[str]:
    """Create the input, predictions, DLQ, shard and snapshot topics if missing; return the input partitions' names.

    Topics must exist before anything subscribes: a consumer does not see a topic created later
    (by a producer's auto-creation, or by Faust declaring its internal topic) until its next
    metadata refresh, and a worker's first group assignment on a fresh broker then left the
    shard topic out ("Topic ... not found in cluster metadata"): no shard was hosted for minutes.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker, **settings.security.aiokafka())
    await admin.start()
    try:
        t = settings.topics
        existing = set(await admin.list_topics())
        wanted = {name: NewTopic(name, settings.input_partitions, settings.replication) for name in t.inputs}
        wanted[t.dlq] = NewTopic(t.dlq, settings.input_partitions, settings.replication)
        wanted[t.predictions] = NewTopic(
            t.predictions,
            settings.partitions,
            settings.replication,
            topic_configs={"cleanup.policy": "compact"},
        )
        # One message per shard partition and poll carries that poll's records for the shard
        # (420-540 KiB per shard on the default day with 5000-record polls; a network of one
        # region puts a whole poll in one, about 2 MB). The broker's default limit, 1 MiB, would
        # refuse it and stop the ingest stage: the topic takes what the producer may send.
        wanted[settings.shard_topic] = NewTopic(
            settings.shard_topic,
            settings.partitions,
            settings.replication,
            topic_configs={"max.message.bytes": str(MAX_MESSAGE_BYTES)},
        )
        # One snapshot per shard is what counts; small segments let compaction keep it small.
        wanted[settings.snapshot_topic] = NewTopic(
            settings.snapshot_topic,
            settings.partitions,
            settings.replication,
            topic_configs={
                "cleanup.policy": "compact",
                "segment.bytes": str(16 * 1024 * 1024),
                "min.cleanable.dirty.ratio": "0.1",
                "max.message.bytes": str(MAX_MESSAGE_BYTES),
            },
        )
        missing = [nt for name, nt in wanted.items() if name not in existing]
        if missing:
            await admin.create_topics(missing)
        described = await admin.describe_topics(list(t.inputs))
        names: list[str] = []
        for desc in described:
            for part in desc.get("partitions", []):
                names.append(input_name(desc["topic"], part["partition"]))
        return sorted(names)
    finally:
        await admin.close()


@dataclass
class TwinWorker:
    """A built worker: the Faust app and the parts it drives (for the CLI and for tests)."""

    settings: WorkerSettings
    network: Network
    codec: Codec
    app: Any
    host: ShardHost
    ingest: Ingest
    registry: CollectorRegistry
    metrics: TwinMetrics
    #: runs the forecasts: child processes (``--forecast-in process``) or one thread
    executor: Executor | ForecastProcesses
    #: the shard host is driven by the agent and by the ingest stage's direct batches: one at a time
    lock: asyncio.Lock
    unacked: dict[int, list[Any]] = field(default_factory=lambda: defaultdict(list))
    #: sends the predictions (in batches, see :class:`PredictionSender`)
    predictions_out: PredictionSender = field(default_factory=lambda: PredictionSender())

    def run(self) -> None:
        """Run the worker until it is stopped (SIGTERM/SIGINT); blocks."""
        faust_worker(self.app, self.settings.log_level).execute_from_commandline()


def faust_worker(app: Any, log_level: str) -> Any:
    """The Faust worker that runs ``app``, without Faust's start-up spinner.

    At ``--log-level warn`` and above, the spinner (which turns once per log record) sets the
    root logger to DEBUG and leaves it there: every debug call of aiokafka, several per message
    produced or fetched, then built a LogRecord that the handler (at the configured level)
    dropped, about 8% of the worker's CPU samples in a latency run (py-spy, 2026-11-25).
    Without the spinner the root logger stays at the configured level.
    """
    import faust

    worker = faust.Worker(app, loglevel=log_level, quiet=True)
    worker.spinner = None
    return worker


#: How long the broker may hold the ingest consumer's fetch when it has no data (aiokafka's
#: default: 500 ms). aiokafka sends the next fetch to a broker only when the previous one is back
#: and every partition's prefetched records are consumed; a fetch for only the partitions that
#: had nothing (the dispatch topic, an input read to its end) was held the full 500 ms while the
#: busy partitions waited behind it: three stalls of 250-300 ms in a 4.5 s run of the default day.
INGEST_FETCH_WAIT_MS: Final = 20


#: Bytes the producer gathers per partition before a send waits (Faust's default: 16 KiB). An
#: ingest batch (420-540 KiB per shard partition and poll of 5000 on the default day) filled a
#: producer batch by itself, so every message sent to that partition after it (a handoff, the
#: progress for another worker) waited until the sender had taken it, that is, until the broker
#: had answered the request before: 5-30 ms per send in an instrumented run. Two ingest batches
#: still do not share one: the broker refuses a record batch over 1 MiB by default
#: (``max.message.bytes``).
PRODUCER_BATCH_BYTES: Final = 512 * 1024


def create_app(
    settings: WorkerSettings,
    inputs: Sequence[str],
    *,
    registry: CollectorRegistry | None = None,
) -> TwinWorker:
    """Build the worker's Faust app (nothing runs until :meth:`TwinWorker.run`)."""
    import faust
    from aiokafka import AIOKafkaConsumer

    spec = load_scenario(settings.scenario)
    network = build_network(spec)
    codec = Codec(spec.epoch)
    registry = registry if registry is not None else CollectorRegistry()
    metrics = TwinMetrics.create(registry)
    data_dir = settings.data_dir or tempfile.mkdtemp(prefix=f"{settings.app_id}-")
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h.strip()}" for h in settings.broker.split(",")],
        broker_credentials=settings.security.faust(),
        store="memory://",
        datadir=data_dir,
        web_enabled=False,
        web_tables_enabled=False,
        web_router_enabled=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        producer_acks=-1,
        producer_max_request_size=MAX_MESSAGE_BYTES,
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        worker_redirect_stdouts=False,
        # Shard-topic messages stay unacked until a snapshot includes them; a rebalance must not
        # wait for them (it would wait forever): they are read again after it, from the last
        # commit, which is never past the newest snapshot.
        stream_wait_empty=False,
        # No Faust tables: the snapshots are on a compacted topic the worker reads itself when it
        # takes a shard (a Faust table's changelog recovery sometimes never finished after a
        # takeover: "No event received for active tp ... since recovery start").
        table_standby_replicas=0,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.session_timeout / 10,
    )
    _faust_sensors(app, registry)
    shard_topic = app.topic(
        settings.shard_topic,
        partitions=settings.partitions,
        key_serializer="raw",
        value_serializer="raw",
        internal=True,
    )
    forecast = None
    if settings.forecast_every > 0:
        forecast = ForecastSettings(
            cadence=settings.forecast_every,
            horizon=settings.horizon * 3600.0,
            replicas=settings.replicas,
            seed=spec.forecast_seed if settings.seed < 0 else settings.seed,
        )
    host_settings = HostSettings(
        partitions=settings.partitions,
        lateness=settings.lateness,
        cadence=forecast.cadence if forecast is not None else None,
        skew=settings.skew,
        idle_after=settings.idle_after,
        refresh_every=settings.refresh_every,
        shard_topic=settings.shard_topic,
        dlq_topic=settings.topics.dlq,
        background_refresh=settings.forecast_in == "process",
        in_flight=max(4, 2 * settings.forecast_processes),
        background_ticks=settings.background_ticks,
        parallel_forecasts=settings.forecast_processes if settings.forecast_in == "process" else 1,
    )
    executor: Executor | ForecastProcesses
    forecasters: Callable[[str], ForecasterLike] | None = None
    run_forecast: Callable[[str, WorldState, bool], Awaitable[Sequence[Any]]]
    if forecast is not None and settings.forecast_in == "process":
        # Forecasts on the other core: the ingest path keeps the GIL (streams.forecast_process).
        children = ForecastProcesses(settings.scenario, forecast, settings.forecast_processes)
        children.start()
        executor = children
        remote = RemoteForecaster(forecast.replicas)
        forecasters = lambda _name: remote  # noqa: E731

        def run_remote(name: str, state: WorldState, incremental: bool) -> Awaitable[Sequence[Any]]:
            # The request is made now, before the caller lets any other event be applied: the
            # calls into the shard's twin since the last one (its child keeps a copy of the twin).
            shard = host.slots[name].shard
            if children.fresh(name):
                forget_mirror(shard)  # e.g. a child started in place of one that died: a snapshot, not the journal
            request = mirror_request(shard)
            future = asyncio.wrap_future(children.submit(name, forecast_mirrored, request))

            def failed(f: asyncio.Future[Any]) -> None:
                if (f.cancelled() or f.exception() is not None) and shard.mirror == request.copy:
                    forget_mirror(shard)  # the child's copy is gone or behind: a snapshot next time

            future.add_done_callback(failed)
            return future

        run_forecast = run_remote

    else:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecast")
        if forecast is not None:
            fs = forecast
            forecasters = lambda _name: fs.build(network)  # noqa: E731

        async def run_here(name: str, state: WorldState, incremental: bool) -> Sequence[Any]:
            fc = host.forecasters[name]
            fn = getattr(fc, "update", None) if incremental else None
            call = fn if callable(fn) else fc.forecast
            result: Sequence[Any] = await asyncio.get_running_loop().run_in_executor(executor, call, state)
            return result

        run_forecast = run_here

    host = ShardHost(
        network,
        codec,
        inputs=inputs,
        settings=host_settings,
        forecasters=forecasters,
        runner=run_forecast,
        metrics=metrics,
    )
    # The source names this process's batches (their shard-topic keys are "<source>:<number>"):
    # unique per process, so that a batch of another worker, or of this worker before a restart,
    # is never taken for the copy of a batch handed over directly.
    source = f"{settings.app_id}-ingest-{uuid.uuid4().hex[:12]}"
    builder = BatchBuilder(ShardRouter(network), codec, settings.partitions, source=source)

    async def send(topic: str, key: bytes | None, value: bytes, partition: int) -> Any:
        return await app.producer.send(topic, key, value, partition, None, None)

    def consumer() -> Any:
        return AIOKafkaConsumer(
            bootstrap_servers=settings.broker,
            group_id=f"{settings.app_id}-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
            fetch_max_wait_ms=INGEST_FETCH_WAIT_MS,
            session_timeout_ms=int(settings.session_timeout * 1000),
            heartbeat_interval_ms=int(settings.session_timeout * 100),
            **settings.security.aiokafka(),
        )

    lock = asyncio.Lock()

    async def direct(key: bytes, batches: dict[int, Batch], events: dict[int, list[Event | None]]) -> None:
        if app.should_stop:
            # Shutting down: Faust has stopped consuming, and another worker may already own
            # these shards; applying and publishing here would make this worker a zombie
            # publisher. The batch is on the shard topic for whoever owns the shard now.
            return
        async with lock:
            taken = [host.offer_direct(part, key, batch, events[part]) for part, batch in sorted(batches.items())]
            if any(taken):
                await _send(worker, await host.step())
        # Backpressure: while a local shard waits to read a batch back from the topic, the ingest
        # stage waits too (running ahead would only queue batches it cannot hand over directly).
        deadline = time.monotonic() + 2.0
        while host.direct_blocked() and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    ingest = Ingest(
        builder,
        consumer_factory=consumer,
        send=send,
        topics=settings.topics.inputs,
        shard_topic=settings.shard_topic,
        max_records=settings.max_batch,
        direct=direct,
        on_assigned=host.reset_direct,
    )
    worker = TwinWorker(settings, network, codec, app, host, ingest, registry, metrics, executor, lock)

    tasks: set[asyncio.Task[None]] = set()

    async def publish_refresh() -> None:
        async with lock:
            await _send(worker, await host.step())

    def refresh_done() -> None:
        # A background refresh is published as soon as it is done, not at the next input.
        task = asyncio.ensure_future(publish_refresh())
        tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(tasks.discard)

    host.on_refresh_done = refresh_done

    @app.agent(shard_topic, name="shards")
    async def shards(stream: Any) -> None:
        manual = stream.noack()
        async for event in manual.events():
            if app.should_stop:
                return  # unacked: read again by the shard's next owner
            async with worker.lock:
                await _on_message(worker, manual, event)

    @app.task  # type: ignore[untyped-decorator]  # Faust's App.task is not typed
    async def run_ingest() -> None:
        from faust.exceptions import NotReady

        try:
            await ingest.run()
        except NotReady:
            if not app.should_stop:
                raise
            # Shutting down: the producer stopped under a poll in flight. Its offsets were not
            # committed, so the next owner reads those records again (at-least-once).
            log.info("ingest stopped with the producer")

    # mode types a receiver as (sender, *args, signal=..., **kwargs); these take what they are sent
    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_ingest(sender: Any, **_: Any) -> None:
        # Before Faust stops its producer: finish the poll in flight, commit, leave the group.
        await ingest.stop()
        if ingest.consumer is None:
            return  # never started
        try:
            await asyncio.wait_for(ingest.stopped.wait(), timeout=10.0)
        except TimeoutError:
            log.warning("ingest did not stop within 10 s; records not yet committed will be read again")

    metrics_server: list[Any] = []

    @app.task  # type: ignore[untyped-decorator]
    async def serve_metrics() -> None:
        if settings.metrics_port:
            metrics_server.append(await _serve_metrics(registry, settings.metrics_port))

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def stop_metrics(sender: Any, **_: Any) -> None:
        while metrics_server:
            await metrics_server.pop().cleanup()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        async with lock:
            host.reset_direct()
            for tp in revoked:
                if tp.topic != settings.shard_topic:
                    continue
                if tp.partition in host.hosted_partitions():
                    # The next host (perhaps this worker again) starts from here instead of
                    # replaying everything since the last periodic snapshot.
                    try:
                        await _write_snapshots(worker, tp.partition)
                    except Exception as exc:  # it replays from the older snapshot: slower, not wrong
                        log.warning("shard partition %d: no snapshot on revocation (%s)", tp.partition, exc)
                host.release(tp.partition)
                worker.unacked.pop(tp.partition, None)

    return worker


async def _serve_metrics(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> Any:  # noqa: S104
    """Serve ``registry`` on ``http://<host>:<port>/metrics`` from the running event loop; returns the runner.

    prometheus-client's ``start_http_server`` answers from a thread of its own that starts another
    thread per request, and each scrape took the GIL from the ingest path for the thread's start,
    the WSGI layer and the reply. Under the benchmark's scrape every 20 ms, a worker catching up
    spent 1.4-2.0 us of CPU per event in threads other than its main one; with this server,
    0.1-0.3 (four runs each, 2026-11-25), the main thread's own share about the same. The
    exposition is prometheus-client's (its aiohttp handler: ``name[]`` filters, formats). A scrape
    is answered between two turns of the loop, so it waits while a step runs; a loop that hangs
    stops answering, which Prometheus shows as the target down.
    """
    from aiohttp import web
    from prometheus_client.aiohttp import make_aiohttp_handler

    handler = make_aiohttp_handler(registry)
    web_app = web.Application()
    web_app.router.add_get("/metrics", handler)
    web_app.router.add_get("/", handler)
    runner = web.AppRunner(web_app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def _on_message(worker: TwinWorker, stream: Any, event: Any) -> None:
    host = worker.host
    message = event.message
    part = message.partition
    if not host.shards_on(part):
        # No shard lives on this partition (more partitions than regions): nothing of ours is
        # written here; whatever is, is skipped.
        await stream.ack(event)
        return
    if part not in host.hosted_partitions():
        stored = await _read_snapshots(worker, part)
        names = host.shards_on(part)
        blobs = {name: stored.get(name.encode()) for name in names}
        marks = {name: stored.get(published_key(name)) for name in names}
        host.host(part, blobs, {name: decode_published(m) for name, m in marks.items() if m is not None})
        for name in names:
            slot = host.slots[name]
            how = f"restored at offset {slot.offset}" if blobs.get(name) else "with no snapshot: new"
            log.info(
                "shard %s (partition %d) %s, clock %s; first message offset %d",
                name, part, how, slot.shard.clock, message.offset,
            )  # fmt: skip
    expected = host.next_offset(part)
    if message.offset > expected:
        # A gap: Faust kept its position across a rebalance, but the snapshot the shards were
        # restored from is older. The messages in between are still on the topic (they were
        # never acked): read them directly, then go on with this one.
        log.info("partition %d: reading offsets %d-%d again", part, expected, message.offset - 1)
        for offset, key, value in await _read_range(worker, part, expected, message.offset):
            host.receive(part, offset, value, key)
    if not host.receive(part, message.offset, event.value, event.key):
        await stream.ack(event)  # already inside the restored snapshot
        return
    worker.unacked[part].append(event)
    if not host.last_inert:
        # (The copy of a batch taken directly and progress of a shard hosted here change nothing
        # a step acts on: two thirds of the agent's messages with 4 shards in one worker.)
        await _send(worker, await host.step())
    if host.snapshot_due(part, worker.settings.snapshot_every, len(worker.unacked[part])):
        await _write_snapshots(worker, part)
        for ev in worker.unacked.pop(part, []):
            await stream.ack(ev)


async def _write_snapshots(worker: TwinWorker, part: int) -> None:
    """Snapshot the shards of a shard-topic partition onto the snapshot topic (flushed)."""
    host = worker.host
    # A refresh in flight publishes first, so the snapshot knows what it published.
    await _send(worker, await host.settle(part))
    for name, blob in host.snapshot(part).items():
        await worker.app.producer.send(worker.settings.snapshot_topic, name.encode(), blob, part, None, None)
    await worker.app.producer.flush()


async def _read_snapshots(worker: TwinWorker, partition: int) -> dict[bytes, bytes]:
    """The newest snapshot of every shard on a partition of the snapshot topic (key -> blob)."""
    out: dict[bytes, bytes] = {}
    for m in await _read_partition(worker, worker.settings.snapshot_topic, partition):
        if m.key is None:
            continue
        if m.value is None:
            out.pop(m.key, None)
        else:
            out[m.key] = m.value
    return out


async def _read_range(worker: TwinWorker, partition: int, start: int, end: int) -> list[tuple[int, Any, bytes]]:
    """Messages ``start`` to ``end - 1`` of a shard-topic partition, read with a plain consumer."""
    records = await _read_partition(worker, worker.settings.shard_topic, partition, start, end)
    return [(m.offset, m.key, m.value) for m in records]


#: a plain read of a partition that makes no progress for this long fails (wall seconds)
READ_TIMEOUT: Final = 60.0


async def _read_partition(
    worker: TwinWorker, topic: str, partition: int, start: int | None = None, end: int | None = None
) -> list[Any]:
    """Records of one partition from ``start`` (default: its beginning) to ``end`` (default: its end now).

    The consumer is placed with an explicit ``seek`` and resets to the earliest offset:
    ``seek_to_beginning`` right after ``assign`` races with the reset to the latest offset that
    ``assign`` starts in aiokafka, and often lost it: the read came back empty, and a shard taken
    over was rebuilt from the start of its partition instead of its snapshot.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    s = worker.settings
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.broker,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
        **s.security.aiokafka(),
    )
    await consumer.start()
    out: list[Any] = []
    try:
        consumer.assign([tp])
        if start is None:
            start = (await consumer.beginning_offsets([tp]))[tp]
        if end is None:
            end = (await consumer.end_offsets([tp]))[tp]
        if start >= end:
            return out
        consumer.seek(tp, start)
        last_move = time.monotonic()
        while (position := await consumer.position(tp)) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            out.extend(m for m in batch.get(tp, []) if m.offset < end)
            if await consumer.position(tp) > position:
                last_move = time.monotonic()
            elif time.monotonic() - last_move > READ_TIMEOUT:
                msg = f"reading {topic}[{partition}] to offset {end - 1}: stuck at {position} for {READ_TIMEOUT:.0f} s"
                raise TimeoutError(msg)
    finally:
        await consumer.stop()
    return out


async def _send(worker: TwinWorker, out: HostOutput) -> None:
    producer = worker.app.producer
    topics = worker.settings.topics
    delivered = []
    for letter in out.dead_letters:
        delivered.append(await producer.send(topics.dlq, letter.key, letter.value, None, None, letter.headers))
    if out.predictions:
        delivered.extend(await worker.predictions_out.send(producer, topics.predictions, out.predictions))
    if out.ticks:
        # The tick's predictions are on the broker before the record saying so (which the next
        # host of the shard reads to not publish them again), and that is before the handoffs.
        await asyncio.gather(*delivered)
        part_of = worker.host.partition_of
        delivered = [
            await producer.send(
                worker.settings.snapshot_topic, published_key(name), encode_published(tick), part_of[name], None, None
            )
            for name, tick in sorted(out.ticks.items())
        ]
    if out.shard_messages:
        if delivered:
            # Predictions before the handoffs and progress that let other shards move on.
            await asyncio.gather(*delivered)
        for part, key, value in out.shard_messages:
            await producer.send(worker.settings.shard_topic, key, value, part, None, None)


class PredictionSender:
    """Sends a publication's records in batches built here, one per partition, not one by one.

    A publication is a thousand records or more (every open order, trip and site a shard owns).
    Sent one by one through Faust's producer, each went through Faust's sensors, aiokafka's
    partitioner (murmur2 in Python), the accumulator and a future of its own: 25-30 us per record
    on a quiet core, tens of milliseconds per publication in the process that applies the events.
    Here each record is appended to a batch of its partition (the partition aiokafka's
    partitioner would choose, remembered per key: the same keys come back every publication)
    and the batches are handed to the producer whole. Faust's per-topic sent-message counters
    no longer count these records (``twin_predictions_published_total`` does).
    """

    def __init__(self) -> None:
        #: key -> partition, for the partition count it was computed for
        self._partition_of: dict[bytes, int] = {}
        self._count = 0

    async def send(self, faust_producer: Any, topic: str, records: list[tuple[bytes, bytes | None]]) -> list[Any]:
        """Queue the records (in order per partition); one future per batch, done when it is acked."""
        producer = faust_producer._ensure_producer()  # the aiokafka producer under Faust's
        partitions = sorted(await producer.client._wait_on_metadata(topic))
        if len(partitions) != self._count:
            self._partition_of.clear()
            self._count = len(partitions)
        partition_of = self._partition_of
        partitioner = producer._partitioner
        batches: dict[int, Any] = {}
        futures = []
        for key, value in records:
            part = partition_of.get(key)
            if part is None:
                part = partition_of[key] = partitioner(key, partitions, partitions)
            batch = batches.get(part)
            if batch is None:
                batch = batches[part] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                futures.append(await producer.send_batch(batch, topic, partition=part))
                batch = batches[part] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    msg = f"a prediction record of {len(value or b'')} bytes does not fit in a producer batch"
                    raise ValueError(msg)
        for part, batch in sorted(batches.items()):
            futures.append(await producer.send_batch(batch, topic, partition=part))
        return futures


def _faust_sensors(app: Any, registry: CollectorRegistry) -> None:
    """Faust's own Prometheus sensors, on the worker's registry (served with the twin's metrics)."""
    from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

    app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(registry, "faust"))
