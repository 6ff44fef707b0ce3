"""The reliability experiments (experiments/soak.py, experiments/hedging.py) run end to end in their
quick mode, side by side, into temporary folders, and write every output; the soak finds no lost or
duplicated record. No timing is asserted: the quick runs are smoke tests, not measurements."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from helpers import run_experiments_side_by_side

pytestmark = pytest.mark.slow  # runs experiments


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory) -> dict[str, Path]:
    """Both scripts in quick mode, side by side (they are independent), each into its own folder."""
    outs = {name: tmp_path_factory.mktemp(name) for name in ("soak", "hedging")}
    run_experiments_side_by_side(outs, timeout=110)
    return outs


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _nonempty(out: Path, names: list[str]) -> None:
    for name in names:
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, f"{name} missing or empty"


def test_soak_quick_writes_its_outputs_and_loses_no_record(quick_runs):
    tmp_path = quick_runs["soak"]
    _nonempty(tmp_path, ["soak.csv", "soak.md", "soak.png", "soak_phases.csv", "soak_calls.csv", "soak_timeline.csv"])
    metrics = {row["metric"]: row["value"] for row in _rows(tmp_path / "soak.csv")}
    completed = int(metrics["calls_completed"])
    assert completed > 0
    assert len(_rows(tmp_path / "soak_calls.csv")) == completed
    # every call the router returned or raised has an id, a calls row and all its attempts rows
    assert int(metrics["calls_reported"]) == completed == int(metrics["calls_rows"])
    assert int(metrics["attempts_reported"]) == int(metrics["attempts_rows"]) > 0
    assert metrics["lost_records"] == "0"
    assert metrics["duplicated_records"] == "0"
    assert metrics["unexpected_exceptions"] == "0"
    assert metrics["store_rows_dropped"] == "0"
    md = (tmp_path / "soak.md").read_text(encoding="utf-8")
    assert "Quick smoke run" in md and "zero lost records" in md and "command:" in md
    # every injected fault window was applied and lifted
    phases = _rows(tmp_path / "soak_phases.csv")
    assert any(row["window"].startswith("total outage") for row in phases)
    assert all(row["from_s"] != "" for row in phases[:-1])


def test_hedging_quick_writes_its_outputs(quick_runs):
    tmp_path = quick_runs["hedging"]
    _nonempty(tmp_path, ["hedging.csv", "hedging.md", "hedging.png", "hedging_runs.csv"])
    rows = _rows(tmp_path / "hedging.csv")
    assert [row["config"] for row in rows] == ["off", "q=0.90", "q=0.95"]
    for row in rows:
        assert int(row["calls"]) > 0
        for key in ("p50_ms", "p99_ms", "p999_ms", "second_request_share", "attempts_per_call"):
            assert float(row[key]) >= 0
    off = rows[0]
    assert float(off["hedged_share"]) == 0.0  # no hedge without hedge_quantile
    md = (tmp_path / "hedging.md").read_text(encoding="utf-8")
    assert "Quick smoke run" in md and "p99.9" in md
