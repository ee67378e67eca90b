"""The CloudEvents codec: round trips of every event type, and every way a message is refused."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streams_strategies import EVENTS, event_strategy

from streams.codec import DEFAULT_MAX_BYTES, DEFAULT_SOURCE, Codec
from streams.errors import DECODE_REASONS, ConfigurationError, DecodeError, EncodeError, StreamsError
from twin.errors import REASONS
from twin.events import (
    EVENT_TYPES,
    DockStatus,
    Event,
    OrderCreated,
    OrderOnBoard,
    OrderScanned,
    TripHandoff,
    VehiclePosition,
    event_fields,
)

EPOCH = datetime(2026, 3, 2, tzinfo=UTC)
CODEC = Codec(EPOCH)
#: A detail starts with the path of the offending field ("data.progress", "data.path[2]", "time",
#: or "message" for the whole thing), then the rule.
DETAIL = re.compile(r"^(message|[A-Za-z_]\w*)(\.[A-Za-z_]\w*|\[\d+\]|\['.*'\]|\[\".*\"\])*: \S", re.ASCII | re.DOTALL)


def _message(event: Event) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(CODEC.encode(event))
    return doc


def _raw(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


POSITION = VehiclePosition(id="e-1", time=12.5, vehicle_id="V7", lane_id="L3", progress=0.42)


def _position(**changes: Any) -> bytes:
    """The position message with envelope attributes (or ``data_<field>``) changed; ``...`` deletes."""
    doc = _message(POSITION)
    for key, value in changes.items():
        target, name = (doc["data"], key[5:]) if key.startswith("data_") else (doc, key)
        if value is ...:
            del target[name]
        else:
            target[name] = value
    return _raw(doc)


def _refusal(raw: bytes, codec: Codec = CODEC) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        codec.decode(raw)
    return info.value


# -- round trips ---------------------------------------------------------------------------------


@settings(max_examples=600)
@given(event=EVENTS)
def test_every_event_round_trips_exactly(event):
    raw = CODEC.encode(event)
    decoded = CODEC.decode(raw)
    assert type(decoded) is type(event)
    assert decoded == event
    assert decoded.time == event.time  # to the microsecond, as a float


@pytest.mark.parametrize("cls", list(EVENT_TYPES.values()), ids=list(EVENT_TYPES))
@settings(max_examples=60)
@given(data=st.data())
def test_round_trip_per_type(cls, data):
    event = data.draw(event_strategy(cls))
    assert CODEC.decode(CODEC.encode(event)) == event


@given(event=EVENTS)
def test_wire_layout(event):
    doc = _message(event)
    assert list(doc) == ["specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data"]
    assert doc["specversion"] == "1.0"
    assert doc["id"] == event.id
    assert doc["source"] == DEFAULT_SOURCE
    assert doc["type"] == event.TYPE
    assert doc["subject"] == getattr(event, event.SUBJECT)
    assert doc["datacontenttype"] == "application/json"
    assert list(doc["data"]) == list(event_fields(type(event)))
    assert doc["time"].endswith("Z")
    wire_time = datetime.fromisoformat(doc["time"])
    assert wire_time == EPOCH + timedelta(microseconds=round(event.time * 1_000_000))
    if isinstance(event, OrderCreated):
        assert doc["data"]["path"] == list(event.path)


def test_wire_time_is_epoch_plus_seconds_in_utc():
    event = VehiclePosition(id="e", time=3600.25, vehicle_id="V1")
    assert _message(event)["time"] == "2026-03-02T01:00:00.250000Z"
    assert _message(dataclasses.replace(event, time=-0.5))["time"] == "2026-03-01T23:59:59.500000Z"
    # An epoch given with an offset is the same instant; the wire is still UTC.
    paris = Codec(datetime(2026, 3, 2, 1, 0, tzinfo=timezone(timedelta(hours=1))))
    assert json.loads(paris.encode(event))["time"] == "2026-03-02T01:00:00.250000Z"
    assert paris.decode(paris.encode(event)) == event


def test_example_message_decodes_to_the_event():
    raw = (
        b'{"specversion":"1.0","id":"e-1","source":"/logistics/sensors","type":"logistics.vehicle.position.v1",'
        b'"time":"2026-03-02T00:00:12.500000Z","subject":"V7","datacontenttype":"application/json",'
        b'"data":{"vehicle_id":"V7","lane_id":"L3","progress":0.42,"site_id":null}}'
    )
    assert CODEC.decode(raw) == POSITION
    assert CODEC.encode(POSITION) == raw


def test_wire_times_with_other_offsets_are_the_same_instant():
    assert CODEC.decode(_position(time="2026-03-02T02:00:12.5+02:00")).time == 12.5
    assert CODEC.decode(_position(time="2026-03-01T19:00:12.500000-05:00")).time == 12.5


def test_optional_fields_may_be_left_out_and_take_their_defaults():
    decoded = CODEC.decode(_position(data_lane_id=..., data_progress=..., data_site_id=...))
    assert decoded == VehiclePosition(id="e-1", time=12.5, vehicle_id="V7")
    order = _message(OrderCreated(id="o", time=0.0, order_id="O1", origin="A", destination="B", promised_at=9.0))
    del order["data"]["path"]
    assert CODEC.decode(_raw(order)).path == ()


def test_datacontenttype_may_be_left_out():
    assert CODEC.decode(_position(datacontenttype=...)) == POSITION


def test_an_integer_is_a_number():
    decoded = CODEC.decode(_position(data_progress=1))
    assert decoded.progress == 1.0
    assert type(decoded.progress) is float
    events, errors = CODEC.decode_many([_position(data_progress=1)])
    assert not errors
    assert type(events[0].progress) is float  # type: ignore[attr-defined]


def _converted(raw: bytes) -> Event:
    """What ``msgspec.convert`` makes of a message (the codec's way for arrays and nested records)."""
    import msgspec

    message = CODEC._decoder.decode(raw)
    kind = CODEC._by_envelope[type(message)]
    fields = msgspec.structs.asdict(message.data)
    fields["id"] = message.id
    fields["time"] = (message.time - CODEC.epoch).total_seconds()
    event: Event = msgspec.convert(fields, kind.cls, from_attributes=kind.nested)
    return event


def test_events_with_scalar_payloads_are_built_directly_the_others_converted():
    direct = {t for t, kind in CODEC._by_type.items() if kind.make is not None}
    assert OrderCreated.TYPE not in direct  # path: an array
    assert TripHandoff.TYPE not in direct  # orders: nested records
    assert direct == set(EVENT_TYPES) - {OrderCreated.TYPE, TripHandoff.TYPE}


@settings(max_examples=400)
@given(event=EVENTS)
def test_an_event_built_directly_is_the_one_convert_makes_value_for_value_type_for_type(event):
    raw = CODEC.encode(event)
    expected = _converted(raw)
    for decoded in (CODEC.decode(raw), CODEC.decode_many([raw])[0][0]):
        assert type(decoded) is type(expected)
        assert decoded == expected
        for f in dataclasses.fields(expected):
            mine, theirs = getattr(decoded, f.name), getattr(expected, f.name)
            assert type(mine) is type(theirs), f.name
            assert mine == theirs, f.name
        with pytest.raises(dataclasses.FrozenInstanceError):
            decoded.id = "changed"  # type: ignore[misc]


def test_any_source_is_accepted_and_the_setting_is_written():
    assert CODEC.decode(_position(source="urn:partner:telematics")) == POSITION
    planner = Codec(EPOCH, source="/logistics/planner")
    assert json.loads(planner.encode(POSITION))["source"] == "/logistics/planner"


def test_decode_takes_bytes_like_objects():
    raw = CODEC.encode(POSITION)
    assert CODEC.decode(bytearray(raw)) == POSITION
    assert CODEC.decode(memoryview(raw)) == POSITION


# -- refusals: every reason, with its detail -----------------------------------------------------

REFUSALS = [
    # oversize is checked before anything is parsed (see test_oversize_is_checked_before_parsing)
    (b"{", "malformed-json", "message: not valid JSON: Input data was truncated"),
    (b"", "malformed-json", "message: not valid JSON: Input data was truncated"),
    (b"\xff\xfe{}", "malformed-json", "message: not valid UTF-8 at byte 0"),
    (b'{"a": 1} x', "malformed-json", "message: not valid JSON: JSON is malformed: trailing characters (byte 10)"),
    (b"[" * 5000, "malformed-json", "message: JSON nested too deeply to parse"),
    (b"[1]", "schema", "message: expected a JSON object (a CloudEvent), got array"),
    (b'"hello"', "schema", "message: expected a JSON object (a CloudEvent), got string"),
    (_position(type=...), "schema", "type: required attribute is missing"),
    (_position(type=7), "schema", "type: expected string, got integer"),
    (
        _position(type="logistics.vehicle.teleported.v1"),
        "unknown-type",
        "type: unknown event type 'logistics.vehicle.teleported.v1'; known types: " + ", ".join(sorted(EVENT_TYPES)),
    ),
    (_position(specversion="0.3"), "schema", "specversion: expected '1.0' (CloudEvents 1.0), got '0.3'"),
    (_position(specversion=1.0), "schema", "specversion: expected '1.0' (CloudEvents 1.0), got 1.0"),
    (_position(id=...), "schema", "id: required attribute is missing"),
    (_position(id=""), "schema", "id: expected non-empty string, got an empty string"),
    (_position(id=17), "schema", "id: expected non-empty string, got integer"),
    (_position(source=""), "schema", "source: expected non-empty string, got an empty string"),
    (_position(subject=...), "schema", "subject: required attribute is missing"),
    (_position(subject="V8"), "schema", "subject: must equal data.vehicle_id ('V7'), got 'V8'"),
    (
        _position(time="2026-03-02T00:00:12.5"),
        "schema",
        "time: expected an RFC 3339 time with a timezone offset (e.g. '2026-03-02T08:00:00Z'), "
        "got '2026-03-02T00:00:12.5'",
    ),
    (
        _position(time="yesterday"),
        "schema",
        "time: expected a valid RFC 3339 time (e.g. '2026-03-02T08:00:00Z'), got 'yesterday'",
    ),
    (_position(time=12.5), "schema", "time: expected an RFC 3339 string, got number"),
    (_position(time=...), "schema", "time: required attribute is missing"),
    (
        _position(datacontenttype="application/xml"),
        "schema",
        "datacontenttype: expected 'application/json' (or leave it out), got 'application/xml'",
    ),
    (
        _position(traceparent="00-abc"),
        "schema",
        "traceparent: unknown attribute (a message has only: "
        "specversion, id, source, type, time, subject, datacontenttype, data)",
    ),
    (_position(data=...), "schema", "data: required attribute is missing"),
    (_position(data=[1, 2]), "schema", "data: expected object, got array"),
    (_position(data_progress="0.42"), "schema", "data.progress: expected finite number or null, got string"),
    (_position(data_progress=True), "schema", "data.progress: expected finite number or null, got boolean"),
    (_position(data_lane_id=3), "schema", "data.lane_id: expected string or null, got integer"),
    (_position(data_vehicle_id=...), "schema", "data.vehicle_id: required field is missing (VehiclePosition)"),
    (_position(data_vehicle_id=None), "schema", "data.vehicle_id: expected non-empty string, got null"),
    (
        _position(data_speed=80),
        "schema",
        "data.speed: unknown field (VehiclePosition has: vehicle_id, lane_id, progress, site_id)",
    ),
    (
        _position(data_id="e-1"),
        "schema",
        "data.id: unknown field (VehiclePosition has: vehicle_id, lane_id, progress, site_id)",
    ),
    (
        _position(data_progress=0.5).replace(b"0.5", b"1e400"),
        "schema",
        "data.progress: number out of range (numbers must fit a 64-bit float)",
    ),
]


@pytest.mark.parametrize(("raw", "reason", "detail"), REFUSALS, ids=[f"{r}:{d[:40]}" for _, r, d in REFUSALS])
def test_refusal_reason_and_detail(raw, reason, detail):
    error = _refusal(raw)
    assert (error.reason, error.detail) == (reason, detail)
    assert DETAIL.match(error.detail)


def test_payload_type_rules_of_other_events():
    order = _message(OrderCreated(id="o", time=0.0, order_id="O1", origin="A", destination="B", promised_at=9.0))
    order["data"]["path"] = ["T1", 2]
    assert _refusal(_raw(order)).detail == "data.path[1]: expected string, got integer"
    order["data"]["path"] = "T1"
    assert _refusal(_raw(order)).detail == "data.path: expected array of strings, got string"

    scan = _message(OrderScanned(id="s", time=0.0, order_id="O1", site_id="S1", kind="loaded"))
    scan["data"]["kind"] = "eaten"
    assert _refusal(_raw(scan)).detail == "data.kind: expected one of 'loaded', 'unloaded', 'sorted', got 'eaten'"

    dock = _message(DockStatus(id="d", time=0.0, site_id="S1", occupied=2, in_service=4))
    dock["data"]["occupied"] = 2.0
    assert _refusal(_raw(dock)).detail == "data.occupied: expected integer, got number"


def test_nested_records_are_checked_field_by_field():
    on_board = OrderOnBoard(
        order_id="O1", origin="A", destination="B", promised_at=9.0, created_at=1.0, path=("T1", "T2"), hop=1
    )
    handoff = TripHandoff(
        id="h",
        time=5.0,
        trip_id="T1",
        leg=0,
        vehicle_id="V",
        departed_at=5.0,
        from_shard="n",
        to_shard="s",
        orders=(on_board,),
    )
    assert CODEC.decode(CODEC.encode(handoff)) == handoff
    doc = _message(handoff)
    assert doc["data"]["orders"] == [dataclasses.asdict(on_board) | {"path": ["T1", "T2"]}]
    doc["data"]["orders"][0]["hop"] = "1"
    assert _refusal(_raw(doc)).detail == "data.orders[0].hop: expected integer, got string"
    doc["data"]["orders"][0]["hop"] = 1
    doc["data"]["orders"][0]["weight"] = 3
    assert _refusal(_raw(doc)).detail.startswith("data.orders[0].weight: unknown field (OrderOnBoard has: order_id,")
    doc["data"]["orders"] = [None]
    assert _refusal(_raw(doc)).detail == "data.orders[0]: expected OrderOnBoard object, got null"
    doc["data"]["orders"] = {"O1": {}}
    assert _refusal(_raw(doc)).detail == "data.orders: expected array of OrderOnBoard objects, got object"


def test_odd_keys_are_quoted_in_details():
    assert _refusal(_position(**{"data_two words": 1})).detail.startswith("data['two words']: unknown field")
    assert _refusal(_position(**{"": 1})).detail.startswith("message['']: unknown attribute")


def test_invalid_utf8_inside_a_string_is_malformed():
    raw = _position(data_lane_id="L3").replace(b'"L3"', b'"L\xff3"')
    error = _refusal(raw)
    assert error.reason == "malformed-json"
    assert error.detail.startswith("message: not valid UTF-8 at byte")


def test_unknown_type_wins_over_other_envelope_problems():
    error = _refusal(_position(type="x.unknown.v1", id="", specversion="0.3"))
    assert error.reason == "unknown-type"


def test_oversize_is_checked_before_parsing():
    small = Codec(EPOCH, max_bytes=100)
    raw = CODEC.encode(POSITION)
    error = _refusal(raw, small)
    assert error.reason == "oversize"
    assert error.detail == f"message: {len(raw)} bytes exceeds the limit of 100 bytes (Codec max_bytes)"
    assert _refusal(b"{" * 101, small).reason == "oversize"  # malformed, but too big to look at
    assert _refusal(b"{" * 100, small).reason == "malformed-json"
    assert CODEC.max_bytes == DEFAULT_MAX_BYTES == 64 * 1024
    assert _refusal(b" " * (DEFAULT_MAX_BYTES + 1)).reason == "oversize"


def test_decode_errors_belong_to_the_streams_root_and_name_their_reason():
    error = _refusal(b"{")
    assert isinstance(error, StreamsError)
    assert isinstance(error, ValueError)
    assert str(error) == f"malformed-json: {error.detail}"
    assert set(DECODE_REASONS) <= set(REASONS)
    with pytest.raises(ValueError, match="reason must be one of"):
        DecodeError("bad-vibes", "x")


# -- arbitrary input never raises anything but DecodeError ---------------------------------------


@settings(max_examples=1000)
@given(raw=st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_decode_error(raw):
    try:
        CODEC.decode(raw)
    except DecodeError as error:
        assert error.reason in DECODE_REASONS
        assert DETAIL.match(error.detail), error.detail


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(event=EVENTS, data=st.data())
def test_any_attribute_or_field_replaced_by_any_json_is_decoded_or_refused(event, data):
    doc = _message(event)
    target = doc if data.draw(st.booleans(), label="envelope?") else doc["data"]
    key = data.draw(st.sampled_from([*target, "extra"]), label="key")
    target[key] = data.draw(JSON, label="value")
    try:
        CODEC.decode(_raw(doc))
    except DecodeError as error:
        assert error.reason in ("schema", "unknown-type")
        assert DETAIL.match(error.detail), error.detail


@settings(max_examples=500)
@given(event=EVENTS, data=st.data())
def test_corrupted_bytes_of_a_valid_message_raise_only_decode_error(event, data):
    raw = bytearray(CODEC.encode(event))
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        i = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw[i] = data.draw(st.integers(0, 255), label="byte")
    try:
        CODEC.decode(bytes(raw))
    except DecodeError as error:
        assert error.reason in DECODE_REASONS


# -- batches --------------------------------------------------------------------------------------


def test_decode_many_keeps_order_and_indexes_the_refusals():
    other = dataclasses.replace(POSITION, id="e-2", time=13.0)
    raws = [CODEC.encode(POSITION), b"{", CODEC.encode(other), _position(type="x.y.v1")]
    events, errors = CODEC.decode_many(raws)
    assert events == [POSITION, other]
    assert [(i, e.reason) for i, e in errors] == [(1, "malformed-json"), (3, "unknown-type")]
    assert CODEC.decode_many(iter([])) == ([], [])


# -- encoding refuses what could not come back ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Unregistered(Event):
    TYPE: ClassVar[str] = "logistics.test.unregistered.v1"
    SUBJECT: ClassVar[str] = "thing_id"
    thing_id: str


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (VehiclePosition(id="x", time=0.0, vehicle_id="V", progress=float("inf")), "progress: expected finite number"),
        (VehiclePosition(id="x", time=0.0, vehicle_id="V", progress=float("nan")), "progress: expected finite number"),
        (
            VehiclePosition(id="x", time=0.0, vehicle_id=""),
            "vehicle_id: expected non-empty string, got an empty string",
        ),
        (VehiclePosition(id="x", time=0.0, vehicle_id="V", lane_id=3), "lane_id: expected string or null, got integer"),
        (VehiclePosition(id="", time=0.0, vehicle_id="V"), "id must be a non-empty string"),
        (VehiclePosition(id="x", time=float("nan"), vehicle_id="V"), "time must be finite seconds since the epoch"),
        (VehiclePosition(id="x", time=1e300, vehicle_id="V"), "is too far"),
        (VehiclePosition(id="x\ud800", time=0.0, vehicle_id="V"), "surrogates not allowed"),
        (OrderScanned(id="s", time=0.0, order_id="O", site_id="S", kind="eaten"), "kind: expected one of"),  # type: ignore[arg-type]
        (_Unregistered(id="u", time=0.0, thing_id="T"), "not an event type registered"),
    ],
)
def test_encode_refuses_events_that_would_not_round_trip(event, message):
    with pytest.raises(EncodeError, match=re.escape(message)):
        CODEC.encode(event)


def test_codec_settings_are_checked():
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        Codec(datetime(2026, 3, 2))  # noqa: DTZ001 (the point of the test)
    with pytest.raises(ConfigurationError, match="source"):
        Codec(EPOCH, source="")
    with pytest.raises(ConfigurationError, match="max_bytes"):
        Codec(EPOCH, max_bytes=0)
    assert "source='/logistics/sensors'" in repr(CODEC)
