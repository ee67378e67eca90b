"""The ingest stage's reading of its consumer: when an input partition counts as caught up.

A partition read to its end and quiet for ``idle_after`` stops bounding the watermark. During a
consumer-group rebalance the consumer fetches nothing for seconds: its partitions look quiet
and the highwater it last fetched says "read to the end", though the producers went on writing.
Such a stale highwater must not count (the shards would run past records not read yet).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from streams.codec import Codec
from streams.envelopes import decode_message
from streams.ingest import CAUGHT_UP_FRESH, BatchBuilder, Ingest, caught_up
from streams.shards import ShardRouter


def test_caught_up_needs_a_fresh_highwater():
    now = 1_000_000.0
    fresh = int((now - CAUGHT_UP_FRESH / 2) * 1000)
    stale = int((now - 5.0) * 1000)
    assert caught_up(10, 10, fresh, now)
    assert not caught_up(10, 10, stale, now)
    assert not caught_up(9, 10, fresh, now)
    assert not caught_up(10, None, fresh, now)
    assert not caught_up(10, 10, None, now)


class _TP:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition

    def __hash__(self) -> int:
        return hash((self.topic, self.partition))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _TP) and (self.topic, self.partition) == (other.topic, other.partition)


class _Consumer:
    """What ``Ingest._forward`` asks of an aiokafka consumer: one partition at its end."""

    def __init__(self, tp: _TP, position: int, polled_ms: int) -> None:
        self.tp = tp
        self.pos = position
        self.polled_ms = polled_ms
        self.commits: list[dict[Any, int]] = []

    def assignment(self) -> set[_TP]:
        return {self.tp}

    async def position(self, tp: _TP) -> int:
        return self.pos

    def highwater(self, tp: _TP) -> int:
        return self.pos

    def last_poll_timestamp(self, tp: _TP) -> int:
        return self.polled_ms

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(offsets)


def _watermark_after_quiet(mini_scenario: Any, polled_age: float) -> tuple[float, float]:
    """(watermark, event time read): what an ingest stage sends for a partition read to its end
    and quiet for 10 s, its highwater last fetched ``polled_age`` seconds ago."""
    codec = Codec(mini_scenario.spec.epoch)
    builder = BatchBuilder(ShardRouter(mini_scenario.network), codec, 2, idle_after=1.0)
    sent: list[bytes] = []

    async def send(topic: str, key: bytes | None, value: bytes, partition: int) -> Any:
        sent.append(value)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    ingest = Ingest(builder, consumer_factory=lambda: None, send=send, topics=["sensors"], shard_topic="shards")
    ev = next(e for e in mini_scenario.events if e.time > 3600)

    class _Msg:
        topic, partition, offset, timestamp, key, headers = "sensors", 0, 41, None, None, []
        value = codec.encode(ev)

    async def run() -> None:
        t0 = 1_000_000.0
        ingest.consumer = _Consumer(_TP("sensors", 0), 42, int(t0 * 1000))
        await ingest._forward([(("sensors", 0), [_Msg()])], t0)  # one record read, the partition at its end
        later = t0 + 10.0
        ingest.consumer.polled_ms = int((later - polled_age) * 1000)
        sent.clear()
        await ingest._forward([], later)  # quiet since, for 10 s

    asyncio.run(run())
    marks = [m for value in sent for m in decode_message(value).marks]
    assert marks and {m.watermark for m in marks} == {marks[0].watermark}
    return marks[0].watermark, ev.time


def test_a_partition_quiet_while_fetching_stops_bounding_the_watermark(mini_scenario):
    watermark, _ = _watermark_after_quiet(mini_scenario, polled_age=0.05)
    assert watermark == math.inf


def test_a_partition_quiet_because_nothing_was_fetched_still_bounds_it(mini_scenario):
    """No fetch for 5 s (a rebalance): the last highwater is stale, the partition is not caught up."""
    watermark, read = _watermark_after_quiet(mini_scenario, polled_age=5.0)
    assert watermark == read  # the newest event time read: nothing after it may be passed


class _QuietConsumer(_Consumer):
    """A consumer with one record to give, then nothing: ``Ingest.run`` drives it."""

    def __init__(self, tp: _TP, message: Any) -> None:
        super().__init__(tp, 0, 0)
        self.pending = [message]
        self.timeouts: list[int] = []

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
        import time

        self.timeouts.append(timeout_ms)
        self.polled_ms = int(time.time() * 1000)  # fetching all along: the highwater is fresh
        if self.pending:
            self.pos = 42
            return {self.tp: [self.pending.pop()]}
        await asyncio.sleep(min(timeout_ms / 1000, 0.05))  # back early (the test stops sooner)
        return {}


def test_a_partition_turning_idle_is_announced_at_once_not_at_the_next_heartbeat(mini_scenario):
    """With a heartbeat of 30 s, the batch saying "idle" still goes out ``idle_after`` after the last record."""
    import time

    codec = Codec(mini_scenario.spec.epoch)
    builder = BatchBuilder(ShardRouter(mini_scenario.network), codec, 2, idle_after=0.3)
    ev = next(e for e in mini_scenario.events if e.time > 3600)

    class _Msg:
        topic, partition, offset, timestamp, key, headers = "sensors", 0, 41, None, None, []
        value = codec.encode(ev)

    consumer = _QuietConsumer(_TP("sensors", 0), _Msg())
    sent: list[tuple[float, bytes]] = []

    async def send(topic: str, key: bytes | None, value: bytes, partition: int) -> Any:
        sent.append((time.monotonic(), value))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    ingest = Ingest(
        builder, consumer_factory=lambda: consumer, send=send, topics=["sensors"], shard_topic="shards", heartbeat=30.0
    )

    async def run() -> float:
        task = asyncio.ensure_future(ingest.run())
        start = time.monotonic()
        while time.monotonic() - start < 5.0:
            idle = [t for t, value in sent if all(m.watermark == math.inf for m in decode_message(value).marks)]
            if idle:
                break
            await asyncio.sleep(0.01)
        await ingest.stop()
        await task
        return idle[0] - sent[0][0] if idle else math.inf

    waited = asyncio.run(run())
    assert 0.25 <= waited < 1.0  # idle_after (0.3 s) after the record, far from the heartbeat (30 s)
    # It waited for records no longer than until that moment (15 s: half a heartbeat, otherwise).
    assert min(consumer.timeouts) < 400
    assert builder.next_idle() == math.inf  # announced: nothing more to wait for
