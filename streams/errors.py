"""The one exception root of the ``streams`` package, and the errors under it."""

from __future__ import annotations

from typing import Final

__all__ = [
    "DECODE_REASONS",
    "ConfigurationError",
    "DeadLetterError",
    "DecodeError",
    "EncodeError",
    "StreamsError",
]

#: Why the codec may refuse a message; a subset of ``twin.errors.REASONS`` (the DLQ reasons).
DECODE_REASONS: Final = ("malformed-json", "unknown-type", "schema", "oversize")


class StreamsError(Exception):
    """Root of every error the ``streams`` package raises."""


class ConfigurationError(StreamsError, ValueError):
    """A setting is unusable; the message names the setting, the value and the fix."""


class DecodeError(StreamsError, ValueError):
    """A message could not be turned into a twin event.

    ``reason`` is one of :data:`DECODE_REASONS` (it is what the message is dead-lettered and
    counted under); ``detail`` names the field and the rule it broke, e.g.
    ``"data.progress: expected number or null, got string"``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in DECODE_REASONS:
            msg = f"DecodeError reason must be one of {DECODE_REASONS}, got {reason!r}"
            raise ValueError(msg)
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class EncodeError(StreamsError, ValueError):
    """An event cannot be put on the wire (wrong field type, non-finite number, unknown class)."""


class DeadLetterError(StreamsError, ValueError):
    """A dead letter, or a Kafka message read back as one, is incomplete or inconsistent."""
