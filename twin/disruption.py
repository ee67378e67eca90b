"""Disruptions the twin has been told about."""

from __future__ import annotations

from dataclasses import dataclass

from mypy_extensions import mypyc_attr

__all__ = ["DisruptionState"]


@mypyc_attr(serializable=True)  # compiled: pickled without calling __init__
@dataclass(slots=True)
class DisruptionState:
    """A reported disruption; ``cleared_at`` is set once it is reported over."""

    kind: str
    target_id: str
    factor: float
    start: float
    expected_end: float | None
    cleared_at: float | None = None
    obs_time: float = float("-inf")
    obs_id: str = ""

    def active(self, now: float) -> bool:
        """True while the disruption is in force at ``now``."""
        if self.cleared_at is not None and self.cleared_at <= now:
            return False
        return self.start <= now
