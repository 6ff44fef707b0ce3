"""Router.preferences(): what the policies believe, as a DataFrame that joins with the analysis frames."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from zeta_adaptive import AllModelsFailed, Router, UnknownTaskType
from zeta_adaptive import analysis as za
from zeta_adaptive._results import PREFERENCE_COLUMNS, preference_records
from zeta_adaptive.report import write_report
from zeta_adaptive.simulate import Fleet, ModelSpec


@contextmanager
def _run(tmp_path, calls: int = 60) -> Iterator[Router]:
    """A router over a loopback fleet where ``good`` answers and ``bad`` fails half the time, after some calls."""
    specs = [
        ModelSpec("good", latency_s=0.002, accuracy={"simple": 0.9, "code": 0.9}),
        ModelSpec("bad", latency_s=0.002, error_rate=0.5, accuracy={"simple": 0.5, "code": 0.5}),
    ]
    with Fleet(specs, seed=0) as fleet:
        cfg = fleet.fleet_config(
            {"simple": ["bad", "good"], "code": ["bad", "good"]},
            seed=1,
            store=f"sqlite:///{tmp_path}/p.db",
            journal_dir=str(tmp_path / "j"),
        )
        cfg["routes"]["simple"]["policy"] = "thompson"
        cfg["routes"]["code"].update(policy="ucb1", budget_per_call=0.5)
        cfg["models"]["good"]["price_out_per_1k"] = 1.0
        with Router(cfg) as router:
            for i in range(calls):
                task = "simple" if i % 2 else "code"
                try:
                    result = router.chat(task, [{"role": "user", "content": f"q{i}"}], max_tokens=8)
                except AllModelsFailed:
                    continue
                router.feedback(result.call_id, 0.9 if result.model == "good" else 0.5)
            yield router


def test_one_route_is_indexed_by_model_best_rank_first(tmp_path):
    with _run(tmp_path) as router:
        prefs = router.preferences("simple")
        with pytest.raises(UnknownTaskType):
            router.preferences("poetry")
    assert prefs.index.name == "model" and set(prefs.index) == {"good", "bad"}
    assert list(prefs.columns) == list(PREFERENCE_COLUMNS)
    assert prefs["rank"].tolist() == [1, 2] and prefs.index[0] == "good"
    assert prefs["p_best"].sum() == pytest.approx(1.0) and prefs.loc["good", "p_best"] > 0.5
    assert (prefs["utility_low"] <= prefs["utility_high"]).all()
    assert prefs.loc["good", "success_rate"] > prefs.loc["bad", "success_rate"]
    assert prefs["n"].sum() >= 30 and (prefs["n"] == prefs["n_effective"]).all()  # undiscounted: the same
    assert prefs.loc["good", "latency_p50_s"] <= prefs.loc["good", "latency_p95_s"]
    assert set(prefs["breaker"]) <= {"closed", "open", "half_open"} and (prefs["in_flight"] == 0).all()


def test_all_routes_share_one_frame_that_joins_with_the_analysis(tmp_path):
    with _run(tmp_path) as router:
        prefs = router.preferences()
        router.flush()
        log = za.load_log(router.store)
        with pytest.warns(DeprecationWarning, match="DataFrame"):
            old = router.preferences_dict()
    assert prefs.index.names == ["task_type", "model"]
    assert list(prefs.index.unique("task_type")) == ["simple", "code"]
    assert prefs.loc["code", "budget_per_call"].eq(0.5).all() and prefs.loc["simple", "budget_per_call"].isna().all()
    joined = prefs.reset_index().merge(za.model_summary(log), on=["task_type", "model"], how="inner")
    assert len(joined) == 4 and (joined["n"] == joined["attempts"]).all()  # the policy saw every logged attempt
    assert {row["model"] for row in old["code"]} == {"good", "bad"} and "score" in old["code"][0]
    records = preference_records(prefs)
    assert [r["model"] for r in records["code"]] == list(prefs.loc["code"].index)
    assert all(v is None or not (isinstance(v, float) and np.isnan(v)) for r in records["simple"] for v in r.values())


def test_reading_preferences_leaves_routing_alone(tmp_path):
    """The same seeded run routes alike whether or not preferences() is read between calls."""
    orders = []
    for read in (False, True):
        (tmp_path / str(read)).mkdir()
        with _run(tmp_path / str(read), calls=0) as router:
            seen = []
            for i in range(30):
                if read:
                    with warnings.catch_warnings():
                        warnings.simplefilter("error")  # the current API warns about nothing
                        router.preferences()
                seen.append(router.chat("simple", [{"role": "user", "content": f"q{i}"}], max_tokens=8).ranking)
        orders.append(seen)
    assert orders[0] == orders[1]


@pytest.mark.slow  # renders the report with matplotlib (about 10 s under load)
def test_the_html_report_shows_what_the_policies_believe(tmp_path):
    with _run(tmp_path) as router:
        router.flush()
        config = router.config
        expected = router.preferences()
    page = write_report(config.store, tmp_path / "r.html", config=config).read_text()
    section = page[page.index("What the policies believe now") :]
    assert "p_best" in section and "utility_low" in section
    for task, model in expected.index:  # every route's every model, rebuilt from the log
        assert f"<td>{task}</td>" in section and f"<td>{model}</td>" in section
