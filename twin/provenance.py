"""Provenance of delays: which mechanism at which entity added how many seconds.

A model run records, for every trip and lot of freight, a ledger of the causes of its
delay as they happen (``add_cause``), and passes them along the links of a cascade
(``carry_causes``). Forecast cause chains are read from these ledgers, not inferred.
"""

from __future__ import annotations

__all__ = ["LINK_CAUSES", "ROOT_CAUSES", "Ledger", "add_cause", "carry_causes"]

#: Where delay comes from ...
ROOT_CAUSES: frozenset[str] = frozenset({"lane_slowdown", "disruption", "dock_queue", "handling_backlog"})
#: ... and how it travels from one trip or order to the next.
LINK_CAUSES: frozenset[str] = frozenset({"vehicle_rotation", "held_departure", "missed_connection"})

#: Recorded provenance of a delay: (mechanism, entity) -> [seconds contributed, time first seen].
#: Root causes add up to the delay they explain; a link carries the seconds passed along it.
#: Entries are replaced, never changed in place (``_add``), so a shallow copy is a snapshot.
Ledger = dict[tuple[str, str], list[float]]


def add_cause(ledger: Ledger, mechanism: str, entity: str, seconds: float, at: float) -> None:
    """Add ``seconds`` of ``mechanism`` at ``entity``, first seen at ``at`` (nothing for no delay)."""
    if seconds <= 0:
        return
    key = (mechanism, entity)
    entry = ledger.get(key)
    if entry is None:
        ledger[key] = [seconds, at]
    else:
        # a new entry, never an update in place: copies of a ledger can then be shallow
        ledger[key] = [entry[0] + seconds, min(entry[1], at)]


def carry_causes(into: Ledger, upstream: Ledger, seconds: float) -> None:
    """Add ``upstream``'s causes, scaled so its root causes explain at most ``seconds``."""
    roots = sum(v[0] for k, v in upstream.items() if k[0] in ROOT_CAUSES)
    if roots <= 0 or seconds <= 0:
        return
    f = min(1.0, seconds / roots)
    for (mech, entity), (secs, at) in upstream.items():
        add_cause(into, mech, entity, secs * f, at)
