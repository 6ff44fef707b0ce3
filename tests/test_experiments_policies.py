"""Smoke tests of the policy benchmarks: each script's --quick mode runs and writes its CSV,
markdown and PNG with the expected columns. No timing is asserted (the numbers are benchmarks,
not tests)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from helpers import run_experiments_side_by_side

pytest.importorskip("mabwiser")
pytest.importorskip("matplotlib")

# about 15 s on an idle 2-core machine; the margin is for a loaded one (pytest-timeout covers the
# module fixture's setup, which runs all three scripts)
pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]  # runs experiments
DEADLINE_S = 380

SCRIPTS = ("policy_regret", "policy_drift", "policy_cost")
OURS = {"static", "random", "epsilon_greedy", "ucb1", "kl_ucb", "thompson"}


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory) -> dict[str, Path]:
    """Run the three --quick scripts in parallel, each into its own temporary results directory."""
    outs = {name: tmp_path_factory.mktemp(name) for name in SCRIPTS}
    run_experiments_side_by_side(outs, timeout=DEADLINE_S)
    return outs


def _read(path: Path) -> list[dict[str, str]]:
    assert path.is_file() and path.stat().st_size > 0, path
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _check_md_png(out: Path, name: str, table_columns: tuple[str, ...]) -> None:
    md = (out / f"{name}.md").read_text(encoding="utf-8")
    assert "Quick smoke run" in md
    for marker in ("- date: ", "- machine: ", "- command: ", "--quick", "cores", "python"):
        assert marker in md, marker
    header = next(line for line in md.splitlines() if line.startswith("| "))
    for column in table_columns:
        assert column in header, (column, header)
    png = (out / f"{name}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000


def test_regret_quick(quick_runs):
    out = quick_runs["policy_regret"]
    rows = _read(out / "policy_regret.csv")
    assert {"arm_set", "policy", "source", "T", "seeds", "regret_mean", "regret_sd", "us_per_step"} <= set(rows[0])
    assert {r["policy"] for r in rows} == OURS | {"mabwiser_ts", "mabwiser_ucb1"}
    assert {r["arm_set"] for r in rows} == {"3 arms", "5 arms"}
    assert all(0.0 <= float(r["regret_mean"]) <= float(r["T"]) for r in rows)
    seeds = _read(out / "policy_regret_seeds.csv")
    assert {"arm_set", "policy", "seed", "regret"} <= set(seeds[0])
    _check_md_png(out, "policy_regret", ("workload", "ours", "peer", "ratio"))


def test_drift_quick(quick_runs):
    out = quick_runs["policy_drift"]
    rows = _read(out / "policy_drift.csv")
    assert {"scenario", "policy", "discount", "adapted_seeds", "calls_to_switch_mean", "regret_after_mean"} <= set(
        rows[0]
    )
    assert {r["policy"] for r in rows} == OURS
    assert {float(r["discount"]) for r in rows} == {1.0, 0.995, 0.99}
    static = [r for r in rows if r["policy"] == "static"]
    assert static and all(r["adapted_seeds"] == "0" for r in static)  # the fixed table never adapts
    assert _read(out / "policy_drift_seeds.csv")
    md = (out / "policy_drift.md").read_text(encoding="utf-8")
    assert "never adapts" in md
    _check_md_png(out, "policy_drift", ("scenario", "policy", "calls to switch", "regret after change"))


def test_cost_quick(quick_runs):
    out = quick_runs["policy_cost"]
    rows = _read(out / "policy_cost.csv")
    columns = {"models", "policy", "source", "cycles"} | {
        f"{part}_{stat}_us" for part in ("rank", "update", "cycle") for stat in ("median", "p99", "mean")
    }
    assert columns <= set(rows[0])
    assert {r["models"] for r in rows} == {"2", "3", "5", "8"}
    assert OURS | {"mabwiser_ts", "mabwiser_ucb1", "mabwiser_eps", "mabwiser_random"} <= {r["policy"] for r in rows}
    assert all(float(r["cycle_median_us"]) > 0 for r in rows)
    _check_md_png(out, "policy_cost", ("workload", "ours", "peer", "ratio"))
