"""The shared-learning and streaming experiments (experiments/multiprocess.py, experiments/bench_stream.py)
run end to end in their quick mode, into a temporary folder, and write every output with its columns;
the multi-process run loses no row. No timing is asserted: quick runs are smoke tests, not measurements.

The multi-process run needs PostgreSQL: ZETA_TEST_POSTGRES_URL (its zeta_adaptive tables are dropped,
as the pg_url fixture does) or the server binaries under /usr/lib/postgresql/*/bin (a private server
in a temporary folder); without either it is skipped.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest
from helpers import run_experiment

from experiments.common import postgres_bindir

pytestmark = pytest.mark.slow  # runs experiments


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _columns(path: Path, wanted: set[str]) -> list[dict[str, str]]:
    assert path.is_file() and path.stat().st_size > 0, f"{path.name} missing or empty"
    rows = _rows(path)
    assert rows, f"{path.name} has no rows"
    missing = wanted - set(rows[0])
    assert not missing, f"{path.name} lacks columns {sorted(missing)}"
    return rows


def test_bench_stream_quick_writes_its_outputs(tmp_path):
    run_experiment("bench_stream", tmp_path)
    rows = _columns(
        tmp_path / "bench_stream.csv",
        {"contender", "samples", "median_us", "p99_us", "cpu_median_us", "added_median_us", "added_p99_us", "met"},
    )
    by = {r["contender"]: r for r in rows}
    for name in ("direct sync", "routed sync", "direct async", "routed async"):
        assert int(by[name]["samples"]) > 0 and float(by[name]["median_us"]) > 0
    for mode in ("sync", "async"):
        added = by[f"added ({mode})"]
        assert added["added_median_us"] != "" and added["added_p99_us"] != ""
    samples = _columns(tmp_path / "bench_stream_samples.csv", {"contender", "i", "ttft_us", "cpu_us"})
    assert len(samples) == sum(
        int(by[n]["samples"]) for n in ("direct sync", "routed sync", "direct async", "routed async")
    )
    assert (tmp_path / "bench_stream.png").stat().st_size > 0
    md = (tmp_path / "bench_stream.md").read_text(encoding="utf-8")
    assert "Quick smoke run" in md and "machine:" in md and "command:" in md
    logged, made = map(int, re.search(r"(\d+) calls rows for (\d+) routed calls", md).groups())
    assert logged == made > 0  # every routed stream was logged once


def _postgres_available() -> bool:
    return bool(os.environ.get("ZETA_TEST_POSTGRES_URL")) or postgres_bindir() is not None


@pytest.mark.postgres
@pytest.mark.skipif(
    not _postgres_available(), reason="no PostgreSQL: ZETA_TEST_POSTGRES_URL unset and no server binaries"
)
def test_multiprocess_quick_writes_its_outputs_and_loses_no_row(tmp_path):
    # fewer calls than --quick's 2,000: the two configurations then fit the suite's time budget on a small machine
    run_experiment("multiprocess", tmp_path, "--calls", "300", timeout=115)
    summary = _columns(
        tmp_path / "multiprocess.csv",
        {
            "config",
            "processes",
            "concurrency",
            "calls",
            "calls_per_s",
            "log_rows_per_s",
            "db_cpu_s",
            "first_demote_s",
            "last_demote_s",
            "demote_spread_s",
            "demote_target_met",
            "same_order_share",
            "kendall_tau_mean",
            "calls_reported",
            "calls_rows",
            "attempts_reported",
            "attempts_rows",
            "feedback_reported",
            "feedback_rows",
            "lost_rows",
            "no_lost_rows",
            "per_router_rows_match",
        },
    )
    assert [r["config"] for r in summary] == ["4x16", "1x64"]
    for r in summary:
        assert int(r["calls_reported"]) == 300 == int(r["calls_rows"])
        assert int(r["attempts_reported"]) == int(r["attempts_rows"]) >= 300
        assert int(r["feedback_reported"]) == int(r["feedback_rows"])
        assert r["lost_rows"] == "0" and r["extra_rows"] == "0"
        assert r["no_lost_rows"] == "True" and r["per_router_rows_match"] == "True"
        assert r["unexpected_errors"] == "0"
    workers = _columns(
        tmp_path / "multiprocess_workers.csv",
        {"config", "worker", "calls", "attempts", "attempts_rows", "demote_s", "final_order"},
    )
    assert sorted((r["config"], r["worker"]) for r in workers) == [("1x64", "0")] + [("4x16", str(i)) for i in range(4)]
    assert all(r["attempts"] == r["attempts_rows"] for r in workers)
    _columns(tmp_path / "multiprocess_timeline.csv", {"config", "worker", "t_s", "calls", "degraded_primary_share"})
    _columns(
        tmp_path / "multiprocess_rows.csv",
        {"config", "t_s", "calls_rows", "attempts_rows", "feedback_rows", "rows_per_s"},
    )
    _columns(tmp_path / "multiprocess_outcomes.csv", {"config", "model", "phase", "outcome", "attempts"})
    assert (tmp_path / "multiprocess.png").stat().st_size > 0
    md = (tmp_path / "multiprocess.md").read_text(encoding="utf-8")
    assert "Quick smoke run" in md and "machine:" in md and "lost rows" in md
