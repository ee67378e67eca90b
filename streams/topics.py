"""Topic names, and which input topic carries which event type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from twin.events import Event

__all__ = [
    "DISPATCH",
    "DLQ",
    "INPUT_TOPIC_OF_TYPE",
    "ORDERS",
    "PREDICTIONS",
    "SENSORS",
    "Topics",
    "input_topic",
]

SENSORS: Final = "logistics.sensors"
ORDERS: Final = "logistics.orders"
DISPATCH: Final = "logistics.dispatch"
PREDICTIONS: Final = "twin.predictions"
DLQ: Final = "twin.dlq"

#: Event type -> the input topic producers write it to (sensors: vehicles, docks, sites,
#: disruptions; orders: the order lifecycle; dispatch: the planner's commands).
INPUT_TOPIC_OF_TYPE: Final[dict[str, str]] = {
    "logistics.vehicle.position.v1": "sensors",
    "logistics.vehicle.arrived.v1": "sensors",
    "logistics.vehicle.departed.v1": "sensors",
    "logistics.dock.status.v1": "sensors",
    "logistics.site.throughput.v1": "sensors",
    "logistics.disruption.reported.v1": "sensors",
    "logistics.disruption.cleared.v1": "sensors",
    "logistics.order.created.v1": "orders",
    "logistics.order.scanned.v1": "orders",
    "logistics.order.delivered.v1": "orders",
    "logistics.order.cancelled.v1": "orders",
    "logistics.dispatch.command.v1": "dispatch",
}


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics one deployment uses (tests give every run its own names)."""

    sensors: str = SENSORS
    orders: str = ORDERS
    dispatch: str = DISPATCH
    predictions: str = PREDICTIONS
    dlq: str = DLQ
    #: the internal shard topic (re-keyed events, handoffs, progress); default ``<app id>-shards``
    shards: str = ""

    @property
    def inputs(self) -> tuple[str, str, str]:
        """The input topics."""
        return (self.sensors, self.orders, self.dispatch)

    def shard_topic(self, app_id: str) -> str:
        """The internal shard topic's name."""
        return self.shards or f"{app_id}-shards"


def input_topic(event: Event, topics: Topics | None = None) -> str:
    """The input topic a producer writes ``event`` to (sensors for anything not an order or command)."""
    t = topics or Topics()
    name: str = getattr(t, INPUT_TOPIC_OF_TYPE.get(event.TYPE, "sensors"))
    return name
