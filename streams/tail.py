"""``twin tail predictions|dlq``: print what the worker publishes, one line per record."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from streams.deadletter import from_message
from streams.errors import DeadLetterError
from streams.predictions import decode_prediction
from streams.settings import TailSettings

__all__ = ["format_dead_letter", "format_prediction", "tail"]


def format_prediction(key: bytes | None, value: bytes | None) -> str:
    """One line for a predictions record: key, watermark, ETA quantiles, lateness, causes."""
    name = key.decode("utf-8", "replace") if key else "?"
    if value is None:
        return f"{name:<28} closed (tombstone)"
    p = decode_prediction(value)

    def h(x: float | None) -> str:
        return "-" if x is None else f"{x / 3600:6.2f}h"

    causes = "; ".join(f"{c.mechanism}@{c.entity} {c.seconds:.0f}s" for c in p.causes)
    return (
        f"{name:<28} as_of {p.as_of_time} [{p.shard}]  p10 {h(p.p10)} p50 {h(p.p50)} p90 {h(p.p90)}  "
        f"p_late {p.p_late:.2f}  delay {p.expected_delay:7.0f}s" + (f"  causes: {causes}" if causes else "")
    )


def format_dead_letter(key: bytes | None, value: bytes, headers: Any) -> str:
    """One line for a dead letter: reason, detail, where it came from, and the original bytes."""
    try:
        letter = from_message(value, list(headers or ()), key)
    except DeadLetterError as exc:
        return f"(not a dead letter: {exc})"
    where = f"{letter.topic}/{letter.partition}@{letter.offset}" if letter.topic else "?"
    return json.dumps(
        {
            "reason": letter.reason,
            "detail": letter.detail,
            "from": where,
            "value": letter.value.decode("utf-8", "backslashreplace")[:500],
        }
    )


async def tail(
    what: str,
    settings: TailSettings,
    *,
    out: TextIO = sys.stdout,
    stop: Callable[[], bool] | None = None,
) -> int:
    """Print records of the predictions (``what="predictions"``) or DLQ topic; return how many."""
    from aiokafka import AIOKafkaConsumer

    topic = settings.topics.predictions if what == "predictions" else settings.topics.dlq
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.broker,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if settings.from_beginning else "latest",
        **settings.security.aiokafka(),
    )
    await consumer.start()
    n = 0
    last = time.monotonic()
    try:
        while stop is None or not stop():
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for m in records:
                    line = (
                        format_prediction(m.key, m.value)
                        if what == "predictions"
                        else format_dead_letter(m.key, m.value or b"", m.headers)
                    )
                    print(line, file=out, flush=True)
                    n += 1
                    last = time.monotonic()
            if settings.idle_exit > 0 and time.monotonic() - last >= settings.idle_exit:
                break
    finally:
        await consumer.stop()
    return n


def run_tail(what: str, settings: TailSettings) -> int:
    """Blocking :func:`tail` (Ctrl-C stops it)."""
    return asyncio.run(tail(what, settings))
