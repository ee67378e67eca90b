"""The wire model: what each event looks like as a CloudEvent, derived from the event dataclasses.

One :class:`FieldRule` per payload field, read from the dataclass's type hints, drives three
things that must agree: the msgspec struct the codec decodes ``data`` into (fast path), the
field-by-field checker that explains a rejected message (slow path), and the JSON Schema shipped
to external producers. Adding a field to an event in ``twin/events.py`` updates all three; a
field of a type this module has no rule for fails as soon as a codec is built (or the schemas
are generated), with the fix in the message.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Final, Literal

import msgspec

from twin.events import EVENT_TYPES, Event

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_SOURCE",
    "ENVELOPE_ATTRIBUTES",
    "MAX_FLOAT",
    "SPECVERSION",
    "TIME_PATTERN",
    "FieldRule",
    "check_fields",
    "describe",
    "fields_schema",
    "key_path",
    "payload_rules",
    "payload_struct",
]

SPECVERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/json"
#: CloudEvents ``source`` written by default; a codec setting.
DEFAULT_SOURCE: Final = "/logistics/sensors"
#: Every attribute a message may carry, in wire order; anything else is a schema error.
ENVELOPE_ATTRIBUTES: Final = ("specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data")
#: RFC 3339 date-time with a mandatory offset, as accepted by the codec (msgspec's parser also
#: takes ``+hhmm`` and a space for ``T``, so the schema does too).
TIME_PATTERN: Final = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})$"
#: Largest finite float: numbers on the wire must be finite.
MAX_FLOAT: Final = sys.float_info.max

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FINITE: Final = msgspec.Meta(ge=-MAX_FLOAT, le=MAX_FLOAT)
_NON_EMPTY: Final = msgspec.Meta(min_length=1)


@dataclass(frozen=True, slots=True)
class FieldRule:
    """How one payload field (or one array item, or one field of a nested record) appears on the wire.

    ``json_type`` is ``"string"``, ``"number"``, ``"integer"``, ``"array"`` (each item follows
    ``items``) or ``"object"`` (a nested record: the dataclass ``record`` with rules ``fields``);
    ``choices`` restricts a string to a fixed set; ``non_empty`` is set on the field that is the
    CloudEvents ``subject`` (the entity id), which must not be empty.
    """

    name: str
    json_type: str
    nullable: bool = False
    choices: tuple[str, ...] | None = None
    required: bool = True
    default: Any = None
    non_empty: bool = False
    items: FieldRule | None = None
    record: type | None = None
    fields: tuple[FieldRule, ...] = ()

    def expected(self) -> str:
        """What the field accepts, in words, for error details."""
        if self.choices is not None:
            words = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.items is not None:
            words = f"array of {_plural(self.items)}"
        elif self.record is not None:
            words = f"{self.record.__name__} object"
        elif self.json_type == "number":
            words = "finite number"
        elif self.non_empty:
            words = "non-empty string"
        else:
            words = self.json_type
        return f"{words} or null" if self.nullable else words

    def check(self, value: Any, path: str) -> str | None:
        """Detail of the rule ``value`` breaks (``path`` names the field), or None if it is valid.

        ``value`` is decoded JSON; Python values an event may hold (tuples, nested dataclass
        records) are accepted too, so the same check explains encoding errors.
        """
        if value is None:
            return None if self.nullable else f"{path}: expected {self.expected()}, got null"
        if self.items is not None:
            if not isinstance(value, list | tuple):
                return f"{path}: expected {self.expected()}, got {describe(value)}"
            for i, item in enumerate(value):
                problem = self.items.check(item, f"{path}[{i}]")
                if problem is not None:
                    return problem
            return None
        if self.record is not None:
            return self._check_record(value, path)
        if not _is_json_type(value, self.json_type):
            return f"{path}: expected {self.expected()}, got {describe(value)}"
        if self.json_type == "number" and not math.isfinite(value):
            return f"{path}: expected {self.expected()}, got {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"{path}: expected {self.expected()}, got {value!r}"
        if self.non_empty and not value:
            return f"{path}: expected {self.expected()}, got an empty string"
        return None

    def _check_record(self, value: Any, path: str) -> str | None:
        assert self.record is not None
        if isinstance(value, self.record):
            value = {rule.name: getattr(value, rule.name) for rule in self.fields}
        if not isinstance(value, Mapping):
            return f"{path}: expected {self.expected()}, got {describe(value)}"
        return check_fields(value, self.fields, path, self.record.__name__)

    def msgspec_type(self) -> Any:
        """The type msgspec decodes and validates this field as."""
        base: Any
        if self.choices is not None:
            base = Literal[self.choices]
        elif self.items is not None:
            base = tuple[self.items.msgspec_type(), ...]  # type: ignore[misc]
        elif self.record is not None:
            base = _record_struct(self.record)
        elif self.json_type == "string":
            base = Annotated[str, _NON_EMPTY] if self.non_empty else str
        elif self.json_type == "number":
            base = Annotated[float, _FINITE]
        else:
            base = int
        return base | None if self.nullable else base

    def json_schema(self) -> dict[str, Any]:
        """The field's JSON Schema (draft 2020-12)."""
        schema: dict[str, Any] = {}
        if self.record is not None:
            schema["title"] = self.record.__name__
        schema["type"] = [self.json_type, "null"] if self.nullable else self.json_type
        if self.items is not None:
            schema["items"] = self.items.json_schema()
        if self.record is not None:
            schema.update(fields_schema(self.fields))
        if self.choices is not None:
            schema["enum"] = [*self.choices, None] if self.nullable else list(self.choices)
        if self.non_empty:
            schema["minLength"] = 1
        if not self.required:
            schema["default"] = list(self.default) if isinstance(self.default, tuple) else self.default
        return schema


def fields_schema(rules: tuple[FieldRule, ...]) -> dict[str, Any]:
    """The object keywords (required, properties, additionalProperties) for records with ``rules``."""
    return {
        "required": [r.name for r in rules if r.required],
        "properties": {r.name: r.json_schema() for r in rules},
        "additionalProperties": False,
    }


def check_fields(value: Mapping[str, Any], rules: tuple[FieldRule, ...], path: str, owner: str) -> str | None:
    """The first rule a JSON object ``value`` breaks as a record of ``owner`` (at ``path``), or None."""
    names = [r.name for r in rules]
    for key in value:
        if key not in names:
            return f"{key_path(path, key)}: unknown field ({owner} has: {', '.join(names)})"
    for rule in rules:
        if rule.name not in value:
            if rule.required:
                return f"{path}.{rule.name}: required field is missing ({owner})"
            continue
        problem = rule.check(value[rule.name], f"{path}.{rule.name}")
        if problem is not None:
            return problem
    return None


def key_path(path: str, key: str) -> str:
    """``path.key``, or ``path['key']`` when the key is not a plain name (so details stay readable)."""
    if _NAME.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path or 'message'}[{key!r}]"


def _plural(rule: FieldRule) -> str:
    if rule.record is not None:
        return f"{rule.record.__name__} objects"
    if rule.choices is not None:
        return "strings (" + ", ".join(repr(c) for c in rule.choices) + ")"
    return {"string": "strings", "number": "finite numbers", "integer": "integers"}.get(rule.json_type, rule.json_type)


def describe(value: Any) -> str:
    """The JSON type name of a decoded JSON value (for "expected X, got Y" details)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _is_json_type(value: Any, json_type: str) -> bool:
    if isinstance(value, bool):
        return False
    if json_type == "string":
        return isinstance(value, str)
    if json_type == "number":
        return isinstance(value, int | float)
    if json_type == "integer":
        return isinstance(value, int)
    return False


def _type_rule(owner: str, name: str, annotation: Any, *, subject: bool = False) -> FieldRule:
    """The rule for a value of type ``annotation`` (required, no default: callers fill those in)."""
    nullable = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) != 1 or len(typing.get_args(annotation)) != 2:
            msg = f"{owner}.{name}: only `X | None` unions can go on the wire, got {annotation!r}"
            raise TypeError(msg)
        nullable, annotation = True, options[0]
        origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal and all(isinstance(a, str) for a in args):
        return FieldRule(name, "string", nullable=nullable, choices=args)
    if annotation in _SCALARS:
        return FieldRule(name, _SCALARS[annotation], nullable=nullable, non_empty=subject)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        items = _type_rule(owner, f"{name}[]", args[0])
        if items.nullable or items.items is not None:
            msg = f"{owner}.{name}: array items cannot be null or arrays, got {annotation!r}"
            raise TypeError(msg)
        return FieldRule(name, "array", nullable=nullable, items=items)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) and not issubclass(annotation, Event):
        return FieldRule(name, "object", nullable=nullable, record=annotation, fields=_record_rules(annotation))
    msg = (
        f"{owner}.{name}: no wire rule for type {annotation!r}; use str, float, int, a Literal of "
        "strings, a dataclass record, tuple[X, ...] or `X | None` of those, or teach streams/wire.py the new type"
    )
    raise TypeError(msg)


_SCALARS: Final[dict[Any, str]] = {str: "string", float: "number", int: "integer"}


def _field_rules(cls: type, skip: tuple[str, ...], subject: str) -> tuple[FieldRule, ...]:
    hints = typing.get_type_hints(cls)
    rules = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        rule = _type_rule(cls.__name__, f.name, hints[f.name], subject=f.name == subject)
        if f.default is not dataclasses.MISSING:
            rule = dataclasses.replace(rule, required=False, default=f.default)
        elif f.default_factory is not dataclasses.MISSING:
            rule = dataclasses.replace(rule, required=False, default=f.default_factory())
        rules.append(rule)
    return tuple(rules)


@cache
def _record_rules(record: type) -> tuple[FieldRule, ...]:
    return _field_rules(record, (), "")


def payload_rules(cls: type[Event]) -> tuple[FieldRule, ...]:
    """The wire rules of an event class's payload (every field but ``id`` and ``time``), in order."""
    rules = _PAYLOAD_RULES.get(cls)
    if rules is None:
        if EVENT_TYPES.get(cls.TYPE) is not cls:
            msg = f"{cls.__name__} is not registered in twin.events.EVENT_TYPES"
            raise TypeError(msg)
        rules = _PAYLOAD_RULES[cls] = _field_rules(cls, ("id", "time"), cls.SUBJECT)
    return rules


def _struct(name: str, rules: tuple[FieldRule, ...]) -> type[msgspec.Struct]:
    spec: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for rule in rules:
        if rule.required:
            spec.append((rule.name, rule.msgspec_type()))
        else:
            spec.append((rule.name, rule.msgspec_type(), rule.default))
    return msgspec.defstruct(name, spec, kw_only=True, forbid_unknown_fields=True, module=__name__)


@cache
def _record_struct(record: type) -> type[msgspec.Struct]:
    return _struct(f"{record.__name__}Wire", _record_rules(record))


def payload_struct(cls: type[Event]) -> type[msgspec.Struct]:
    """A msgspec struct with ``cls``'s payload fields; decoding into it validates ``data``.

    Unknown fields are refused; optional fields may be left out and take the dataclass default.
    Nested records decode into structs too; ``msgspec.convert(..., from_attributes=True)`` turns
    them into the event's dataclasses.
    """
    struct = _PAYLOAD_STRUCTS.get(cls)
    if struct is None:
        struct = _PAYLOAD_STRUCTS[cls] = _struct(f"{cls.__name__}Data", payload_rules(cls))
    return struct


_PAYLOAD_RULES: dict[type[Event], tuple[FieldRule, ...]] = {}
_PAYLOAD_STRUCTS: dict[type[Event], type[msgspec.Struct]] = {}
