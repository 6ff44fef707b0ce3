"""Smoke runs of the per-prompt routing experiments on a slice of the real RouteLLM data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from experiments import routellm_mmlu, routellm_screen

pytestmark = pytest.mark.slow  # runs experiments


@pytest.mark.skipif(not routellm_mmlu.DATA.exists(), reason="the RouteLLM data is not shipped here")
def test_routellm_mmlu_smoke(tmp_path):
    routellm_mmlu.main(
        [
            "--orders",
            "2",
            "--budgets",
            "0.3",
            "0.7",
            "--limit",
            "240",
            "--subjects-half",
            "0",
            "--workers",
            "1",
            "--policies",
            "linear_thompson",
            "probit_thompson",
            "thompson_one",
            "--set",
            "explore=0.2",
            "feature_bits=12",
            "budget_rate=0.01",
            "--router",
            "--router-limit",
            "15",
            "--out",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "routellm_mmlu.json").read_text())
    assert set(result["online"]) == {"linear_thompson", "probit_thompson", "thompson_one"}
    assert "explore=0.2" in result["command"]
    frame = routellm_mmlu.load()
    half = np.random.default_rng(100).permutation(sorted(set(frame["subject"])))[:28]
    questions = frame[frame["subject"].isin(half)].iloc[:240]  # the first 240 of half the subjects
    assert result["questions"] == 240 and result["acc_weak"] == pytest.approx(questions["weak"].mean())
    for summary in result["online"].values():
        assert summary["orders"] == 2 and summary["budget_error"] < 0.1
        assert 0.0 <= summary["apgr_mean"] <= 1.5
    assert result["router"][0]["questions"] == 15
    assert (tmp_path / "routellm_mmlu_pgr.png").stat().st_size > 0 and "APGR" in (
        tmp_path / "routellm_mmlu.md"
    ).read_text()


def test_metrics_match_routellm_definitions():
    # a random router's straight line scores 0.5 with CPT(x) = x
    points = [(s, 0.6 + 0.2 * s) for s in (0.1, 0.5, 0.9)]
    m = routellm_mmlu.metrics(points, 0.6, 0.8)
    assert m["apgr"] == pytest.approx(0.5) and m["cpt50"] == pytest.approx(50.0) and m["cpt80"] == pytest.approx(80.0)


@pytest.mark.skipif(not routellm_mmlu.DATA.exists(), reason="the RouteLLM data is not shipped here")
@pytest.mark.parametrize("model", ["diag", "probit"])
def test_routellm_screen_runs_the_online_protocol(tmp_path, monkeypatch, model):
    monkeypatch.setattr(routellm_screen, "CACHE", tmp_path / "features.npz")
    frame = routellm_mmlu.load().iloc[:400].reset_index(drop=True)
    csr = routellm_screen.features(frame, bits=12)
    runs = [routellm_screen.run(frame, csr, 0, model=model, budgets=(0.2, 0.8)) for _ in range(2)]
    assert runs[0] == runs[1]  # seeded: the same order gives the same run
    shares = [share for share, _ in runs[0]["points"]]
    assert shares == pytest.approx([0.2, 0.8], abs=0.1)  # the pacer holds each budget's share
    assert 0.0 <= runs[0]["apgr"] <= 1.5


def _benchmark_file(path, n: int = 600) -> None:
    """A benchmark in RouteLLM's raw response format (model-named true/false columns, no subjects): the strong
    model alone answers the prompts that mention a theorem, both answer the others."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        hard = bool(rng.random() < 0.4)
        topic = "prove the theorem about primes" if hard else "add the two numbers"
        rows.append(
            {
                "prompt": f"Question {i}: {topic} {rng.integers(100)} and {rng.integers(100)}. Answer:",
                "mistralai/Mixtral-8x7B-Instruct-v0.1": not hard,
                "gpt-4-1106-preview": True,
            }
        )
    pd.DataFrame(rows).to_csv(path, index=False)


def test_routellm_experiment_runs_on_another_benchmark_file(tmp_path):
    """--data takes any file in RouteLLM's format: one task type, its own output names, and the router learns the gap."""
    data = tmp_path / "gsm_like.csv"
    _benchmark_file(data)
    argv = [
        "--data",
        str(data),
        "--weak-column",
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "--strong-column",
        "gpt-4-1106-preview",
        "--orders",
        "2",
        "--budgets",
        "0.2",
        "0.5",
        "0.8",
        "--workers",
        "1",
        "--policies",
        "linear_thompson",
        "thompson_subjects",
        "--set",
        "feature_bits=12",
        "--out",
        str(tmp_path),
    ]
    routellm_mmlu.main(argv)
    result = json.loads((tmp_path / "routellm_gsm_like.json").read_text())
    assert set(result["online"]) == {"linear_thompson"}  # no subjects: the per-subject policy is skipped
    assert result["questions"] == 600 and result["published"] == {}
    assert result["acc_strong"] == 1.0 and 0.5 < result["acc_weak"] < 0.7
    assert result["online"]["linear_thompson"]["apgr_mean"] > 0.7  # a random router scores 0.5
    assert (tmp_path / "routellm_gsm_like_pgr.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="no column 'gpt4'"):
        routellm_mmlu.main([*argv[:4], "--strong-column", "gpt4", "--out", str(tmp_path)])
