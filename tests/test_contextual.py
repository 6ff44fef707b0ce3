"""Contextual policies: learning per prompt, exact propensities, delayed feedback, discounting, warm start."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
from in_process import fake_router
from scipy.special import ndtr

from zeta_adaptive import Featurizer, LinearThompsonPolicy, LinUCBPolicy, Router, make_policy
from zeta_adaptive._contextual import PendingContexts
from zeta_adaptive._policies import Objective

OBJ = Objective(w_latency=0.0)


def prompt(topic: str, i: int) -> str:
    return f"question {i} about {topic}: what follows from {topic} {i % 7}?"


def truth(text: str, a: str = "a", b: str = "b") -> dict[str, float]:
    """Model a is right on alpha questions, b on beta questions."""
    return {a: 0.9, b: 0.2} if "alpha" in text else {a: 0.2, b: 0.9}


@pytest.mark.parametrize("name", ["linear_thompson", "lin_ucb", "probit_thompson"])
def test_learns_which_model_suits_which_prompt(name):
    policy = make_policy(name, ["a", "b"], OBJ, seed=1)
    f = policy.featurizer
    rng = np.random.default_rng(0)
    for i in range(400):
        text = prompt("alpha" if rng.random() < 0.5 else "beta", i)
        x = f(text)
        model = policy.rank(None, x).primary
        policy.feedback(model, float(rng.random() < truth(text)[model]), x)
    right = 0
    for i in range(400, 500):
        text = prompt("alpha" if i % 2 else "beta", i)
        mean, _ = policy.predict(f(text))
        right += ("a" if mean[0] > mean[1] else "b") == max(truth(text), key=truth(text).get)
    assert right >= 95


def trained(seed: int = 0, name: str = "linear_thompson", rounds: int = 30) -> tuple[LinearThompsonPolicy, object]:
    # E[1{primary = m} / propensity] is P(m wins at least one draw of a batch): about 1 for every model
    # here with the default 64 draws (with 16, the least likely model wins none in about 10 % of batches)
    policy = make_policy(name, ["a", "b", "c"], OBJ, seed=seed, samples=64, explore=1.0)
    f = policy.featurizer
    for i in range(rounds):
        for model, acc in (("a", 0.8), ("b", 0.6), ("c", 0.7)):
            policy.update(model, i % 10 != 0 or model != "b", 0.1)
            policy.feedback(model, acc, f(prompt("alpha", i)))
    return policy, f(prompt("alpha", 99))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linear_thompson", "probit_thompson"])
def test_logged_propensity_is_the_exact_probability_of_the_primary(name):
    """If each logged propensity is P(primary | draws), then E[1{primary = m} / propensity] = 1 for every m
    the policy can choose, and the frequency of m matches the Gaussian posterior's probability."""
    # the probit posterior concentrates faster on these accuracies: fewer rounds keep b winning some draws of a batch
    policy, x = trained(name=name, rounds=30 if name == "linear_thompson" else 10)
    _mean, _var = policy.predict(x)
    n = 12_000
    weights = {m: 0.0 for m in policy.models}
    counts = {m: 0 for m in policy.models}
    for _ in range(n):
        r = policy.rank(None, x)
        assert 0.0 < r.propensity <= 1.0
        weights[r.primary] += 1.0 / r.propensity
        counts[r.primary] += 1
    for m in policy.models:
        assert weights[m] / n == pytest.approx(1.0, abs=0.12)
    # frequencies against a Monte Carlo of the posterior itself: success rates from their Beta
    # posteriors, accuracies as per-model parts plus one shared part
    gen = np.random.default_rng(5)
    m, v = policy._moments(x)
    size = 200_000
    z = gen.standard_normal((size, 4))
    accuracy = m[:3] + np.sqrt(v[:3]) * z[:, :3] + (m[3] + np.sqrt(v[3]) * z[:, 3:])
    if name == "probit_thompson":  # the draw is a latent score: its accuracy is the predictive probit
        accuracy = ndtr(accuracy / np.sqrt(1.0 + v[:3] + v[3]))
    success = gen.beta(policy.stats[1] + 1.0, policy.stats[0] - policy.stats[1] + 1.0, size=(size, 3))
    exact = np.bincount((success * accuracy).argmax(axis=1), minlength=3) / size
    for i, model in enumerate(policy.models):
        assert counts[model] / n == pytest.approx(exact[i], abs=4 * math.sqrt(exact[i] * (1 - exact[i]) / n) + 1e-3)


def test_lin_ucb_is_deterministic_with_propensity_one():
    policy = make_policy("lin_ucb", ["a", "b"], OBJ, seed=0)
    x = policy.featurizer("hello")
    policy.feedback("a", 1.0, x)
    ranks = {policy.rank(None, x) for _ in range(20)}
    assert len(ranks) == 1 and next(iter(ranks)).propensity == 1.0


def test_an_update_changes_only_the_model_and_shared_rows_at_the_prompt_slots_by_one_kalman_step():
    """The write-back lands at the learning model's and the shared rows, at the prompt's slots, and nowhere else."""
    policy = make_policy("lin_ucb", ["a", "b", "c"], OBJ, seed=0, idf=False, noise_var=0.2)
    x = policy.featurizer("what is the derivative of x squared, and why?")
    before = policy.table.copy()
    mean, var = policy._state(x)[5:7]
    policy.learn("b", 1.0, x)
    r, j = policy.rows, x.indices
    changed = np.argwhere(policy.table != before)
    assert set(changed[:, 0].tolist()) == {1, 3, r + 1, r + 3}  # model b's rows and the shared ones
    assert set(changed[:, 1].tolist()) <= set(j.tolist())
    scale = 1.0 / (0.2 + var[1] + var[3])
    for row in (1, 3):
        g = before[r + row, j] * x.values
        assert np.allclose(policy.table[row, j], before[row, j] + g * scale * (1.0 - mean[1] - mean[3]))
        assert np.allclose(policy.table[r + row, j], before[r + row, j] - g * g * scale)


def test_linear_thompson_batches_are_consecutive_column_blocks_of_one_draw_of_normals():
    """The contiguous batches hold the generator's stream as one (rows, 64 * samples) draw, a row of ones below,
    then the 64 batches' uniform picks of the column that ranks."""
    policy = make_policy("linear_thompson", ["a", "b"], OBJ, seed=5, samples=16)
    stream = np.random.default_rng(5)
    draws = [(stream.standard_normal((policy.rows, 64 * 16)), stream.integers(0, 16, 64)) for _ in range(2)]
    for b in range(64 + 1):  # past the buffer's end: the next draw of the stream refills it
        batch, u = policy._batch()
        normals, picks = draws[b // 64]
        b %= 64
        assert np.array_equal(batch[:-1], normals[:, b * 16 : (b + 1) * 16]) and (batch[-1] == 1.0).all()
        assert batch.flags.c_contiguous and u == picks[b]


def test_discount_widens_the_posterior_of_stale_weights_back_toward_the_prior():
    sticky = make_policy("linear_thompson", ["a", "b"], OBJ, seed=0)
    fading = make_policy("linear_thompson", ["a", "b"], OBJ, seed=0, discount=0.9)
    f = sticky.featurizer
    old, new = f("old topic words"), f("brand new other things")
    stale = np.setdiff1d(old.indices, new.indices)  # weights only the old prompts touch

    def precision(p):  # of model a's weights at the stale slots
        return 1.0 / p._block(stale)[p.rows]

    for p in (sticky, fading):
        for _ in range(20):
            p.feedback("a", 1.0, old)
    learned = {p: precision(p) for p in (sticky, fading)}
    for p in (sticky, fading):
        for _ in range(50):
            p.feedback("a", 0.0, new)
    prior = fading.prior_precision[0]
    np.testing.assert_allclose(precision(sticky), learned[sticky])  # no discount: nothing fades
    np.testing.assert_allclose(precision(fading), prior + (learned[fading] - prior) * 0.9**50)
    learned = learned[fading]
    assert np.all(learned > 1.1 * prior)


def test_idf_weighs_words_every_prompt_has_less():
    policy = make_policy("linear_thompson", ["a", "b"], OBJ, seed=0)
    plain = make_policy("linear_thompson", ["a", "b"], OBJ, seed=0, idf=False)
    f = policy.featurizer
    common, rare = f("answer"), f("zygote")
    slot = {name: int(x.indices[0]) for name, x in (("common", common), ("rare", rare))}
    for i in range(50):
        x = f(f"answer question {i}")
        policy.feedback("a", 1.0, x)
        plain.feedback("a", 1.0, x)
    j, v, h, *_ = policy._state(f("answer zygote"))
    hashed = dict(zip(j[:h].tolist(), v[:h].tolist(), strict=True))
    assert hashed[slot["rare"]] > 2 * hashed[slot["common"]]  # seen in every prompt vs in none
    assert v[:h] @ v[:h] == pytest.approx(1.0)  # still unit norm
    j, v, h, *_ = plain._state(f("answer zygote"))
    assert dict(zip(j[:h].tolist(), v[:h].tolist(), strict=True))[slot["rare"]] == pytest.approx(
        3**-0.5
    )  # two words and their bigram
    with pytest.raises(ValueError, match="idf"):
        make_policy("linear_thompson", ["a", "b"], OBJ, idf="no")


def test_pending_contexts_are_bounded_by_count_and_age():
    pending = PendingContexts(capacity=3, max_age_s=10.0)
    x = Featurizer(bits=6)("hi")
    for i in range(5):
        pending.put(f"c{i}", x, now=100.0 + i)
    assert len(pending) == 3 and pending.pop("c0", now=105.0) is None
    assert pending.pop("c3", now=105.0) is x
    assert pending.pop("c3", now=105.0) is None  # taken once
    assert pending.pop("c4", now=200.0) is None  # too old
    assert len(pending) == 0


def config(tmp_path, store: str | None = None, **route) -> dict:
    return {
        "store": store or f"sqlite:///{tmp_path}/x.db",
        "journal_dir": str(tmp_path / "journal"),
        "seed": 7,
        "objective": {"w_latency": 0.0},
        "breaker": {"consecutive_failures": 10_000, "min_calls": 10_000, "window": 10_000},
        "models": {
            "weak": {"base_url": "http://weak:8000/v1", "timeout_s": 1.0},
            "strong": {"base_url": "http://strong:8000/v1", "timeout_s": 1.0, "price_out_per_1k": 200.0},
        },
        "routes": {"qa": {"models": ["weak", "strong"], "policy": "linear_thompson", **route}},
    }


@pytest.mark.slow
def test_router_routes_per_prompt_with_delayed_feedback_and_logs_only_hashed_features(tmp_path):
    with fake_router(config(tmp_path)) as router:
        policy = router.policies["qa"]
        calls = []
        for i in range(60):
            text = prompt("alpha" if i % 2 else "beta", i)
            calls.append((text, router.chat("qa", [{"role": "user", "content": text}], features={"tenant": 1.0})))
        assert len(router.contexts) == 60
        for text, result in reversed(calls):  # feedback arrives later, in another order
            router.feedback(result.call_id, truth(text, "weak", "strong")[result.model])
        assert len(router.contexts) == 0 and policy.clock == 60
        rows = router.preferences("qa")
        assert set(rows.index) == {"weak", "strong"} and rows["n_rated"].sum() == 60
        router.flush()
    con = sqlite3.connect(str(tmp_path / "x.db"))
    try:
        logged = list(con.execute("SELECT call_id, space, features FROM call_features"))
        assert len(logged) == 60 and all(space == policy.featurizer.space for _, space, _ in logged)
        assert not any("alpha" in text or "question" in text for _, _, text in logged)
        assert con.execute("SELECT COUNT(*) FROM calls WHERE prompt IS NOT NULL").fetchone()[0] == 0
    finally:
        con.close()


def test_feedback_after_the_context_was_evicted_reads_the_logged_features(tmp_path):
    with fake_router(config(tmp_path)) as router:
        text = prompt("alpha", 1)
        result = router.chat("qa", [{"role": "user", "content": text}])
        router.flush()
        router.contexts = PendingContexts(capacity=1)  # a fresh (emptied) memory: the log must supply the features
        x = router.policies["qa"].featurizer(text)
        before = router.policies["qa"].predict(x)[0]
        router.feedback(result.call_id, 1.0)
        after = router.policies["qa"].predict(x)[0]
        i = router.policies["qa"].index[result.model]
        assert after[i] > before[i] + 0.05


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["linear_thompson", "probit_thompson"])
def test_warm_start_refits_the_linear_model_from_logged_features(store_url, tmp_path, policy):
    cfg = config(tmp_path, store=store_url, policy=policy)
    with fake_router(cfg) as live:
        for i in range(40):
            text = prompt("alpha" if i % 3 else "beta", i)
            result = live.chat("qa", [{"role": "user", "content": text}])
            live.feedback(result.call_id, truth(text, "weak", "strong")[result.model])
        live.flush()
        table = live.policies["qa"].table.copy()  # weight means and variances per slot
    with fake_router(cfg) as again:
        r = again.policies["qa"].rows
        np.testing.assert_allclose(again.policies["qa"].table[:r], table[:r], atol=1e-5)
        np.testing.assert_allclose(again.policies["qa"].table[r:], table[r:], rtol=1e-5)


def test_contextual_options_are_validated():
    from zeta_adaptive import ConfigError, load_config

    with pytest.raises(ConfigError):
        load_config(
            {
                "models": {"a": {"base_url": "http://a/v1"}},
                "routes": {"x": {"models": ["a"], "policy": "linear_thompson", "gap_var": -1.0}},
            }
        )
    with pytest.raises(ConfigError):
        load_config(
            {
                "models": {"a": {"base_url": "http://a/v1"}},
                "routes": {"x": {"models": ["a"], "policy": "lin_ucb", "samples": 32}},
            }
        )
    assert isinstance(make_policy("lin_ucb", ["a"], alpha=0.5), LinUCBPolicy)


@pytest.mark.integration
def test_linear_thompson_routes_end_to_end_over_the_loopback_fleet(tmp_path):
    from zeta_adaptive.simulate import Fleet, ModelSpec

    specs = [ModelSpec("weak", latency_s=0.001), ModelSpec("strong", latency_s=0.001)]
    with Fleet(specs, seed=0) as fleet:
        cfg = fleet.fleet_config(
            {"qa": ["weak", "strong"]}, seed=1, store=f"sqlite:///{tmp_path}/x.db", journal_dir=str(tmp_path / "j")
        )
        cfg["routes"]["qa"].update(policy="linear_thompson", budget_per_call=0.5)
        cfg["models"]["strong"]["price_out_per_1k"] = 1000.0 / 32  # 32 answer tokens cost 1
        with Router(cfg) as router:
            for i in range(40):
                text = prompt("alpha" if i % 2 else "beta", i)
                result = router.chat("qa", [{"role": "user", "content": text}], max_tokens=32)
                router.feedback(result.call_id, truth(text, "weak", "strong")[result.model])
            rows = router.preferences("qa")
            assert router.policies["qa"].clock == 40 and fleet.requests("weak") + fleet.requests("strong") == 40
    assert (rows["budget_calls"] == 40).all() and 0.0 <= rows["spend_per_call"].iloc[0] <= 1.0
