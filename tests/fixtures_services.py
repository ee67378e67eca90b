"""Real services for tests: a Kafka broker and Prometheus servers (pytest plugin).

Loaded from ``tests/conftest.py`` (``pytest_plugins = ["fixtures_services"]``).

Fixtures
--------
``kafka_bootstrap`` (session) -> ``"127.0.0.1:PORT"``
    ``$KAFKA_BOOTSTRAP`` if set (checked with a metadata round trip), else a fresh single-node
    KRaft broker started with ``deploy/kafka/run-local start`` on a free port pair and a
    per-session state dir, stopped at session end.
``kafka_topic_factory`` (function) -> ``make(prefix="t", partitions=1, configs=None) -> name``
    Creates uniquely named topics with aiokafka's admin client; deletes them afterwards.
``prometheus_factory`` (session) -> ``make(targets, rule_files=None, ...) -> PrometheusHandle``
    Starts a real Prometheus (``deploy/prometheus/run-local``) scraping ``targets`` every 1 s;
    all instances are stopped at session end.
``prometheus_server`` (session) -> ``PrometheusHandle``
    One shared Prometheus with no targets; give it some with ``handle.set_targets([...])``.
``promtool`` (session) -> path of the ``promtool`` binary.

If a service cannot be started or reached, the fixture skips the test with the reason, except
when ``$CI`` is ``true``: then it fails (with the log tail), so CI never silently skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_RUN_LOCAL = REPO_ROOT / "deploy" / "kafka" / "run-local"
PROMETHEUS_RUN_LOCAL = REPO_ROOT / "deploy" / "prometheus" / "run-local"

# fetch (first run only) + format + start + readiness wait (run-local waits up to 90 s itself).
KAFKA_START_TIMEOUT_S = 300
PROMETHEUS_START_TIMEOUT_S = 60


def in_ci() -> bool:
    """True when ``$CI`` is ``true``: unavailable services then fail tests instead of skipping."""
    return os.environ.get("CI", "").strip().lower() == "true"


def service_unavailable(reason: str) -> NoReturn:
    """Fail (in CI) or skip (elsewhere) the current test because a service is unavailable."""
    if in_ci():
        pytest.fail(f"{reason}\n(CI=true: required services must be available)", pytrace=False)
    pytest.skip(reason)


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def free_ports(n: int) -> list[int]:
    """Return ``n`` distinct currently free TCP ports on 127.0.0.1."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run_script(
    argv: Sequence[str | os.PathLike[str]], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _file_tail(path: Path, lines: int = 60) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError:
        return "(no log file)"


# --------------------------------------------------------------------------------------- Kafka


async def _kafka_probe(bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        if not cluster.get("brokers"):
            msg = f"no brokers in metadata from {bootstrap}"
            raise RuntimeError(msg)
    finally:
        await admin.close()


def kafka_reachable(bootstrap: str, timeout: float = 15.0) -> str | None:
    """Return None if a metadata round trip to ``bootstrap`` works, else the error text."""
    try:
        asyncio.run(asyncio.wait_for(_kafka_probe(bootstrap), timeout))
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real Kafka broker for this test session."""
    external = os.environ.get("KAFKA_BOOTSTRAP", "").strip()
    if external:
        err = kafka_reachable(external)
        if err:
            service_unavailable(f"KAFKA_BOOTSTRAP={external} is not reachable: {err}")
        yield external
        return

    try:
        import aiokafka  # noqa: F401
    except ImportError:
        service_unavailable("aiokafka is not installed")
    if shutil.which("java") is None:
        service_unavailable("java not found: the local Kafka broker needs Java 17+ (see deploy/install-test-deps)")

    port, controller_port = free_ports(2)
    state_dir = tmp_path_factory.mktemp("kafka-broker", numbered=True)
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller_port),
        "KAFKA_STATE_DIR": str(state_dir),
        "PYTHON": sys.executable,
    }
    t0 = time.monotonic()
    try:
        proc = _run_script([KAFKA_RUN_LOCAL, "start"], env, KAFKA_START_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        _run_script([KAFKA_RUN_LOCAL, "stop"], env, 60)
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        service_unavailable(
            f"Kafka broker did not start within {KAFKA_START_TIMEOUT_S} s\n{_tail(out)}\n"
            f"{_file_tail(state_dir / 'kafka.out')}"
        )
    if proc.returncode != 0:
        # run-local prints the log tail itself when the broker dies or never gets ready.
        log = "" if "----- last" in proc.stderr else (f"\n--- broker log ---\n{_file_tail(state_dir / 'kafka.out')}")
        _run_script([KAFKA_RUN_LOCAL, "stop"], env, 60)
        service_unavailable(
            f"deploy/kafka/run-local start failed (exit {proc.returncode})\n"
            f"{_tail(proc.stdout, 20)}\n{_tail(proc.stderr, 100)}{log}"
        )
    bootstrap = f"127.0.0.1:{port}"
    sys.stderr.write(f"\n[fixtures_services] Kafka broker ready at {bootstrap} in {time.monotonic() - t0:.1f} s\n")
    try:
        yield bootstrap
    finally:
        stop = _run_script([KAFKA_RUN_LOCAL, "stop"], env, 120)
        if stop.returncode != 0:
            sys.stderr.write(f"[fixtures_services] kafka stop failed:\n{stop.stdout}\n{stop.stderr}\n")


_TOPIC_UNSAFE = re.compile(r"[^a-zA-Z0-9._-]+")


async def _create_topic(
    bootstrap: str, name: str, partitions: int, replication_factor: int, configs: dict[str, str]
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        resp = await admin.create_topics([NewTopic(name, partitions, replication_factor, topic_configs=configs)])
        for topic_error in resp.topic_errors:
            _, code = topic_error[0], topic_error[1]
            if code != 0:
                msg = f"CreateTopics {name!r} failed: {topic_error}"
                raise RuntimeError(msg)
        # Wait until every partition has a leader, so producers/consumers start cleanly.
        deadline = time.monotonic() + 30
        while True:
            desc = await admin.describe_topics([name])
            parts = desc[0].get("partitions", []) if desc else []
            if (
                desc
                and desc[0].get("error_code", 1) == 0
                and len(parts) == partitions
                and all(p.get("leader", -1) >= 0 for p in parts)
            ):
                return
            if time.monotonic() > deadline:
                msg = f"topic {name!r} has no leaders after 30 s: {desc}"
                raise RuntimeError(msg)
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


@pytest.fixture
def kafka_topic_factory(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics: ``make(prefix=None, partitions=1, configs=None)``.

    ``configs`` are topic configs, e.g. ``{"cleanup.policy": "compact"}``. The topics are
    deleted when the test ends.
    """
    created: list[str] = []
    default_prefix = _TOPIC_UNSAFE.sub("-", request.node.name)[:60].strip("-._") or "t"

    def make(
        prefix: str | None = None,
        partitions: int = 1,
        configs: dict[str, str] | None = None,
        replication_factor: int = 1,
    ) -> str:
        base = _TOPIC_UNSAFE.sub("-", prefix) if prefix else default_prefix
        name = f"{base}-{uuid.uuid4().hex[:10]}"
        asyncio.run(
            _create_topic(
                kafka_bootstrap,
                name,
                partitions,
                replication_factor,
                {k: str(v) for k, v in (configs or {}).items()},
            )
        )
        created.append(name)
        return name

    yield make
    if created:
        with contextlib.suppress(Exception):
            asyncio.run(asyncio.wait_for(delete_topics(kafka_bootstrap, created), 30))


# ---------------------------------------------------------------------------------- Prometheus


def _prometheus_bin() -> str | None:
    explicit = os.environ.get("PROMETHEUS_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    if os.access("/usr/bin/prometheus", os.X_OK):
        return "/usr/bin/prometheus"
    return shutil.which("prometheus")


class PrometheusHandle:
    """A running Prometheus started by ``prometheus_factory`` (or ``prometheus_server``)."""

    def __init__(self, url: str, state_dir: Path, config_dir: Path, env: dict[str, str]):
        self.url = url
        self.state_dir = state_dir
        self.config_dir = config_dir
        self.targets_file = config_dir / "targets.json"
        self._env = env

    def __repr__(self) -> str:
        return f"PrometheusHandle({self.url!r})"

    # -- targets
    def set_targets(self, targets: Sequence[str], labels: dict[str, str] | None = None) -> None:
        """Replace the scrape targets (file_sd; Prometheus picks the change up in ~1 s)."""
        entry = [{"targets": list(targets), "labels": dict(labels or {})}] if targets else []
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry))
        tmp.replace(self.targets_file)  # atomic, so file_sd never reads half a file

    # -- HTTP API
    def api(self, path: str, params: dict[str, str] | None = None, timeout: float = 10) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data`` (raises on a non-success status)."""
        url = f"{self.url}/api/v1/{path.lstrip('/')}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            msg = f"Prometheus API {path} failed: {exc.code} {body}"
            raise RuntimeError(msg) from exc
        if body.get("status") != "success":
            msg = f"Prometheus API {path} failed: {body}"
            raise RuntimeError(msg)
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; returns the result list (``[{"metric": {...}, "value": [ts, "v"]}]``).

        For scalar/string results returns ``[{"metric": {}, "value": [ts, "v"]}]``.
        """
        data = self.api("query", {"query": promql})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30,
        interval: float = 0.25,
    ) -> list[dict[str, Any]]:
        """Poll ``query(promql)`` until ``predicate(result)`` is true; return that result."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                result = self.query(promql)
                if predicate(result):
                    return result
                last = result
            except (OSError, RuntimeError) as exc:
                last = exc
            if time.monotonic() > deadline:
                msg = f"timed out after {timeout} s waiting on {promql!r}; last result: {last!r}"
                raise AssertionError(msg)
            time.sleep(interval)

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets (``/api/v1/targets``)."""
        return list(self.api("targets")["activeTargets"])

    def log_tail(self, lines: int = 40) -> str:
        return _file_tail(self.state_dir / "prometheus.out", lines)

    def stop(self) -> None:
        _run_script([PROMETHEUS_RUN_LOCAL, "stop"], self._env, 60)


def _prometheus_config(targets_file: Path, rule_files: Sequence[Path], job: str, scrape_interval: str) -> str:
    # JSON is valid YAML: no PyYAML needed to write it.
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": scrape_interval,
        },
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
            }
        ],
    }
    return json.dumps(config, indent=2)


@pytest.fixture(scope="session")
def prometheus_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., PrometheusHandle]]:
    """Start real Prometheus servers: ``make(targets, rule_files=None, job="test")``.

    Each call starts its own Prometheus on a free port, scraping ``targets``
    (``"host:port"`` strings) every ``scrape_interval`` (default ``1s``) under job ``job``.
    All of them are stopped at the end of the session.
    """
    handles: list[PrometheusHandle] = []

    def make(
        targets: Sequence[str] = (),
        rule_files: Sequence[str | os.PathLike[str]] | None = None,
        job: str = "test",
        scrape_interval: str = "1s",
    ) -> PrometheusHandle:
        if _prometheus_bin() is None:
            service_unavailable("prometheus binary not found (/usr/bin/prometheus): run deploy/install-test-deps")
        (port,) = free_ports(1)
        config_dir = tmp_path_factory.mktemp("prometheus-config", numbered=True)
        state_dir = tmp_path_factory.mktemp("prometheus-state", numbered=True)
        env = {
            **os.environ,
            "PROMETHEUS_PORT": str(port),
            "PROMETHEUS_STATE_DIR": str(state_dir),
        }
        handle = PrometheusHandle(f"http://127.0.0.1:{port}", state_dir, config_dir, env)
        handle.set_targets(targets)
        config = config_dir / "prometheus.yml"
        config.write_text(
            _prometheus_config(handle.targets_file, [Path(p) for p in rule_files or ()], job, scrape_interval)
        )
        try:
            proc = _run_script([PROMETHEUS_RUN_LOCAL, "start", config], env, PROMETHEUS_START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            handle.stop()
            service_unavailable(f"Prometheus did not start within {PROMETHEUS_START_TIMEOUT_S} s")
        if proc.returncode != 0:
            log = handle.log_tail()
            handle.stop()
            service_unavailable(
                f"deploy/prometheus/run-local start failed (exit {proc.returncode})\n"
                f"{_tail(proc.stdout, 20)}\n{_tail(proc.stderr)}\n--- prometheus log ---\n{log}"
            )
        handles.append(handle)
        return handle

    yield make
    for handle in handles:
        handle.stop()


@pytest.fixture(scope="session")
def prometheus_server(
    prometheus_factory: Callable[..., PrometheusHandle],
) -> PrometheusHandle:
    """One shared Prometheus for the session; point it at targets with ``set_targets``."""
    return prometheus_factory([])


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of ``promtool`` (Debian's prometheus package ships it next to prometheus)."""
    path = shutil.which("promtool") or ("/usr/bin/promtool" if os.access("/usr/bin/promtool", os.X_OK) else None)
    if path is None:
        service_unavailable("promtool not found: run deploy/install-test-deps")
    return path
