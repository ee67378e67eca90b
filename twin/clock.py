"""The twin's clock: a SimPy environment that can be moved to an event's time cheaply."""

from __future__ import annotations

import simpy

__all__ = ["TwinEnvironment"]


class TwinEnvironment(simpy.Environment):
    """A SimPy environment the live twin advances to each event's time.

    ``advance_to(t)`` runs every process scheduled up to ``t`` (nominal behaviour between
    observations) and leaves the clock at ``t``. When nothing is scheduled before ``t`` it
    only moves the clock, which is what makes per-event advancing cheap.
    """

    def advance_to(self, t: float) -> None:
        """Run the model up to ``t`` (inclusive of events scheduled before it)."""
        if t <= self._now:
            return
        if self.peek() < t:
            self.run(until=t)
        else:
            self._now = t
