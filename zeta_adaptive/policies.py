"""Bandit policies: pure objects that rank a task type's candidate models and learn from outcomes.

A policy never does I/O and draws randomness only from its own seeded generator, so the same
seed and the same history give the same decisions. Each policy keeps (optionally discounted)
per-model statistics in numpy arrays:

* ``n`` / ``succ``: attempts and successes (every attempt, updated at once);
* ``lat_n`` / ``lat_sum``: successful attempts and their latency in seconds;
* ``cost_sum``: the cost of successful attempts;
* ``acc_n`` / ``acc_sum``: fed-back answers and their accuracy in [0, 1] (fractional values are
  Bernoulli-equivalent pseudo-counts), updated only when feedback arrives, so a call without
  feedback never counts as accuracy 0.

With ``discount`` gamma < 1 every update first multiplies all statistics of its stream by gamma, so
old observations fade and a model that degrades (or improves) changes place. ``rank`` returns the
full order of the eligible models and the probability with which its primary was chosen, which
the router logs for offline evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "Objective",
    "Ranking",
    "Policy",
    "StaticPolicy",
    "RandomPolicy",
    "ThompsonPolicy",
    "POLICIES",
    "make_policy",
]


@dataclass(frozen=True)
class Objective:
    """How an attempt's outcome becomes one number to maximise.

    ``kind="utility"`` (default): ``P(success) * accuracy - w_latency * latency_s - w_cost * cost``.
    ``kind="ratio"``: ``P(success) * accuracy / latency_s``, the fixed-table era's score.
    A model with no accuracy feedback yet is scored with its prior accuracy.
    """

    w_latency: float = 0.1
    w_cost: float = 0.0
    kind: str = "utility"

    KINDS: ClassVar[tuple[str, ...]] = ("utility", "ratio")

    def score(self, p_success: np.ndarray, accuracy: np.ndarray, latency_s: np.ndarray, cost: np.ndarray) -> np.ndarray:
        """Vectorised score of each model (or of each posterior draw: arrays broadcast)."""
        value = p_success * accuracy
        if self.kind == "ratio":
            return value / np.maximum(latency_s, 1e-3)
        return value - self.w_latency * latency_s - self.w_cost * cost


@dataclass(frozen=True)
class Ranking:
    """A policy's decision: every eligible model, best first, and P(primary chosen)."""

    order: tuple[str, ...]
    propensity: float

    @property
    def primary(self) -> str:
        return self.order[0]


class Policy:
    """Base class: statistics, discounting, warm start; subclasses implement ``_order``."""

    name: ClassVar[str] = ""
    #: keyword options a route may set for this policy (beyond the common ones)
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        models: Sequence[str],
        *,
        objective: Objective | None = None,
        seed: int | None = None,
        discount: float = 1.0,
    ) -> None:
        if not models:
            raise ValueError("a policy needs at least one model")
        if len(set(models)) != len(models):
            raise ValueError(f"duplicate models in {list(models)}")
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        self.models: tuple[str, ...] = tuple(models)
        self.index: dict[str, int] = {m: i for i, m in enumerate(self.models)}
        self.objective = objective or Objective()
        self.discount = float(discount)
        self.rng = np.random.default_rng(seed)
        k = len(self.models)
        self.n = np.zeros(k)
        self.succ = np.zeros(k)
        self.lat_n = np.zeros(k)
        self.lat_sum = np.zeros(k)
        self.cost_sum = np.zeros(k)
        self.acc_n = np.zeros(k)
        self.acc_sum = np.zeros(k)

    # -- learning -------------------------------------------------------------------------------
    def update(self, model: str, success: bool, latency_s: float, cost: float = 0.0) -> None:
        """Learn one attempt's outcome (called right after the attempt)."""
        i = self.index[model]
        if self.discount < 1.0:
            for a in (self.n, self.succ, self.lat_n, self.lat_sum, self.cost_sum):
                a *= self.discount
        self.n[i] += 1.0
        if success:
            self.succ[i] += 1.0
            self.lat_n[i] += 1.0
            self.lat_sum[i] += latency_s
            self.cost_sum[i] += cost
        self._changed()

    def feedback(self, model: str, accuracy: float) -> None:
        """Learn one answer's accuracy in [0, 1], whenever it arrives."""
        i = self.index[model]
        if self.discount < 1.0:
            self.acc_n *= self.discount
            self.acc_sum *= self.discount
        self.acc_n[i] += 1.0
        self.acc_sum[i] += accuracy
        self._changed()

    def fit(
        self,
        attempt_models: Sequence[str],
        success: np.ndarray,
        latency_s: np.ndarray,
        cost: np.ndarray,
        feedback_models: Sequence[str] = (),
        accuracy: np.ndarray | None = None,
    ) -> None:
        """Rebuild statistics from a time-ordered history, exactly as the same updates one by one would.

        Vectorised: the weight of the k-th of n events is ``discount ** (n - 1 - k)``. Models no
        longer in this policy are ignored.
        """
        k = len(self.models)
        idx, keep = self._indices(attempt_models)
        w, decay = self._weights(int(keep.sum()))
        idx = idx[keep]
        ok = np.asarray(success, dtype=float)[keep]
        lat = np.asarray(latency_s, dtype=float)[keep]
        cst = np.asarray(cost, dtype=float)[keep]
        self.n = self.n * decay + np.bincount(idx, w, k)
        self.succ = self.succ * decay + np.bincount(idx, w * ok, k)
        self.lat_n = self.lat_n * decay + np.bincount(idx, w * ok, k)
        self.lat_sum = self.lat_sum * decay + np.bincount(idx, w * ok * lat, k)
        self.cost_sum = self.cost_sum * decay + np.bincount(idx, w * ok * cst, k)
        if accuracy is not None and len(feedback_models):
            fidx, fkeep = self._indices(feedback_models)
            fw, fdecay = self._weights(int(fkeep.sum()))
            fidx = fidx[fkeep]
            acc = np.asarray(accuracy, dtype=float)[fkeep]
            self.acc_n = self.acc_n * fdecay + np.bincount(fidx, fw, k)
            self.acc_sum = self.acc_sum * fdecay + np.bincount(fidx, fw * acc, k)
        self._changed()

    def _indices(self, models: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.fromiter((self.index.get(m, -1) for m in models), dtype=np.int64, count=len(models))
        return idx, idx >= 0

    def _weights(self, n: int) -> tuple[np.ndarray, float]:
        """Weights of n time-ordered events (the last weighs 1) and the decay of older statistics."""
        if self.discount == 1.0:
            return np.ones(n), 1.0
        return self.discount ** np.arange(n - 1, -1, -1, dtype=float), self.discount**n

    def _changed(self) -> None:
        """Hook for subclasses that cache anything derived from the statistics."""

    # -- deciding -------------------------------------------------------------------------------
    def rank(self, eligible: Sequence[str] | None = None) -> Ranking:
        """Order the eligible models (default: all), best first, with P(primary chosen)."""
        idx = self._eligible(eligible)
        order, propensity = self._order(idx)
        return Ranking(tuple(self.models[i] for i in order), propensity)

    def _eligible(self, eligible: Sequence[str] | None) -> np.ndarray:
        if eligible is None:
            return np.arange(len(self.models))
        idx = np.array([self.index[m] for m in eligible], dtype=np.int64)
        if len(idx) == 0:
            raise ValueError("no eligible model to rank")
        return idx

    def _order(self, idx: np.ndarray) -> tuple[np.ndarray, float]:
        raise NotImplementedError

    # -- reading --------------------------------------------------------------------------------
    def means(self) -> dict[str, np.ndarray]:
        """Posterior-mean style point estimates per model (success, accuracy, latency, cost)."""
        p_success = (self.succ + 1.0) / (self.n + 2.0)
        accuracy = (self.acc_sum + 1.0) / (self.acc_n + 2.0)
        latency = np.divide(self.lat_sum, self.lat_n, out=np.zeros_like(self.lat_sum), where=self.lat_n > 0)
        cost = np.divide(self.cost_sum, self.lat_n, out=np.zeros_like(self.cost_sum), where=self.lat_n > 0)
        return {"success": p_success, "accuracy": accuracy, "latency_s": latency, "cost": cost}

    def preferences(self) -> list[dict[str, Any]]:
        """One row per model, best first by the objective's point estimate: what the policy believes."""
        m = self.means()
        score = self.objective.score(m["success"], m["accuracy"], m["latency_s"], m["cost"])
        rows = []
        for i in np.argsort(-score, kind="stable"):
            rows.append(
                {
                    "model": self.models[i],
                    "score": float(score[i]),
                    "success": float(m["success"][i]),
                    "accuracy": float(m["accuracy"][i]),
                    "latency_s": float(m["latency_s"][i]),
                    "cost": float(m["cost"][i]),
                    "n": float(self.n[i]),
                    "feedback_n": float(self.acc_n[i]),
                }
            )
        return rows

    def __repr__(self) -> str:
        return f"{type(self).__name__}(models={list(self.models)}, discount={self.discount})"


class StaticPolicy(Policy):
    """The fixed table: always the configured order (propensity 1); learns statistics but ignores them."""

    name = "static"

    def _order(self, idx: np.ndarray) -> tuple[np.ndarray, float]:
        return np.sort(idx), 1.0


class RandomPolicy(Policy):
    """Uniformly random order: the logging policy that makes offline evaluation exact."""

    name = "random"

    def _order(self, idx: np.ndarray) -> tuple[np.ndarray, float]:
        return self.rng.permutation(idx), 1.0 / len(idx)


class ThompsonPolicy(Policy):
    """Thompson sampling: rank by one joint posterior draw of each model's score.

    Success and accuracy have Beta posteriors (prior ``Beta(prior_alpha, prior_beta)``); latency and
    cost enter through their running means. The primary's propensity, P(model is the argmax of a
    draw), is estimated from ``samples`` vectorised draws and cached until the statistics change.
    """

    name = "thompson"
    options = ("prior_alpha", "prior_beta", "samples")

    def __init__(
        self,
        models: Sequence[str],
        *,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
        samples: int = 1000,
        **common: Any,
    ) -> None:
        super().__init__(models, **common)
        if prior_alpha <= 0 or prior_beta <= 0:
            raise ValueError("prior_alpha and prior_beta must be > 0")
        if samples < 10:
            raise ValueError("samples must be >= 10")
        self.prior_alpha = float(prior_alpha)
        self.prior_beta = float(prior_beta)
        self.samples = int(samples)
        self._propensity_cache: dict[bytes, np.ndarray] = {}

    def _changed(self) -> None:
        self._propensity_cache.clear()

    def _draw(self, idx: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
        a, b = self.prior_alpha, self.prior_beta
        s = self.rng.beta(a + self.succ[idx], b + self.n[idx] - self.succ[idx], size=size)
        acc = self.rng.beta(a + self.acc_sum[idx], b + self.acc_n[idx] - self.acc_sum[idx], size=size)
        latency = np.divide(self.lat_sum[idx], self.lat_n[idx], out=np.zeros(len(idx)), where=self.lat_n[idx] > 0)
        cost = np.divide(self.cost_sum[idx], self.lat_n[idx], out=np.zeros(len(idx)), where=self.lat_n[idx] > 0)
        return self.objective.score(s, acc, latency, cost)

    def win_probabilities(self, idx: np.ndarray) -> np.ndarray:
        """P(each eligible model has the best score), from one batch of posterior draws."""
        key = idx.tobytes()
        probs = self._propensity_cache.get(key)
        if probs is None:
            draws = self._draw(idx, (self.samples, len(idx)))
            wins = np.bincount(np.argmax(draws, axis=1), minlength=len(idx))
            # add-half smoothing keeps every propensity strictly positive
            probs = (wins + 0.5) / (self.samples + 0.5 * len(idx))
            self._propensity_cache[key] = probs
        return probs

    def _order(self, idx: np.ndarray) -> tuple[np.ndarray, float]:
        draw = self._draw(idx, (len(idx),))
        pos = np.argsort(-draw, kind="stable")
        return idx[pos], float(self.win_probabilities(idx)[pos[0]])


POLICIES: dict[str, type[Policy]] = {p.name: p for p in (StaticPolicy, RandomPolicy, ThompsonPolicy)}
COMMON_OPTIONS = ("seed", "discount")


def make_policy(name: str, models: Sequence[str], objective: Objective | None = None, **options: Any) -> Policy:
    """Build the policy registered under ``name``; unknown names or options raise ValueError."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {sorted(POLICIES)}") from None
    allowed = set(COMMON_OPTIONS) | set(cls.options)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for policy {name!r}; allowed: {sorted(allowed)}")
    return cls(models, objective=objective, **options)

