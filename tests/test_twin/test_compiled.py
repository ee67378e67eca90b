"""The twin's compiled modules (``twin.compiled``): built, loaded, and the same as their sources."""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import twin
from twin import compiled

ROOT = Path(__file__).resolve().parents[2]

# what every prediction of a few forecasts hashes to, printed by a process (its environment
# decides whether it runs the compiled modules or their sources)
_HASH_PREDICTIONS = """
import hashlib, sys
from scenarios.generate import generate
from scenarios.spec import load_scenario
from twin import compiled
from twin.forecast import Forecaster
from twin.live import LiveTwin

h, n = hashlib.sha256(), 0
for name, hours, replicas in (("two-region-mini", 3, 16), ("regional-day", 9, 8), ("hub-morning-outage", 8, 8)):
    spec = load_scenario(name)
    gen = generate(spec)
    live = LiveTwin(gen.network)
    live.apply_all([e for e in gen.events if e.time <= hours * 3600])
    for p in Forecaster(gen.network, replicas=replicas, seed=spec.forecast_seed).forecast(live.state):
        h.update(repr(p).encode())
        n += 1
print(compiled.ACTIVE, n, h.hexdigest())
"""


def _run(
    code: str, *args: str, pure: bool, cwd: Path = ROOT, path: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` running the compiled modules or (``pure``) their sources; ``path``: PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    if pure:
        env[compiled.PURE_ENV] = "1"
    if path is not None:
        env["PYTHONPATH"] = str(path)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_setup_compiles_the_modules_twin_compiled_lists():
    # setup.py reads the list from twin/compiled.py's source; run that reader alone (running
    # setup.py would build)
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    reader = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "_modules")
    space = {"ast": ast, "ROOT": ROOT}
    exec(compile(ast.Module([reader], type_ignores=[]), "setup.py", "exec"), space)  # noqa: S102
    assert space["_modules"]() == compiled.MODULES
    assert "events" not in compiled.MODULES  # msgspec's Struct subclasses do not compile (docs/kafka.md)


def test_the_compiled_modules_run_in_ci():
    """CI installs from a clean checkout: the build must have compiled, and this session loaded it."""
    import twin.model

    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        assert compiled.ACTIVE, compiled.REASON
    if compiled.ACTIVE:
        assert not twin.model.__file__.endswith(".py")
        assert compiled.describe().startswith("twin modules: compiled")
    else:
        assert twin.model.__file__.endswith(".py"), compiled.REASON
        assert compiled.describe().startswith("twin modules: interpreted")


def test_pure_python_runs_the_sources():
    out = _run("import twin, twin.model; print(twin.compiled.ACTIVE, twin.model.__file__)", pure=True)
    assert out.returncode == 0, out.stderr
    active, path = out.stdout.split()
    assert active == "False"
    assert path.endswith("twin/model.py")


@pytest.mark.compiled_only
def test_an_edited_source_runs_from_source_with_a_warning(tmp_path):
    """After an edit since the build, the extension would run the old code: the sources run, and a warning says so."""
    stamp = Path(compiled.__file__).with_name("_compiled.sha256")
    lines = stamp.read_text(encoding="utf-8").splitlines()
    assert [line.split()[1] for line in lines] == [f"twin/{m}.py" for m in compiled.MODULES]
    for m in compiled.MODULES:
        source = Path(compiled.__file__).with_name(f"{m}.py").read_bytes()
        assert f"{hashlib.sha256(source).hexdigest()}  twin/{m}.py" in lines
    # the same check against a stamp that records another source for the model
    edited = [f"{'0' * 64}  twin/model.py" if line.endswith("twin/model.py") else line for line in lines]
    (tmp_path / "stamp").write_text("\n".join(edited) + "\n", encoding="utf-8")
    code = f"""
import warnings, pathlib
warnings.simplefilter("error")
import twin.compiled as c
c._STAMP = pathlib.Path({str(tmp_path / "stamp")!r})
print(c._changed())
"""
    out = _run(code, pure=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['twin/model.py']"


@pytest.mark.compiled_only
@pytest.mark.parametrize("build", ["one extension missing", "an extension of a module not listed"])
def test_a_build_of_another_module_list_runs_every_module_from_source(tmp_path, build):
    """A checkout updated since its install: no old extension runs, and no mix of the two."""
    import shutil

    package = tmp_path / "twin"
    shutil.copytree(Path(compiled.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    model_ext = next(package.glob("model.*.so"))
    if build == "one extension missing":
        next(package.glob("records.*.so")).unlink()
    else:  # as if ``clock`` had been compiled by an older list
        shutil.copy(model_ext, package / model_ext.name.replace("model.", "clock.", 1))
    code = """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as seen:
    import twin
import twin.clock, twin.forecast, twin.model, twin.records
print(twin.compiled.ACTIVE, [m.__file__.endswith(".py") for m in (twin.clock, twin.forecast, twin.model, twin.records)])
print(twin.compiled.REASON)
print(len(seen), seen[0].message if seen else "")
"""
    out = _run(code, pure=False, cwd=tmp_path, path=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    active, reason, warned = out.stdout.splitlines()
    assert active == "False [True, True, True, True]"
    assert reason == "the build compiled another list of modules: rebuild with `python3 -m pip install -e .`"
    assert warned.startswith("1 twin runs its compiled modules from their sources (slower)")


@pytest.mark.slow
@pytest.mark.compiled_only
def test_compiled_forecasts_equal_the_interpreted_ones_to_the_bit():
    compiled_run = _run(_HASH_PREDICTIONS, pure=False)
    pure_run = _run(_HASH_PREDICTIONS, pure=True)
    assert compiled_run.returncode == 0, compiled_run.stderr
    assert pure_run.returncode == 0, pure_run.stderr
    c_active, c_n, c_hash = compiled_run.stdout.split()
    p_active, p_n, p_hash = pure_run.stdout.split()
    assert (c_active, p_active) == ("True", "False")
    assert int(c_n) > 3000
    assert (c_n, c_hash) == (p_n, p_hash)


@pytest.mark.slow
@pytest.mark.compiled_only
def test_the_tests_that_patch_internals_pass_on_the_sources():
    """The ``interpreted`` tests check fast paths against SimPy's by patching them: run them on the sources."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "interpreted", "tests/test_twin"],
        cwd=ROOT,
        env={**os.environ, compiled.PURE_ENV: "1"},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 9, summary


def test_twin_imports_compiled_first():
    assert twin.compiled is compiled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _run("import twin.model, sys; print('twin.compiled' in sys.modules)", pure=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


# a worker's snapshot (``LiveTwin.snapshot``, msgpack as ``streams.envelopes`` stores it) of a
# mid-stream twin, or (with a file argument) that snapshot restored and the stream gone on to
# its end; the bytes, hex-encoded, on stdout
_SNAPSHOT = """
import sys
import msgspec
from scenarios.generate import generate
from scenarios.spec import load_scenario
from twin import compiled
from twin.live import LiveTwin

gen = generate(load_scenario("two-region-mini"))
cut = 3 * 3600
if len(sys.argv) > 1:
    with open(sys.argv[1], "rb") as f:
        live = LiveTwin.from_snapshot(gen.network, msgspec.msgpack.decode(f.read()))
    live.apply_all([e for e in gen.events if e.time > cut])
else:
    live = LiveTwin(gen.network)
    live.apply_all([e for e in gen.events if e.time <= cut])
print(compiled.ACTIVE, msgspec.msgpack.encode(live.snapshot()).hex())
"""


def _snapshot(*, pure: bool, restore: Path | None = None) -> bytes:
    out = _run(_SNAPSHOT, *([str(restore)] if restore else []), pure=pure)
    assert out.returncode == 0, out.stderr
    active, blob = out.stdout.split()
    assert active == str(not pure)
    return bytes.fromhex(blob)


@pytest.mark.slow
@pytest.mark.compiled_only
def test_a_worker_snapshot_restores_across_compiled_and_interpreted(tmp_path):
    """A snapshot written by a worker running compiled modules restores in one running sources, and back."""
    from_compiled, from_sources = _snapshot(pure=False), _snapshot(pure=True)
    assert len(from_compiled) > 10_000
    assert from_compiled == from_sources
    (tmp_path / "snap").write_bytes(from_compiled)
    ended_on_sources = _snapshot(pure=True, restore=tmp_path / "snap")
    ended_compiled = _snapshot(pure=False, restore=tmp_path / "snap")
    assert ended_on_sources == ended_compiled
    assert ended_on_sources != from_compiled
