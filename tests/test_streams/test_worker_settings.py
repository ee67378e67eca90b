"""Settings of the Kafka commands, the CLI around them, and how the worker's Faust app is built."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry

from streams.errors import ConfigurationError
from streams.settings import MASK, KafkaSecurity, ReplaySettings, TailSettings, WorkerSettings, add_options


def _parse(cls, argv, env=None):
    parser = argparse.ArgumentParser()
    add_options(parser, cls.OPTIONS)
    return cls.from_args(parser.parse_args(argv), env or {})


def test_flags_win_over_environment_and_environment_over_defaults():
    s = _parse(WorkerSettings, ["--partitions", "6"], {"TWIN_PARTITIONS": "3", "TWIN_REPLICAS": "8"})
    assert (s.partitions, s.replicas, s.broker) == (6, 8, "127.0.0.1:9092")
    assert s.shard_topic == "logistics-twin-shards"


def test_background_ticks_are_on_by_default_and_can_be_turned_off():
    assert _parse(WorkerSettings, []).background_ticks is True
    assert _parse(WorkerSettings, ["--no-background-ticks"]).background_ticks is False
    assert _parse(WorkerSettings, [], {"TWIN_BACKGROUND_TICKS": "false"}).background_ticks is False
    off, on = {"TWIN_BACKGROUND_TICKS": "false"}, {"TWIN_BACKGROUND_TICKS": "true"}
    assert _parse(WorkerSettings, ["--no-background-ticks"], on).background_ticks is False
    assert _parse(WorkerSettings, ["--background-ticks"], off).background_ticks is True


def test_the_sasl_password_comes_from_the_environment_and_is_masked_when_printed():
    s = _parse(
        WorkerSettings,
        ["--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", "twin"],
        {"TWIN_SASL_PASSWORD": "hunter2"},
    )
    assert s.security.sasl_password == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.masked())
    assert s.masked()["sasl_password"] == MASK
    kw = s.security.aiokafka()
    assert kw["sasl_plain_password"] == "hunter2" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["ssl_context"] is not None
    assert "hunter2" not in repr(s.security)


@pytest.mark.parametrize(
    ("security", "needle"),
    [
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}, "--sasl-username"),
        ({"security_protocol": "PLAINTEXT", "sasl_username": "u"}, "SASL options need"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "MD5", "sasl_username": "u", "sasl_password": "p"},
            "one of",
        ),  # noqa: E501
        ({"security_protocol": "SSL", "ssl_certfile": "c.pem"}, "go together"),
        ({"security_protocol": "TLS"}, "must be one of"),
    ],
)
def test_bad_security_settings_say_the_rule_and_the_fix(security, needle):
    with pytest.raises(ConfigurationError, match=needle):
        KafkaSecurity(**security)


def test_bad_worker_settings_are_refused_with_the_flag_name():
    with pytest.raises(ConfigurationError, match="--partitions=0"):
        WorkerSettings(partitions=0)
    with pytest.raises(ConfigurationError, match="--skew"):
        WorkerSettings(skew=1000.0, lateness=900.0)
    with pytest.raises(ConfigurationError, match="TWIN_REPLICAS"):
        _parse(WorkerSettings, [], {"TWIN_REPLICAS": "many"})


def test_replay_and_tail_settings():
    r = _parse(ReplaySettings, ["--speed", "60"], {"TWIN_SENSORS_TOPIC": "s"})
    assert (r.speed, r.rate, r.topics.sensors) == (60.0, 0.0, "s")
    t = _parse(TailSettings, ["--from-beginning"])
    assert t.from_beginning is True
    assert _parse(TailSettings, [], {"TWIN_FROM_BEGINNING": "true"}).from_beginning is True


@pytest.mark.parametrize("command", ["worker", "replay", "tail"])
def test_help_shows_every_option_with_its_environment_variable(command):
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    cls = {"worker": WorkerSettings, "replay": ReplaySettings, "tail": TailSettings}[command]
    for opt in cls.OPTIONS:
        assert opt.flag in text, opt.flag
        assert f"[env: {opt.env}]" in text, opt.env


def test_worker_app_is_built_by_a_factory_with_the_table_and_router_endpoints_off(tmp_path):
    from streams.app import create_app

    settings = WorkerSettings(app_id="factory-test", scenario="two-region-mini", partitions=3, data_dir=str(tmp_path))
    inputs = ["logistics.sensors/0", "logistics.orders/0", "logistics.dispatch/0"]
    a = create_app(settings, inputs, registry=CollectorRegistry())
    b = create_app(settings, inputs, registry=CollectorRegistry())
    assert a.app is not b.app
    conf = a.app.conf
    assert conf.web_enabled is False and conf.web_tables_enabled is False and conf.web_router_enabled is False
    assert conf.stream_wait_empty is False
    assert settings.snapshot_topic == "factory-test-snapshots" and not a.app.tables  # snapshots: our own topic
    assert sorted(a.host.partition_of.values()) == [0, 1]
    names = {m.name for m in a.registry.collect()}
    assert {"twin_events", "twin_event_lag_seconds", "twin_dlq_events", "twin_snapshot_age_seconds"} <= names
    assert "twin_forecast_duration_seconds" in names
    assert any(n.startswith("faust_") for n in names)
    # Two workers of one app (or one worker before and after a restart) never name their
    # shard-topic batches alike: a host tells the copy of a batch it took directly by its key.
    assert a.ingest.builder.source != b.ingest.builder.source
    assert a.ingest.builder.source.startswith("factory-test-ingest-")
    a.executor.shutdown()
    b.executor.shutdown()


@pytest.mark.parametrize(("level", "debug"), [("warn", False), ("info", False), ("debug", True)])
def test_the_worker_logs_at_its_level_and_does_not_build_debug_records_otherwise(tmp_path, level, debug):
    """Faust's start-up spinner used to set the root logger to DEBUG at ``--log-level warn``:
    aiokafka then built a log record for every message it sent or fetched, only to drop it.
    (In a child process: the worker configures the process's logging.)"""
    script = f"""
import logging, faust
from streams.app import faust_worker
app = faust.App("log-test", broker="kafka://127.0.0.1:1", datadir={str(tmp_path)!r}, worker_redirect_stdouts=False)
faust_worker(app, {level!r})._setup_logging()
print(logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG),
      logging.getLogger("aiokafka").isEnabledFor(logging.WARNING))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == [str(debug), "True"]


class _FakeBatch:
    def __init__(self, room: int) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []
        self.room = room

    def append(self, *, key, value, timestamp):
        if len(self.records) == self.room:
            return None
        self.records.append((key, value))
        return object()


class _FakeProducer:
    """What ``PredictionSender`` uses of aiokafka's producer: metadata, partitioner, batches."""

    def __init__(self, partitions: int, room: int) -> None:
        from aiokafka.partitioner import DefaultPartitioner

        class _Client:
            async def _wait_on_metadata(self, topic):
                return set(range(partitions))

        self.client = _Client()
        self._partitioner = DefaultPartitioner()
        self.room = room
        self.sent: list[tuple[str, int, list]] = []

    def _ensure_producer(self):
        return self

    def create_batch(self):
        return _FakeBatch(self.room)

    async def send_batch(self, batch, topic, *, partition):
        self.sent.append((topic, partition, batch.records))
        return f"future {len(self.sent)}"


def test_predictions_are_sent_in_batches_on_the_partition_the_producer_would_choose():
    import asyncio

    from aiokafka.partitioner import DefaultPartitioner

    from streams.app import PredictionSender

    records = [(f"order:O{i:05d}".encode(), b"{}" if i % 7 else None) for i in range(500)]
    producer = _FakeProducer(partitions=4, room=40)
    sender = PredictionSender()
    futures = asyncio.run(sender.send(producer, "twin.predictions", records))
    assert futures == [f"future {i + 1}" for i in range(len(producer.sent))]
    assert all(len(recs) <= 40 for _, _, recs in producer.sent) and len(producer.sent) > 4 * 3
    place = DefaultPartitioner()
    by_partition: dict[int, list] = {}
    for topic, part, recs in producer.sent:
        assert topic == "twin.predictions"
        by_partition.setdefault(part, []).extend(recs)
    for part, recs in by_partition.items():
        assert all(place(key, [0, 1, 2, 3], [0, 1, 2, 3]) == part for key, _ in recs)
        # in their order within the partition (a key's publications stay in order)
        assert recs == [r for r in records if place(r[0], [0, 1, 2, 3], [0, 1, 2, 3]) == part]
    assert sorted(r for recs in by_partition.values() for r in recs) == sorted(records)
    # Partitions remembered per key are recomputed when the topic's partition count changes.
    producer.sent.clear()
    asyncio.run(sender.send(_FakeProducer(partitions=2, room=1000), "t", records[:3]))
    two = _FakeProducer(partitions=2, room=1000)
    asyncio.run(sender.send(two, "t", records))
    for _, part, recs in two.sent:
        assert all(place(key, [0, 1], [0, 1]) == part for key, _ in recs)
