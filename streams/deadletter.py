"""Dead letters: messages the pipeline refused, kept whole with the reason, for ``twin.dlq``.

A dead letter goes to Kafka as the original value, byte for byte, under the original key, with
the original headers followed by ``twin.dlq.*`` headers that say why and where from::

    twin.dlq.reason     b"schema"                      (always first of the block, always present)
    twin.dlq.detail     b"data.progress: expected ..."  (UTF-8)
    twin.dlq.time       b"2026-03-02T08:00:00.123456Z" (when it was dead-lettered, RFC 3339)
    twin.dlq.topic      b"logistics.sensors"           (source, each only when known)
    twin.dlq.partition  b"3"
    twin.dlq.offset     b"1234"

Reading a message back takes the block after the *last* ``twin.dlq.reason`` header as the
dead-letter metadata and everything before it as the original headers, so a message that is
dead-lettered twice keeps its first block among its original headers. Pure functions: no client.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, NamedTuple

from streams.errors import DeadLetterError, DecodeError
from twin.errors import REASONS

__all__ = [
    "DLQ_TOPIC",
    "HEADER_PREFIX",
    "DeadLetter",
    "DlqMessage",
    "Header",
    "from_message",
    "to_message",
]

DLQ_TOPIC: Final = "twin.dlq"
HEADER_PREFIX: Final = "twin.dlq."
REASON: Final = HEADER_PREFIX + "reason"
DETAIL: Final = HEADER_PREFIX + "detail"
TIME: Final = HEADER_PREFIX + "time"
TOPIC: Final = HEADER_PREFIX + "topic"
PARTITION: Final = HEADER_PREFIX + "partition"
OFFSET: Final = HEADER_PREFIX + "offset"
_KNOWN: Final = (REASON, DETAIL, TIME, TOPIC, PARTITION, OFFSET)

#: A Kafka header as the clients give it: (key, value).
Header = tuple[str, bytes]


class DlqMessage(NamedTuple):
    """A Kafka message to produce (or one consumed from the DLQ): topic, key, value, headers."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[Header]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A refused message: its original bytes and headers, why it was refused, and where it came from.

    ``reason`` is one of ``twin.errors.REASONS``; ``time`` (timezone-aware) is when it was
    dead-lettered; ``topic``, ``partition`` and ``offset`` locate the original when known.
    """

    value: bytes
    reason: str
    detail: str
    time: datetime
    headers: tuple[Header, ...] = ()
    key: bytes | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            msg = f"DeadLetter reason must be one of {REASONS}, got {self.reason!r}; add new reasons to twin.errors"
            raise DeadLetterError(msg)
        if not isinstance(self.value, bytes):
            msg = f"DeadLetter value must be the original bytes, got {type(self.value).__name__}"
            raise DeadLetterError(msg)
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            msg = f"DeadLetter time must be timezone-aware, got {self.time!r}; e.g. datetime.now(tz=UTC)"
            raise DeadLetterError(msg)
        for key, value in self.headers:
            if not isinstance(key, str) or not isinstance(value, bytes):
                msg = f"DeadLetter headers must be (str, bytes) pairs, got ({key!r}, {value!r})"
                raise DeadLetterError(msg)
        for name in ("partition", "offset"):
            number = getattr(self, name)
            if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 0):
                msg = f"DeadLetter {name} must be a non-negative int or None, got {number!r}"
                raise DeadLetterError(msg)

    @classmethod
    def from_decode_error(
        cls,
        error: DecodeError,
        value: bytes,
        *,
        time: datetime,
        headers: tuple[Header, ...] | list[Header] = (),
        key: bytes | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> DeadLetter:
        """The dead letter for a message the codec refused."""
        return cls(
            value=value,
            reason=error.reason,
            detail=error.detail,
            time=time,
            headers=tuple(headers),
            key=key,
            topic=topic,
            partition=partition,
            offset=offset,
        )


def to_message(letter: DeadLetter, *, topic: str = DLQ_TOPIC) -> DlqMessage:
    """The Kafka message for ``letter``: original key and value, original headers, then ``twin.dlq.*``."""
    block: list[Header] = [
        (REASON, letter.reason.encode()),
        (DETAIL, letter.detail.encode("utf-8", "backslashreplace")),
        (TIME, _rfc3339(letter.time)),
    ]
    if letter.topic is not None:
        block.append((TOPIC, letter.topic.encode("utf-8", "backslashreplace")))
    if letter.partition is not None:
        block.append((PARTITION, str(letter.partition).encode()))
    if letter.offset is not None:
        block.append((OFFSET, str(letter.offset).encode()))
    return DlqMessage(topic=topic, key=letter.key, value=letter.value, headers=[*letter.headers, *block])


def from_message(value: bytes, headers: list[Header] | tuple[Header, ...], key: bytes | None = None) -> DeadLetter:
    """The dead letter a DLQ message carries (the inverse of :func:`to_message`)."""
    headers = list(headers)
    starts = [i for i, (k, _) in enumerate(headers) if k == REASON]
    if not starts:
        msg = f"not a dead letter: no {REASON!r} header (headers: {[k for k, _ in headers]})"
        raise DeadLetterError(msg)
    start = starts[-1]
    meta: dict[str, bytes] = {}
    for k, v in headers[start:]:
        if k not in _KNOWN:
            msg = f"dead-letter header block has unexpected header {k!r} after {REASON!r}; known: {list(_KNOWN)}"
            raise DeadLetterError(msg)
        meta[k] = v
    for required in (DETAIL, TIME):
        if required not in meta:
            msg = f"dead letter is missing its {required!r} header"
            raise DeadLetterError(msg)
    return DeadLetter(
        value=value,
        reason=_text(meta, REASON),
        detail=_text(meta, DETAIL),
        time=_time(meta[TIME]),
        headers=tuple(headers[:start]),
        key=key,
        topic=_text(meta, TOPIC) if TOPIC in meta else None,
        partition=_int(meta, PARTITION),
        offset=_int(meta, OFFSET),
    )


def _rfc3339(when: datetime) -> bytes:
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z").encode()


def _text(meta: dict[str, bytes], name: str) -> str:
    try:
        return meta[name].decode("utf-8")
    except UnicodeDecodeError:
        msg = f"dead-letter header {name!r} is not UTF-8: {meta[name]!r}"
        raise DeadLetterError(msg) from None


def _time(raw: bytes) -> datetime:
    try:
        when: datetime | None = datetime.fromisoformat(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        when = None
    if when is None or when.tzinfo is None:
        msg = f"dead-letter header {TIME!r} must be an RFC 3339 time with an offset, got {raw!r}"
        raise DeadLetterError(msg)
    return when


def _int(meta: dict[str, bytes], name: str) -> int | None:
    raw = meta.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        msg = f"dead-letter header {name!r} must be a non-negative decimal integer, got {raw!r}"
        raise DeadLetterError(msg)
    return int(raw)
