"""Prediction records on the wire: encoded in two parts (body in the forecast process, tail in the worker)."""

from __future__ import annotations

import pickle

import msgspec
import pytest

from scenarios.generate import generate
from scenarios.spec import load_scenario
from streams.predictions import (
    CauseRecord,
    EncodedPrediction,
    PredictionRecord,
    _rfc3339,
    decode_prediction,
    encode_body,
    encode_prediction,
    encode_predictions,
    encode_tail,
)
from streams.shards import ForecastSettings, ShardedPipeline
from twin.forecast import Cause, PredictedState

FAST = ForecastSettings(cadence=3600.0, horizon=6 * 3600.0, replicas=4, seed=7)


@pytest.fixture(scope="module")
def mini():
    return generate(load_scenario("two-region-mini"))


@pytest.fixture(scope="module")
def predictions(mini):
    """A real forecast of each shard of the mini scenario at 06:00 (orders, trips, sites, causes)."""
    result = ShardedPipeline(mini.network).run([ev for ev in mini.events if ev.time < 6 * 3600.0])
    out = []
    for _name, shard in sorted(result.shards.items()):
        out.extend(FAST.build(mini.network).forecast(shard.state))
    return out


def _reference(p, *, epoch, shard, offsets) -> bytes:
    """The record as the worker encoded it before the split: one struct, every field."""
    record = PredictionRecord(
        kind=p.kind,
        id=p.id,
        as_of=p.as_of,
        as_of_time=_rfc3339(epoch, p.as_of),
        p10=p.p10,
        p50=p.p50,
        p90=p.p90,
        p_late=p.p_late,
        expected_delay=p.expected_delay,
        planned=p.planned,
        at_risk=p.at_risk,
        causes=[CauseRecord(c.mechanism, c.entity, c.seconds) for c in p.causes],
        shard=shard,
        offsets=dict(offsets),
    )
    return msgspec.json.encode(record)


OFFSETS = [{}, {"logistics.sensors/0": 5121}, {"logistics.sensors/0": 5121, "logistics.orders/0": 2210, "x/3": 0}]


@pytest.mark.parametrize("offsets", OFFSETS, ids=["no-offsets", "one", "three"])
def test_body_and_tail_are_the_whole_record_byte_for_byte(mini, predictions, offsets):
    epoch = mini.spec.epoch
    assert {p.kind for p in predictions} == {"order", "trip", "site"}
    assert any(p.causes for p in predictions)
    encoded = encode_predictions(predictions, epoch=epoch)
    tail = encode_tail("alpha", offsets)
    for p, e in zip(predictions, encoded, strict=True):
        want = _reference(p, epoch=epoch, shard="alpha", offsets=offsets)
        assert e.body + tail == want
        assert encode_body(p, epoch=epoch) + tail == want
        assert encode_prediction(p, epoch=epoch, shard="alpha", offsets=offsets) == want
        assert encode_prediction(e, epoch=epoch, shard="alpha", offsets=offsets) == want
        assert (e.key, e.kind, e.id, e.p_late, e.at_risk) == (p.key, p.kind, p.id, p.p_late, p.at_risk)


def test_odd_values_survive_the_split(mini):
    """Nones, an empty cause chain, quotes and non-ASCII in ids and shard names, odd offsets keys."""
    epoch = mini.spec.epoch
    p = PredictedState(
        kind="order",
        id='O"\\ü-1',
        as_of=0.1,
        p10=None,
        p50=None,
        p90=None,
        p_late=0.0,
        expected_delay=0.0,
        causes=(Cause("lane_slowdown", "A->B \u2192", 1e-9),),
    )
    offsets = {'t"/0': 7, "ß/1": 2**40}
    (e,) = encode_predictions([p], epoch=epoch)
    raw = e.body + encode_tail('sh"ärd', offsets)
    assert raw == _reference(p, epoch=epoch, shard='sh"ärd', offsets=offsets)
    back = decode_prediction(raw)
    assert (back.id, back.shard, back.offsets, back.p10) == ('O"\\ü-1', 'sh"ärd', offsets, None)


def test_encoded_predictions_pickle_small_and_back_equal(mini, predictions):
    """What the forecast process sends back instead of the PredictedState objects."""
    encoded = encode_predictions(predictions, epoch=mini.spec.epoch)
    back = pickle.loads(pickle.dumps(encoded, protocol=pickle.HIGHEST_PROTOCOL))  # noqa: S301
    assert back == encoded
    assert all(isinstance(e, EncodedPrediction) for e in back)
