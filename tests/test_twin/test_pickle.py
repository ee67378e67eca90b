"""Pickles of the network and the world state (the forecast pool and the Kafka worker's forecast
process send them to a child): every field survives, compiled or not (``twin.compiled``).

A compiled class is rebuilt through its constructor, so the frozen records, ``Network`` and
``WorldState`` pickle as their constructor's arguments (``__reduce__``); these tests catch a
field added to a class but not to its ``__reduce__``.
"""

from __future__ import annotations

import dataclasses
import pickle

from twin import compiled
from twin.lane import PacePersistence
from twin.live import LiveTwin
from twin.state import WorldState


def _round_trip(x):
    return pickle.loads(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL))


def test_the_network_records_pickle_with_every_field(default_scenario):
    net = default_scenario.network
    trip = next(iter(net.trips.values()))
    services = list(net._services.values())
    samples = [
        *net.sites.values(), *net.lanes.values(), *net.vehicles.values(), *net.trips.values(), trip.legs[0],
        PacePersistence(0.93, 41), services[0],
    ]  # fmt: skip
    for cls in {type(x) for x in samples}:
        x = next(s for s in samples if type(s) is cls)
        _, args = x.__reduce__()
        assert len(args) == len(dataclasses.fields(cls)), cls.__name__
        assert _round_trip(x) == x, cls.__name__
    assert all(_round_trip(x) == x for x in samples)


def test_a_network_pickles_whole(default_scenario):
    net = default_scenario.network
    back = _round_trip(net)
    assert (back.sites, back.lanes, back.vehicles, back.trips) == (net.sites, net.lanes, net.vehicles, net.trips)
    assert back._services == net._services  # derived again on load, the same


def test_a_world_state_pickles_whole(default_scenario):
    live = LiveTwin(default_scenario.network)
    live.apply_all([e for e in default_scenario.events if e.time <= 9 * 3600])
    state = live.state
    back = _round_trip(state)
    assert back.clock == state.clock
    assert back.snapshot() == state.snapshot()
    if not compiled.ACTIVE:  # from source the class lists its slots: __reduce__ must cover all of them
        covered = {"network", "clock", "sites", "lanes", "vehicles", "trips", "orders", "disruptions", "_handlers"}
        assert set(WorldState.__slots__) == covered  # _handlers: bound methods, made again on load
