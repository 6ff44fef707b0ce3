"""Every policy by name, the per-prompt ones included, and the one function that builds a policy
from its name and options: the config check, the learner and offline replay all use it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._contextual import LinearThompsonPolicy, LinUCBPolicy
from ._policies import (
    EpsilonGreedyPolicy,
    KLUCBPolicy,
    Objective,
    Policy,
    RandomPolicy,
    StaticPolicy,
    ThompsonPolicy,
    UCB1Policy,
)
from ._probit import ProbitThompsonPolicy

__all__ = ["POLICIES", "OPTION_TYPES", "make_policy"]

POLICIES: dict[str, type[Policy]] = {
    p.name: p
    for p in (
        StaticPolicy,
        RandomPolicy,
        EpsilonGreedyPolicy,
        UCB1Policy,
        KLUCBPolicy,
        ThompsonPolicy,
        LinearThompsonPolicy,
        LinUCBPolicy,
        ProbitThompsonPolicy,
    )
}

#: the expected type of every policy option, for config validation
OPTION_TYPES: dict[str, type] = {
    **dict.fromkeys(["seed", "samples", "max_lag", "feature_bits", "max_chars"], int),
    **dict.fromkeys(["discount", "epsilon", "c", "prior_alpha", "prior_beta", "alpha", "explore"], float),
    **dict.fromkeys(["prior_var", "gap_var", "noise_var"], float),
    "idf": bool,
}


def make_policy(name: str, models: Sequence[str], objective: Objective | None = None, **options: Any) -> Policy:
    """Build the policy registered under ``name``; unknown names or options raise ValueError."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {sorted(POLICIES)}") from None
    allowed = {"seed", "discount", *cls.options}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for policy {name!r}; allowed: {sorted(allowed)}")
    return cls(models, objective=objective, **options)
