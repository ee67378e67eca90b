"""The ``twin`` command end to end, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl

from scenarios.code import code_digest


def _twin(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_run_help_documents_everything():
    done = _twin("run", "--help")
    assert done.returncode == 0
    for flag in (
        "SCENARIO",
        "--out",
        "--seed",
        "--cache-dir",
        "--lateness",
        "--regenerate",
        "--quiet",
        "TWIN_CACHE_DIR",
    ):
        assert flag.lower() in done.stdout.lower(), flag


def test_run_generates_then_loads_and_writes_a_run_folder(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    first = _twin("run", "two-region-mini", "--cache-dir", str(cache), "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert "generating scenario" in first.stderr
    assert "events applied" in first.stdout and "late orders so far" in first.stdout
    # how the twin's hot modules ran (twin.compiled), as the test session's own import found them
    import twin

    assert f"twin modules        {'compiled' if twin.compiled.ACTIVE else 'from source'}" in first.stdout
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["scenario"] == "two-region-mini" and config["seed"] == 7 and config["code_version"]
    # which code: the source digest of twin/ and scenarios/, and the commit of this checkout
    assert config["code_digest"] == code_digest() and "code_revision" in config
    assert summary["applied"] == summary["events"] > 5000 and summary["rejected"] == 0
    orders = pl.read_parquet(out / "orders.parquet")
    assert orders.height == 400
    second = _twin("run", "two-region-mini", "--cache-dir", str(cache), "--out", str(tmp_path / "out2"))
    assert second.returncode == 0
    assert "loading generated scenario" in second.stderr
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["late_orders"] == summary["late_orders"]


def test_bad_scenario_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nname = "x"\n')
    done = _twin("run", str(bad), "--cache-dir", str(tmp_path))
    assert done.returncode == 2
    assert "twin: error:" in done.stderr and "scenario.seed: is required" in done.stderr
    done = _twin("run", "atlantis", "--cache-dir", str(tmp_path))
    assert done.returncode == 2 and "no scenario 'atlantis'" in done.stderr


def test_two_runs_with_the_same_seed_give_identical_outputs(tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        done = _twin(
            "run", "two-region-mini", "--cache-dir", str(tmp_path / f"cache-{name}"), "--out", str(out),
            "--forecast-every", "7200", "--replicas", "8", "--quiet",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        outs.append(out)
    for name in ("orders.parquet", "vehicles.parquet", "rejections.parquet", "predictions.parquet"):
        a, b = pl.read_parquet(outs[0] / name), pl.read_parquet(outs[1] / name)
        assert a.equals(b), name
    assert pl.read_parquet(outs[0] / "predictions.parquet").height > 0
