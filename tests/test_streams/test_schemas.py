"""The checked-in JSON Schemas: up to date, faithful to the event dataclasses, and agreeing with the codec."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from streams_strategies import EVENTS

from streams.codec import Codec
from streams.errors import DecodeError
from streams.schemas import SCHEMA_DIR, drift, generate, load_schema, main, render
from twin.events import EVENT_TYPES, DispatchCommand, DockStatus, OrderCreated, VehiclePosition, event_fields

CODEC = Codec(datetime(2026, 3, 2, tzinfo=UTC))
ENVELOPE = ["specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data"]


def test_checked_in_schemas_equal_freshly_generated_ones():
    stale = drift()
    assert not stale, (
        f"streams/schemas is out of date with twin/events.py ({', '.join(stale)}); "
        "regenerate with: python -m streams.schemas"
    )


def test_one_schema_file_per_event_type():
    assert sorted(p.stem for p in SCHEMA_DIR.glob("*.json")) == sorted(EVENT_TYPES)
    for event_type in EVENT_TYPES:
        assert load_schema(event_type) == json.loads((SCHEMA_DIR / f"{event_type}.json").read_text())
    with pytest.raises(KeyError, match="unknown event type"):
        load_schema("logistics.nothing.v1")


def test_generation_is_stable():
    assert {t: render(s) for t, s in generate().items()} == {t: render(s) for t, s in generate().items()}


# -- the schemas say what the dataclasses say (no validator needed) -------------------------------


def _required(cls: type) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in ("id", "time")
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_schema_properties_and_required_match_the_dataclass(event_type):
    cls = EVENT_TYPES[event_type]
    schema = load_schema(event_type)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert list(schema["properties"]) == ENVELOPE
    assert schema["required"] == [a for a in ENVELOPE if a != "datacontenttype"]
    assert schema["properties"]["type"] == {"description": "Event type, versioned.", "const": event_type}
    assert schema["properties"]["specversion"]["const"] == "1.0"
    assert cls.SUBJECT in schema["properties"]["subject"]["description"]
    data = schema["properties"]["data"]
    assert data["type"] == "object"
    assert data["additionalProperties"] is False
    assert list(data["properties"]) == list(event_fields(cls))
    assert data["required"] == _required(cls)
    assert data["properties"][cls.SUBJECT] == {"type": "string", "minLength": 1}


def test_field_types_by_hand():
    """A few fields worked out by hand from twin/events.py."""

    def prop(cls: type, name: str) -> dict[str, Any]:
        schema: dict[str, Any] = load_schema(cls.TYPE)["properties"]["data"]["properties"][name]
        return schema

    assert prop(VehiclePosition, "progress") == {"type": ["number", "null"], "default": None}
    assert prop(VehiclePosition, "lane_id") == {"type": ["string", "null"], "default": None}
    assert prop(DockStatus, "occupied") == {"type": "integer"}
    assert prop(OrderCreated, "path") == {"type": "array", "items": {"type": "string"}, "default": []}
    assert prop(OrderCreated, "promised_at") == {"type": "number"}
    assert prop(DispatchCommand, "action") == {
        "type": "string",
        "enum": ["depart_now", "hold", "move_order", "cancel_trip"],
    }


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_json_types_follow_the_annotations(event_type):
    cls = EVENT_TYPES[event_type]
    hints = typing.get_type_hints(cls)
    data = load_schema(event_type)["properties"]["data"]["properties"]
    for name in event_fields(cls):
        annotation, nullable = hints[name], False
        if type(None) in typing.get_args(annotation):
            nullable = True
            (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        expected = {str: "string", float: "number", int: "integer"}.get(annotation)
        if expected is None:
            origin = typing.get_origin(annotation)
            expected = {tuple: "array", typing.Literal: "string"}.get(origin, "object")
        assert data[name]["type"] == ([expected, "null"] if nullable else expected), name


# -- the command ---------------------------------------------------------------------------------


def test_command_writes_checks_and_removes_stale_files(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--check"]) == 1
    assert "run: python -m streams.schemas" in capsys.readouterr().out
    assert main(["--out", str(tmp_path)]) == 0
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == sorted(EVENT_TYPES)
    assert main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "logistics.vehicle.position.v1.json").write_text("{}\n")
    (tmp_path / "logistics.retired.v1.json").write_text("{}\n")
    assert drift(tmp_path) == ["logistics.retired.v1.json", "logistics.vehicle.position.v1.json"]
    assert main(["--out", str(tmp_path), "--check"]) == 1
    assert main(["--out", str(tmp_path)]) == 0
    assert drift(tmp_path) == []
    assert not (tmp_path / "logistics.retired.v1.json").exists()


# -- validation with a real JSON Schema validator, where one is installed -------------------------


@pytest.fixture(scope="module")
def validators():
    jsonschema = pytest.importorskip("jsonschema")
    out = {}
    for event_type in EVENT_TYPES:
        schema = load_schema(event_type)
        jsonschema.Draft202012Validator.check_schema(schema)
        out[event_type] = jsonschema.Draft202012Validator(schema)
    return out


@settings(max_examples=400, deadline=None)
@given(event=EVENTS)
def test_every_encoded_event_validates_against_its_schema(validators, event):
    doc = json.loads(CODEC.encode(event))
    errors = [e.message for e in validators[event.TYPE].iter_errors(doc)]
    assert errors == []


POSITION = VehiclePosition(id="e-1", time=12.5, vehicle_id="V7", lane_id="L3", progress=0.42)

#: Messages the codec refuses as "schema": the JSON Schema must refuse them too.
MUTATIONS = {
    "specversion 0.3": lambda d: d.update(specversion="0.3"),
    "no id": lambda d: d.pop("id"),
    "empty id": lambda d: d.update(id=""),
    "no source": lambda d: d.pop("source"),
    "no time": lambda d: d.pop("time"),
    "naive time": lambda d: d.update(time="2026-03-02T00:00:12.500000"),
    "time not a time": lambda d: d.update(time="soon"),
    "time a number": lambda d: d.update(time=12.5),
    "empty subject": lambda d: (d.update(subject=""), d["data"].update(vehicle_id="")),
    "xml": lambda d: d.update(datacontenttype="application/xml"),
    "extension attribute": lambda d: d.update(traceparent="00-ab"),
    "no data": lambda d: d.pop("data"),
    "data an array": lambda d: d.update(data=[]),
    "unknown data field": lambda d: d["data"].update(speed=80),
    "missing required field": lambda d: d["data"].pop("vehicle_id"),
    "string for number": lambda d: d["data"].update(progress="0.4"),
    "boolean for number": lambda d: d["data"].update(progress=False),
    "number for string": lambda d: d["data"].update(lane_id=3),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_codec_and_schema_refuse_the_same_messages(validators, mutation):
    doc = json.loads(CODEC.encode(POSITION))
    MUTATIONS[mutation](doc)
    with pytest.raises(DecodeError) as info:
        CODEC.decode(json.dumps(doc).encode())
    assert info.value.reason == "schema"
    assert not validators[POSITION.TYPE].is_valid(doc), f"schema accepts a message the codec refuses ({mutation})"


def test_what_only_the_codec_checks(validators):
    """subject == entity id is beyond JSON Schema; the schema descriptions say so, the codec enforces it."""
    doc = json.loads(CODEC.encode(POSITION))
    doc["subject"] = "V8"
    assert validators[POSITION.TYPE].is_valid(doc)
    with pytest.raises(DecodeError, match="subject: must equal data.vehicle_id"):
        CODEC.decode(json.dumps(doc).encode())


def _doc_examples() -> list[dict[str, Any]]:
    docs = Path(__file__).resolve().parents[2] / "docs" / "events.md"
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", docs.read_text(), re.DOTALL)]


def test_docs_have_one_decodable_example_per_type():
    examples = _doc_examples()
    assert sorted(e["type"] for e in examples) == sorted(EVENT_TYPES), "docs/events.md needs one example per type"
    for example in examples:
        CODEC.decode(json.dumps(example).encode())


def test_docs_examples_validate_against_their_schemas(validators):
    for example in _doc_examples():
        assert validators[example["type"]].is_valid(example), example["type"]
