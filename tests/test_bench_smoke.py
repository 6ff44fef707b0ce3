"""Smoke test of the benchmarks behind `make bench`: the quick runs work and write their files.

No timing is asserted: the numbers of a quick run on a shared machine mean nothing. The call
overhead benchmark needs LiteLLM (the `bench` extra) for its peer and is skipped without it;
the log-write benchmark runs on SQLite always, and on PostgreSQL where one can be had.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from helpers import run_experiment

from experiments.summary import collect, write_summary

pytestmark = pytest.mark.slow  # runs experiments

SUMMARY_COLUMNS = ["workload", "ours", "peer", "ratio", "target", "met?"]


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh))


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.timeout(180)  # most of it is importing LiteLLM; generous because a shared machine can be many times slower
def test_bench_overhead_quick_writes_its_results(tmp_path):
    pytest.importorskip("litellm")
    pytest.importorskip("matplotlib")
    run_experiment("bench_overhead", tmp_path, "--no-diagnose", timeout=170)
    for name in ("bench_overhead.csv", "bench_overhead_summary.csv", "bench_overhead.md", "bench_overhead.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    detail = _rows(tmp_path / "bench_overhead.csv")
    for column in ("mode", "contender", "calls", "p50_us", "p99_us", "added_p50_us", "ratio_to_direct", "cpu_us"):
        assert column in detail[0], column
    assert {(r["mode"], r["contender"]) for r in detail} == {
        (mode, name)
        for mode in ("sync", "async")
        for name in ("direct httpx", "ours static", "ours thompson", "LiteLLM static", "LiteLLM thompson")
    }
    assert _header(tmp_path / "bench_overhead_summary.csv") == SUMMARY_COLUMNS
    summary = _rows(tmp_path / "bench_overhead_summary.csv")
    assert len(summary) == 8 and all(r["met?"] in ("met", "MISSED") for r in summary)
    text = (tmp_path / "bench_overhead.md").read_text()
    assert "outside loopback refused during the run: 0" in text  # LiteLLM made no call off this machine


@pytest.mark.timeout(120)
def test_bench_store_quick_counts_every_row(tmp_path):
    # PostgreSQL only where one is given (CI): starting a private server would double the test's time
    run_experiment(
        "bench_store",
        tmp_path,
        "--backends",
        "sqlite,postgres" if os.environ.get("ZETA_TEST_POSTGRES_URL") else "sqlite",
    )
    for name in ("bench_store.csv", "bench_store_summary.csv", "bench_store.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = _rows(tmp_path / "bench_store.csv")
    for column in ("backend", "writer", "calls", "attempts", "attempts_per_s", "lost", "journaled"):
        assert column in rows[0], column
    sqlite = [r for r in rows if r["backend"] == "sqlite"]
    assert {r["writer"] for r in sqlite} == {
        "background writer",
        "naive, one transaction per call",
        "floor: driver executemany of tuples, no queue",
    }
    assert all(r["lost"] == "0" and r["journaled"] == "0" for r in rows)
    assert _header(tmp_path / "bench_store_summary.csv") == SUMMARY_COLUMNS


def test_summary_collects_the_headline_rows(tmp_path):
    """experiments.summary turns a headline table (ours or another engineer's shape) into SUMMARY.md rows."""
    (tmp_path / "a.md").write_text(
        "# A\n\n| workload | ours | peer | ratio (peer / ours, median) | target |\n|---|---|---|---|---|\n"
        "| w1 | 1 µs | 5 µs | 5 | met (>= 3x) |\n| w2 | 2 | 1 | 0.5 | MISSED (>= 3x) |\n\n- note\n"
    )
    (tmp_path / "b.md").write_text("# B\n\n| policy | regret |\n|---|---|\n| x | 1 |\n")
    (tmp_path / "b.csv").write_text("policy,regret\nx,1\n")
    rows, used, detail = collect(tmp_path)
    assert used == ["a.md"] and "b.md" in detail and "b.csv" in detail
    assert [r["met?"] for r in rows] == ["met", "MISSED"]
    assert rows[0]["target"] == ">= 3x" and rows[0]["ratio"] == "5 (peer / ours, median)"
    text = write_summary(tmp_path).read_text()
    assert "| workload | ours | peer | ratio | target | met? |" in text and "1 targets met, 1 missed" in text
