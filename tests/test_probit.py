"""The probit per-prompt policy: its assumed-density step, learning, calibration, exact propensities, determinism, the router."""

from __future__ import annotations

import math

import numpy as np
import pytest
from in_process import fake_router
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


def test_learns_which_model_suits_which_prompt():
    policy = make_policy("probit_thompson", ["a", "b"], OBJ, seed=1)
    f = policy.featurizer
    rng = np.random.default_rng(0)
    for i in range(400):
        text = prompt("alpha" if rng.random() < 0.5 else "beta", i)
        x = f(text)
        model = policy.rank(None, x).primary
        policy.update(model, True, 0.1)
        policy.feedback(model, float(rng.random() < truth(text)[model]), x)
    right = 0
    for i in range(400, 500):
        text = prompt("alpha" if i % 2 else "beta", i)
        mean, _ = policy.predict(f(text))
        right += ("a" if mean[0] > mean[1] else "b") == max(truth(text), key=truth(text).get)
    assert right >= 95


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


def test_logged_propensity_is_the_exact_probability_of_the_primary():
    """E[1{primary = m} / propensity] = 1 for every model, and frequencies match a Monte Carlo of the posterior."""
    policy = make_policy("probit_thompson", ["a", "b", "c"], OBJ, seed=2, explore=1.0)
    f = policy.featurizer
    for i in range(30):
        for model, acc in (("a", 0.8), ("b", 0.6), ("c", 0.7)):
            policy.update(model, i % 10 != 0 or model != "b", 0.1)
            policy.feedback(model, acc, f(prompt("alpha", i)))
    x = f(prompt("alpha", 99))
    n = 6000
    weights = dict.fromkeys(policy.models, 0.0)
    counts = dict.fromkeys(policy.models, 0)
    for _ in range(n):
        r = policy.rank(None, x)
        assert 0.0 < r.propensity <= 1.0
        weights[r.primary] += 1.0 / r.propensity
        counts[r.primary] += 1
    for m in policy.models:
        assert weights[m] / n == pytest.approx(1.0, abs=0.12)
    gen = np.random.default_rng(5)
    m, v = policy._state(x)[-2:]
    size = 200_000
    z = gen.standard_normal((size, 4))
    latent = m[:3] + np.sqrt(v[:3]) * z[:, :3] + (m[3] + np.sqrt(v[3]) * z[:, 3:])
    accuracy = ndtr(latent / np.sqrt(1.0 + v[:3] + v[3]))
    success = gen.beta(policy.stats[1] + 1.0, policy.stats[0] - policy.stats[1] + 1.0, size=(size, 3))
    exact = np.bincount((success * accuracy).argmax(axis=1), minlength=3) / size
    for i, model in enumerate(policy.models):
        assert counts[model] / n == pytest.approx(exact[i], abs=4 * math.sqrt(exact[i] * (1 - exact[i]) / n) + 2e-3)
    shares = policy.context_probabilities([x], draws=20_000)[0]  # the same posterior, drawn by the policy itself
    np.testing.assert_allclose(shares, exact, atol=0.02)


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


def test_router_learns_per_prompt_and_warm_starts_the_probit_model(tmp_path):
    cfg = {
        "store": f"sqlite:///{tmp_path}/x.db",
        "journal_dir": str(tmp_path / "journal"),
        "seed": 7,
        "objective": {"w_latency": 0.0},
        "models": {"weak": {"base_url": "http://weak:8000/v1"}, "strong": {"base_url": "http://strong:8000/v1"}},
        "routes": {"qa": {"models": ["weak", "strong"], "policy": "probit_thompson"}},
    }
    with fake_router(cfg) as live:
        for i in range(40):
            text = prompt("alpha" if i % 3 else "beta", i)
            result = live.chat("qa", [{"role": "user", "content": text}])
            live.feedback(result.call_id, truth(text, "weak", "strong")[result.model])
        live.flush()
        policy = live.policies["qa"]
        assert isinstance(policy, ProbitThompsonPolicy) and policy.clock == 40
        table = policy.table.copy()
    with fake_router(cfg) as again:
        r = again.policies["qa"].rows
        np.testing.assert_allclose(again.policies["qa"].table[:r], table[:r], atol=1e-5)
        np.testing.assert_allclose(again.policies["qa"].table[r:], table[r:], rtol=1e-5)
