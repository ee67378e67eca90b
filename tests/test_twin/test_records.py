"""Records of a model run."""

from __future__ import annotations

import dataclasses

import pytest

from twin.records import OrderInfo, order_infos


def test_order_infos_built_by_slots_equal_the_constructor():
    """``order_infos`` sets ``OrderInfo``'s slots directly: the same objects as the
    constructor's (every field, equality, hash, repr); a new field breaks this test."""
    assert [f.name for f in dataclasses.fields(OrderInfo)] == ["origin", "destination", "promised_at"]
    origins, destinations, promises = ["A", "B", "A"], ["C", "C", "B"], [3600.0, 7200.5, -1.0]
    fast = order_infos(origins, destinations, promises)
    slow = [OrderInfo(*args) for args in zip(origins, destinations, promises, strict=True)]
    assert len(fast) == 3
    for a, b in zip(fast, slow, strict=True):
        assert (a.origin, a.destination, a.promised_at) == (b.origin, b.destination, b.promised_at)
        assert a == b and hash(a) == hash(b) and repr(a) == repr(b)
        with pytest.raises(dataclasses.FrozenInstanceError):
            a.origin = "X"  # type: ignore[misc]
    assert order_infos([], [], []) == []
