"""Off-policy evaluation of per-prompt routing: IPS, SNIPS and DR over logged features and propensities.

A :class:`ContextualLog` holds, per logged call, the prompt's features (as the router logs them
in ``call_features``), the primary model chosen, the probability the logging policy chose it and
the reward (the call's feedback accuracy). :func:`load_contextual` reads one from the router's
log; any logging policy works as long as its propensities are logged and positive.

A target is a frozen contextual policy (no learning during evaluation): its probability of
choosing each model at each logged context is :func:`action_probabilities` (exact for LinUCB,
whose choice is deterministic; for linear Thompson sampling the mean share of ``draws`` posterior
draws, which converges to its exact choice probability). The estimators, :class:`ContextualIPS`,
:class:`ContextualSNIPS` and :class:`ContextualDR` (a cross-fitted ridge reward model), give
percentile bootstrap intervals over calls; DR refits its reward model in every resample, so its
interval includes the model's uncertainty.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr
from sqlalchemy import select

from .._contextual import ContextualPolicy
from .._exceptions import ReplayError
from .._features import Features
from .._store import Store, call_features, calls
from .._store import feedback as feedback_table

__all__ = [
    "ContextualLog",
    "load_contextual",
    "action_probabilities",
    "ContextualIPS",
    "ContextualSNIPS",
    "ContextualDR",
    "evaluate",
    "ESTIMATORS",
]


@dataclass(frozen=True)
class ContextualLog:
    """Logged rounds: features, chosen model, its logging probability, reward; and the models."""

    features: list[Features]
    actions: np.ndarray  # index into models
    propensities: np.ndarray
    rewards: np.ndarray
    models: tuple[str, ...]
    size: int  # the feature space's dimension

    def __post_init__(self) -> None:
        n = len(self.features)
        if not n:
            raise ReplayError("the contextual log is empty")
        if not (len(self.actions) == len(self.propensities) == len(self.rewards) == n):
            raise ReplayError("features, actions, propensities and rewards must have one entry per round")
        if np.any(~np.isfinite(self.propensities)) or np.any(self.propensities <= 0) or np.any(self.propensities > 1):
            raise ReplayError("every logged propensity must be in (0, 1]")

    def matrix(self) -> sp.csr_matrix:
        """The features as a sparse (rounds, size) matrix, built once."""
        return self._matrix

    @cached_property
    def _matrix(self) -> sp.csr_matrix:
        rows = np.concatenate([np.full(x.nnz, i) for i, x in enumerate(self.features)])
        cols = np.concatenate([x.indices for x in self.features])
        vals = np.concatenate([x.values for x in self.features])
        return sp.csr_matrix((vals, (rows, cols)), shape=(len(self.features), self.size))


def load_contextual(store: Store, task_type: str, models: Sequence[str], space: str, size: int) -> ContextualLog:
    """Rated calls of a task type whose features were logged in ``space``: primary, propensity, accuracy."""
    c, f, x = calls.c, feedback_table.c, call_features.c
    query = (
        select(c.ranking, c.propensity, f.accuracy, x.features)
        .join(feedback_table, f.call_id == c.call_id)
        .join(call_features, x.call_id == c.call_id)
        .where(c.task_type == task_type, x.space == space)
        .order_by(c.ts)
    )
    with store.engine.connect() as conn:
        rows = pd.DataFrame(conn.execute(query).all(), columns=["ranking", "propensity", "accuracy", "features"])
    index = {m: i for i, m in enumerate(models)}
    primary = rows["ranking"].map(lambda r: index.get(json.loads(r)[0], -1)).to_numpy()
    keep = primary >= 0  # calls whose primary is no longer a model of the target
    return ContextualLog(
        [Features.from_json(t) for t in rows["features"][keep]],
        primary[keep],
        rows["propensity"].to_numpy(float)[keep],
        rows["accuracy"].to_numpy(float)[keep],
        tuple(models),
        size,
    )


def action_probabilities(policy: ContextualPolicy, features: Sequence[Features], draws: int = 4096) -> np.ndarray:
    """P(the policy's primary is each model | x), rows = contexts, columns = the policy's models (policy unchanged)."""
    return policy.context_probabilities(features, draws)


def _reward_model(
    log: ContextualLog, rows: np.ndarray, x: sp.csr_matrix, folds: int, l2: float, seed: int
) -> np.ndarray:
    """Cross-fitted q(x_i, a) for the given rows: each from ridge fits on the other folds' rounds of action a."""
    k = len(log.models)
    q = np.zeros((len(rows), k))
    fold = np.random.default_rng(seed).integers(0, folds, len(rows))
    actions, rewards = log.actions[rows], log.rewards[rows]
    mean = rewards.mean()
    for f in range(folds):
        test, train = fold == f, fold != f
        for a in range(k):
            fit = train & (actions == a)
            if fit.sum() < 2:
                q[test, a] = mean
                continue
            base = rewards[fit].mean()
            w = lsqr(x[rows[fit]], rewards[fit] - base, damp=np.sqrt(l2))[0]  # ridge regression
            q[test, a] = np.clip(base + x[rows[test]] @ w, 0.0, 1.0)
    return q


@dataclass(frozen=True)
class _ContextualEstimator:
    """Shared: a frozen target's value from a set of logged rounds, and its percentile bootstrap over rounds."""

    n_boot: int = 200
    alpha: float = 0.05
    seed: int = 0

    name: ClassVar[str] = ""

    def estimate(self, log: ContextualLog, pi: np.ndarray) -> float:
        """The target's estimated mean reward; ``pi``: its (rounds, models) action probabilities."""
        return self._value(log, _checked(log, pi), np.arange(len(log.features)), self.seed)

    def interval(self, log: ContextualLog, pi: np.ndarray) -> tuple[float, float]:
        """The ``1 - alpha`` percentile bootstrap interval over rounds resampled with replacement (seeded)."""
        pi, n = _checked(log, pi), len(log.features)
        rng = np.random.default_rng(self.seed)
        stats = [self._value(log, pi, rng.integers(0, n, n), self.seed + b + 1) for b in range(self.n_boot)]
        return float(np.quantile(stats, self.alpha / 2)), float(np.quantile(stats, 1 - self.alpha / 2))

    def _value(self, log: ContextualLog, pi: np.ndarray, rows: np.ndarray, seed: int) -> float:
        raise NotImplementedError


def _checked(log: ContextualLog, pi: np.ndarray) -> np.ndarray:
    if pi.shape != (len(log.features), len(log.models)):
        raise ReplayError(
            f"target probabilities must have shape {(len(log.features), len(log.models))}, got {pi.shape}"
        )
    return pi


def _weighted(log: ContextualLog, pi: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Importance weights ``pi(a|x) / p`` and rewards of the rows."""
    return pi[rows, log.actions[rows]] / log.propensities[rows], log.rewards[rows]


@dataclass(frozen=True)
class ContextualIPS(_ContextualEstimator):
    """IPS: ``mean(pi(a|x) / p * r)``, unbiased when the propensities are exact."""

    name: ClassVar[str] = "ips"

    def _value(self, log: ContextualLog, pi: np.ndarray, rows: np.ndarray, seed: int) -> float:
        w, r = _weighted(log, pi, rows)
        return float(np.mean(w * r))


@dataclass(frozen=True)
class ContextualSNIPS(_ContextualEstimator):
    """SNIPS: IPS normalised by ``mean(pi(a|x) / p)``."""

    name: ClassVar[str] = "snips"

    def _value(self, log: ContextualLog, pi: np.ndarray, rows: np.ndarray, seed: int) -> float:
        w, r = _weighted(log, pi, rows)
        return float(np.sum(w * r) / max(np.sum(w), 1e-12))


@dataclass(frozen=True)
class ContextualDR(_ContextualEstimator):
    """DR: the cross-fitted ridge reward model's value plus the IPS correction of its residual (refitted per resample)."""

    folds: int = 2
    l2: float = 1.0

    name: ClassVar[str] = "dr"

    def _value(self, log: ContextualLog, pi: np.ndarray, rows: np.ndarray, seed: int) -> float:
        w, r = _weighted(log, pi, rows)
        q = _reward_model(log, rows, log.matrix(), self.folds, self.l2, seed)
        a = log.actions[rows]
        return float(np.mean((pi[rows] * q).sum(axis=1) + w * (r - q[np.arange(len(rows)), a])))


#: the estimators :func:`evaluate` reports, by name
ESTIMATORS = tuple(e.name for e in (ContextualIPS, ContextualSNIPS, ContextualDR))


def evaluate(
    log: ContextualLog,
    pi: np.ndarray,
    *,
    n_boot: int = 200,
    alpha: float = 0.05,
    folds: int = 2,
    l2: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """IPS, SNIPS and DR estimates of the target's mean reward, with bootstrap intervals (DR refitted per resample)."""
    estimators = (
        ContextualIPS(n_boot, alpha, seed),
        ContextualSNIPS(n_boot, alpha, seed),
        ContextualDR(n_boot, alpha, seed, folds, l2),
    )
    rows = [(e.name, e.estimate(log, pi), *e.interval(log, pi)) for e in estimators]
    return pd.DataFrame(rows, columns=["estimator", "estimate", "low", "high"])
