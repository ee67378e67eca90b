"""The one exception root of the twin core, and the reasons an event can be rejected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "REASONS",
    "Rejection",
    "TwinError",
    "ValidationError",
]

#: Every reason the twin (and the codec in front of it) may give for not applying an event.
#: The first group is decided by the codec, the second by the twin.
REASONS: Final = (
    "malformed-json",
    "unknown-type",
    "schema",
    "oversize",
    "unknown-entity",
    "duplicate",
    "too-late",
    "invalid",
)


class TwinError(Exception):
    """Root of every error the twin core raises."""


class ValidationError(TwinError, ValueError):
    """A value broke a rule; the message names the value, the rule and the fix."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event the twin did not apply, with the reason and a human-readable detail.

    Rejections are returned to the caller (never raised, never dropped), so the edge can
    dead-letter them with the original bytes.
    """

    event_id: str
    event_type: str
    reason: str
    detail: str
