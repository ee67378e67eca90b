"""Dead letters to Kafka messages for twin.dlq and back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.codec import Codec
from streams.deadletter import DLQ_TOPIC, DeadLetter, DlqMessage, from_message, to_message
from streams.errors import DeadLetterError, DecodeError, StreamsError
from twin.errors import REASONS

WHEN = datetime(2026, 3, 2, 8, 30, 0, 250000, tzinfo=UTC)

HEADER_KEYS = st.text(max_size=12) | st.sampled_from(["twin.dlq.reason", "twin.dlq.detail", "twin.dlq.time", "ce_id"])
HEADERS = st.lists(st.tuples(HEADER_KEYS, st.binary(max_size=20)), max_size=5).map(tuple)
TIMES = st.datetimes(
    min_value=datetime(1970, 1, 1),  # noqa: DTZ001 (hypothesis bounds are naive; timezones are drawn below)
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]),
)
LETTERS = st.builds(
    DeadLetter,
    value=st.binary(max_size=200),
    reason=st.sampled_from(REASONS),
    detail=st.text(max_size=80),
    time=TIMES,
    headers=HEADERS,
    key=st.none() | st.binary(max_size=16),
    topic=st.none() | st.text(min_size=1, max_size=30),
    partition=st.none() | st.integers(0, 10_000),
    offset=st.none() | st.integers(0, 2**63 - 1),
)


@given(letter=LETTERS)
def test_round_trip(letter):
    message = to_message(letter)
    assert message.topic == DLQ_TOPIC
    assert message.value == letter.value
    assert message.key == letter.key
    assert from_message(message.value, message.headers, message.key) == letter


@given(letter=LETTERS, again=LETTERS)
def test_a_dead_letter_of_a_dead_letter_keeps_the_first_block_in_its_headers(letter, again):
    first = to_message(letter)
    second = DeadLetter(
        value=first.value, reason=again.reason, detail=again.detail, time=again.time, headers=tuple(first.headers)
    )
    back = from_message(*to_message(second)[2:])
    assert back == second
    assert from_message(back.value, back.headers, letter.key) == letter


def test_message_layout():
    letter = DeadLetter(
        value=b'{"specversion": "1.0", "id": 7}',
        reason="schema",
        detail="id: expected non-empty string, got integer",
        time=WHEN,
        headers=(("ce_source", b"/x"),),
        key=b"V7",
        topic="logistics.sensors",
        partition=3,
        offset=1234,
    )
    assert to_message(letter) == DlqMessage(
        topic="twin.dlq",
        key=b"V7",
        value=b'{"specversion": "1.0", "id": 7}',
        headers=[
            ("ce_source", b"/x"),
            ("twin.dlq.reason", b"schema"),
            ("twin.dlq.detail", b"id: expected non-empty string, got integer"),
            ("twin.dlq.time", b"2026-03-02T08:30:00.250000Z"),
            ("twin.dlq.topic", b"logistics.sensors"),
            ("twin.dlq.partition", b"3"),
            ("twin.dlq.offset", b"1234"),
        ],
    )
    assert to_message(letter, topic="other.dlq").topic == "other.dlq"


def test_unknown_source_is_left_out():
    message = to_message(DeadLetter(value=b"x", reason="duplicate", detail="id e-1 seen", time=WHEN))
    assert [k for k, _ in message.headers] == ["twin.dlq.reason", "twin.dlq.detail", "twin.dlq.time"]
    back = from_message(message.value, message.headers)
    assert (back.topic, back.partition, back.offset, back.key) == (None, None, None, None)


def test_from_a_codec_refusal_the_value_is_the_original_bytes():
    codec = Codec(WHEN)
    raw = b'{"specversion":"1.0","type":"logistics.nothing.v1"} '
    with pytest.raises(DecodeError) as info:
        codec.decode(raw)
    letter = DeadLetter.from_decode_error(
        info.value, raw, time=WHEN, headers=[("h", b"1")], topic="logistics.sensors", partition=0, offset=9
    )
    assert (letter.reason, letter.detail) == ("unknown-type", info.value.detail)
    message = to_message(letter)
    assert message.value is raw
    assert dict(message.headers)["twin.dlq.reason"] == b"unknown-type"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"reason": "meh"}, "reason must be one of"),
        ({"time": datetime(2026, 3, 2)}, "timezone-aware"),  # noqa: DTZ001 (the point of the test)
        ({"value": "text"}, "original bytes"),
        ({"headers": (("k", "v"),)}, r"\(str, bytes\) pairs"),
        ({"partition": -1}, "partition must be a non-negative int"),
        ({"offset": True}, "offset must be a non-negative int"),
    ],
)
def test_dead_letters_are_checked(changes, match):
    fields = {"value": b"x", "reason": "schema", "detail": "d", "time": WHEN} | changes
    with pytest.raises(DeadLetterError, match=match):
        DeadLetter(**fields)


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ([("ce_id", b"1")], "not a dead letter"),
        ([("twin.dlq.reason", b"schema"), ("twin.dlq.time", b"2026-03-02T08:30:00Z")], "missing its 'twin.dlq.detail'"),
        ([("twin.dlq.reason", b"schema"), ("twin.dlq.detail", b"d")], "missing its 'twin.dlq.time'"),
        (
            [("twin.dlq.reason", b"schema"), ("twin.dlq.detail", b"d"), ("twin.dlq.time", b"08:30")],
            "must be an RFC 3339 time",
        ),
        (
            [("twin.dlq.reason", b"schema"), ("twin.dlq.detail", b"d"), ("twin.dlq.time", b"2026-03-02T08:30:00")],
            "must be an RFC 3339 time with an offset",
        ),
        (
            [
                ("twin.dlq.reason", b"schema"),
                ("twin.dlq.detail", b"d"),
                ("twin.dlq.time", b"2026-03-02T08:30:00Z"),
                ("twin.dlq.offset", b"-1"),
            ],
            "non-negative decimal integer",
        ),
        (
            [("twin.dlq.reason", b"schema"), ("twin.dlq.detail", b"\xff"), ("twin.dlq.time", b"2026-03-02T08:30:00Z")],
            "not UTF-8",
        ),
        (
            [("twin.dlq.reason", b"nope"), ("twin.dlq.detail", b"d"), ("twin.dlq.time", b"2026-03-02T08:30:00Z")],
            "reason must be one of",
        ),
        (
            [("twin.dlq.reason", b"schema"), ("trace", b"1")],
            "unexpected header 'trace'",
        ),
    ],
)
def test_malformed_dlq_messages_are_refused(headers, match):
    with pytest.raises(DeadLetterError, match=match) as info:
        from_message(b"x", headers)
    assert isinstance(info.value, StreamsError)
