"""The live twin: deduplication, lateness, parking, the clock, and the fold."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from twin.clock import TwinEnvironment
from twin.errors import Rejection, ValidationError
from twin.events import Event, event_from_dict, event_to_dict
from twin.network import Network
from twin.state import PARK, WorldState

__all__ = ["DEFAULT_LATENESS", "LiveTwin", "TwinStats"]

#: How far behind the newest event time an event may be and still be applied (seconds).
DEFAULT_LATENESS: Final = 900.0
_NO_REJECTIONS: Final[tuple[Rejection, ...]] = ()


@dataclass(slots=True)
class TwinStats:
    """Counts of what happened to every event handed to the twin."""

    applied: Counter[str]
    rejected: Counter[str]
    parked: int = 0

    @property
    def applied_total(self) -> int:
        """Events applied, all types."""
        return sum(self.applied.values())

    @property
    def rejected_total(self) -> int:
        """Events rejected, all reasons."""
        return sum(self.rejected.values())


class LiveTwin:
    """Keeps a :class:`WorldState` in step with an event stream.

    ``apply(event)`` returns the rejections it produced (usually none): the event's own, or
    those of parked events whose wait ran out. Nothing is raised for bad input and nothing
    is lost: every event handed in ends up applied, rejected (returned), or parked (and later
    applied or rejected; :meth:`flush` rejects what is still parked at the end of a stream).

    - Duplicates (same event id within the lateness window) are rejected as ``duplicate``.
    - Events older than ``clock - lateness`` are rejected as ``too-late``.
    - Events that name an order or disruption not created yet wait (are parked) until the
      lateness window has passed them; then they are rejected as ``unknown-entity``.
    """

    __slots__ = (
        "state",
        "env",
        "lateness",
        "stats",
        "_seen",
        "_seen_order",
        "_parked",
        "_parked_order",
        "_parked_ids",
        "_apply_state",
        "on_applied",
    )

    def __init__(
        self,
        network: Network,
        *,
        start: float = 0.0,
        lateness: float = DEFAULT_LATENESS,
        env: TwinEnvironment | None = None,
        state: WorldState | None = None,
    ) -> None:
        if lateness < 0:
            msg = f"lateness={lateness} must be >= 0 seconds"
            raise ValidationError(msg)
        self.state = state if state is not None else WorldState(network, start)
        self.env = env if env is not None else TwinEnvironment(initial_time=self.state.clock)
        self.lateness = lateness
        self.stats = TwinStats(Counter(), Counter())
        self._seen: set[str] = set()
        self._seen_order: deque[tuple[float, str]] = deque()
        self._parked: dict[str, list[Event]] = {}
        self._parked_order: deque[tuple[float, str, Event]] = deque()
        self._parked_ids: set[str] = set()
        self._apply_state = self.state.apply
        #: Optional hook called with every applied event (the forecaster marks what it touches).
        self.on_applied: Callable[[Event], None] | None = None

    @property
    def clock(self) -> float:
        """Event time of the newest applied event (the watermark)."""
        return self.state.clock

    def apply(self, event: Event) -> tuple[Rejection, ...] | list[Rejection]:
        """Apply one event; return the rejections this produced."""
        t = event.time
        eid = event.id
        if eid in self._seen or eid in self._parked_ids:
            return self._reject(event, "duplicate", f"event id {eid!r} was already applied")
        state = self.state
        clock = state.clock
        if t < clock - self.lateness:
            return self._reject(
                event,
                "too-late",
                f"event time {t} is {clock - t:.0f} s behind the twin clock {clock}; "
                f"allowed lateness is {self.lateness:.0f} s",
            )
        if t > clock:
            self.env.advance_to(t)
            state.clock = t
            expired = self._expire(t)
        else:
            expired = _NO_REJECTIONS
        outcome = self._apply_state(event)
        if outcome is None:
            # What _accept does, inlined: this is the path of almost every event.
            self._seen.add(eid)
            self._seen_order.append((t, eid))
            self.stats.applied[event.TYPE] += 1
            hook = self.on_applied
            if hook is not None:
                hook(event)
            if self._parked:
                more = self._wake(event)
                if more:
                    return [*more, *expired]
            return expired
        if isinstance(outcome, PARK):
            self._park(outcome.key, event)
            return expired
        own = self._reject(event, outcome[0], outcome[1])
        return [*own, *expired] if expired else own

    def apply_all(self, events: Iterable[Event]) -> list[Rejection]:
        """Apply events in the order given; return every rejection."""
        out: list[Rejection] = []
        apply = self.apply
        for ev in events:
            r = apply(ev)
            if r:
                out.extend(r)
        return out

    def flush(self) -> list[Rejection]:
        """End of stream: reject what is still parked (its entity never appeared)."""
        out: list[Rejection] = []
        for key, events in sorted(self._parked.items()):
            for ev in events:
                self.stats.parked -= 1
                out.extend(self._reject(ev, "unknown-entity", f"{key!r} never became known"))
        self._parked.clear()
        self._parked_order.clear()
        self._parked_ids.clear()
        return out

    # ------------------------------------------------------------------ internals
    def _accept(self, event: Event) -> tuple[Rejection, ...] | list[Rejection]:
        """Record an applied event (dedup window, counts, hook), then apply what waited for it."""
        self._seen.add(event.id)
        self._seen_order.append((event.time, event.id))
        self.stats.applied[event.TYPE] += 1
        if self.on_applied is not None:
            self.on_applied(event)
        if not self._parked:
            return _NO_REJECTIONS
        return self._wake(event)

    def _wake(self, event: Event) -> tuple[Rejection, ...] | list[Rejection]:
        """Apply the events parked waiting for the entity ``event`` is about (it was just applied)."""
        waiting = self._parked.pop(event.subject, None)
        if not waiting:
            return _NO_REJECTIONS
        self.stats.parked -= len(waiting)
        out: list[Rejection] = []
        for ev in sorted(waiting, key=lambda e: (e.time, e.id)):
            self._parked_ids.discard(ev.id)
            outcome = self._apply_state(ev)
            if outcome is None:
                out.extend(self._accept(ev))
            elif isinstance(outcome, PARK):
                self._park(outcome.key, ev)
            else:
                out.extend(self._reject(ev, outcome[0], outcome[1]))
        return out

    def _park(self, key: str, event: Event) -> None:
        self._parked.setdefault(key, []).append(event)
        self._parked_order.append((event.time, key, event))
        self._parked_ids.add(event.id)
        self.stats.parked += 1

    def _reject(self, event: Event, reason: str, detail: str) -> tuple[Rejection]:
        self.stats.rejected[reason] += 1
        return (Rejection(event.id, event.TYPE, reason, detail),)

    def _expire(self, now: float) -> tuple[Rejection, ...] | list[Rejection]:
        horizon = now - self.lateness
        seen_order = self._seen_order
        if seen_order and seen_order[0][0] < horizon:
            seen = self._seen
            while seen_order and seen_order[0][0] < horizon:
                seen.discard(seen_order.popleft()[1])
        if not self._parked_order or self._parked_order[0][0] >= horizon:
            return _NO_REJECTIONS
        out: list[Rejection] = []
        while self._parked_order and self._parked_order[0][0] < horizon:
            _, key, ev = self._parked_order.popleft()
            waiting = self._parked.get(key)
            if waiting and ev in waiting:
                waiting.remove(ev)
                if not waiting:
                    del self._parked[key]
                self._parked_ids.discard(ev.id)
                self.stats.parked -= 1
                out.extend(self._reject(ev, "unknown-entity", f"{key!r} did not become known within the lateness"))
        return out

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able data: world state, dedup window, parked events, counters."""
        return {
            "state": self.state.snapshot(),
            "lateness": self.lateness,
            "seen": [[t, i] for t, i in self._seen_order],
            "parked": [[t, key, event_to_dict(ev)] for t, key, ev in self._parked_order],
            "applied": dict(self.stats.applied),
            "rejected": dict(self.stats.rejected),
        }

    @classmethod
    def from_snapshot(cls, network: Network, snap: dict[str, Any]) -> LiveTwin:
        """A fresh twin (new SimPy environment) continuing exactly where the snapshot was."""
        state = WorldState.from_snapshot(network, snap["state"])
        twin = cls(network, lateness=snap["lateness"], state=state)
        twin._seen_order = deque((t, i) for t, i in snap["seen"])
        twin._seen = {i for _, i in twin._seen_order}
        for t, key, data in snap["parked"]:
            ev = event_from_dict(data)
            twin._parked.setdefault(key, []).append(ev)
            twin._parked_order.append((t, key, ev))
            twin._parked_ids.add(ev.id)
        twin.stats = TwinStats(Counter(snap["applied"]), Counter(snap["rejected"]), len(snap["parked"]))
        return twin
