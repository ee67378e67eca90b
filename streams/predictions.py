"""Predicted states on the wire: the ``twin.predictions`` topic (compacted, keyed by entity).

Key: ``kind:id`` (``order:O00042``, ``trip:LH-AB-01-T2``, ``site:A-HUB``), UTF-8. Value: one
JSON object per prediction, or no value at all (a tombstone) when the entity is closed
(delivered, cancelled, completed) and compaction may forget it::

    {"kind": "order", "id": "O00042", "as_of": 21600.0, "as_of_time": "2026-03-02T06:00:00Z",
     "p10": 30210.0, "p50": 31020.5, "p90": 33100.0, "p_late": 0.31, "expected_delay": 412.0,
     "planned": 30600.0, "at_risk": 0,
     "causes": [{"mechanism": "lane_slowdown", "entity": "A-HUB->B-HUB", "seconds": 380.2}],
     "shard": "alpha", "offsets": {"logistics.sensors/0": 5121, "logistics.orders/0": 2210}}

Times are seconds since the scenario (deployment) epoch, as everywhere in the twin, plus
``as_of_time`` in RFC 3339. ``as_of`` is the event-time watermark of the shard that made the
prediction; ``offsets`` are its input offsets (for each input partition, the offset up to which
every event for this shard had been applied), so a reader can tell how fresh a prediction is in
both senses.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import msgspec

__all__ = [
    "PREDICTIONS_TOPIC",
    "EncodedPrediction",
    "PredictionRecord",
    "decode_prediction",
    "encode_body",
    "encode_prediction",
    "encode_predictions",
    "encode_tail",
    "prediction_fields",
]

PREDICTIONS_TOPIC: Final = "twin.predictions"


class CauseRecord(msgspec.Struct, frozen=True):
    """One link of a cause chain."""

    mechanism: str
    entity: str
    seconds: float


class PredictionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A predicted state as published."""

    kind: str
    id: str
    as_of: float
    as_of_time: str
    p10: float | None
    p50: float | None
    p90: float | None
    p_late: float
    expected_delay: float
    planned: float | None = None
    at_risk: int = 0
    causes: list[CauseRecord] = []
    shard: str = ""
    offsets: dict[str, int] = {}


class _Tail(msgspec.Struct, frozen=True):
    """The last two fields of a :class:`PredictionRecord`, in the same order (see :func:`encode_tail`)."""

    shard: str
    offsets: dict[str, int]


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(PredictionRecord)
#: How a record encoded with no shard and no offsets ends; :func:`encode_body` cuts it off.
_EMPTY_TAIL: Final = b'"shard":"","offsets":{}}'


class EncodedPrediction(NamedTuple):
    """A prediction already encoded (all but its shard and offsets), and what the host reads of it.

    The forecast process encodes its predictions itself (:func:`encode_body`) and sends these
    instead of the ``PredictedState`` objects: the worker's process, which applies the events,
    then neither unpickles nor encodes a thousand predictions per forecast; it only appends the
    publication's shard and input offsets (:func:`encode_tail`), the same for every record of a
    publication. ``kind``, ``id``, ``p_late`` and ``at_risk`` are those of the prediction (the
    host's ownership test and metrics read them).
    """

    kind: str
    id: str
    p_late: float
    at_risk: int
    body: bytes

    @property
    def key(self) -> str:
        """The key of this prediction on the compacted predictions topic (as ``PredictedState.key``)."""
        return f"{self.kind}:{self.id}"


def _rfc3339(epoch: datetime, seconds: float) -> str:
    return (epoch + timedelta(seconds=seconds)).astimezone(UTC).isoformat().replace("+00:00", "Z")


def encode_body(prediction: Any, *, epoch: datetime, as_of_time: str | None = None) -> bytes:
    """The JSON of a ``PredictedState`` up to its shard and offsets (the record's last two fields).

    ``body + encode_tail(shard, offsets)`` is exactly ``encode_prediction(prediction, ...)``.
    ``as_of_time``, when given, is ``prediction.as_of`` rendered (every prediction of a forecast
    has the same ``as_of``: the caller renders it once).
    """
    record = PredictionRecord(
        kind=prediction.kind,
        id=prediction.id,
        as_of=prediction.as_of,
        as_of_time=as_of_time if as_of_time is not None else _rfc3339(epoch, prediction.as_of),
        p10=prediction.p10,
        p50=prediction.p50,
        p90=prediction.p90,
        p_late=prediction.p_late,
        expected_delay=prediction.expected_delay,
        planned=prediction.planned,
        at_risk=prediction.at_risk,
        causes=[CauseRecord(c.mechanism, c.entity, c.seconds) for c in prediction.causes],
    )
    raw = _ENCODER.encode(record)
    return raw[: len(raw) - len(_EMPTY_TAIL)]


def encode_tail(shard: str, offsets: dict[str, int]) -> bytes:
    """The JSON of a record's shard and input offsets, closing the object (see :func:`encode_body`)."""
    return _ENCODER.encode(_Tail(shard, dict(offsets)))[1:]


def encode_predictions(predictions: Sequence[Any], *, epoch: datetime) -> list[EncodedPrediction]:
    """Every prediction of a forecast encoded (:func:`encode_body`), each ``as_of`` rendered once."""
    rendered: dict[float, str] = {}
    out = []
    for p in predictions:
        as_of_time = rendered.get(p.as_of)
        if as_of_time is None:
            as_of_time = rendered[p.as_of] = _rfc3339(epoch, p.as_of)
        body = encode_body(p, epoch=epoch, as_of_time=as_of_time)
        out.append(EncodedPrediction(p.kind, p.id, p.p_late, p.at_risk, body))
    return out


def encode_prediction(
    prediction: Any, *, epoch: datetime, shard: str = "", offsets: dict[str, int] | None = None
) -> bytes:
    """JSON bytes of a ``twin.forecast.PredictedState`` (or of an :class:`EncodedPrediction`)."""
    body = prediction.body if isinstance(prediction, EncodedPrediction) else encode_body(prediction, epoch=epoch)
    return body + encode_tail(shard, offsets or {})


def decode_prediction(raw: bytes) -> PredictionRecord:
    """A prediction read from the topic."""
    return _DECODER.decode(raw)


def prediction_fields(record: PredictionRecord | Any) -> dict[str, Any]:
    """The forecast itself (no shard, offsets or wall-clock rendering): what two runs must agree on.

    Accepts a decoded record or a ``PredictedState``.
    """
    causes = [(c.mechanism, c.entity, c.seconds) for c in record.causes]
    return {
        "kind": record.kind,
        "id": record.id,
        "as_of": record.as_of,
        "p10": record.p10,
        "p50": record.p50,
        "p90": record.p90,
        "p_late": record.p_late,
        "expected_delay": record.expected_delay,
        "planned": record.planned,
        "at_risk": record.at_risk,
        "causes": causes,
    }
