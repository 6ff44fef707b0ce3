"""The demo end to end on a small run, and the analysis summary it prints."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from zeta_adaptive.analysis import Log, load_log, model_summary
from zeta_adaptive.cli import main
from zeta_adaptive.demo import DEGRADED_MODEL, run_demo


@pytest.mark.slow
@pytest.mark.integration
def test_demo_routes_logs_and_reports(tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    report = run_demo(calls=400, store=url, seed=3, concurrency=8, progress=False)
    log = load_log(url)
    assert len(log.calls) == 400
    assert len(log.attempts) >= 400
    assert 0 < len(log.feedback) < 400  # some answers are never rated; embeddings never are
    assert set(report.preferences.index.unique("task_type")) == {"embedding", "simple", "code", "reasoning"}
    text = report.render()
    assert "learned order" in text and DEGRADED_MODEL in text and str(tmp_path) in text
    degraded = log.attempts[(log.attempts["model"] == DEGRADED_MODEL) & (log.attempts["ts"] > log.calls["ts"].median())]
    assert (degraded["outcome"] != "ok").any()  # the degradation happened and was logged


@pytest.mark.slow
@pytest.mark.integration
def test_cli_demo(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli-demo.db'}"
    result = CliRunner().invoke(main, ["demo", "--calls", "120", "--db", url, "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "Routed 120 calls" in result.output


def test_model_summary_on_a_hand_built_log():
    calls = pd.DataFrame({"task_type": ["code", "code", "code"], "model": ["a", "b", None]})
    attempts = pd.DataFrame(
        {
            "task_type": ["code"] * 5,
            "model": ["a", "b", "a", "b", "a"],
            "outcome": ["ok", "ok", "server_error", "timeout", "timeout"],
            "latency_s": [0.1, 0.3, 0.5, 1.0, 1.0],
            "cost": [1.0, 2.0, 0.0, 0.0, 0.0],
        }
    )
    feedback = pd.DataFrame({"task_type": ["code", "code"], "model": ["a", "b"], "accuracy": [0.8, 0.4]})
    s = model_summary(Log(calls, attempts, feedback)).set_index("model")
    assert s.loc["a", "attempts"] == 3 and s.loc["b", "attempts"] == 2
    assert s.loc["a", "success_rate"] == 1 / 3 and s.loc["b", "success_rate"] == 0.5
    assert s.loc["a", "p50_latency_s"] == 0.1  # only successful attempts count for latency
    assert s.loc["a", "share"] == 0.5 and s.loc["b", "share"] == 0.5
    assert s.loc["a", "accuracy"] == 0.8
    assert model_summary(Log(calls.iloc[:0], attempts.iloc[:0], feedback.iloc[:0])).empty


@pytest.mark.slow
@pytest.mark.integration
def test_a_second_demo_starts_a_fresh_log(tmp_path):
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    run_demo(calls=40, store=url, seed=1, concurrency=4, progress=False)
    run_demo(calls=30, store=url, seed=2, concurrency=4, progress=False)
    assert len(load_log(url).calls) == 30
    assert (tmp_path / "twice.db.prev").exists()
    run_demo(calls=20, store=url, seed=3, concurrency=4, progress=False, fresh=False)
    assert len(load_log(url).calls) == 50
