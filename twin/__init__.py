"""The logistics twin's pure core: events, world state, the SimPy network model, forecasts.

Nothing here knows about Kafka, HTTP, Prometheus or files; given a seed and an event
sequence, everything here is deterministic.
"""

from twin import compiled as compiled  # first: it decides how the compiled modules load

__version__ = "0.1.0"

__all__ = ["__version__", "compiled"]
