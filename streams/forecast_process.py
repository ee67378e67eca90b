"""Forecasts in a separate process, so that they never hold the worker's GIL.

A forecast of a shard is a few hundred milliseconds of pure Python (SimPy replicas). Run in a
thread it holds the GIL against the worker's event loop, which reads, decodes and applies the
input, sends predictions and heartbeats the consumer groups: the ingest path stalls for as long
as the forecast runs. Here the worker hands each forecast to a child process instead (the
machine's other core), which keeps a copy of the shard's twin (below). The predictions
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

**The child keeps a copy of each shard's twin** (:func:`mirror_request`, :func:`forecast_mirrored`).
Until 2026-11-25 the worker pickled the shard's world state for every forecast: 19 ms in the
worker and 32 ms to unpickle in the child (medians in a latency run; 460 KB for a 09:00 shard of
the default day), a fifth of the child's time. Now the worker sends the child a snapshot of the shard's twin once, then
with each forecast only the calls made into the twin since the last one (``Shard.journal``: the
events handed to it, in order, rejected ones included, and end-of-stream flushes), some hundreds
of events at 5,000 events/s. The child makes the same calls on its copy (the twin is a
deterministic fold), checks that its copy agrees with the worker's on a fingerprint (clock,
counts of applied, rejected and parked events, open orders, trips), and forecasts it. A copy that
does not agree, or a child without the copy the worker counts on (it was restarted), fails that
forecast with :class:`MirrorLost`; the worker sends a fresh snapshot with its next one. Each shard
always goes to the same child (:class:`ForecastProcesses`), so its requests are replayed in order.
:func:`forecast_remote` (a pickled state, :func:`pickle_state`) remains for a one-off forecast.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import pickle
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from streams.predictions import EncodedPrediction, encode_predictions
from streams.shards import ForecasterLike, ForecastSettings, Shard
from twin.events import Event
from twin.live import LiveTwin
from twin.state import WorldState

__all__ = [
    "ForecastProcesses",
    "MirrorLost",
    "MirrorRequest",
    "RemoteForecaster",
    "fingerprint",
    "forecast_executor",
    "forget_mirror",
    "forecast_mirrored",
    "forecast_remote",
    "mirror_request",
    "pickle_state",
]

log = logging.getLogger(__name__)

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


def forecast_executor(scenario: str, settings: ForecastSettings) -> ProcessPoolExecutor:
    """A child process that forecasts the shards of ``scenario`` with ``settings`` (see :class:`ForecastProcesses`)."""
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init,
        initargs=(scenario, settings),
    )


class ForecastProcesses:
    """Child processes that forecast, each shard always in the same one (it keeps the shard's twin).

    ``for_shard(name)`` is the single-process executor of the shard's child; ``submit`` runs a
    call there; ``shutdown`` stops them all. A child that dies (killed, out of memory) breaks its
    executor, and every forecast in it fails with ``BrokenProcessPool``: the next ``submit`` for
    one of its shards starts another child in its place (logged) and says so, since the new child
    holds no copy of any twin yet.
    """

    def __init__(self, scenario: str, settings: ForecastSettings, processes: int = 1) -> None:
        self.scenario = scenario
        self.settings = settings
        self.children = [forecast_executor(scenario, settings) for _ in range(max(1, processes))]
        #: shard -> its child's index, given in turn as shards first ask (so N shards spread evenly)
        self._assigned: dict[str, int] = {}
        #: per child, how many times it was started; per shard, that count at its last submit
        self._starts = [1] * len(self.children)
        self._seen: dict[str, int] = {}
        #: children whose executor broke (found by a call's outcome)
        self._dead: set[int] = set()

    @property
    def restarts(self) -> int:
        """Children started again so far."""
        return sum(self._starts) - len(self._starts)

    def _index(self, name: str) -> int:
        i = self._assigned.get(name)
        if i is None:
            i = self._assigned[name] = len(self._assigned) % len(self.children)
        return i

    def for_shard(self, name: str) -> ProcessPoolExecutor:
        """The child that forecasts shard ``name`` (the same one for the process's lifetime)."""
        return self.children[self._index(name)]

    def fresh(self, name: str) -> bool:
        """True if shard ``name``'s child has had no call for it yet: it has no copy of its twin.

        That is the first call for the shard, and the first after its child died and was started
        again (here, if its death is known).
        """
        i = self._live(name)
        return self._seen.get(name) != self._starts[i]

    def submit(self, name: str, fn: Any, *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` in shard ``name``'s child (started again first if it died)."""
        i = self._live(name)
        try:
            future = self.children[i].submit(fn, *args)
        except BrokenProcessPool:  # died since its last call's outcome came back
            self._restart(i)
            future = self.children[i].submit(fn, *args)
        self._seen[name] = start = self._starts[i]

        def outcome(f: Future[Any]) -> None:
            if not f.cancelled() and isinstance(f.exception(), BrokenProcessPool) and self._starts[i] == start:
                self._dead.add(i)

        future.add_done_callback(outcome)
        return future

    def _live(self, name: str) -> int:
        """Shard ``name``'s child's index, that child started again first if it is known to have died."""
        i = self._index(name)
        if i in self._dead:
            self._restart(i)
        return i

    def _restart(self, i: int) -> None:
        log.warning("forecast process %d of %d died; starting another in its place", i + 1, len(self.children))
        self.children[i].shutdown(wait=False, cancel_futures=True)
        self.children[i] = forecast_executor(self.scenario, self.settings)
        self.children[i].submit(int)  # it builds the network now, not at its first forecast
        self._starts[i] += 1
        self._dead.discard(i)

    def start(self) -> None:
        """Start every child now (each builds the network: seconds), not at the first forecast."""
        for child in self.children:
            child.submit(int)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop every child."""
        for child in self.children:
            child.shutdown(wait=wait, cancel_futures=cancel_futures)


class MirrorLost(RuntimeError):
    """The child has no copy of the shard's twin that matches the worker's (the worker sends a snapshot next)."""


@dataclass(frozen=True, slots=True)
class MirrorRequest:
    """A forecast of a shard's twin as it is now, for the child that keeps a copy of it."""

    shard: str
    #: which copy of the shard's twin the calls continue (the worker numbers each one it sends)
    copy: int
    #: the twin's snapshot, pickled, when the child is to (re)start its copy from it; else None
    base: bytes | None
    #: the calls made into the twin since the last request: an event handed to it, None for a flush
    journal: list[Event | None]
    #: :func:`fingerprint` of the worker's twin after those calls
    check: tuple[Any, ...]


_COPIES = itertools.count(1)


def fingerprint(twin: LiveTwin) -> tuple[Any, ...]:
    """What a copy of a twin must agree on with the original: cheap, and moved by every applied call."""
    st = twin.stats
    return (
        twin.state.clock,
        tuple(sorted(st.applied.items())),
        tuple(sorted(st.rejected.items())),
        st.parked,
        len(twin.state.orders),
        len(twin.state.trips),
    )


def mirror_request(shard: Shard) -> MirrorRequest:
    """The request for a forecast of ``shard``'s twin as it is now; starts its journal if needed.

    The first request for a shard object (and the first after :func:`forget_mirror`) carries the
    twin's snapshot; every later one only the journal since the request before.
    """
    journal = shard.journal
    if shard.mirror is None or journal is None:
        shard.mirror = next(_COPIES)
        shard.journal = []
        base: bytes | None = pickle.dumps(shard.twin.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)
        calls: list[Event | None] = []
    else:
        shard.journal = []
        base = None
        calls = journal
    return MirrorRequest(shard.name, shard.mirror, base, calls, fingerprint(shard.twin))


def forget_mirror(shard: Shard) -> None:
    """After a failed request: the next one sends the twin's snapshot again."""
    shard.mirror = None
    shard.journal = None


def forecast_mirrored(request: MirrorRequest) -> list[EncodedPrediction]:
    """In the child: bring its copy of the shard's twin up to date, check it, forecast it, encode."""
    mirrors: dict[str, tuple[int, LiveTwin]] = _CHILD["mirrors"]
    name = request.shard
    if request.base is not None:
        twin = LiveTwin.from_snapshot(_CHILD["network"], pickle.loads(request.base))  # noqa: S301 - our parent's bytes
    else:
        held = mirrors.pop(name, None)
        if held is None or held[0] != request.copy:
            msg = f"shard {name}: this forecast process has no copy {request.copy} of its twin"
            raise MirrorLost(msg)
        twin = held[1]
    for call in request.journal:
        if call is None:
            twin.flush()
        else:
            twin.apply(call)
    got = fingerprint(twin)
    if got != request.check:
        msg = f"shard {name}: the forecast process's copy of its twin is not the worker's: {got} != {request.check}"
        raise MirrorLost(msg)
    mirrors[name] = (request.copy, twin)
    return encode_predictions(_forecaster(name).forecast(twin.state), epoch=_CHILD["epoch"])


def pickle_state(state: WorldState) -> bytes:
    """A copy of the state as it is now (the worker goes on applying events to the original)."""
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def forecast_remote(shard: str, state: bytes) -> list[EncodedPrediction]:
    """In the child: a full forecast of a pickled world state with the shard's forecaster, encoded."""
    predictions = _forecaster(shard).forecast(pickle.loads(state))  # noqa: S301 - our own bytes, from the parent
    return encode_predictions(predictions, epoch=_CHILD["epoch"])


def _forecaster(shard: str) -> ForecasterLike:
    """In the child: the shard's forecaster, built at its first forecast."""
    forecasters: dict[str, ForecasterLike] = _CHILD["forecasters"]
    fc = forecasters.get(shard)
    if fc is None:
        fc = forecasters[shard] = _CHILD["settings"].build(_CHILD["network"])
    return fc


def _init(scenario: str, settings: ForecastSettings) -> None:
    from scenarios.build import build_network
    from scenarios.spec import load_scenario

    spec = load_scenario(scenario)
    _CHILD["network"] = build_network(spec)
    _CHILD["epoch"] = spec.epoch
    _CHILD["settings"] = settings
    _CHILD["forecasters"] = {}
    _CHILD["mirrors"] = {}
