"""Forecasts in the worker's child process equal forecasts made in the worker's own process."""

from __future__ import annotations

import pickle

from scenarios.generate import generate
from scenarios.spec import load_scenario
from streams.forecast_process import forecast_executor, forecast_remote, pickle_state
from streams.predictions import prediction_fields
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
            assert [prediction_fields(p) for p in remote] == [prediction_fields(p) for p in local]
    finally:
        pool.shutdown()
