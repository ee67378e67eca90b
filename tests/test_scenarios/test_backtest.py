"""Backtests: the metrics on hand-made frames, worked out by hand; and issue 3's acceptance run.

The hand-made world has one lane ``L1`` (the disrupted target) and two trips:

- T1 planned 1000 -> 3000, actually left on time and arrived at 3600 (600 s late);
- T2 planned 5000 -> 7000, actually left at 5300 (300 s late) and arrived at 7600.

Four orders, all delivered (A, B, D ride T1; C rides T2):

=====  ========  =======  =========  =====  ===========
order  promised  planned  delivered  late   late calm
=====  ========  =======  =========  =====  ===========
A      5000      4000     4600       no     no
B      5000      4000     5600       yes    no   (disruption-late)
C      9000      8000     9500       yes    yes
D      5000      4000     4800       no     no
=====  ========  =======  =========  =====  ===========
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Final

import polars as pl
import pytest

from scenarios.backtest import (
    BacktestResult,
    backtest,
    backtest_seeds,
    carried_delay,
    coverage_by_chance,
    coverage_by_seed,
    disruption_targets,
    names_target,
    pool_results,
    predictions_at_lead,
)
from scenarios.backtest_report import write_backtest
from scenarios.predictions import PREDICTION_SCHEMA
from scenarios.spec import load_scenario


def _truth_trips() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "trip_id": ["T1", "T2", "T9"],
            "vehicle_id": ["V1", "V2", "V9"],
            "leg": [0, 0, 0],
            "origin": ["A", "B", "X"],
            "destination": ["B", "C", "Y"],
            "planned_departure": [1000.0, 5000.0, 0.0],
            "planned_arrival": [3000.0, 7000.0, 100.0],
            "actual_departure": [1000.0, 5300.0, 5000.0],
            "actual_arrival": [3600.0, 7600.0, None],
        }
    )


def _truth_orders(late_calm: bool = False) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            "order_id": ["A", "B", "C", "D"],
            "promised_at": [5000.0, 5000.0, 9000.0, 5000.0],
            "planned_arrival": [4000.0, 4000.0, 8000.0, 4000.0],
            "delivered_at": [4600.0, 5600.0, 9500.0, 4800.0],
            "planned_path": [["T1"], ["T1"], ["T2"], ["T1"]],
        }
    )
    late = [False, False, True, False] if late_calm else [False, True, True, False]
    return frame.with_columns(pl.Series("late", late))


def _pred(as_of, oid, p10, p50, p90, p_late, causes=()):
    return {
        "as_of": as_of,
        "kind": "order",
        "id": oid,
        "p10": p10,
        "p50": p50,
        "p90": p90,
        "p_late": p_late,
        "expected_delay": 0.0,
        "planned": None,
        "at_risk": 0,
        "causes": json.dumps([list(c) for c in causes]),
    }


def _predictions() -> pl.DataFrame:
    rows = [
        _pred(2000.0, "A", 4000.0, 4500.0, 5000.0, 0.2),
        _pred(2000.0, "B", 4500.0, 5200.0, 5500.0, 0.7, [("lane_slowdown", "L1", 600.0)]),
        _pred(2000.0, "D", 4700.0, 4800.0, 5300.0, 0.6, [("lane_slowdown", "L1", 300.0)]),
        # a later forecast that no lead time of 1800 s may use for A, B, D (too close to delivery)
        _pred(4000.0, "A", 0.0, 0.0, 0.0, 1.0),
        _pred(4000.0, "B", 0.0, 0.0, 0.0, 0.0),
        _pred(4000.0, "D", 0.0, 0.0, 0.0, 0.0),
        _pred(7000.0, "C", 8000.0, 9000.0, 9400.0, 0.5, [("dock_queue", "H2", 300.0)]),
        # trip and site predictions are ignored
        {**_pred(2000.0, "T1", 1.0, 1.0, 1.0, 1.0), "kind": "trip"},
    ]
    return pl.DataFrame(rows, schema=PREDICTION_SCHEMA)


def _result() -> BacktestResult:
    return backtest(
        _predictions(),
        _truth_orders(),
        _truth_trips(),
        calm_truth_orders=_truth_orders(late_calm=True),
        disruption_targets=("L1",),
        lead_times=(1800.0, 3600.0),
    )


# ---------------------------------------------------------------------- building blocks
def test_the_latest_prediction_at_least_the_lead_before_delivery_is_used():
    delivered = _truth_orders()
    at = predictions_at_lead(_predictions(), delivered, 1800.0)
    assert dict(zip(at["order_id"], at["as_of"], strict=True)) == {"A": 2000.0, "B": 2000.0, "C": 7000.0, "D": 2000.0}
    assert at["p50"].to_list() == [4500.0, 5200.0, 9000.0, 4800.0]
    # 3600 s before delivery only B (5600 - 3600 = 2000) had a forecast; the others are left out
    at = predictions_at_lead(_predictions(), delivered, 3600.0)
    assert at["order_id"].to_list() == ["B"] and at["as_of"].to_list() == [2000.0]


def test_undelivered_orders_are_not_scored():
    truth = _truth_orders().with_columns(
        pl.when(pl.col("order_id") == "A").then(None).otherwise(pl.col("delivered_at")).alias("delivered_at")
    )
    at = predictions_at_lead(_predictions(), truth, 1800.0)
    assert at["order_id"].to_list() == ["B", "C", "D"]


def test_current_delay_is_the_latest_observed_on_the_planned_path():
    rows = pl.DataFrame(
        {
            "as_of": [50.0, 999.0, 1000.0, 3599.0, 3600.0, 5300.0, 9000.0, 9000.0, 9000.0],
            "planned_path": [["T1", "T2"]] * 6 + [["T1"], ["T9"], []],
        }
    )
    got = carried_delay(rows, _truth_trips()).to_list()
    # nothing seen yet; T1 left on time (0); T1 arrived 600 late; T2 left 300 late; after T2's
    # arrival (600 late); T1 alone: its arrival; T9 left at 5000 against 0 planned; no path: 0
    assert got == [0.0, 0.0, 0.0, 0.0, 600.0, 300.0, 600.0, 5000.0, 0.0]


def test_cause_chain_names_a_target_only_as_a_whole_entity():
    frame = pl.DataFrame(
        {
            "causes": [
                json.dumps([["dock_queue", "S-HUB", 60.0]]),
                json.dumps([["dock_queue", "XS-HUB", 60.0], ["held_departure", "S-HUB-T1", 60.0]]),
                json.dumps([["lane_slowdown", "N-HUB->S-HUB", 60.0]]),
                "[]",
            ]
        }
    )
    assert frame.select(names_target(["S-HUB"]))["causes"].to_list() == [True, False, False, False]
    assert frame.select(names_target(["N-HUB->S-HUB"]))["causes"].to_list() == [False, False, True, False]
    assert frame.select(names_target([]).alias("x"))["x"].to_list() == [False] * 4


def test_disruption_targets_are_the_lanes_sites_and_ids():
    spec = load_scenario("regional-day")
    assert disruption_targets(spec) == ("N-HUB->S-HUB", "S-HUB", "slow-N-S-linehaul", "south-hub-docks")


# ---------------------------------------------------------------------- the metrics, worked by hand
def test_accuracy_by_lead_time_worked_by_hand():
    r = _result()
    row = r.by_lead.filter(pl.col("lead_s") == 1800.0).row(0, named=True)
    assert row["orders"] == 4
    # p50 errors A 100, B 400, C 500, D 0
    assert row["mae_p50"] == pytest.approx(250.0)
    # planned errors A 600, B 1600, C 1500, D 800
    assert row["mae_planned"] == pytest.approx(1125.0)
    # carried: A, B, D at 2000 saw T1 leave on time (0); C at 7000 saw T2 leave 300 late -> 8300
    assert row["mae_carried"] == pytest.approx((600 + 1600 + 1200 + 800) / 4)
    assert row["improvement_vs_planned"] == pytest.approx(1 - 250 / 1125)
    assert row["improvement_vs_carried"] == pytest.approx(1 - 250 / 1050)
    # inside p10-p90: A and D; B (5600 > 5500) and C (9500 > 9400) are not
    assert row["coverage"] == pytest.approx(0.5)
    assert row["brier"] == pytest.approx((0.2**2 + 0.3**2 + 0.5**2 + 0.6**2) / 4)
    assert row["bias_p50"] == pytest.approx((-100 - 400 - 500 + 0) / 4)
    assert row["late_share"] == pytest.approx(0.5)
    assert row["beyond_horizon"] == 0
    only_b = r.by_lead.filter(pl.col("lead_s") == 3600.0).row(0, named=True)
    assert only_b["orders"] == 1 and only_b["mae_p50"] == pytest.approx(400.0)
    assert only_b["mae_planned"] == pytest.approx(1600.0)


def test_cascade_detection_worked_by_hand():
    r = _result()
    row = r.cascade.filter(pl.col("lead_s") == 1800.0).row(0, named=True)
    # disruption-late: B only (C is late without the disruption too)
    assert row["disruption_late"] == 1
    assert row["predicted_late"] == 1 and row["detected"] == 1 and row["recall"] == pytest.approx(1.0)
    # flagged (p_late >= 0.5 and L1 in the chain): B and D; C is predicted late but names H2
    assert row["flagged"] == 2 and row["precision"] == pytest.approx(0.5)


def test_a_quantile_beyond_the_horizon_counts_as_the_horizon_end():
    preds = pl.DataFrame(
        [
            _pred(2000.0, "A", None, None, None, 1.0),
            _pred(2000.0, "B", 5000.0, None, None, 1.0),
        ],
        schema=PREDICTION_SCHEMA,
    )
    truth = _truth_orders().filter(pl.col("order_id").is_in(["A", "B"]))
    r = backtest(preds, truth, _truth_trips(), lead_times=(1800.0,), horizon=1000.0)
    row = r.by_lead.row(0, named=True)
    # p50 scored as 2000 + 1000 = 3000: errors 1600 (A) and 2600 (B)
    assert row["mae_p50"] == pytest.approx(2100.0) and row["beyond_horizon"] == 2
    # p10 beyond the horizon is the horizon end, p90 beyond it is unbounded: A [3000, inf), B [5000, inf)
    assert row["coverage"] == pytest.approx(1.0)
    assert r.cascade.height == 0  # no calm truth, no cascade table


def test_acceptance_and_table():
    r = _result()
    r.config = {"scenario": "hand", "seed": 1, "code_version": "x", "settings": {"replicas": 1, "cadence_s": 1.0}}
    checks = {name: ok for name, _, _, ok in r.acceptance()}
    assert checks == {
        "p10-p90 coverage @ 0.5 h": False,
        "p50 MAE vs planned @ 1 h": True,
        "p50 MAE vs carried @ 1 h": True,
        "p10-p90 coverage @ 1 h": False,
    }
    assert not r.passed
    text = r.table()
    assert "0.5 h" in text and "+77.8%" in text and "MISS p10-p90 coverage @ 0.5 h" in text
    assert "precision" in text
    assert "how much the coverage says" in text and "at every lead at once" in text


def _groups(sizes: list[int], lead: float = 1800.0) -> pl.DataFrame:
    """Scored rows: one group of orders per size, each sharing one (as_of, delivered_at)."""
    rows = [(lead, 100.0 * g, 1000.0 + g) for g, n in enumerate(sizes) for _ in range(n)]
    return pl.DataFrame(rows, schema=["lead_s", "as_of", "delivered_at"], orient="row")


def test_coverage_by_chance_against_the_binomial():
    """Oracle: 43 groups of one order each; a calibrated forecast's coverage is Binomial(43, 0.8) / 43,
    and P(0.75 <= X / 43 <= 0.85) is the binomial sum over X = 33..36."""
    from math import comb

    exact = sum(comb(43, x) * 0.8**x * 0.2 ** (43 - x) for x in range(43 + 1) if 0.75 <= x / 43 <= 0.85)
    assert exact == pytest.approx(0.5553, abs=1e-4)
    assert coverage_by_chance(_groups([1] * 43), draws=200_000)[1800.0] == pytest.approx(exact, abs=0.005)


def test_coverage_by_chance_counts_groups_not_orders():
    # 43 groups of 100 orders score like 43 orders; one group can only be all in or all out
    many = coverage_by_chance(_groups([100] * 43), draws=50_000)[1800.0]
    assert many == pytest.approx(0.5553, abs=0.01)
    assert coverage_by_chance(_groups([500]))[1800.0] == 0.0
    # thousands of groups: a calibrated forecast is almost always in the range
    assert coverage_by_chance(_groups([1] * 5000), draws=2000)[1800.0] > 0.99
    # unequal groups weigh by their orders: one group of 220 among 42 of 3 decides most of it
    lopsided = coverage_by_chance(_groups([220] + [3] * 42), draws=50_000)[1800.0]
    assert lopsided < 0.1
    # pooled rows: the same (as_of, delivered_at) under two seeds are two groups
    pooled = pl.concat([_groups([1] * 43).with_columns(pl.lit(s).alias("seed")) for s in (1, 2)])
    exact86 = sum(comb_ * 0.8**x * 0.2 ** (86 - x) for x, comb_ in _binomial(86) if 0.75 <= x / 86 <= 0.85)
    assert coverage_by_chance(pooled, draws=100_000)[1800.0] == pytest.approx(exact86, abs=0.006)


def _binomial(n: int) -> list[tuple[int, int]]:
    from math import comb

    return [(x, comb(n, x)) for x in range(n + 1)]


def test_write_backtest_records_config_beside_results(tmp_path):
    r = _result()
    r.config = {"scenario": "hand", "seed": 1, "code_version": "x", "settings": {"replicas": 1}}
    files = write_backtest(r, tmp_path / "out", _predictions())
    names = {p.name for p in files}
    assert {"config.json", "by_lead.parquet", "cascade.parquet", "scored.parquet", "report.md"} <= names
    assert json.loads((tmp_path / "out" / "config.json").read_text())["scenario"] == "hand"
    assert pl.read_parquet(tmp_path / "out" / "by_lead.parquet").height == 2
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Acceptance (issue 3)" in report and "| 0.5 h | 4 |" in report


def _backtest_mini(out, *extra: str) -> subprocess.CompletedProcess[str]:
    """``twin backtest two-region-mini`` with small settings, as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "backtest", "two-region-mini", *extra, "--replicas", "4"]
        + ["--cadence", "3600", "--horizon", "8", "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_twin_backtest_command(tmp_path):
    out = tmp_path / "bt"
    done = _backtest_mini(out)
    assert "MAE p50" in done.stdout and "acceptance (issue 3)" in done.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["scenario"] == "two-region-mini" and config["seed"] == 7 and config["code_version"]
    assert config["settings"] == {
        "replicas": 4,
        "cadence_s": 3600.0,
        "horizon_s": 8 * 3600.0,
        "forecast_seed": load_scenario("two-region-mini").forecast_seed,  # never the world's seed
        "lead_times_s": [1800.0, 3600.0, 7200.0, 14400.0],
        "late_threshold": 0.5,
    }
    assert pl.read_parquet(out / "by_lead.parquet").height == 4
    assert (out / "report.md").exists() and (out / "predictions.parquet").exists()


# ---------------------------------------------------------------------- issue 3's acceptance
#: Chosen so both scenarios take a couple of minutes together on one core: a forecast every
#: 15 minutes of event time (a lead time is then met within 15 minutes) with 32 replicas each.
ACCEPTANCE_REPLICAS = 32
ACCEPTANCE_CADENCE = 900.0
#: World seeds per scenario (its own and the next ones): enough groups of orders at every
#: lead (400-500) that a forecast whose p10-p90 holds exactly 80 % lands in 75-85 % at each
#: lead with probability 0.97 or more (``coverage_by_chance``; docs/backtest.md). Fixed from
#: that computation before these seeds were first backtested (2026-12-07).
ACCEPTANCE_SEEDS: Final = {"regional-day": 12, "hub-morning-outage": 20}


_BACKTESTS: dict[str, list[BacktestResult]] = {}


@pytest.fixture(scope="module", params=["regional-day", "hub-morning-outage"])
def backtests(request) -> list[BacktestResult]:
    """Each acceptance scenario under its world seeds, once per module (two at a time); the tables are printed."""
    name = request.param
    if name not in _BACKTESTS:
        start = time.perf_counter()
        results = backtest_seeds(
            load_scenario(name),
            ACCEPTANCE_SEEDS[name],
            jobs=2,
            replicas=ACCEPTANCE_REPLICAS,
            cadence=ACCEPTANCE_CADENCE,
        )
        print(f"\n{name}, scenario seed\n{results[0].table()}")
        print(f"\n{coverage_by_seed(results)}\n\n{pool_results(results).table()}")
        print(f"({time.perf_counter() - start:.0f} s)")
        _BACKTESTS[name] = results
    return _BACKTESTS[name]


@pytest.fixture
def backtest_result(backtests) -> BacktestResult:
    """The scenario's own seed: the issue's acceptance, read literally."""
    return backtests[0]


def _missed(result, kind: str) -> list[str]:
    return [
        f"{name}: {v if v is None else round(v, 3)} (needs {rule})"
        for name, v, rule, ok in result.acceptance()
        if not ok and kind in name
    ]


@pytest.mark.slow
def test_p50_beats_both_baselines_by_30_percent_from_1h(backtest_result):
    assert not _missed(backtest_result, "MAE"), "\n".join(_missed(backtest_result, "MAE"))


@pytest.mark.slow
def test_disruption_late_orders_are_flagged_with_their_cause_at_2h(backtest_result):
    assert backtest_result.cascade.filter(pl.col("lead_s") == 7200.0)["disruption_late"].item() > 100
    assert not _missed(backtest_result, "disruption"), "\n".join(_missed(backtest_result, "disruption"))


#: the scenarios whose coverage is not within 75-85 % at every lead yet
COVERAGE_NOT_MET: Final = {
    "regional-day": (
        "out of 75-85 % on the scenario seed alone: 93.9 / 87.7 / 84.6 / 78.8 % at 0.5 / 1 / 2 / 4 h, on 43 groups "
        "of orders, where a forecast whose intervals hold exactly 80 % is in range at all four leads with "
        "probability about 7 % (docs/backtest.md); over 12 world seeds 82.8 / 83.8 / 75.5 / 76.2 % "
        "(test_issue_3_acceptance_holds_over_world_seeds)"
    ),
}


@pytest.mark.slow
def test_p10_p90_interval_holds_75_to_85_percent(backtest_result, request):
    # hub-morning-outage's scenario seed is within the range (82.6 / 84.6 / 83.2 / 83.3 %): a real gate.
    reason = COVERAGE_NOT_MET.get(request.node.callspec.params["backtests"])
    if reason is not None:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=False))
    assert not _missed(backtest_result, "coverage"), "\n".join(_missed(backtest_result, "coverage"))


@pytest.mark.slow
def test_issue_3_acceptance_holds_over_world_seeds(backtests):
    """Every criterion of issue 3 on the scored rows of all the scenario's world seeds together.

    One seed's coverage rests on 25-45 groups of orders, and a perfectly calibrated forecast
    lands all four leads in 75-85 % there with a probability of 2-7 %; pooled over these seeds,
    each lead's figure rests on 400-500 groups, where it does so at each lead with 0.97 or more
    (checked here too, so the test keeps the power to tell). The thresholds are the issue's.
    """
    pooled = pool_results(backtests)
    chance = coverage_by_chance(pooled.rows)
    assert min(chance.values()) >= 0.95, chance
    missed = [
        f"{name}: {v if v is None else round(v, 3)} (needs {rule})"
        for name, v, rule, ok in pooled.acceptance()
        if not ok
    ]
    assert not missed, "\n".join(missed)


def test_twin_backtest_pools_several_world_seeds(tmp_path):
    out = tmp_path / "bt"
    done = _backtest_mini(out, "--seeds", "2")
    assert "seeds 7, 8, pooled" in done.stdout and "seed 8:" in done.stdout
    pooled = pl.read_parquet(out / "by_lead.parquet").sort("lead_s")
    per_seed = [pl.read_parquet(out / f"seed-{s}" / "by_lead.parquet").sort("lead_s") for s in (7, 8)]
    assert json.loads((out / "config.json").read_text())["seeds"] == [7, 8]
    assert pooled["orders"].to_list() == [a + b for a, b in zip(*(r["orders"] for r in per_seed), strict=True)]
    assert pooled["outcomes"].to_list() == [a + b for a, b in zip(*(r["outcomes"] for r in per_seed), strict=True)]
    for i in range(pooled.height):  # pooled coverage is the order-weighted mean of the seeds'
        weighted = sum(r["coverage"][i] * r["orders"][i] for r in per_seed) / pooled["orders"][i]
        assert pooled["coverage"][i] == pytest.approx(weighted)
    assert all(0 < n < o for n, o in zip(pooled["outcomes"], pooled["orders"], strict=True))
