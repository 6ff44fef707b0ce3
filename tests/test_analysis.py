"""The analysis functions on two real SQLite logs: a hand-written one whose every number is known,
and a small demo run over the simulated loopback fleet; then the plots and the HTML report."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.figure import Figure

from zeta_adaptive import analysis as za
from zeta_adaptive._exceptions import ZetaError
from zeta_adaptive._store import Store
from zeta_adaptive.cli import main
from zeta_adaptive.demo import DEGRADED_MODEL, run_demo
from zeta_adaptive.report import render_report, write_report
from zeta_adaptive.simulate import ModelSpec

T0 = 1_700_000_000.0

# (call_id, seconds after T0, task_type, ranking, [(model, outcome, latency_s, cost), ...], accuracy fed back)
CALLS = [
    ("c0", 0, "code", ["a", "b"], [("a", "ok", 0.1, 1.0)], 0.9),
    ("c1", 1, "code", ["a", "b"], [("a", "server_error", 2.0, 0.0), ("b", "ok", 0.2, 2.0)], None),
    ("c2", 2, "code", ["b", "a"], [("b", "ok", 0.3, 0.5)], 0.5),
    ("c3", 3, "emb", ["e"], [("e", "ok", 0.01, 0.0)], None),
    ("c4", 4, "code", ["b", "a"], [("b", "timeout", 2.0, 0.0), ("a", "timeout", 2.0, 0.0)], None),
    ("c5", 5, "code", ["b", "a"], [("b", "ok", 0.4, 0.5)], 0.7),
    ("c6", 6, "emb", ["e"], [("e", "ok", 0.02, 0.0)], None),
    ("c7", 10, "code", ["b", "a"], [("b", "ok", 0.5, 0.5)], None),
]


def _write(url: str) -> None:
    """Write CALLS through the real Store, as the router would, in shuffled order."""
    store = Store(url)
    for call_id, t, task, ranking, tries, accuracy in reversed(CALLS):
        answered = [m for m, outcome, _, _ in tries if outcome == "ok"]
        store.put(
            "calls",
            {
                "call_id": call_id,
                "ts": T0 + t,
                "task_type": task,
                "policy": "thompson",
                "propensity": 0.5,
                "ranking": json.dumps(ranking),
                "model": answered[0] if answered else None,
                "outcome": "ok" if answered else "failed",
                "latency_s": sum(x[2] for x in tries),
                "tokens_in": 10,
                "tokens_out": 20 if answered else 0,
                "cost": sum(x[3] for x in tries),
                "n_attempts": len(tries),
            },
        )
        for i, (model, outcome, latency, cost) in enumerate(tries):
            store.put(
                "attempts",
                {
                    "call_id": call_id,
                    "idx": i,
                    "ts": T0 + t + 0.01 * i,
                    "task_type": task,
                    "model": model,
                    "outcome": outcome,
                    "status": 200 if outcome == "ok" else None,
                    "latency_s": latency,
                    "tokens_in": 10,
                    "tokens_out": 20 if outcome == "ok" else 0,
                    "cost": cost,
                    "error": None,
                },
            )
        if accuracy is not None:
            store.put(
                "feedback",
                {"call_id": call_id, "ts": T0 + t + 1, "task_type": task, "model": answered[0], "accuracy": accuracy},
            )
    store.close()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> za.Log:
    url = f"sqlite:///{tmp_path_factory.mktemp('small') / 'log.db'}"
    _write(url)
    return za.load_log(url)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[str, za.Log]:
    """One small demo run: 400 calls over the loopback fleet, coder-7b degrading at call 200.

    One call at a time: the calls, the policy's draws, the fleet's answers and the feedback then come
    in the seed's order, so the log is the same run after run (with 8 at a time the order, and with it
    what Thompson sampling learned before the degradation, changed from run to run)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('demo') / 'demo.db'}"
    run_demo(calls=400, store=url, seed=5, concurrency=1, progress=False)
    return url, za.load_log(url)


def _row(frame: pd.DataFrame, **where) -> pd.Series:
    mask = np.logical_and.reduce([frame[k] == v for k, v in where.items()])
    rows = frame[mask]
    assert len(rows) == 1, rows
    return rows.iloc[0]


# -- windows ----------------------------------------------------------------------------------------


def test_suggest_bins_is_even_and_bounded():
    assert [za.suggest_bins(n) for n in (0, 300, 1000, 2000, 10**6)] == [6, 6, 10, 20, 20]


def test_windows_by_call_and_by_time(small):
    w = za.with_windows(small.calls, 2)
    assert w["call_id"].tolist() == [c[0] for c in CALLS]  # time order, not insertion order
    assert w["call_index"].tolist() == list(range(8))
    assert w["window"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert w[["start", "end"]].drop_duplicates().to_numpy().tolist() == [[0, 4], [4, 8]]
    t = za.with_windows(small.calls, 2, by="time")  # 10 s cut in two: the call at 10 s joins the last window
    assert t["window"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert t[["start", "end"]].drop_duplicates().to_numpy().tolist() == [[0, 5], [5, 10]]
    with pytest.raises(ValueError, match="by must be"):
        za.with_windows(small.calls, 2, by="hour")
    with pytest.raises(ValueError, match="bins"):
        za.with_windows(small.calls, 0)


def test_between_keeps_calls_with_their_attempts_and_feedback(small):
    part = za.between(small, 2, 5)
    assert sorted(part.calls["call_id"]) == ["c2", "c3", "c4"]
    assert sorted(part.attempts["call_id"]) == ["c2", "c3", "c4", "c4"]
    assert part.feedback["call_id"].tolist() == ["c2"]


# -- over time --------------------------------------------------------------------------------------


def test_traffic_share_of_attempts_and_of_answers(small):
    s = za.traffic_share(small, 2)
    assert _row(s, task_type="code", window=0, model="a")["share"] == 0.5  # c0 a, c1 a+b, c2 b
    assert _row(s, task_type="code", window=1, model="b")["n"] == 3  # c4 b+a, c5 b, c7 b
    assert _row(s, task_type="emb", window=1, model="e")["share"] == 1.0
    assert set(s[s["task_type"] == "emb"]["model"]) == {"e"}  # no rows for models a task never used
    a = za.traffic_share(small, 2, of="answers")
    assert _row(a, task_type="code", window=0, model="b")["share"] == pytest.approx(2 / 3)
    assert _row(a, task_type="code", window=1, model="a")["n"] == 0  # listed, with no answer
    with pytest.raises(ValueError, match="of must be"):
        za.traffic_share(small, 2, of="calls")


def test_call_rates(small):
    r = za.call_rates(small, 2)
    w0, w1 = _row(r, task_type="code", window=0), _row(r, task_type="code", window=1)
    assert (w0["calls"], w0["success_rate"], w0["fallback_rate"]) == (3, 1.0, pytest.approx(1 / 3))
    assert (w1["calls"], w1["failure_rate"], w1["fallback_rate"]) == (3, pytest.approx(1 / 3), pytest.approx(1 / 3))


def test_model_failure_rates(small):
    r = za.model_failure_rates(small, 2)
    assert _row(r, model="a", window=0)["failure_rate"] == 0.5
    assert _row(r, model="a", window=1)[["attempts", "failure_rate"]].tolist() == [1, 1.0]
    assert _row(r, model="b", window=1)["failure_rate"] == pytest.approx(1 / 3)
    assert r.loc[r["model"] == "e", "failure_rate"].eq(0).all()


# -- latency, cost, feedback ------------------------------------------------------------------------


def test_latency_quantiles(small):
    q = za.latency_quantiles(small, (0.5, 0.9)).set_index("model")
    assert list(q.columns) == ["n", "mean", "p50", "p90"]
    assert q.loc["b", "n"] == 4 and q.loc["b", "p50"] == pytest.approx(0.35)  # successful: .2 .3 .4 .5
    assert q.loc["a", "mean"] == pytest.approx(0.1)
    every = za.latency_quantiles(small, (0.5,), successful_only=False).set_index("model")
    assert every.loc["b", "p50"] == pytest.approx(0.4)  # the 2 s timeout counts now


def test_latency_distribution(small):
    d = za.latency_distribution(small, bins=10)
    assert d.groupby("model")["count"].sum().to_dict() == {"a": 1, "b": 4, "e": 2}
    assert d.groupby("model")["fraction"].sum().to_numpy() == pytest.approx([1, 1, 1])
    edges = d[d["model"] == "b"]
    assert edges["left"].min() == pytest.approx(0.01) and edges["right"].max() == pytest.approx(0.5)
    assert (edges["right"] > edges["left"]).all() and len(edges) == 10
    split = za.latency_distribution(small, bins=10, split_at=4)
    assert split.groupby(["model", "phase"])["count"].sum().to_dict() == {
        ("a", "before"): 1,
        ("b", "after"): 2,
        ("b", "before"): 2,
        ("e", "after"): 1,
        ("e", "before"): 1,
    }


def test_cost_per_call(small):
    c = za.cost_per_call(small).set_index("task_type")
    assert c.loc["code", "calls"] == 6 and c.loc["code", "answered"] == 5
    assert c.loc["code", "cost"] == pytest.approx(4.5)
    assert c.loc["code", "cost_per_call"] == pytest.approx(0.75)
    assert c.loc["code", "cost_per_answer"] == pytest.approx(0.9)
    assert c.loc["code", "attempts_per_call"] == pytest.approx(8 / 6)
    assert c.loc["emb", "tokens_out_per_call"] == 20


def test_cost_over_time(small):
    """Windows of the code calls c0-c2 and c4, c5, c7 (costs 1, 2, 0.5 | 0, 0.5, 0.5): each window's mean and the running one."""
    c = za.cost_over_time(small, 2).set_index(["task_type", "window"])
    assert c.loc[("code", 0), "calls"] == 3 and c.loc[("code", 1), "calls"] == 3
    assert c.loc[("code", 0), "cost_per_call"] == pytest.approx(3.5 / 3)
    assert c.loc[("code", 1), "cost_per_call"] == pytest.approx(1.0 / 3)
    assert c.loc[("code", 0), "running_cost_per_call"] == pytest.approx(3.5 / 3)
    assert c.loc[("code", 1), "running_cost_per_call"] == pytest.approx(4.5 / 6)  # cost_per_call's total
    assert (c.loc["emb", "cost_per_call"] == 0).all()


def test_feedback_coverage(small):
    f = za.feedback_coverage(small).set_index(["task_type", "model"])
    assert f.loc[("code", "a")].tolist() == [1, 1, 1.0, 0.9]
    assert f.loc[("code", "b"), ["answered", "rated", "coverage"]].tolist() == [4, 2, 0.5]
    assert f.loc[("code", "b"), "accuracy"] == pytest.approx(0.6)
    assert f.loc[("emb", "e"), "coverage"] == 0 and np.isnan(f.loc[("emb", "e"), "accuracy"])


# -- the learned ordering ---------------------------------------------------------------------------


def test_rank_positions(small):
    r = za.rank_positions(small.calls)
    assert len(r) == 6 * 2 + 2
    assert _row(r, call_id="c2", model="a")["position"] == 1
    assert _row(r, call_id="c3", model="e")["position"] == 0


def test_ordering_over_time_and_learned_order(small):
    o = za.ordering_over_time(small, 2)
    assert _row(o, task_type="code", window=0, model="a")[["primary_share", "mean_position"]].tolist() == pytest.approx(
        [2 / 3, 1 / 3]
    )
    assert _row(o, task_type="code", window=1, model="b")["primary_share"] == 1.0
    order = za.learned_order(o)
    assert _row(order, task_type="code", window=0)[["order", "primary"]].tolist() == ["a > b", "a"]
    assert _row(order, task_type="code", window=1)[["order", "primary", "primary_share"]].tolist() == [
        "b > a",
        "b",
        1.0,
    ]
    assert _row(order, task_type="emb", window=1)["order"] == "e"


def test_ordering_counts_a_model_left_out_as_last():
    """The router leaves a cooling-down model out of the ranking; it must not look well placed."""
    calls = pd.DataFrame(
        {
            "call_id": ["x0", "x1", "x2"],
            "ts": [0.0, 1.0, 2.0],
            "task_type": "t",
            "ranking": [json.dumps(["x", "y", "z"]), json.dumps(["y", "z"]), json.dumps(["z", "y", "x"])],
        }
    )
    o = za.ordering_over_time(za.Log(calls, pd.DataFrame(), pd.DataFrame()), 1).set_index("model")
    assert o.loc["x", ["primary_share", "ranked_share", "mean_position"]].tolist() == pytest.approx(
        [1 / 3, 2 / 3, 4 / 3]
    )
    assert o.loc["y", ["ranked_share", "mean_position"]].tolist() == pytest.approx([1, 2 / 3])
    assert o["primary_share"].sum() == pytest.approx(1.0)


# -- regret -----------------------------------------------------------------------------------------


def test_cumulative_regret_with_a_constant_truth(small):
    r = za.cumulative_regret(small, {("code", "a"): 0.9, ("code", "b"): 0.6, ("emb", "e"): 0.5})
    code = r[r["task_type"] == "code"]
    assert code["primary"].tolist() == ["a", "a", "b", "b", "b", "b"]
    assert code["regret"].tolist() == pytest.approx([0, 0, 0.3, 0.3, 0.3, 0.3])
    assert code["cumulative_regret"].iloc[-1] == pytest.approx(1.2)
    assert code["task_call"].tolist() == list(range(6))
    assert r.loc[r["task_type"] == "emb", "cumulative_regret"].eq(0).all()


def test_cumulative_regret_with_a_truth_that_changes(small):
    truth = pd.DataFrame(
        {
            "task_type": ["code", "code", "emb", "code"],
            "model": ["a", "b", "e", "b"],
            "reward": [0.9, 0.6, 0.5, 0.95],
            "from_call": [0, 0, 0, 4],
        }
    )  # from call 4 on only b changes; a keeps 0.9, so b (0.95) is now the best
    r = za.cumulative_regret(small, truth)
    code = r[r["task_type"] == "code"]
    assert code["best"].tolist() == pytest.approx([0.9, 0.9, 0.9, 0.95, 0.95, 0.95])
    assert code["regret"].tolist() == pytest.approx([0, 0, 0.3, 0, 0, 0])


def test_true_rewards_follow_a_piecewise_truth(small):
    truth = pd.DataFrame(
        {
            "task_type": ["code", "code", "code", "emb"],
            "model": ["a", "b", "b", "e"],
            "reward": [0.9, 0.6, 0.95, 0.5],
            "from_call": [2, 0, 4, 0],
        }
    )
    r = za.true_rewards(small, truth).set_index(["call_id", "model"])["reward"]
    assert len(r) == 6 * 2 + 2  # every call, with every model its task type has a truth for
    assert np.isnan(r[("c0", "a")]) and r[("c2", "a")] == 0.9  # a's truth starts at call 2
    assert r[("c2", "b")] == 0.6 and r[("c5", "b")] == 0.95 and r[("c6", "e")] == 0.5


def test_cumulative_regret_refuses_a_missing_truth(small):
    with pytest.raises(ValueError, match="no true reward"):
        za.cumulative_regret(small, {("code", "a"): 0.9, ("code", "b"): 0.6})


def test_truth_from_specs_and_demo_truth():
    specs = [ModelSpec("x", error_rate=0.2, rate_limit_rate=0.1, accuracy={"t": 0.9}), ModelSpec("y", down=True)]
    t = za.truth_from_specs(specs, {"t": ["x", "y"]}, from_call=7).set_index("model")
    assert t.loc["x", ["success", "accuracy", "reward", "from_call"]].tolist() == pytest.approx([0.7, 0.9, 0.63, 7])
    assert t.loc["y", "reward"] == 0 and t.loc["y", "accuracy"] == 0.7  # down: never answers
    d = za.demo_truth(100).set_index(["task_type", "model", "from_call"])["reward"]
    assert d[("code", DEGRADED_MODEL, 0)] == pytest.approx(0.85)
    assert d[("code", DEGRADED_MODEL, 50)] == pytest.approx(0.425)
    assert d[("code", "reasoner-14b", 50)] == pytest.approx(0.8)


# -- on a real demo log -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.integration
def test_on_the_demo_log(demo):
    _, log = demo
    n, half = len(log.calls), len(log.calls) // 2
    share = za.traffic_share(log, 4)
    assert share.groupby(["task_type", "window"])["share"].sum().to_numpy() == pytest.approx(1.0)
    fails = za.model_failure_rates(log, 2).set_index(["model", "window"])["failure_rate"]
    assert fails[(DEGRADED_MODEL, 1)] > fails[(DEGRADED_MODEL, 0)]  # the degradation, seen
    # no other model fails like it (a loaded machine may cost a healthy model the odd timeout)
    assert (fails.drop(DEGRADED_MODEL, level="model") < fails[(DEGRADED_MODEL, 1)] / 2).all()
    rates = za.call_rates(log, 2).groupby("window")["fallback_rate"].max()
    assert rates[1] > rates[0]
    order = za.ordering_over_time(log, 2).set_index(["task_type", "window", "model"])
    assert order["primary_share"].groupby(["task_type", "window"]).sum().to_numpy() == pytest.approx(1.0)
    coder = order.loc[("code", slice(None), DEGRADED_MODEL)]
    assert coder["primary_share"].iloc[1] < coder["primary_share"].iloc[0]  # put first less often once degraded
    regret = za.cumulative_regret(log, za.demo_truth(n))
    assert len(regret) == n and (regret["regret"] >= 0).all()
    assert (regret.groupby("task_type")["cumulative_regret"].diff().dropna() >= 0).all()
    final = regret.groupby("task_type")["cumulative_regret"].last()
    assert final["embedding"] == 0 and final["code"] > 0
    after = regret[(regret["task_type"] == "code") & (regret["call_index"] >= half)]
    assert after["regret"].max() == pytest.approx(0.8 - 0.425)  # coder-7b first after it degraded
    coverage = za.feedback_coverage(log).set_index(["task_type", "model"])
    cover = coverage["coverage"]
    assert cover["embedding"].eq(0).all()
    chat = coverage.drop("embedding")
    busy = chat[chat["answered"] >= 20]  # 80% of answers are rated; a model with few answers can stray
    assert len(busy) > 0 and busy["coverage"].between(0.5, 1).all()
    assert 0.65 <= chat["rated"].sum() / chat["answered"].sum() <= 0.95
    quantiles = za.latency_quantiles(log)
    assert (quantiles["p50"] <= quantiles["p90"]).all() and (quantiles["p90"] <= quantiles["p99"]).all()


# -- plots and report -------------------------------------------------------------------------------


@pytest.mark.slow
def test_importing_the_package_does_not_import_matplotlib():
    code = "import sys, zeta_adaptive, zeta_adaptive.analysis, zeta_adaptive.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_plots_return_figures_with_their_panels(small, tmp_path):
    figures = {
        "traffic": (za.plot_traffic_share(za.traffic_share(small, 2), mark=4), 2),  # code, emb
        "latency": (za.plot_latency(za.latency_distribution(small, split_at=4)), 3),  # a, b, e
        "failures": (za.plot_failure_rates(za.model_failure_rates(small, 2), za.call_rates(small, 2), mark=4), 2),
        "ordering": (za.plot_ordering(za.ordering_over_time(small, 2)), 1),  # emb has one model: left out
        "cost": (za.plot_cost_over_time(za.cost_over_time(small, 2), budgets={"code": 0.7}), 2),
        "regret": (
            za.plot_regret(za.cumulative_regret(small, {("code", "a"): 0.9, ("code", "b"): 0.6, ("emb", "e"): 0.5})),
            1,
        ),
    }
    for name, (fig, panels) in figures.items():
        assert isinstance(fig, Figure), name
        assert sum(ax.get_visible() for ax in fig.axes) == panels, name
        assert all(ax.has_data() for ax in fig.axes if ax.get_visible()), name
    code = figures["cost"][0].axes[0]
    assert code.get_title() == "code" and any(
        line.get_label() == "budget_per_call" and line.get_ydata()[0] == 0.7 for line in code.get_lines()
    )
    path = tmp_path / "failures.png"
    figures["failures"][0].savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_policy_estimates_draws_intervals_and_truth():
    estimates = pd.DataFrame(
        {
            "task_type": ["t", "t", "t", "u"],
            "policy": ["static", "static", "uniform", "static"],
            "estimator": ["ips", "dr", "ips", "ips"],
            "value": [0.5, 0.6, 0.4, 0.7],
            "ci_low": [0.4, 0.55, 0.3, 0.6],
            "ci_high": [0.6, 0.65, 0.5, 0.8],
        }
    )
    truth = pd.DataFrame({"task_type": ["t", "u"], "policy": ["static", "static"], "value": [0.58, 0.75]})
    fig = za.plot_policy_estimates(estimates, truth)
    t, u = fig.axes
    assert (t.get_title(), u.get_title()) == ("t", "u")
    assert [label.get_text() for label in t.get_yticklabels()] == ["static", "uniform"]
    assert len(t.containers) == 2 and len(u.containers) == 1  # one error bar series per estimator
    assert t.collections[-1].get_offsets().tolist() == [[0.58, 0.0]]  # the truth, on the static row
    colour = {e: c.lines[0].get_color() for e, c in zip(["ips", "dr"], t.containers)}
    other = za.plot_policy_estimates(estimates[estimates["estimator"] == "dr"])
    assert other.axes[0].containers[0].lines[0].get_color() == colour["dr"]  # same estimator, same colour


@pytest.mark.slow
@pytest.mark.integration
def test_cli_report_renders_every_plot_and_table(demo, small, tmp_path):
    url, log = demo
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", "--db", url, "--html", str(out), "--demo-truth"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    page = out.read_text()
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}">', page)) == 5
    assert page.count("<h2>") == 7 and page.count("<table") == 7
    assert "Cumulative regret" in page and f"{len(log.calls)} calls" in page and url in page
    plain = render_report(small)
    assert plain.count("<img") == 5 and "Cumulative regret" not in plain  # no truth, no regret
    assert "Spend per call over time" in plain  # the small log's code calls are paid
    missing = CliRunner().invoke(main, ["report", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--html", str(out)])
    assert missing.exit_code == 1 and "no log at" in missing.output


def test_report_refuses_what_it_cannot_render(small, tmp_path):
    with pytest.raises(ZetaError, match="no log at"):
        write_report(f"sqlite:///{tmp_path / 'missing.db'}", tmp_path / "r.html")
    assert not (tmp_path / "missing.db").exists()  # looking did not create a log
    with pytest.raises(ZetaError, match="no calls"):
        render_report(za.Log(small.calls.iloc[:0], small.attempts.iloc[:0], small.feedback.iloc[:0]))
    url = f"sqlite:///{tmp_path / 'other.db'}"
    _write(url)
    with pytest.raises(ZetaError, match="no true reward"):  # not a demo log: no silent regret of zero
        write_report(url, tmp_path / "r.html", demo=True)


def test_report_draws_a_routes_budget_from_its_preferences(small, monkeypatch):
    """With preferences that carry a route's budget_per_call, the spend section draws it (the real plot, watched)."""
    drawn = []

    def watched(cost, **kwargs):
        drawn.append(kwargs["budgets"])
        return plot(cost, **kwargs)

    plot = za.plot_cost_over_time
    monkeypatch.setattr(za, "plot_cost_over_time", watched)
    prefs = pd.DataFrame(
        {
            "task_type": ["code", "code", "emb"],
            "model": ["a", "b", "e"],
            "rank": [1, 2, 1],
            "budget_per_call": [0.7, 0.7, None],
        }
    ).set_index(["task_type", "model"])
    page = render_report(small, preferences=prefs)
    assert "Spend per call over time" in page and "budget_per_call" in page
    assert page.count("<img") == render_report(small).count("<img")  # the same plots, the budget drawn in one
    assert drawn == [{"code": 0.7}, None]  # emb has no budget; without preferences, none
