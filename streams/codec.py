"""CloudEvents 1.0 structured-mode JSON <-> typed twin events. The only module that knows the wire.

A message looks like this (one line on the wire)::

    {"specversion": "1.0", "id": "e-1", "source": "/logistics/sensors",
     "type": "logistics.vehicle.position.v1", "time": "2026-03-02T08:00:12.500000Z",
     "subject": "V7", "datacontenttype": "application/json",
     "data": {"vehicle_id": "V7", "lane_id": "L3", "progress": 0.42, "site_id": null}}

``time`` is the event time: the twin's float seconds since the epoch, as an RFC 3339 UTC time
(microsecond precision, so times in whole microseconds round-trip exactly). ``data`` carries the
payload fields of the event dataclass (everything but ``id`` and ``time``) and nothing else;
``subject`` repeats the entity id (the field named by the class's ``SUBJECT``).

Decoding has a fast path and a slow path. The fast path is msgspec decoding into typed structs
(validation in C); it only ever returns events. When it fails for any reason, the slow path parses
the message generically and checks it attribute by attribute, to decide the reason (in this order:
``oversize``, ``malformed-json``, ``unknown-type``, ``schema``) and to write a detail that names
the field and the rule.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal, Union

import msgspec

from streams.errors import ConfigurationError, DecodeError, EncodeError
from streams.wire import (
    CONTENT_TYPE,
    DEFAULT_SOURCE,
    ENVELOPE_ATTRIBUTES,
    SPECVERSION,
    FieldRule,
    check_fields,
    describe,
    key_path,
    payload_rules,
    payload_struct,
)
from twin.events import EVENT_TYPES, Event

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_SOURCE", "Codec"]

#: Largest message the codec will parse; larger ones are refused as ``oversize`` unread.
DEFAULT_MAX_BYTES: Final = 64 * 1024

_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
_AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
_TIME_DECODER: Final = msgspec.json.Decoder(_AwareTime)
_EXAMPLE_TIME: Final = "2026-03-02T08:00:00Z"
_MSGSPEC_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>.*)`)?$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class _Kind:
    """Everything the codec precomputes about one event class."""

    cls: type[Event]
    subject_field: str
    struct: type[msgspec.Struct]
    envelope: type[msgspec.Struct]
    names: tuple[str, ...]
    values: Callable[[Event], tuple[Any, ...]]
    rules: tuple[FieldRule, ...]
    #: Nested records decode as structs; only then must convert read attributes (it costs).
    nested: bool
    #: builds the event from a decoded payload struct when every payload field is a scalar
    #: (:func:`_maker`); None: ``msgspec.convert`` from the fields
    make: _Make | None


#: ``make(id, time, payload struct) -> event``
_Make = Callable[[str, float, Any], Event]


def _maker(cls: type[Event], rules: tuple[FieldRule, ...]) -> _Make | None:
    """A constructor of ``cls`` from its decoded payload struct, if every payload field is a scalar.

    Decoding into the payload struct has validated every value already, and a scalar field comes
    out of it with the type the event declares (str, int, float, a string of a Literal, or None;
    msgspec gives a float field a float even for an integer on the wire). So the event's slots are
    filled directly, as the dataclass's own ``__init__`` does, instead of ``msgspec.convert``
    checking every value a second time. The constructor is generated, one line per field, as
    ``dataclasses`` generates ``__init__``: 1.0 us per event against 2.0 for ``convert`` (the default
    day, best of 10 alternating runs); a loop over the fields took 1.8. Arrays (lists into tuples)
    and nested records (structs into dataclasses) still take ``convert``.
    """
    scalars = ("string", "number", "integer")
    if any(r.items is not None or r.record is not None or r.json_type not in scalars for r in rules):
        return None
    payload = [r.name for r in rules]
    names = ["id", "time", *payload]
    if {f.name for f in dataclasses.fields(cls)} != set(names) or hasattr(cls, "__post_init__"):
        return None  # other fields, or checks of its own that filling the slots would skip
    namespace: dict[str, Any] = {"new": cls.__new__, "cls": cls}
    for name in names:
        slot = next((vars(c)[name] for c in cls.__mro__ if name in vars(c)), None)
        if not isinstance(slot, types.MemberDescriptorType):  # not a slotted dataclass
            return None
        namespace[f"set_{name}"] = slot.__set__
    lines = [
        "def make(event_id, seconds, data):",
        "    event = new(cls)",
        "    set_id(event, event_id)",
        "    set_time(event, seconds)",
        *(f"    set_{name}(event, data.{name})" for name in payload),
        "    return event",
    ]
    exec("\n".join(lines), namespace)  # field names of a dataclass: identifiers
    make: _Make = namespace["make"]
    return make


def _kind(cls: type[Event]) -> _Kind:
    struct = payload_struct(cls)
    # The whole message as one struct, tagged by ``type``: one msgspec pass decodes and validates
    # every attribute and the payload, and picks the event class.
    envelope = msgspec.defstruct(
        f"{cls.__name__}Message",
        [
            ("specversion", Literal["1.0"]),
            ("id", _NonEmpty),
            ("source", _NonEmpty),
            ("time", _AwareTime),
            ("subject", _NonEmpty),
            ("datacontenttype", Literal["application/json"], CONTENT_TYPE),
            ("data", struct),
        ],
        tag_field="type",
        tag=cls.TYPE,
        kw_only=True,
        forbid_unknown_fields=True,
        module=__name__,
    )
    rules = payload_rules(cls)
    names = tuple(r.name for r in rules)
    getter = operator.attrgetter(*names)
    values: Callable[[Event], tuple[Any, ...]] = getter if len(names) > 1 else (lambda ev: (getter(ev),))
    nested = any(r.record is not None or (r.items is not None and r.items.record is not None) for r in rules)
    return _Kind(cls, cls.SUBJECT, struct, envelope, names, values, rules, nested, _maker(cls, rules))


class Codec:
    """Encodes twin events as CloudEvents JSON and decodes them back, strictly.

    ``epoch`` (timezone-aware) is the instant twin time 0.0 stands for; ``source`` is the
    CloudEvents ``source`` written on encode (any non-empty source is accepted on decode);
    messages longer than ``max_bytes`` are refused as ``oversize`` before they are parsed.
    """

    def __init__(self, epoch: datetime, *, source: str = DEFAULT_SOURCE, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if not isinstance(epoch, datetime) or epoch.tzinfo is None or epoch.utcoffset() is None:
            msg = f"Codec epoch must be a timezone-aware datetime, got {epoch!r}; e.g. datetime(2026, 3, 2, tzinfo=UTC)"
            raise ConfigurationError(msg)
        if not isinstance(source, str) or not source:
            msg = f"Codec source must be a non-empty string (a URI reference like {DEFAULT_SOURCE!r}), got {source!r}"
            raise ConfigurationError(msg)
        if not isinstance(max_bytes, int) or max_bytes <= 0:
            msg = f"Codec max_bytes must be a positive int, got {max_bytes!r}"
            raise ConfigurationError(msg)
        self.epoch: Final = epoch.astimezone(UTC)
        self.source: Final = source
        self.max_bytes: Final = max_bytes
        self._by_type: dict[str, _Kind] = {t: _kind(cls) for t, cls in EVENT_TYPES.items()}
        self._by_class: dict[type[Event], _Kind] = {k.cls: k for k in self._by_type.values()}
        self._by_envelope: dict[type[msgspec.Struct], _Kind] = {k.envelope: k for k in self._by_type.values()}
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
            Union[tuple(k.envelope for k in self._by_type.values())]  # noqa: UP007 (a runtime union of classes)
        )
        self._encoder = msgspec.json.Encoder()

    def __repr__(self) -> str:
        return f"Codec(epoch={self.epoch.isoformat()!r}, source={self.source!r}, max_bytes={self.max_bytes})"

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, event: Event) -> bytes:
        """The CloudEvents JSON of ``event``; raises :class:`EncodeError` if it cannot round-trip."""
        kind = self._by_class.get(type(event))
        if kind is None:
            msg = f"cannot encode {type(event).__name__}: not an event type registered in twin.events.EVENT_TYPES"
            raise EncodeError(msg)
        name = type(event).__name__
        if not isinstance(event.id, str) or not event.id:
            msg = f"cannot encode {name}: id must be a non-empty string, got {event.id!r}"
            raise EncodeError(msg)
        fields = dict(zip(kind.names, kind.values(event), strict=True))
        try:
            data = msgspec.convert(fields, kind.struct, from_attributes=kind.nested)
        except msgspec.ValidationError as exc:
            problems = (rule.check(fields[rule.name], rule.name) for rule in kind.rules)
            problem = next((p for p in problems if p is not None), None) or _translate(str(exc), prefix="")
            msg = f"cannot encode {name} {event.id!r}: {problem}"
            raise EncodeError(msg) from None
        seconds = event.time
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
            msg = f"cannot encode {name} {event.id!r}: time must be finite seconds since the epoch, got {seconds!r}"
            raise EncodeError(msg)
        try:
            when = self.epoch + timedelta(seconds=seconds)
        except OverflowError:
            msg = f"cannot encode {name} {event.id!r}: time {seconds!r} s after {self.epoch.isoformat()} is too far"
            raise EncodeError(msg) from None
        envelope = {
            "specversion": SPECVERSION,
            "id": event.id,
            "source": self.source,
            "type": kind.cls.TYPE,
            "time": when,
            "subject": getattr(event, kind.subject_field),
            "datacontenttype": CONTENT_TYPE,
            "data": data,
        }
        try:
            return self._encoder.encode(envelope)
        except (msgspec.EncodeError, UnicodeEncodeError, OverflowError) as exc:
            msg = f"cannot encode {name} {event.id!r}: {exc}"
            raise EncodeError(msg) from None

    # -- decoding ------------------------------------------------------------------------------

    def decode(self, raw: bytes) -> Event:
        """The event in ``raw``, or :class:`DecodeError` with the reason and a detail."""
        if len(raw) > self.max_bytes:
            detail = f"message: {len(raw)} bytes exceeds the limit of {self.max_bytes} bytes (Codec max_bytes)"
            error = DecodeError("oversize", detail)
            raise error
        try:
            message = self._decoder.decode(raw)
            kind = self._by_envelope[type(message)]
            data = message.data
            if getattr(data, kind.subject_field) == message.subject:
                seconds = (message.time - self.epoch).total_seconds()
                if kind.make is not None:
                    return kind.make(message.id, seconds, data)
                fields = msgspec.structs.asdict(data)
                fields["id"] = message.id
                fields["time"] = seconds
                event: Event = msgspec.convert(fields, kind.cls, from_attributes=kind.nested)
                return event
            failure = "subject does not match the entity id - at `$.subject`"
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as exc:
            failure = str(exc)
        raise self._diagnose(raw, failure)

    def decode_many(self, raws: Iterable[bytes]) -> tuple[list[Event], list[tuple[int, DecodeError]]]:
        """Decode a batch: the events in input order, and ``(index, error)`` for each refused message."""
        # The fast path of :meth:`decode`, inlined (a method call and a raise/catch less per
        # message, names bound once per batch); anything it does not accept goes through
        # :meth:`decode`, which refuses it with the same reason and detail as ever.
        events: list[Event] = []
        errors: list[tuple[int, DecodeError]] = []
        append = events.append
        decode_raw = self._decoder.decode
        by_envelope = self._by_envelope
        asdict = msgspec.structs.asdict
        convert = msgspec.convert
        epoch = self.epoch
        max_bytes = self.max_bytes
        for i, raw in enumerate(raws):
            if len(raw) <= max_bytes:
                try:
                    message = decode_raw(raw)
                    kind = by_envelope[type(message)]
                    data = message.data
                    if getattr(data, kind.subject_field) == message.subject:
                        seconds = (message.time - epoch).total_seconds()
                        make = kind.make
                        if make is not None:
                            append(make(message.id, seconds, data))
                        else:
                            fields = asdict(data)
                            fields["id"] = message.id
                            fields["time"] = seconds
                            append(convert(fields, kind.cls, from_attributes=kind.nested))
                        continue
                except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
                    pass
            try:
                append(self.decode(raw))
            except DecodeError as exc:
                errors.append((i, exc))
        return events, errors

    def _diagnose(self, raw: bytes, failure: str) -> DecodeError:
        """Why the fast path refused ``raw``: reason and detail, from a generic parse and field checks."""
        # UTF-8 first: msgspec reports invalid UTF-8 differently from one release to the next
        # (a UnicodeDecodeError, or a DecodeError of its own since 0.23); this names the byte
        bad = _not_utf8(raw)
        if bad is not None:
            return bad
        try:
            doc = msgspec.json.decode(raw)
        except msgspec.ValidationError:
            # Valid JSON syntax that msgspec cannot represent (a number beyond the float range).
            return DecodeError("schema", _translate(failure, prefix="message") + " (numbers must fit a 64-bit float)")
        except msgspec.DecodeError as exc:
            return DecodeError("malformed-json", f"message: not valid JSON: {exc}")
        except RecursionError:
            return DecodeError("malformed-json", "message: JSON nested too deeply to parse")
        detail = _explain(doc, self._by_type)
        if detail is not None:
            return detail
        return DecodeError("schema", _translate(failure, prefix="message"))


def _not_utf8(raw: bytes) -> DecodeError | None:
    """The refusal of a message that is not UTF-8, naming its first bad byte; None if it is UTF-8."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return DecodeError("malformed-json", f"message: not valid UTF-8 at byte {exc.start}")
    return None


def _explain(doc: Any, kinds: dict[str, _Kind]) -> DecodeError | None:
    """The first rule a generically parsed message breaks, or None if it breaks none."""
    if not isinstance(doc, dict):
        return DecodeError("schema", f"message: expected a JSON object (a CloudEvent), got {describe(doc)}")
    if "type" not in doc:
        return DecodeError("schema", "type: required attribute is missing")
    etype = doc["type"]
    if not isinstance(etype, str):
        return DecodeError("schema", f"type: expected string, got {describe(etype)}")
    kind = kinds.get(etype)
    if kind is None:
        known = ", ".join(sorted(kinds))
        return DecodeError("unknown-type", f"type: unknown event type {etype!r}; known types: {known}")
    for attr in ENVELOPE_ATTRIBUTES:
        if attr not in doc and attr != "datacontenttype":
            return DecodeError("schema", f"{attr}: required attribute is missing")
    unknown = [k for k in doc if k not in ENVELOPE_ATTRIBUTES]
    if unknown:
        allowed = ", ".join(ENVELOPE_ATTRIBUTES)
        return DecodeError("schema", f"{key_path('', unknown[0])}: unknown attribute (a message has only: {allowed})")
    problem = _check_envelope(doc)
    if problem is not None:
        return DecodeError("schema", problem)
    data = doc["data"]
    if not isinstance(data, dict):
        return DecodeError("schema", f"data: expected object, got {describe(data)}")
    problem = check_fields(data, kind.rules, "data", kind.cls.__name__)
    if problem is not None:
        return DecodeError("schema", problem)
    entity = data[kind.subject_field]
    if doc["subject"] != entity:
        detail = f"subject: must equal data.{kind.subject_field} ({entity!r}), got {doc['subject']!r}"
        return DecodeError("schema", detail)
    return None


def _check_envelope(doc: dict[str, Any]) -> str | None:
    if doc["specversion"] != SPECVERSION:
        return f"specversion: expected {SPECVERSION!r} (CloudEvents 1.0), got {doc['specversion']!r}"
    for attr in ("id", "source", "subject"):
        value = doc[attr]
        if not isinstance(value, str):
            return f"{attr}: expected non-empty string, got {describe(value)}"
        if not value:
            return f"{attr}: expected non-empty string, got an empty string"
    if "datacontenttype" in doc and doc["datacontenttype"] != CONTENT_TYPE:
        return f"datacontenttype: expected {CONTENT_TYPE!r} (or leave it out), got {doc['datacontenttype']!r}"
    when = doc["time"]
    if not isinstance(when, str):
        return f"time: expected an RFC 3339 string, got {describe(when)}"
    try:
        _TIME_DECODER.decode(msgspec.json.encode(when))
    except msgspec.ValidationError as exc:
        rule = "an RFC 3339 time with a timezone offset" if "timezone" in str(exc) else "a valid RFC 3339 time"
        return f"time: expected {rule} (e.g. {_EXAMPLE_TIME!r}), got {when!r}"
    return None


def _translate(message: str, *, prefix: str) -> str:
    """A msgspec error as ``path: rule`` (the fallback when the field checks find nothing)."""
    match = _MSGSPEC_PATH.match(message)
    assert match is not None  # the pattern matches any string
    path = (match["path"] or "").lstrip(".")
    text = match["message"]
    text = text[:1].lower() + text[1:]
    where = path or prefix
    return f"{where}: {text}" if where else text
