"""DR's reward models: cross-fitted cell means and a ridge over context features, on simulated logs of known value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from zeta_adaptive.replay import DM, DR, CellMeans, FeatureRidge, ReplayError, Uniform, from_frame, prepare

ACTIONS = 3


def simulated(seed: int, n: int = 3000) -> tuple[pd.DataFrame, float]:
    """A log whose logging policy leans on the context (softmax of x . theta) and whose click
    probability depends on the context and the action; and the uniform policy's true value on
    these contexts, the mean over rounds of the actions' mean click probability."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    logits = x @ np.array([[1.5, 0.0, -1.5], [0.0, 1.0, 0.0]])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    action = (rng.random((n, 1)) > p.cumsum(axis=1)).sum(axis=1)
    mu = 1 / (1 + np.exp(-(x @ np.array([[1.0, -1.0, 0.5], [0.5, 0.5, -1.0]]) + np.array([0.0, -0.5, 0.3]))))
    reward = (rng.random(n) < mu[np.arange(n), action]).astype(float)
    frame = pd.DataFrame({"a": action, "r": reward, "p": p[np.arange(n), action], "x0": x[:, 0], "x1": x[:, 1]})
    return frame, float(mu.mean())


def logged(frame: pd.DataFrame):
    return prepare(from_frame(frame, action="a", reward="r", propensity="p", features=["x0", "x1"]))


def test_dr_with_a_feature_model_is_unbiased_where_the_direct_method_is_not():
    """Over 20 logs, DR's mean error is within 3 standard errors of 0; DM on the same (context-blind
    cell means) is biased, because the logging policy chose by the context that drives the reward."""
    dr, dm = [], []
    for seed in range(20):
        frame, truth = simulated(seed)
        data = logged(frame)
        dr.append(DR(reward_model=FeatureRidge(folds=2, seed=seed)).estimate(data, Uniform()) - truth)
        dm.append(DM().estimate(data, Uniform()) - truth)
    dr_err, dm_err = np.array(dr), np.array(dm)
    assert abs(dr_err.mean()) < 3 * dr_err.std(ddof=1) / np.sqrt(len(dr_err))
    assert abs(dm_err.mean()) > 5 * dm_err.std(ddof=1) / np.sqrt(len(dm_err))
    frame, truth = simulated(99)
    assert DR(reward_model=FeatureRidge(folds=2)).estimate(logged(frame), Uniform()) == pytest.approx(truth, abs=0.05)


def test_drs_interval_refits_the_cross_fitted_model_and_covers_the_truth():
    covered = 0
    for seed in range(5):
        frame, truth = simulated(100 + seed, n=2000)
        lo, hi = DR(n_boot=100, seed=seed, reward_model=FeatureRidge(folds=2)).interval(logged(frame), Uniform())
        assert lo < hi
        covered += lo <= truth <= hi
    assert covered >= 4


def test_cross_fitting_predicts_each_round_from_the_other_folds():
    frame, _ = simulated(3, n=400)
    data = logged(frame)
    q, row = CellMeans(folds=2).predict(data)
    assert q.shape == (data.n, ACTIONS) and row.tolist() == list(range(data.n))
    # one cell, so a round's prediction is its fold's complement's shrunk action mean: it never sees the round
    fold = np.random.default_rng(np.random.SeedSequence([0, 7])).permutation(data.n) % 2
    other = (fold == 1) & (data.action == 0)
    mean = data.reward[fold == 1].mean()
    expected = (data.reward[other].sum() + mean) / (other.sum() + 1.0)
    assert q[fold == 0, 0] == pytest.approx(np.full((fold == 0).sum(), expected))
    q_in, cell = CellMeans().predict(data)
    assert q_in.shape == (1, ACTIONS) and (cell == 0).all()  # in-sample: the (cells, actions) table


def test_reward_model_options_and_features_are_checked():
    with pytest.raises(ReplayError, match="folds"):
        CellMeans(folds=0)
    with pytest.raises(ReplayError, match="folds"):
        FeatureRidge(folds=1)
    with pytest.raises(ReplayError, match="l2"):
        FeatureRidge(l2=0.0)
    frame, _ = simulated(4, n=50)
    frame["x1"] = frame["x1"].astype(object)
    frame.loc[3, "x1"] = "n/a"
    with pytest.raises(ReplayError, match="non-numeric feature"):
        from_frame(frame, action="a", reward="r", propensity="p", features=["x0", "x1"])
    kept = from_frame(frame, action="a", reward="r", propensity="p", features=["x0", "x1"], on_invalid="drop")
    assert len(kept) == 49 and prepare(kept).features.shape == (49, 2)
