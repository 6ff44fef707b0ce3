"""The fast decision paths decide exactly as the vectorised formulas they replaced.

UCB1 and KL-UCB compute their index in plain Python (KL-UCB by Newton's method, warm-started from
the previous decision), Thompson sampling reuses one Ranking per draw of its batch. Each is checked
against a reference written here the old way (numpy over every model, KL-UCB by bisection), on
the same statistics and, for Thompson, the same random stream.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zeta_adaptive import Objective, Ranking
from zeta_adaptive._policies import (
    ACC_N,
    ACC_SUM,
    COST_SUM,
    LAT_N,
    LAT_SUM,
    SUCC,
    N,
    ThompsonPolicy,
    kl_ucb_bound,
)
from zeta_adaptive._registry import make_policy

SETTINGS = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# -- references: the formulas as they were, vectorised over the models ---------------------------


def _empirical(policy, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = policy.stats[:, idx]
    n = np.maximum(s[N], 1e-12)
    acc = (policy.stats[ACC_SUM] + 1.0) / (policy.stats[ACC_N] + 2.0) if policy.stats[ACC_N].any() else 1.0
    acc = acc[idx] if isinstance(acc, np.ndarray) else acc
    served = s[LAT_N] > 0
    latency = np.divide(s[LAT_SUM], s[LAT_N], out=np.zeros(len(idx)), where=served)
    cost = np.divide(s[COST_SUM], s[LAT_N], out=np.zeros(len(idx)), where=served)
    penalty = policy.objective.w_latency * latency + policy.objective.w_cost * cost
    return np.clip(s[SUCC] / n * acc, 0.0, 1.0), penalty


def ucb1_index(policy, idx: np.ndarray) -> np.ndarray:
    mean, penalty = _empirical(policy, idx)
    n = np.maximum(policy.stats[N, idx], 1e-12)
    total = max(float(policy.stats[N].sum()), 1.0)
    return mean - penalty + policy.c * np.sqrt(2.0 * math.log(max(total, 1.0 + 1e-9)) / n)


def kl_bernoulli(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    q = np.clip(q, 1e-15, 1 - 1e-15)
    return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))


def bisection_bound(mean: np.ndarray, budget: np.ndarray, steps: int = 60) -> np.ndarray:
    """The largest q with KL(mean, q) <= budget by bisection (60 halvings: exact to the float)."""
    lo, hi = np.array(mean, dtype=float), np.ones_like(mean, dtype=float)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        inside = kl_bernoulli(mean, mid) <= budget
        lo = np.where(inside, mid, lo)
        hi = np.where(inside, hi, mid)
    return lo


def kl_ucb_index(policy, idx: np.ndarray) -> np.ndarray:
    mean, penalty = _empirical(policy, idx)
    n = np.maximum(policy.stats[N, idx], 1e-12)
    total = max(float(policy.stats[N].sum()), math.e)
    budget = (math.log(total) + policy.c * math.log(max(math.log(total), 1.0))) / n
    return bisection_bound(mean, budget) - penalty


def reference_order(policy, index, idx: np.ndarray) -> np.ndarray:
    untried = policy.stats[N, idx] <= 0
    values = np.where(untried, np.inf, index(policy, idx))
    return idx[np.argsort(-values, kind="stable")], values


# -- histories ---------------------------------------------------------------------------------------

attempt = st.tuples(
    st.just("attempt"),
    st.integers(0, 7),
    st.booleans(),
    st.floats(0.0, 20.0, allow_nan=False),
    st.floats(0.0, 2.0, allow_nan=False),
)
rating = st.tuples(st.just("feedback"), st.integers(0, 7), st.floats(0.0, 1.0))


def play(policy, history) -> None:
    models = policy.models
    for ev in history:
        if ev[0] == "attempt":
            policy.update(models[ev[1] % len(models)], ev[2], ev[3], ev[4])
        else:
            policy.feedback(models[ev[1] % len(models)], ev[2])


def eligible_subsets(k: int, rng: np.random.Generator) -> list[list[str] | None]:
    models = [f"m{i}" for i in range(k)]
    subsets: list[list[str] | None] = [None]
    for _ in range(3):
        size = int(rng.integers(1, k + 1))
        subsets.append([models[i] for i in rng.permutation(k)[:size]])
    return subsets


@SETTINGS
@given(
    k=st.integers(1, 8),
    history=st.lists(st.one_of(attempt, rating), max_size=80),
    discount=st.sampled_from([1.0, 0.97]),
    c=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    w_latency=st.sampled_from([0.0, 0.1, 1.0]),
    seed=st.integers(0, 1000),
)
def test_ucb1_ranks_exactly_as_the_vectorised_formula(k, history, discount, c, w_latency, seed):
    policy = make_policy(
        "ucb1", [f"m{i}" for i in range(k)], Objective(w_latency=w_latency, w_cost=0.5), discount=discount, c=c
    )
    play(policy, history)
    for eligible in eligible_subsets(k, np.random.default_rng(seed)):
        idx = policy._eligible(eligible)
        order, values = reference_order(policy, ucb1_index, idx)
        ranking = policy.rank(eligible)
        assert ranking.order == tuple(policy.models[i] for i in order), values
        assert ranking.propensity == 1.0


def _clear_gaps(values: np.ndarray, order: np.ndarray, idx: np.ndarray, gap: float) -> bool:
    """Whether the reference's consecutive index values differ by more than ``gap`` (no near-tie)."""
    ranked = values[[list(idx).index(i) for i in order]]
    finite = ranked[np.isfinite(ranked)]
    return bool(np.all(np.abs(np.diff(finite)) > gap) or len(finite) < 2)


@SETTINGS
@given(
    k=st.integers(1, 8),
    history=st.lists(st.one_of(attempt, rating), max_size=80),
    discount=st.sampled_from([1.0, 0.97]),
    c=st.sampled_from([0.0, 3.0]),
    seed=st.integers(0, 1000),
)
@pytest.mark.slow
def test_kl_ucb_ranks_as_bisection_on_the_same_statistics(k, history, discount, c, seed):
    """Same order as a 60-step bisection whenever the indices are not within 1e-8 of each other
    (the old 16-step bisection was exact to 2**-16 only); equal statistics tie in configured order."""
    policy = make_policy(
        "kl_ucb", [f"m{i}" for i in range(k)], Objective(w_latency=0.1, w_cost=0.5), discount=discount, c=c
    )
    checked = 0
    for step in range(0, len(history) + 1, 10):  # decisions between the updates exercise the warm starts
        play(policy, history[max(0, step - 10) : step])
        for eligible in eligible_subsets(k, np.random.default_rng([seed, step])):
            idx = policy._eligible(eligible)
            order, values = reference_order(policy, kl_ucb_index, idx)
            ranking = policy.rank(eligible)
            if _clear_gaps(values, order, idx, 1e-8):
                assert ranking.order == tuple(policy.models[i] for i in order), values
                checked += 1
    assert checked > 0


def test_kl_ucb_warm_started_index_equals_a_cold_computation():
    """After many decisions (each warm-starting Newton from the last roots), a fresh policy given
    the same statistics computes the same ranks and the same bounds to 1e-9."""
    rng = np.random.default_rng(5)
    models = [f"m{i}" for i in range(5)]
    live = make_policy("kl_ucb", models)
    probs = [0.3, 0.5, 0.55, 0.6, 0.7]
    for _ in range(2000):
        model = live.rank().primary
        live.update(model, bool(rng.random() < probs[live.index[model]]), 0.4)
    fresh = make_policy("kl_ucb", models)
    fresh.stats[:] = live.stats
    assert live.rank() == fresh.rank()
    warm = sorted(live._now.values())
    cold = sorted(fresh._now.values())
    assert len(warm) == len(cold) == 5
    np.testing.assert_allclose([b[0] for b in warm], [b[0] for b in cold], rtol=0, atol=1e-9)
    assert live._last, "the live policy must have had roots to start from"


def test_kl_ucb_models_with_equal_statistics_keep_their_configured_order():
    policy = make_policy("kl_ucb", ["a", "b", "c", "d"], Objective(w_latency=0.0))
    for _ in range(3):
        for model, ok in (("d", True), ("c", False), ("b", True), ("a", True)):
            policy.update(model, ok, 0.5)
    # a, b and d have equal statistics; c is worse
    assert policy.rank().order == ("a", "b", "d", "c")
    policy.update("c", True, 0.5)  # warm starts now differ by history; the tie must still hold
    assert policy.rank().order[:3] == ("a", "b", "d")


# -- the KL bound itself ---------------------------------------------------------------------------

CORNERS = [0.0, 1e-12, 1e-9, 1e-4, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1 - 1e-6, 1 - 1e-12, 1.0]
BUDGETS = [1e-9, 1e-6, 1e-4, 0.003, 0.05, 0.3, 1.0, 3.0, 30.0, 1e4]


@pytest.mark.parametrize("p", CORNERS)
def test_kl_bound_matches_bisection_to_1e9_on_corners(p):
    budgets = np.array(BUDGETS)
    want = bisection_bound(np.full(len(budgets), p), budgets)
    got = np.array([kl_ucb_bound(p, float(b)) for b in budgets])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert np.all(got >= p) and np.all(got <= 1.0)
    assert np.all(np.diff(got) >= 0), "the bound grows with the budget"


@settings(max_examples=300, deadline=None, database=None)
@given(p=st.floats(0.0, 1.0), log_budget=st.floats(-12.0, 6.0))
@pytest.mark.slow
def test_kl_bound_matches_bisection_to_1e6(p, log_budget):
    budget = 10.0**log_budget
    want = float(bisection_bound(np.array([p]), np.array([budget]))[0])
    assert abs(kl_ucb_bound(p, budget) - want) < 1e-6


def test_kl_bound_from_a_nearby_start_is_the_same():
    """Started from a nearby root, or from the end of the tangent at it (the starts the KL-UCB policy
    gives), the bound equals the cold result to 1e-9."""
    from zeta_adaptive._policies import _kl_ucb, _tangent

    for p in (1e-6, 0.2, 0.5, 0.8, 0.999):
        for budget in (1e-5, 0.01, 0.4, 5.0):
            cold, x = _kl_ucb(p, budget)
            assert x is not None and abs(-math.expm1(-x) - cold) < 1e-15
            for factor in (1 + 1e-9, 1 - 1e-7, 0.999, 1.001, 0.5, 2.0):
                near_q, near_x = _kl_ucb(p, budget * factor)
                assert near_x is not None
                tangent_end = near_x + (budget - budget * factor) * _tangent(p, near_q)[0]
                assert tangent_end >= x - 1e-12, (p, budget, factor)  # h is convex: the tangent ends above the root
                for start in (near_x, tangent_end):
                    assert abs(_kl_ucb(p, budget, start)[0] - cold) < 1e-9, (p, budget, factor, start)


def test_kl_ucb_extrapolations_do_not_drift():
    """A model left alone for many decisions (its mean and count fixed, the total count growing)
    keeps a bound equal to a cold computation: the tangent windows never build on each other."""
    policy = make_policy("kl_ucb", ["a", "b"], Objective(w_latency=0.0), c=0.0)
    for k in range(400):
        policy.update("a", k % 50 < 31, 0.1, 0.0)  # mean 0.62 over 400 attempts
    seen = set()
    for step in range(20_000):
        policy.update("b", step % 2 == 0, 0.1, 0.0)
        policy.rank()
        if step % 7 == 0:
            total = 400.0 + step + 1
            cold = kl_ucb_bound(0.62, math.log(total) / 400.0)
            assert abs(policy._entry[0][0] - cold) < 1e-9, step
            seen.add(policy._entry[0][2])  # the window the bound came from
    assert len(seen) > 5  # the windows moved on as the total count grew


def test_kl_bound_edges():
    assert kl_ucb_bound(0.4, 0.0) == 0.4
    assert kl_ucb_bound(1.0, 2.0) == 1.0
    assert kl_ucb_bound(0.0, 2.0) == pytest.approx(1 - math.exp(-2.0), abs=1e-15)
    assert kl_ucb_bound(0.5, 1e6) == 1.0


# -- Thompson: the memoised Rankings are the ones the batch gives ----------------------------------


class BatchReference(ThompsonPolicy):
    """Thompson's rank as it was: sort the batch for the eligible models at every decision."""

    def rank(self, eligible=None):
        idx = self._eligible(eligible)
        batch = self._current_batch()
        pos = np.argsort(-batch[:, idx], axis=1, kind="stable")
        wins = np.bincount(pos[:, 0], minlength=len(idx)) / self.samples
        j = int(self.rng.random() * self.samples)
        order = idx[pos[j]]
        return Ranking(tuple(self.models[i] for i in order), float(wins[pos[j][0]]))


@pytest.mark.parametrize("w_latency", [0.0, 0.1])
@pytest.mark.slow
def test_thompson_decisions_and_propensities_are_unchanged(w_latency):
    models = [f"m{i}" for i in range(4)]
    objective = Objective(w_latency=w_latency)
    fast = make_policy("thompson", models, objective, seed=11, samples=64, max_lag=4)
    slow = BatchReference(models, objective=objective, seed=11, samples=64, max_lag=4)
    rng = np.random.default_rng(3)
    subsets = [None, ["m2", "m0"], ["m3"], ["m1", "m2", "m3"]]
    probs = [0.4, 0.6, 0.5, 0.7]
    for t in range(1500):
        eligible = subsets[t % len(subsets)] if t % 3 == 0 else None
        a, b = fast.rank(eligible), slow.rank(eligible)
        assert a == b, t
        ok = bool(rng.random() < probs[fast.index[a.primary]])
        latency = float(rng.lognormal(-1.0, 0.3))
        fast.update(a.primary, ok, latency)
        slow.update(b.primary, ok, latency)
        if t % 7 == 0:
            fast.feedback(a.primary, 0.8)
            slow.feedback(b.primary, 0.8)
    np.testing.assert_array_equal(fast.stats, slow.stats)


def test_thompson_reuses_one_ranking_per_draw_until_the_batch_changes():
    policy = ThompsonPolicy(["a", "b", "c"], seed=1, samples=16)
    first = [policy.rank() for _ in range(400)]
    assert len({id(r) for r in first}) <= 16  # one object per draw of the batch, at most
    assert len({id(r) for r in first}) >= 10  # 400 uniform picks of 16 draws reach nearly all of them
    policy.update("a", True, 0.3)  # statistics changed: the next decision redraws and rebuilds
    after = [policy.rank() for _ in range(50)]
    assert not {id(r) for r in after} & {id(r) for r in first}


@pytest.mark.parametrize("name", ["ucb1", "kl_ucb", "thompson", "epsilon_greedy"])
def test_policies_pickle_and_keep_learning(name):
    """update() writes through a memoryview of ``stats``; a pickled copy gets its own view."""
    import pickle

    policy = make_policy(name, ["a", "b", "c"], seed=4)
    play(policy, [("attempt", 0, True, 0.3, 0.01), ("attempt", 1, False, 1.0, 0.0), ("feedback", 0, 0.7)])
    copy = pickle.loads(pickle.dumps(policy))
    np.testing.assert_array_equal(copy.stats, policy.stats)
    copy.update("c", True, np.float64(0.2), 1)
    copy.feedback("c", np.float64(0.5))
    assert copy.stats[N, 2] == 1.0 and copy.stats[COST_SUM, 2] == 1.0 and copy.stats[ACC_SUM, 2] == 0.5
    assert policy.stats[N, 2] == 0.0  # the original is untouched
