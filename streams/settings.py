"""Settings of the Kafka processes: one frozen, typed object per process, from flags and environment.

Every setting has a command-line flag and an environment variable (shown as ``[env: VAR]`` in
``--help``); a flag wins over the environment, the environment over the default. Secrets (the
SASL password) are masked whenever settings are printed or logged.
"""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Final

from streams.errors import ConfigurationError
from streams.topics import DISPATCH, DLQ, ORDERS, PREDICTIONS, SENSORS, Topics

__all__ = [
    "FORECAST_IN",
    "MASK",
    "SECURITY_PROTOCOLS",
    "KafkaSecurity",
    "Option",
    "ReplaySettings",
    "TailSettings",
    "WorkerSettings",
    "add_options",
    "from_args",
]

MASK: Final = "********"
SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: Where a worker runs its forecasts (``streams.forecast_process``).
FORECAST_IN: Final = ("process", "thread")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How clients authenticate and encrypt (passed through to aiokafka and Faust)."""

    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            msg = f"--security-protocol={self.security_protocol!r} must be one of {SECURITY_PROTOCOLS}"
            raise ConfigurationError(msg)
        sasl = self.security_protocol.startswith("SASL_")
        if sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                msg = f"--sasl-mechanism={self.sasl_mechanism!r} must be one of {SASL_MECHANISMS} with {self.security_protocol}"  # noqa: E501
                raise ConfigurationError(msg)
            if not self.sasl_username or self.sasl_password is None:
                msg = f"{self.security_protocol} needs --sasl-username and --sasl-password (or $TWIN_SASL_PASSWORD)"
                raise ConfigurationError(msg)
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            msg = f"SASL options need --security-protocol SASL_PLAINTEXT or SASL_SSL, not {self.security_protocol}"
            raise ConfigurationError(msg)
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            msg = "--ssl-certfile and --ssl-keyfile go together (a client certificate and its key)"
            raise ConfigurationError(msg)

    @property
    def uses_ssl(self) -> bool:
        """True for SSL and SASL_SSL."""
        return self.security_protocol.endswith("SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for the clients (None without TLS)."""
        if not self.uses_ssl:
            return None
        ctx = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.ssl_certfile is not None:
            ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        return ctx

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.uses_ssl:
            out["ssl_context"] = self.ssl_context()
        if self.security_protocol.startswith("SASL_"):
            out["sasl_mechanism"] = self.sasl_mechanism
            out["sasl_plain_username"] = self.sasl_username
            out["sasl_plain_password"] = self.sasl_password
        return out

    def faust(self) -> Any:
        """Faust ``broker_credentials`` (None for PLAINTEXT)."""
        import faust

        if self.security_protocol == "PLAINTEXT":
            return None
        if self.security_protocol == "SSL":
            return faust.SSLCredentials(self.ssl_context())
        return faust.SASLCredentials(
            username=self.sasl_username,
            password=self.sasl_password,
            ssl_context=self.ssl_context(),
            mechanism=self.sasl_mechanism,
        )

    def masked(self) -> dict[str, Any]:
        """For printing: the password masked."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["sasl_password"] is not None:
            out["sasl_password"] = MASK
        return out


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its flag, environment variable, type, default and help."""

    name: str
    flag: str
    env: str
    kind: Callable[[str], Any]
    default: Any
    help: str
    secret: bool = False
    choices: tuple[str, ...] | None = None
    #: a switch: ``--flag`` sets it, the environment variable takes true/false
    switch: bool = False


def _opt(name: str, kind: Callable[[str], Any], default: Any, help: str, **kw: Any) -> Option:
    return Option(name, "--" + name.replace("_", "-"), "TWIN_" + name.upper(), kind, default, help, **kw)


def _optional_str(value: str) -> str | None:
    return value or None


def _truth(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    msg = f"expected true or false, got {value!r}"
    raise ValueError(msg)


CONNECTION: Final = (
    _opt("broker", str, "127.0.0.1:9092", "Kafka bootstrap servers, host:port[,host:port...]"),
    _opt(
        "security_protocol", str, "PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL", choices=SECURITY_PROTOCOLS
    ),
    _opt("sasl_mechanism", _optional_str, None, "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
    _opt("sasl_username", _optional_str, None, "SASL user name"),
    _opt("sasl_password", _optional_str, None, "SASL password (prefer the environment variable)", secret=True),
    _opt("ssl_cafile", _optional_str, None, "CA bundle to verify the brokers (TLS)"),
    _opt("ssl_certfile", _optional_str, None, "client certificate (mutual TLS)"),
    _opt("ssl_keyfile", _optional_str, None, "client certificate's key (mutual TLS)"),
)
TOPICS: Final = (
    _opt("sensors_topic", str, SENSORS, "input topic of vehicle, dock, site and disruption events"),
    _opt("orders_topic", str, ORDERS, "input topic of order events"),
    _opt("dispatch_topic", str, DISPATCH, "input topic of dispatch commands"),
    _opt("predictions_topic", str, PREDICTIONS, "output topic of predicted states (compacted)"),
    _opt("dlq_topic", str, DLQ, "dead-letter topic"),
)
WORKER: Final = (
    _opt("app_id", str, "logistics-twin", "Faust application id (consumer groups, internal topics, table)"),
    _opt("scenario", str, "regional-day", "library scenario name or .toml path: the network and its epoch"),
    _opt("partitions", int, 4, "partitions of the internal shard topic and the snapshot topic"),
    _opt("input_partitions", int, 1, "partitions to create input topics with, if they do not exist"),
    _opt("replication", int, 1, "replication factor of topics the worker creates"),
    _opt("metrics_port", int, 9464, "port of the Prometheus metrics endpoint (0: off)"),
    _opt("lateness", float, 900.0, "seconds an event may lag the shard's clock and still be applied"),
    _opt("forecast_every", float, 3600.0, "forecast each shard every this many seconds of event time (0: off)"),
    _opt("horizon", float, 12.0, "forecast horizon, hours"),
    _opt("replicas", int, 32, "Monte Carlo replicas per forecast"),
    _opt("seed", int, -1, "forecast seed (-1: derived from the scenario's seed, see ScenarioSpec.forecast_seed)"),
    _opt(
        "forecast_in",
        str,
        "process",
        "where forecasts run: a child process (keeps them off the ingest path's GIL) or a thread",
        choices=FORECAST_IN,
    ),
    _opt(
        "forecast_processes",
        int,
        1,
        "child processes forecasting in parallel (--forecast-in process); more than the free cores adds contention",
    ),
    _opt(
        "background_ticks",
        _truth,
        True,
        "forecast ticks in the background: events after a tick are applied while it is forecast",
        switch=True,
    ),
    _opt("skew", float, 300.0, "event-time seconds a shard may run ahead of the slowest other shard"),
    _opt("idle_after", float, 1.0, "publish a fresh forecast after this many quiet seconds"),
    _opt("refresh_every", float, 0.0, "also publish at least every this many wall seconds while busy (0: off)"),
    _opt("snapshot_every", float, 5.0, "snapshot each shard at most every this many wall seconds"),
    _opt("max_batch", int, 5000, "input messages per poll of the ingest stage"),
    _opt("session_timeout", float, 30.0, "seconds before the group gives a silent worker's partitions to others"),
    _opt("data_dir", str, "", "Faust data directory (default: a temporary directory)"),
    _opt("log_level", str, "warn", "worker log level: crit, error, warn, info, debug"),
)
REPLAY: Final = (
    _opt("speed", float, 0.0, "event-time seconds per wall second (60: an hour a minute); 0: as fast as possible"),
    _opt("rate", float, 0.0, "fixed input rate in events per second instead of event-time pacing (0: off)"),
)
TAIL: Final = (
    _opt("from_beginning", _truth, False, "read the topic from its start", switch=True),
    _opt("idle_exit", float, 0.0, "exit after this many seconds without a message (0: follow forever)"),
)


def add_options(parser: argparse.ArgumentParser, options: tuple[Option, ...]) -> None:
    """Add the options to a parser, with ``[env: VAR]`` and the default in each help text."""
    for opt in options:
        shown = MASK if opt.secret and opt.default else opt.default
        default = f" (default: {shown})" if shown not in (None, "") else ""
        kw: dict[str, Any] = {"default": None, "help": f"{opt.help} [env: {opt.env}]{default}", "dest": opt.name}
        if opt.switch:
            # A switch that is on by default gets its --no-... form too.
            kw["action"] = argparse.BooleanOptionalAction if opt.default is True else "store_true"
        else:
            kw["metavar"] = opt.name.split("_")[-1].upper()
            if opt.choices:
                kw["choices"] = opt.choices
        parser.add_argument(opt.flag, **kw)


def _value(opt: Option, args: argparse.Namespace, env: Mapping[str, str]) -> Any:
    raw = getattr(args, opt.name, None)
    if raw is False and opt.switch and opt.default is True:
        return False  # --no-...: turned off on the command line, whatever the environment says
    if raw is not None and raw is not False:
        return raw if not isinstance(raw, str) else _parse(opt, raw)
    if opt.env in env:
        return _parse(opt, env[opt.env])
    return opt.default


def _parse(opt: Option, raw: str) -> Any:
    try:
        return opt.kind(raw)
    except ValueError:
        msg = f"{opt.flag} (or ${opt.env}) = {raw!r}: not a valid {getattr(opt.kind, '__name__', 'value')}"
        raise ConfigurationError(msg) from None


def from_args(
    options: tuple[Option, ...], args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The values of ``options``: flag, else environment, else default."""
    source = os.environ if env is None else env
    return {opt.name: _value(opt, args, source) for opt in options}


def _security(values: dict[str, Any]) -> KafkaSecurity:
    return KafkaSecurity(
        security_protocol=values["security_protocol"],
        sasl_mechanism=values["sasl_mechanism"],
        sasl_username=values["sasl_username"],
        sasl_password=values["sasl_password"],
        ssl_cafile=values["ssl_cafile"],
        ssl_certfile=values["ssl_certfile"],
        ssl_keyfile=values["ssl_keyfile"],
    )


def _topics(values: dict[str, Any], shards: str = "") -> Topics:
    return Topics(
        sensors=values["sensors_topic"],
        orders=values["orders_topic"],
        dispatch=values["dispatch_topic"],
        predictions=values["predictions_topic"],
        dlq=values["dlq_topic"],
        shards=shards,
    )


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Everything ``twin worker`` runs with."""

    broker: str = "127.0.0.1:9092"
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    topics: Topics = field(default_factory=Topics)
    app_id: str = "logistics-twin"
    scenario: str = "regional-day"
    partitions: int = 4
    input_partitions: int = 1
    replication: int = 1
    metrics_port: int = 9464
    lateness: float = 900.0
    forecast_every: float = 3600.0
    horizon: float = 12.0
    replicas: int = 32
    seed: int = -1
    forecast_in: str = "process"
    forecast_processes: int = 1
    background_ticks: bool = True
    skew: float = 300.0
    idle_after: float = 1.0
    refresh_every: float = 0.0
    snapshot_every: float = 5.0
    max_batch: int = 5000
    session_timeout: float = 30.0
    data_dir: str = ""
    log_level: str = "warn"

    OPTIONS: ClassVar[tuple[Option, ...]] = ()

    def __post_init__(self) -> None:
        at_least_one = ("partitions", "input_partitions", "replication", "replicas", "forecast_processes")
        for name, low in ((n, 1) for n in at_least_one):
            if getattr(self, name) < low:
                msg = f"--{name.replace('_', '-')}={getattr(self, name)} must be at least {low}"
                raise ConfigurationError(msg)
        if not 0 <= self.metrics_port <= 65535:
            msg = f"--metrics-port={self.metrics_port} must be a TCP port (0 turns metrics off)"
            raise ConfigurationError(msg)
        for name in ("lateness", "forecast_every", "skew", "idle_after", "refresh_every", "snapshot_every"):
            if getattr(self, name) < 0:
                msg = f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 0 seconds"
                raise ConfigurationError(msg)
        if self.skew > self.lateness:
            msg = f"--skew={self.skew} must not exceed --lateness={self.lateness}: handoffs would arrive too late"
            raise ConfigurationError(msg)
        if not 6.0 <= self.session_timeout <= 300.0:
            msg = f"--session-timeout={self.session_timeout} must be within 6-300 s (the broker's group limits)"
            raise ConfigurationError(msg)
        if self.horizon <= 0:
            msg = f"--horizon={self.horizon} must be > 0 hours"
            raise ConfigurationError(msg)
        if self.forecast_in not in FORECAST_IN:
            msg = f"--forecast-in={self.forecast_in!r} must be one of: {', '.join(FORECAST_IN)}"
            raise ConfigurationError(msg)

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> WorkerSettings:
        """Settings from parsed flags and the environment."""
        v = from_args(cls.OPTIONS, args, env)
        names = {f.name for f in fields(cls)} - {"security", "topics"}
        return cls(security=_security(v), topics=_topics(v), **{k: v[k] for k in names})

    @property
    def shard_topic(self) -> str:
        """The internal shard topic."""
        return self.topics.shard_topic(self.app_id)

    @property
    def snapshot_topic(self) -> str:
        """The compacted topic of the shards' snapshots (key: shard name)."""
        return f"{self.app_id}-snapshots"

    def masked(self) -> dict[str, Any]:
        """Plain data for printing and logs, the password masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "security":
                out.update(value.masked())
            elif f.name == "topics":
                out.update(
                    {f"{k}_topic": getattr(value, k) for k in ("sensors", "orders", "dispatch", "predictions", "dlq")}
                )  # noqa: E501
                out["shard_topic"] = self.shard_topic
            else:
                out[f.name] = value
        return out

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.masked().items())
        return f"WorkerSettings({inner})"


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    """Everything ``twin replay --to-kafka`` runs with."""

    broker: str = "127.0.0.1:9092"
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    topics: Topics = field(default_factory=Topics)
    speed: float = 0.0
    rate: float = 0.0

    OPTIONS: ClassVar[tuple[Option, ...]] = ()

    def __post_init__(self) -> None:
        if self.speed < 0 or self.rate < 0:
            msg = f"--speed={self.speed} and --rate={self.rate} must be >= 0 (0: as fast as possible)"
            raise ConfigurationError(msg)

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ReplaySettings:
        """Settings from parsed flags and the environment."""
        v = from_args(cls.OPTIONS, args, env)
        return cls(v["broker"], _security(v), _topics(v), v["speed"], v["rate"])

    def masked(self) -> dict[str, Any]:
        """Plain data for printing, the password masked."""
        return {"broker": self.broker, **self.security.masked(), "speed": self.speed, "rate": self.rate}

    def __repr__(self) -> str:
        return f"ReplaySettings({self.masked()!r})"


@dataclass(frozen=True, slots=True)
class TailSettings:
    """Everything ``twin tail`` runs with."""

    broker: str = "127.0.0.1:9092"
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    topics: Topics = field(default_factory=Topics)
    from_beginning: bool = False
    idle_exit: float = 0.0

    OPTIONS: ClassVar[tuple[Option, ...]] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> TailSettings:
        """Settings from parsed flags and the environment."""
        v = from_args(cls.OPTIONS, args, env)
        return cls(v["broker"], _security(v), _topics(v), bool(v["from_beginning"]), v["idle_exit"])

    def masked(self) -> dict[str, Any]:
        """Plain data for printing, the password masked."""
        return {"broker": self.broker, **self.security.masked(), "from_beginning": self.from_beginning}

    def __repr__(self) -> str:
        return f"TailSettings({self.masked()!r})"


WorkerSettings.OPTIONS = CONNECTION + TOPICS + WORKER
ReplaySettings.OPTIONS = CONNECTION + TOPICS + REPLAY
TailSettings.OPTIONS = CONNECTION + TOPICS + TAIL
