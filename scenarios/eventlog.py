"""Event streams as Parquet: one row per event, one column per field of any event type."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import polars as pl

from twin.events import EVENT_TYPES, Event, TripHandoff, event_fields

__all__ = ["SCHEMA", "events_to_frame", "frame_to_events", "read_events", "write_events"]

_TYPES: dict[str, pl.DataType] = {
    "id": pl.String(),
    "time": pl.Float64(),
    "type": pl.String(),
    "vehicle_id": pl.String(),
    "lane_id": pl.String(),
    "progress": pl.Float64(),
    "site_id": pl.String(),
    "trip_id": pl.String(),
    "leg": pl.Int32(),
    "occupied": pl.Int32(),
    "in_service": pl.Int32(),
    "rate_per_hour": pl.Float64(),
    "disruption_id": pl.String(),
    "kind": pl.String(),
    "target_id": pl.String(),
    "factor": pl.Float64(),
    "expected_end": pl.Float64(),
    "order_id": pl.String(),
    "origin": pl.String(),
    "destination": pl.String(),
    "promised_at": pl.Float64(),
    "path": pl.List(pl.String()),
    "reason": pl.String(),
    "action": pl.String(),
    "until": pl.Float64(),
}
#: The Parquet schema of an event log (every event type's fields, nullable).
SCHEMA = pl.Schema(_TYPES)

#: Event types an event log can hold: everything observable (handoffs are between shards).
LOGGED_TYPES = {t: c for t, c in EVENT_TYPES.items() if c is not TripHandoff}

for _cls in LOGGED_TYPES.values():
    for _f in fields(_cls):
        assert _f.name in _TYPES, f"event field {_cls.__name__}.{_f.name} needs a column in SCHEMA"


def events_to_frame(events: Iterable[Event]) -> pl.DataFrame:
    """Columns for a sequence of events (kept in the given order)."""
    cols: dict[str, list[Any]] = {name: [] for name in _TYPES}
    n = 0
    for ev in events:
        cols["type"].append(ev.TYPE)
        for name in _TYPES:
            if name == "type":
                continue
            value = getattr(ev, name, None)
            cols[name].append(list(value) if name == "path" and value is not None else value)
        n += 1
    return pl.DataFrame(cols, schema=SCHEMA)


def frame_to_events(frame: pl.DataFrame) -> list[Event]:
    """Typed events from a frame written by :func:`events_to_frame` (row order kept)."""
    frame = frame.with_row_index("_row")
    out: list[tuple[int, Event]] = []
    for (etype,), part in frame.group_by("type", maintain_order=True):
        cls = LOGGED_TYPES.get(str(etype))
        if cls is None:
            msg = f"event log has unknown type {etype!r}; known: {sorted(LOGGED_TYPES)}"
            raise ValueError(msg)
        names = ("id", "time", *event_fields(cls))
        columns: list[Sequence[Any]] = []
        for name in names:
            col = part.get_column(name).to_list()
            if name == "path":
                col = [tuple(p) if p is not None else () for p in col]
            columns.append(col)
        rows = part.get_column("_row").to_list()
        for row, values in zip(rows, zip(*columns, strict=True), strict=True):
            out.append((row, cls(**dict(zip(names, values, strict=True)))))
    out.sort(key=lambda p: p[0])
    return [ev for _, ev in out]


def write_events(events: Iterable[Event], path: Path) -> int:
    """Write events to Parquet; return how many."""
    frame = events_to_frame(events)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path, compression="zstd", statistics=False)
    return frame.height


def read_events(path: Path) -> list[Event]:
    """Read an event log written by :func:`write_events`."""
    return frame_to_events(pl.read_parquet(path))
