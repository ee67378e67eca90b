"""Forecasts in a separate process, so that they never hold the worker's GIL.

A forecast of a shard is a few hundred milliseconds of pure Python (SimPy replicas). Run in a
thread it holds the GIL against the worker's event loop, which reads, decodes and applies the
input, sends predictions and heartbeats the consumer groups: the ingest path stalls for as long
as the forecast runs. Here the worker hands each forecast to one child process instead (the
machine's other core), with the shard's world state pickled at the moment of the call (plain
slotted dataclasses, some 20-40 ms and 0.6 MB for a shard of the default day). The predictions
come back encoded (:class:`streams.predictions.EncodedPrediction`: the JSON of each record but
its shard and input offsets, which the worker appends): unpickling some 1,500 ``PredictedState``
objects with their cause chains and encoding them took the worker's process about 20 ms per
forecast of a default-day shard on a quiet core (10 + 9 ms), several times that while the
machine is busy, time it should spend applying events; the child encodes them in about 5 ms
(every prediction of a forecast has the same ``as_of``, rendered once) and the worker only
unpickles bytes (1 ms) and appends the tail.

The child builds the network from the scenario once (``spawn``: a fresh interpreter, nothing of
the worker's threads or sockets is inherited) and keeps one forecaster per shard. Forecasts are
full ones: an incremental forecaster (``mark(event)`` / ``update(state)``) keeps its marks where
the events are applied, so it runs in the worker's own process (``--forecast-in thread``).
"""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from streams.predictions import EncodedPrediction, encode_predictions
from streams.shards import ForecasterLike, ForecastSettings
from twin.state import WorldState

__all__ = ["RemoteForecaster", "forecast_executor", "forecast_remote", "pickle_state"]

#: The child's forecasters by shard, and what it builds them from (set by the initializer).
_CHILD: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class RemoteForecaster:
    """What the worker keeps of a forecaster that runs in the child: its settings only."""

    replicas: int

    def forecast(self, state: WorldState) -> Sequence[Any]:  # pragma: no cover - the runner never calls it
        """Not here: the worker's runner sends the state to the child (:func:`forecast_remote`)."""
        msg = "RemoteForecaster runs in the forecast process; call it through the worker's forecast runner"
        raise RuntimeError(msg)


def forecast_executor(scenario: str, settings: ForecastSettings, processes: int = 1) -> ProcessPoolExecutor:
    """Child processes (one by default) that forecast the shards of ``scenario`` with ``settings``.

    A forecast is a pure function of the state and the seed, so any child gives the same
    predictions; with several, forecasts run in parallel and the host still publishes them in
    the order they started.
    """
    return ProcessPoolExecutor(
        max_workers=processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init,
        initargs=(scenario, settings),
    )


def pickle_state(state: WorldState) -> bytes:
    """A copy of the state as it is now (the worker goes on applying events to the original)."""
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def forecast_remote(shard: str, state: bytes) -> list[EncodedPrediction]:
    """In the child: a full forecast of a pickled world state with the shard's forecaster, encoded."""
    forecasters: dict[str, ForecasterLike] = _CHILD["forecasters"]
    fc = forecasters.get(shard)
    if fc is None:
        fc = forecasters[shard] = _CHILD["settings"].build(_CHILD["network"])
    predictions = fc.forecast(pickle.loads(state))  # noqa: S301 - our own bytes, from the parent process
    return encode_predictions(predictions, epoch=_CHILD["epoch"])


def _init(scenario: str, settings: ForecastSettings) -> None:
    from scenarios.build import build_network
    from scenarios.spec import load_scenario

    spec = load_scenario(scenario)
    _CHILD["network"] = build_network(spec)
    _CHILD["epoch"] = spec.epoch
    _CHILD["settings"] = settings
    _CHILD["forecasters"] = {}
