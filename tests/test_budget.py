"""Cost budget: the Lagrange multiplier holds the mean cost per call near budget_per_call, for every policy."""

from __future__ import annotations

import numpy as np
import pytest
from in_process import fake_router

from zeta_adaptive import POLICIES, BudgetPacer, ConfigError, Objective, load_config, make_policy
from zeta_adaptive.simulate import ModelSpec

OBJ = Objective(w_latency=0.0)
LEARNING = sorted(set(POLICIES) - {"static", "random"})


def spend(name: str, budget: float, steps: int = 1500, seed: int = 0) -> tuple[float, BudgetPacer]:
    """Mean cost per call of a policy choosing between a dear good model (cost 1) and a cheap worse one (cost 0)."""
    policy = make_policy(name, ["cheap", "dear"], OBJ, seed=seed)
    pacer = BudgetPacer(budget, OBJ, rate=0.02)
    rng = np.random.default_rng(seed)
    x = policy.featurizer("a prompt") if getattr(policy, "contextual", False) else None
    total = 0.0
    for _ in range(steps):
        model = (policy.rank(None, x) if x is not None else policy.rank()).primary
        cost = 1.0 if model == "dear" else 0.0
        policy.update(model, True, 0.1, cost)
        accuracy = float(rng.random() < (0.9 if model == "dear" else 0.6))
        if x is not None:
            policy.feedback(model, accuracy, x)
        else:
            policy.feedback(model, accuracy)
        pacer.observe(cost, policy)
        total += cost
    return total / steps, pacer


@pytest.mark.parametrize("name", LEARNING)
@pytest.mark.parametrize("budget", [0.2, 0.7])
@pytest.mark.slow
def test_mean_cost_tracks_the_budget_with_every_learning_policy(name, budget):
    mean, pacer = spend(name, budget)
    assert mean == pytest.approx(budget, abs=0.05)
    assert pacer.snapshot()["spend_per_call"] == pytest.approx(mean)


def test_without_a_budget_the_dear_better_model_takes_most_calls():
    policy = make_policy("thompson", ["cheap", "dear"], OBJ, seed=0)
    assert spend("thompson", 10.0)[0] > 0.8 and policy.objective.w_cost == 0.0


def test_overspending_raises_the_cost_weight_and_underspending_lowers_it():
    policy = make_policy("thompson", ["cheap", "dear"], Objective(w_latency=0.0, w_cost=0.3), seed=0)
    pacer = BudgetPacer(0.5, policy.objective)
    for _ in range(10):
        pacer.observe(1.0, policy)
    assert policy.objective.w_cost > 0.3 and pacer.cost_weight == policy.objective.w_cost
    for _ in range(30):
        pacer.observe(0.0, policy)
    assert policy.objective.w_cost < 0.3


def test_underspending_while_the_dear_model_is_untried_does_not_wind_up():
    # The cheap model serves 2,000 calls under budget before the dear one is ever tried: the multiplier
    # stops at the objective's score range, so once the dear model is tried it takes a few dozen calls,
    # not the 2,000 an unbounded integral (-40 here) would need to unwind.
    policy = make_policy("thompson", ["cheap", "dear"], OBJ, seed=0)
    pacer = BudgetPacer(0.1, OBJ, rate=0.02)
    for _ in range(2000):
        policy.update("cheap", True, 0.1, 0.0)
        policy.feedback("cheap", 0.6)
        pacer.observe(0.0, policy)
    assert pacer.multiplier == pytest.approx(-1.0)
    run = 0
    for _ in range(2000):
        model = policy.rank().primary if run else "dear"
        if model != "dear":
            break
        run += 1
        policy.update("dear", True, 0.1, 1.0)
        policy.feedback("dear", 0.9)
        pacer.observe(1.0, policy)
    assert 1 < run < 150


def test_bad_budgets_raise():
    with pytest.raises(ValueError):
        BudgetPacer(0.0, OBJ)
    with pytest.raises(ValueError):
        BudgetPacer(1.0, OBJ, rate=0.0)
    cfg = {"models": {"a": {"base_url": "http://a/v1"}}, "routes": {"x": {"models": ["a"], "budget_per_call": -1}}}
    with pytest.raises(ConfigError, match="budget_per_call"):
        load_config(cfg)
    cfg["routes"]["x"]["budget_per_call"] = 0.25
    with pytest.raises(ConfigError, match="no model of the route has a price"):  # it could never be held
        load_config(cfg)
    cfg["models"]["a"]["price_out_per_1k"] = 2.0
    assert load_config(load_config(cfg).to_dict()).routes["x"].budget_per_call == 0.25


@pytest.mark.slow
def test_router_holds_the_budget_and_shows_it_in_preferences(tmp_path):
    config = {
        "store": f"sqlite:///{tmp_path}/x.db",
        "journal_dir": str(tmp_path / "journal"),
        "seed": 1,
        "objective": {"w_latency": 0.0},
        "breaker": {"consecutive_failures": 10_000, "min_calls": 10_000, "window": 10_000},
        "models": {
            "cheap": {"base_url": "http://cheap:8000/v1"},
            "dear": {"base_url": "http://dear:8000/v1", "price_out_per_1k": 200.0},  # its 5 tokens cost 1
        },
        "routes": {"qa": {"models": ["cheap", "dear"], "policy": "thompson", "budget_per_call": 0.3}},
    }
    rng = np.random.default_rng(0)
    with fake_router(config, ModelSpec("dear", tokens_out=5)) as router:
        costs = []
        for _ in range(800):
            result = router.chat("qa", [{"role": "user", "content": "hi"}])
            costs.append(result.cost)
            router.feedback(result.call_id, float(rng.random() < (0.9 if result.model == "dear" else 0.6)))
        rows = router.preferences("qa")
    assert np.mean(costs) == pytest.approx(0.3, abs=0.06)
    assert (rows["budget_per_call"] == 0.3).all() and rows["spend_per_call"].iloc[0] == pytest.approx(np.mean(costs))
    assert rows["cost_weight"].iloc[0] > 0
