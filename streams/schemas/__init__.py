"""JSON Schemas of the wire format, one file per event type, generated from the event dataclasses.

Each ``<type>.json`` here describes one whole CloudEvents message (draft 2020-12): the envelope
attributes, and ``data`` with exactly the payload fields of the event class. They are checked in
so that external producers can validate before they send; a test fails when they drift from
``twin/events.py``. Regenerate them with::

    python -m streams.schemas          # rewrite the files in this folder
    python -m streams.schemas --check  # exit 1 and list the files that are out of date

The codec enforces two rules a schema cannot state: ``subject`` equals the entity id in ``data``
(the field named in the ``subject`` description), and numbers fit a 64-bit float.
"""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Final

from streams.wire import CONTENT_TYPE, DEFAULT_SOURCE, SPECVERSION, TIME_PATTERN, payload_rules
from twin.events import EVENT_TYPES, Event

__all__ = [
    "DIALECT",
    "SCHEMA_DIR",
    "drift",
    "generate",
    "load_schema",
    "main",
    "message_schema",
    "payload_schema",
    "render",
    "write",
]

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
#: Where the checked-in schema files live (inside the package, shipped as package data).
SCHEMA_DIR: Final = Path(__file__).resolve().parent
REGENERATE: Final = "python -m streams.schemas"


def payload_schema(cls: type[Event]) -> dict[str, Any]:
    """The schema of ``data`` for events of class ``cls``: its payload fields and nothing else."""
    rules = payload_rules(cls)
    return {
        "title": cls.__name__,
        "type": "object",
        "required": [r.name for r in rules if r.required],
        "properties": {r.name: r.json_schema() for r in rules},
        "additionalProperties": False,
    }


def message_schema(cls: type[Event]) -> dict[str, Any]:
    """The schema of a whole CloudEvents message carrying an event of class ``cls``."""
    doc = inspect.cleandoc(cls.__doc__ or cls.__name__)
    return {
        "$schema": DIALECT,
        "title": cls.TYPE,
        "description": f"{doc}\n\nA CloudEvents 1.0 message in structured JSON mode.",
        "type": "object",
        "required": ["specversion", "id", "source", "type", "time", "subject", "data"],
        "properties": {
            "specversion": {"description": "CloudEvents version.", "const": SPECVERSION},
            "id": {
                "description": "Unique event id; a message repeating an id is applied once.",
                "type": "string",
                "minLength": 1,
            },
            "source": {
                "description": "Who produced the event (URI reference).",
                "type": "string",
                "minLength": 1,
                "format": "uri-reference",
                "examples": [DEFAULT_SOURCE],
            },
            "type": {"description": "Event type, versioned.", "const": cls.TYPE},
            "time": {
                "description": "Event time: RFC 3339 with a timezone offset ('Z' preferred), microsecond precision.",
                "type": "string",
                "format": "date-time",
                "pattern": TIME_PATTERN,
            },
            "subject": {
                "description": f"Id of the entity the event is about; must equal data.{cls.SUBJECT}.",
                "type": "string",
                "minLength": 1,
            },
            "datacontenttype": {"description": "Content type of data; may be left out.", "const": CONTENT_TYPE},
            "data": payload_schema(cls),
        },
        "additionalProperties": False,
    }


def generate() -> dict[str, dict[str, Any]]:
    """Every event type's message schema, keyed by type string."""
    return {event_type: message_schema(cls) for event_type, cls in sorted(EVENT_TYPES.items())}


def render(schema: dict[str, Any]) -> str:
    """The text a schema file holds (stable: generating twice gives the same bytes)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def load_schema(event_type: str) -> dict[str, Any]:
    """The checked-in schema of ``event_type`` (read from the installed package data)."""
    if event_type not in EVENT_TYPES:
        msg = f"no schema for unknown event type {event_type!r}; known: {sorted(EVENT_TYPES)}"
        raise KeyError(msg)
    text = resources.files(__name__).joinpath(f"{event_type}.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def drift(directory: Path = SCHEMA_DIR) -> list[str]:
    """File names in ``directory`` that are missing, stale or different from freshly generated ones."""
    wanted = {f"{t}.json": render(s) for t, s in generate().items()}
    present = {p.name for p in directory.glob("*.json")}
    out = [name for name in sorted(present - wanted.keys())]
    for name, text in wanted.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            out.append(name)
    return sorted(out)


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """(Re)write every schema file in ``directory`` and delete those of types that no longer exist."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {f"{t}.json": render(s) for t, s in generate().items()}
    for stale in directory.glob("*.json"):
        if stale.name not in wanted:
            stale.unlink()
    written = []
    for name, text in wanted.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: regenerate the schema files, or check them with ``--check``."""
    parser = argparse.ArgumentParser(prog=REGENERATE, description="Generate the wire JSON Schemas from twin.events.")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if any file is out of date")
    parser.add_argument("--out", type=Path, default=SCHEMA_DIR, help="folder of schema files (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        stale = drift(args.out)
        for name in stale:
            print(f"out of date: {args.out / name}")
        if stale:
            print(f"run: {REGENERATE}")
            return 1
        print(f"{len(EVENT_TYPES)} schemas up to date in {args.out}")
        return 0
    paths = write(args.out)
    print(f"wrote {len(paths)} schemas to {args.out}")
    return 0
