"""``twin replay --to-kafka``: a producer that writes a scenario's events to the input topics, paced.

Pacing: with ``speed`` N, an event at event time t is sent at ``start + (t - t0) / N`` wall
seconds (N = 60 replays an hour a minute); with ``rate`` R, event i is sent at ``start + i / R``
(a fixed input rate, for benchmarks); with neither, as fast as the broker takes them. Each
event goes to its input topic (``streams.topics.input_topic``) keyed by its entity id, so the
events of one vehicle, order or site stay in order within a partition.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streams.codec import Codec
from streams.settings import ReplaySettings
from streams.topics import input_topic
from twin.events import Event

__all__ = ["ReplayReport", "replay_to_kafka"]


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What the producer sent."""

    events: int
    by_topic: dict[str, int]
    seconds: float

    @property
    def rate(self) -> float:
        """Events per second sent."""
        return self.events / self.seconds if self.seconds > 0 else float("inf")


async def replay_to_kafka(
    events: Sequence[Event],
    codec: Codec,
    settings: ReplaySettings,
    *,
    progress: Callable[[str, float], None] | None = None,
    progress_every: int = 20_000,
) -> ReplayReport:
    """Send ``events`` in the order given; wait until the broker has acknowledged all of them."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.broker,
        linger_ms=5,
        max_batch_size=512 * 1024,
        acks="all",
        **settings.security.aiokafka(),
    )
    await producer.start()
    sent: Counter[str] = Counter()
    start = time.monotonic()
    t0 = events[0].time if events else 0.0
    pending = []
    try:
        for i, ev in enumerate(events):
            if settings.rate > 0:
                due = start + i / settings.rate
            elif settings.speed > 0:
                due = start + (ev.time - t0) / settings.speed
            else:
                due = 0.0
            wait = due - time.monotonic()
            if wait > 0.001:
                await asyncio.sleep(wait)
            topic = input_topic(ev, settings.topics)
            pending.append(await producer.send(topic, codec.encode(ev), key=ev.subject.encode()))
            sent[topic] += 1
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
            if progress is not None and (i + 1) % progress_every == 0:
                progress(f"sent {i + 1:,}/{len(events):,} events", (i + 1) / len(events))
        await asyncio.gather(*pending)
        await producer.flush()
    finally:
        await producer.stop()
    return ReplayReport(len(events), dict(sorted(sent.items())), time.monotonic() - start)
