"""The probit per-prompt policy: its assumed-density step, calibration, determinism, bounded memory, options.

Learning per prompt, exact propensities and warm start through the router are checked with the
other contextual policies in test_contextual.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import ndtr

from zeta_adaptive import ConfigError, ProbitThompsonPolicy, load_config, make_policy
from zeta_adaptive._policies import Objective
from zeta_adaptive._probit import probit_step

OBJ = Objective(w_latency=0.0)


def prompt(topic: str, i: int) -> str:
    return f"question {i} about {topic}: what follows from {topic} {i % 7}?"


def truth(text: str, a: str = "a", b: str = "b") -> dict[str, float]:
    """Model a is right on alpha questions, b on beta questions."""
    return {a: 0.9, b: 0.2} if "alpha" in text else {a: 0.2, b: 0.9}


@pytest.mark.parametrize(
    ("label", "mean", "var"), [(1.0, 0.3, 0.8), (0.0, 0.3, 0.8), (1.0, -2.0, 2.5), (0.0, 1.5, 0.1)]
)
def test_probit_step_gives_the_moments_of_the_exact_posterior(label, mean, var):
    """N(f; mean, var) * Phi(+-f), integrated on a fine grid: the step's mean and variance are its moments."""
    f = np.linspace(mean - 12 * math.sqrt(var), mean + 12 * math.sqrt(var), 200_001)
    density = np.exp(-0.5 * (f - mean) ** 2 / var) * ndtr(f if label else -f)
    density /= density.sum()
    exact_mean = density @ f
    exact_var = density @ (f - exact_mean) ** 2
    step, shrink = probit_step(label, mean, var)
    assert mean + var * step == pytest.approx(exact_mean, abs=1e-6)
    assert var - var * var * shrink == pytest.approx(exact_var, abs=1e-6)


def test_probit_step_is_finite_far_in_the_tail_and_mixes_fractional_accuracies():
    step, shrink = probit_step(1.0, -60.0, 1.0)  # a right answer where the model was sure of a wrong one
    assert math.isfinite(step) and step > 0 and 0 < shrink <= 1.0
    half = probit_step(0.5, 0.2, 0.5)
    one, zero = probit_step(1.0, 0.2, 0.5), probit_step(0.0, 0.2, 0.5)
    assert half == pytest.approx((0.5 * one[0] + 0.5 * zero[0], 0.5 * one[1] + 0.5 * zero[1]))


def test_predicted_accuracy_is_calibrated():
    policy = make_policy("probit_thompson", ["a", "b"], OBJ, seed=0)
    x = policy.featurizer("one recurring prompt")
    outcomes = np.random.default_rng(3).random(3000) < 0.8
    for right in outcomes:
        policy.feedback("a", float(right), x)
    mean, var = policy.predict(x)
    assert mean[0] == pytest.approx(outcomes.mean(), abs=0.02)
    assert mean[1] == pytest.approx(
        ndtr(0.0), abs=0.25
    )  # b never rated: near the prior's 1/2, only shared weights moved
    assert var[0] < var[1]


def test_deterministic_for_a_seed_and_bounded():
    def run(seed: int) -> tuple[list[tuple[str, float]], ProbitThompsonPolicy]:
        policy = make_policy("probit_thompson", ["a", "b"], OBJ, seed=seed, feature_bits=10)
        assert isinstance(policy, ProbitThompsonPolicy)
        f, out = policy.featurizer, []
        for i in range(1500):  # distinct prompts: the model's memory must not grow with them
            text = prompt("alpha" if i % 3 else "beta", i) + f" word{i}"
            r = policy.rank(None, f(text))
            out.append((r.primary, r.propensity))
            policy.feedback(r.primary, truth(text)[r.primary], f(text))
        return out, policy

    (first, p1), (again, p2), (other, _) = run(4), run(4), run(5)
    assert first == again and first != other
    np.testing.assert_array_equal(p1.table, p2.table)
    assert p1.table.shape == (6, p1.featurizer.size)  # fixed: rows x slots, whatever the number of prompts


def test_options_and_config():
    with pytest.raises(ValueError, match="noise_var"):
        make_policy("probit_thompson", ["a", "b"], noise_var=0.1)
    cfg = load_config(
        {
            "models": {"a": {"base_url": "http://a/v1"}, "b": {"base_url": "http://b/v1"}},
            "routes": {"x": {"models": ["a", "b"], "policy": "probit_thompson", "prior_var": 1.0, "explore": 0.1}},
        }
    )
    assert cfg.routes["x"].policy == "probit_thompson"
    with pytest.raises(ConfigError):
        load_config(
            {
                "models": {"a": {"base_url": "http://a/v1"}},
                "routes": {"x": {"models": ["a"], "policy": "probit_thompson", "noise_var": 0.1}},
            }
        )
