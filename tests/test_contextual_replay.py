"""Contextual off-policy evaluation: IPS, SNIPS and DR recover a frozen target's known value from a log."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
from in_process import fake_router

from zeta_adaptive import make_policy
from zeta_adaptive._exceptions import ReplayError
from zeta_adaptive._policies import Objective
from zeta_adaptive.replay.contextual import (
    ContextualIPS,
    ContextualLog,
    ContextualSNIPS,
    action_probabilities,
    evaluate,
    load_contextual,
)

OBJ = Objective(w_latency=0.0)
MEANS = {"alpha": (0.9, 0.3), "beta": (0.3, 0.8)}  # accuracy of models a, b per topic


def topic_prompt(rng: np.random.Generator) -> tuple[str, str]:
    topic = "alpha" if rng.random() < 0.5 else "beta"
    return topic, f"{topic} question number {rng.integers(1000)} about {topic} things"


@pytest.mark.slow
def test_ips_snips_and_dr_recover_the_value_of_a_frozen_target_from_a_log():
    rng = np.random.default_rng(0)
    target = make_policy("linear_thompson", ["a", "b"], OBJ, seed=1, feature_bits=8, explore=1.0)
    f = target.featurizer
    for _ in range(40):  # a partly trained target: it prefers the right model, not always
        topic, text = topic_prompt(rng)
        x = f(text)
        for i, m in enumerate(("a", "b")):
            target.feedback(m, float(rng.random() < MEANS[topic][i]), x)
    logger = make_policy("random", ["a", "b"], OBJ, seed=2)
    features, actions, props, rewards, topics = [], [], [], [], []
    for _ in range(1500):
        topic, text = topic_prompt(rng)
        x = f(text)
        r = logger.rank()
        a = logger.index[r.primary]
        reward = float(rng.random() < MEANS[topic][a])
        features.append(x), actions.append(a), props.append(r.propensity), rewards.append(reward), topics.append(topic)
    log = ContextualLog(features, np.array(actions), np.array(props), np.array(rewards), ("a", "b"), f.size)
    pi = action_probabilities(target, features, draws=2000)
    truth = float(np.mean([pi[i] @ np.array(MEANS[t]) for i, t in enumerate(topics)]))
    table = evaluate(log, pi, n_boot=40, seed=3).set_index("estimator")
    for name in ("ips", "snips", "dr"):
        assert table.loc[name, "estimate"] == pytest.approx(truth, abs=0.05), name
    for name in ("snips", "dr"):
        assert table.loc[name, "low"] - 0.01 <= truth <= table.loc[name, "high"] + 0.01, name
    # each estimator on its own gives the table's numbers
    assert ContextualIPS(n_boot=40, seed=3).interval(log, pi) == (table.loc["ips", "low"], table.loc["ips", "high"])
    assert ContextualSNIPS(seed=3).estimate(log, pi) == table.loc["snips", "estimate"]


def test_lin_ucb_targets_are_deterministic_and_bad_logs_raise():
    target = make_policy("lin_ucb", ["a", "b"], OBJ, seed=0, feature_bits=8)
    x = target.featurizer("hello")
    pi = action_probabilities(target, [x, x])
    assert set(pi.ravel()) == {0.0, 1.0} and np.all(pi.sum(axis=1) == 1.0)
    with pytest.raises(ReplayError):
        ContextualLog([x], np.array([0]), np.array([0.0]), np.array([1.0]), ("a", "b"), target.featurizer.size)
    log = ContextualLog([x], np.array([0]), np.array([0.5]), np.array([1.0]), ("a", "b"), target.featurizer.size)
    with pytest.raises(ReplayError):
        evaluate(log, np.ones((2, 2)))


def test_the_router_log_loads_as_a_contextual_log(tmp_path):
    config = {
        "store": f"sqlite:///{tmp_path}/x.db",
        "journal_dir": str(tmp_path / "j"),
        "seed": 1,
        "objective": {"w_latency": 0.0},
        "models": {"a": {"base_url": "http://a/v1"}, "b": {"base_url": "http://b/v1"}},
        "routes": {"qa": {"models": ["a", "b"], "policy": "linear_thompson", "feature_bits": 8}},
    }
    rng = np.random.default_rng(0)
    with fake_router(config) as router:
        for _ in range(30):
            topic, text = topic_prompt(rng)
            result = router.chat("qa", [{"role": "user", "content": text}])
            router.feedback(result.call_id, MEANS[topic][0 if result.model == "a" else 1])
        router.flush()
        policy = router.policies["qa"]
        log = load_contextual(router.store, "qa", policy.models, policy.featurizer.space, policy.featurizer.size)
    assert len(log.features) == 30 and np.all((log.propensities > 0) & (log.propensities <= 1))
    assert set(np.unique(log.rewards)) <= {0.3, 0.8, 0.9}


def test_the_old_module_name_still_works_and_warns():
    sys.modules.pop("zeta_adaptive.contextual_replay", None)
    with pytest.warns(DeprecationWarning, match=r"zeta_adaptive\.replay\.contextual"):
        old = importlib.import_module("zeta_adaptive.contextual_replay")
    assert old.evaluate is evaluate and old.ContextualLog is ContextualLog
