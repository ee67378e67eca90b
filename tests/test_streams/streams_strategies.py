"""Hypothesis strategies for twin events, built from the dataclass annotations (not from streams.wire)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from hypothesis import strategies as st

from twin.events import EVENT_TYPES, Event

__all__ = ["EVENTS", "IDS", "TIMES", "event_strategy"]


def _values(annotation: Any, *, non_empty: bool = False) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return st.none() | _values(inner, non_empty=non_empty)
    if origin is Literal:
        return st.sampled_from(typing.get_args(annotation))
    if annotation is str:
        return st.text(min_size=1 if non_empty else 0, max_size=20)
    if annotation is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if annotation is int:
        return st.integers()
    if origin is tuple:
        (item, _) = typing.get_args(annotation)
        return st.lists(_values(item), max_size=4).map(tuple)
    if dataclasses.is_dataclass(annotation):
        return _record_strategy(annotation, ())
    msg = f"test strategies need a rule for {annotation!r}"
    raise AssertionError(msg)


#: Event times in whole microseconds (that is the wire's precision), before and after the epoch.
TIMES = st.integers(min_value=-(10**14), max_value=10**15).map(lambda us: us / 1_000_000)
IDS = st.text(min_size=1, max_size=30)


def _record_strategy(cls: type, skip: tuple[str, ...], subject: str = "") -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    kwargs = {
        f.name: _values(hints[f.name], non_empty=f.name == subject)
        for f in dataclasses.fields(cls)
        if f.name not in skip
    }
    return st.builds(cls, **kwargs)


def event_strategy(cls: type[Event]) -> st.SearchStrategy[Event]:
    return _record_strategy(cls, ("id", "time"), cls.SUBJECT).flatmap(
        lambda ev: st.builds(dataclasses.replace, st.just(ev), id=IDS, time=TIMES)
    )


EVENTS = st.one_of([event_strategy(cls) for cls in EVENT_TYPES.values()])
