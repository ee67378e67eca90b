"""Forecasts in the worker's child process equal forecasts made in the worker's own process.

The child sends them back encoded (all of each record but the shard and input offsets the
worker appends): the same bytes as the worker's own encoding of its own forecast."""

from __future__ import annotations

import os
import pickle
import signal
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from scenarios.generate import generate
from scenarios.spec import load_scenario
from streams.forecast_process import (
    ForecastProcesses,
    MirrorLost,
    MirrorRequest,
    forecast_executor,
    forecast_mirrored,
    forecast_remote,
    forget_mirror,
    mirror_request,
    pickle_state,
)
from streams.predictions import decode_prediction, encode_prediction, encode_tail, prediction_fields
from streams.shards import ForecastSettings, ShardedPipeline

FAST = ForecastSettings(cadence=3600.0, horizon=6 * 3600.0, replicas=4, seed=7)


def test_a_forecast_in_the_child_process_equals_one_in_process():
    mini = generate(load_scenario("two-region-mini"))
    result = ShardedPipeline(mini.network).run([ev for ev in mini.events if ev.time < 6 * 3600.0])
    pool = forecast_executor("two-region-mini", FAST)
    try:
        for name, shard in sorted(result.shards.items()):
            local = FAST.build(mini.network).forecast(shard.state)
            blob = pickle_state(shard.state)
            assert pickle.loads(blob).snapshot() == shard.state.snapshot()  # noqa: S301
            remote = pool.submit(forecast_remote, name, blob).result(timeout=120)
            assert len(remote) == len(local) > 0
            offsets = {"logistics.sensors/0": 41, "logistics.orders/0": 7}
            tail = encode_tail(name, offsets)
            got = [e.body + tail for e in remote]
            assert got == [encode_prediction(p, epoch=mini.spec.epoch, shard=name, offsets=offsets) for p in local]
            assert [prediction_fields(decode_prediction(raw)) for raw in got] == [prediction_fields(p) for p in local]
            assert [(e.key, e.p_late, e.at_risk) for e in remote] == [(p.key, p.p_late, p.at_risk) for p in local]
    finally:
        pool.shutdown()


def _mini(hours: float):
    """The mini scenario, its events before ``hours``, and a pipeline of its shards that has applied none."""
    mini = generate(load_scenario("two-region-mini"))
    return mini, [ev for ev in mini.events if ev.time < hours * 3600.0], ShardedPipeline(mini.network)


def test_the_child_keeps_each_shards_twin_and_replays_only_the_calls_since_the_last_forecast():
    """After one snapshot each request carries only the journal; the child checks its copy and forecasts it."""
    mini, events, pipeline = _mini(8)
    children = ForecastProcesses("two-region-mini", FAST, processes=2)
    fc = FAST.build(mini.network)
    offsets = {"logistics.sensors/0": 3}
    try:
        bounds = [len(events) // 4, len(events) // 2, len(events)]
        done = 0
        for round_, end in enumerate(bounds):
            for ev in events[done:end]:
                pipeline.apply(ev)
            done = end
            if round_ == len(bounds) - 1:
                for shard in pipeline.shards.values():
                    shard.flush()
            for name, shard in sorted(pipeline.shards.items()):
                journal_before = None if shard.journal is None else len(shard.journal)
                request = mirror_request(shard)
                if round_ == 0:
                    assert request.base is not None and request.journal == []
                else:
                    assert request.base is None and len(request.journal) == journal_before > 0
                    assert round_ < len(bounds) - 1 or request.journal[-1] is None  # the flush
                assert shard.journal == [] and shard.mirror == request.copy
                remote = children.for_shard(name).submit(forecast_mirrored, request).result(timeout=120)
                tail = encode_tail(name, offsets)
                local = fc.forecast(shard.state)
                assert len(local) > 0
                assert [e.body + tail for e in remote] == [
                    encode_prediction(p, epoch=mini.spec.epoch, shard=name, offsets=offsets) for p in local
                ]
        # the two shards, one per child (each always the same one)
        assert sorted(id(children.for_shard(n)) for n in pipeline.shards) == sorted(map(id, children.children))
    finally:
        children.shutdown()


@pytest.fixture
def half_applied():
    """The mini scenario's first shard with half its events before 06:00 applied, and one forecast process.

    Yields the scenario, the other half of those events, the pipeline, the shard's name, the
    shard and the processes (stopped after the test).
    """
    mini, events, pipeline = _mini(6)
    name, shard = sorted(pipeline.shards.items())[0]
    children = ForecastProcesses("two-region-mini", FAST)
    for ev in events[: len(events) // 2]:
        pipeline.apply(ev)
    try:
        yield mini, events[len(events) // 2 :], pipeline, name, shard, children
    finally:
        children.shutdown()


def test_a_child_without_the_copy_or_with_another_one_fails_the_forecast_and_the_next_request_sends_a_snapshot(
    half_applied,
):
    mini, rest, pipeline, name, shard, children = half_applied
    child = children.for_shard(name)
    first = mirror_request(shard)
    for ev in rest:
        pipeline.apply(ev)
    # the child never had the copy (say it was restarted): the journal alone cannot be replayed
    with pytest.raises(MirrorLost, match="no copy"):
        child.submit(forecast_mirrored, mirror_request(shard)).result(timeout=120)
    forget_mirror(shard)
    assert shard.mirror is None and shard.journal is None
    again = mirror_request(shard)
    assert again.base is not None and again.copy != first.copy
    assert child.submit(forecast_mirrored, again).result(timeout=120)
    # a journal that misses a call: the copy disagrees with the worker's twin, and is dropped
    extra = [ev for ev in mini.events if 6 * 3600.0 <= ev.time < 7 * 3600.0]
    for ev in extra:
        pipeline.apply(ev)
    request = mirror_request(shard)
    assert len(request.journal) > 1
    short = MirrorRequest(request.shard, request.copy, None, request.journal[:-1], request.check)
    with pytest.raises(MirrorLost, match="not the worker's"):
        child.submit(forecast_mirrored, short).result(timeout=120)
    with pytest.raises(MirrorLost, match="no copy"):
        child.submit(forecast_mirrored, request).result(timeout=120)


def test_a_forecast_process_that_dies_is_started_again_and_its_shards_send_a_snapshot(half_applied):
    _, rest, pipeline, name, shard, children = half_applied
    assert children.fresh(name)
    assert children.submit(name, forecast_mirrored, mirror_request(shard)).result(timeout=120)
    assert not children.fresh(name)
    pid = children.submit("probe", os.getpid).result(timeout=60)  # the one child: shards share it
    os.kill(pid, signal.SIGKILL)
    # calls fail with BrokenProcessPool until the death is known; then another child runs them
    deadline = time.monotonic() + 60
    while True:
        try:
            new_pid = children.submit("probe", os.getpid).result(timeout=60)
            break
        except BrokenProcessPool:
            assert time.monotonic() < deadline
    assert new_pid != pid and children.restarts == 1
    for ev in rest:
        pipeline.apply(ev)
    assert children.fresh(name)  # the new child holds no copy of the shard's twin
    with pytest.raises(MirrorLost, match="no copy"):  # so the journal alone cannot go there
        children.submit(name, forecast_mirrored, mirror_request(shard)).result(timeout=120)
    forget_mirror(shard)
    request = mirror_request(shard)
    assert request.base is not None
    assert children.submit(name, forecast_mirrored, request).result(timeout=120)
