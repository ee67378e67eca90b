"""Forecasts in the worker's child process equal forecasts made in the worker's own process.

The child sends them back encoded (all of each record but the shard and input offsets the
worker appends): the same bytes as the worker's own encoding of its own forecast."""

from __future__ import annotations

import pickle

from scenarios.generate import generate
from scenarios.spec import load_scenario
from streams.forecast_process import forecast_executor, forecast_remote, pickle_state
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
