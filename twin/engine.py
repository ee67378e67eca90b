"""The SimPy machinery the network model runs on.

A run loop without a method call per step (``run_until``), which also starts what a step
started as soon as the step ends instead of each with its own event; a timeout with a chosen
same-time priority (``Wake``); one event that starts every process of a build (``Start``,
``Started``); and resources whose releases schedule no event when no one waits
(``Capacity``, one per site in ``Sites``). Each does what SimPy's own would, event for
event; the model's tests compare them with SimPy's.
"""

from __future__ import annotations

import heapq
from collections.abc import Generator
from typing import Any, Protocol, cast

import simpy

__all__ = ["Capacity", "Proc", "Sites", "Start", "Startable", "Started", "Wake", "run_until", "unlink", "wake"]

Proc = Generator[simpy.Event, Any, None]


class Startable(Protocol):
    """What an ``Initialize`` event starts: a process, or anything resumed the same way."""

    def _resume(self, event: simpy.Event) -> None: ...


def unlink(event: simpy.Event) -> None:
    """Drop what waits on an event (what would be called back when it is processed)."""
    if event.callbacks:
        event.callbacks.clear()


def run_until(env: simpy.Environment, until: float, deferred: list[Startable] | None = None) -> int:
    """``env.run(until=until)``: the same events in the same order, without a method call per step.

    SimPy's ``run`` schedules a stop event at ``now + (until - now)`` with the highest
    priority and steps until it is processed: every event before that time, and none at
    it (no event at that time can have been scheduled with that priority before it), after
    which the clock stands at the stop time. This loop is ``Environment.step`` inlined.

    ``deferred``: what a step started without an ``Initialize`` event each (a process, or a
    sort: ``twin.model._Sorting``), started here, in order, as soon as the step ends. SimPy
    starts a process with an ``Initialize`` event scheduled urgent at the current time. The
    only urgent events are ``Initialize`` (and ``Start``) and interrupts (which the model does
    not use), and any scheduled before the current step would have been processed before it;
    so the ``Initialize`` events created during a step are the head of the queue when the
    step ends, in the order they were created, and each of those steps only resumes what it
    starts. Starting them in that order at the end of the step does the same work in the
    same order, without an event (a simulation step) for each; they are not counted.
    Returns the number of events processed.
    """
    at = env.now + (until - env.now)
    queue = env._queue
    pop = heapq.heappop
    n = 0
    while queue and queue[0][0] < at:
        env._now, _, _, event = pop(queue)
        n += 1
        callbacks, event.callbacks = event.callbacks, None  # type: ignore[assignment]
        for callback in callbacks:
            callback(event)
        if not event._ok and not hasattr(event, "_defused"):
            # as ``Environment.step``: a failed event that no one handled crashes the run
            exc = type(event._value)(*event._value.args)
            exc.__cause__ = event._value
            raise exc
        if deferred:
            _start_deferred(deferred)
    env._now = at
    return n


class _Go:
    """What a deferred process is resumed with: an ``Initialize`` event's outcome (ok, no value)."""

    _ok = True
    _value = None


_GO = cast(simpy.Event, _Go())


def _start_deferred(deferred: list[Startable]) -> None:
    """Start what was deferred, in order (one started here may defer another: it goes last)."""
    i = 0
    while i < len(deferred):
        deferred[i]._resume(_GO)
        i += 1
    deferred.clear()


class Wake(simpy.Event):
    """A timeout with a chosen priority: it is processed after same-time events of lower priority."""

    # a timeout's outcome (ok, no value), the same for every wake: class attributes rather
    # than two stores per wake
    _ok = True
    _value = None

    def __init__(self, env: simpy.Environment, delay: float, priority: int) -> None:
        self.env = env
        self.callbacks = []
        # ``env.schedule(self, priority, delay)``, inlined (one call less per wake-up)
        heapq.heappush(env._queue, (env._now + delay, priority, next(env._eid), self))  # type: ignore[misc]


def wake(env: simpy.Environment, delay: float, priority: int) -> Wake:
    """``Wake(env, delay, priority)``: the same event, scheduled the same way, without the class call.

    Calling a class runs its ``__init__`` through CPython's generic type call (no fast path
    in 3.11), about a third of the cost of a wake-up; a replica makes about 400 of them.
    """
    if _COMPILED:
        # a compiled ``Wake`` is not made by ``object.__new__``; its class call is fast anyway
        return Wake(env, delay, priority)
    w: Wake = _new(Wake)
    w.env = env
    w.callbacks = []
    heapq.heappush(env._queue, (env._now + delay, priority, next(env._eid), w))  # type: ignore[misc]
    return w


_new = object.__new__
#: this module runs compiled (mypyc; see ``twin.compiled``), not from its source
_COMPILED = not __file__.endswith(".py")


class Start(simpy.Event):
    """One event that starts every process a model starts as it is built.

    SimPy starts each process with its own ``Initialize`` event, scheduled urgent at the
    current time; a model's build starts about a hundred, and their events are the first
    in the queue, consecutive, and processed one after another before anything the
    processes schedule (which comes later in the queue, the urgent included). One event
    that resumes the processes in the order they were started does the same work in the
    same order, in one simulation step instead of one per process. While it runs,
    ``waiting`` counts the processes still to start: they are what the ``Initialize``
    events left in the queue were (a sort, ``twin.model._Sorting``, looks at the queue).
    """

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.callbacks = [self._start_all]
        self._value = None
        self._ok = True
        #: the processes to start, in order (or anything started the same way: ``Startable``)
        self.procs: list[Startable] = []
        #: how many of them are still to start after the one running
        self.waiting = 0
        env.schedule(self, simpy.events.URGENT)

    def _start_all(self, event: simpy.Event) -> None:
        procs = self.procs
        for i, proc in enumerate(procs):
            self.waiting = len(procs) - 1 - i
            proc._resume(self)
        procs.clear()


class Started(simpy.Process):
    """A SimPy process resumed first by a shared ``Start`` instead of its own ``Initialize``."""

    def __init__(self, env: simpy.Environment, generator: Proc, start: Start) -> None:
        self.env = env
        self.callbacks = []
        self._generator = generator
        self._target = start
        start.procs.append(self)


class Capacity(simpy.Resource):
    """A SimPy ``Resource`` (docks, a sorter) whose release schedules no event when no one waits.

    SimPy frees the slot when ``release`` is called and hands it to the first waiting
    request only when the release event is processed, later in the same second. With no
    request waiting at the release, processing that event would change nothing: a request
    made after the release takes a free slot as it is made, and one that finds every slot
    taken waits for a later release, which has its own event (every use of a slot lasts at
    least a second, so no slot is taken and freed again within the same instant). So the
    event is left out: one simulation step less per unwaited release, and the events that
    are left keep their order.
    """

    def release(  # type: ignore[override]
        self, request: simpy.resources.resource.Request
    ) -> simpy.resources.resource.Release | None:
        """Free the request's slot; an event (as SimPy's) only when a request is waiting."""
        if not self.put_queue and request in self.users:
            self.users.remove(request)
            return None
        return super().release(request)

    def take(self) -> simpy.resources.resource.Request | None:
        """Occupy a slot at once, without an event, if one is free and no one waits (else None).

        Returns the token to ``release``. This is what ``request`` does when a slot is free,
        except that the requesting process goes on at once instead of when the request's
        event is processed; only for a caller that no other event can come before (see
        ``Model._unload``).
        """
        users = self.users
        if self.put_queue or len(users) >= self._capacity:
            return None
        token: Any = object()  # a token, not a request: nothing waits on it
        users.append(token)
        return token  # type: ignore[no-any-return]


class Sites(dict[str, Capacity]):
    """One resource per site (docks, or a sorter), created when first used.

    A resource schedules nothing when it is created, so creating it later changes no event;
    a replica uses the docks and sorters of only some of the sites.
    """

    def __init__(self, env: simpy.Environment) -> None:
        super().__init__()
        self.env = env
        #: the capacity of each site's resource
        self.capacity: dict[str, int] = {}

    def __missing__(self, site_id: str) -> Capacity:
        res = self[site_id] = Capacity(self.env, capacity=self.capacity[site_id])
        return res
