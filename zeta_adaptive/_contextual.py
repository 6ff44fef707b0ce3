"""Contextual (per-prompt) policies: each model's accuracy is a Bayesian linear function of the prompt's features.

Per model, a Gaussian posterior with a diagonal covariance over the weights of the
:class:`~zeta_adaptive._features.Featurizer`'s space models the accuracy of that model's answer to
a prompt with features x as ``x . w`` (the bias slot's prior mean is 0.5). Feedback updates the
posterior with one Kalman (assumed-density) step on the prompt's non-zero features only: the
exact Bayesian update of the Gaussian linear model, projected back onto a diagonal covariance. So
a decision and an update cost O(models x non-zero features), whatever the dimension.

The other parts of the objective are the base :class:`Policy`'s per-model statistics (success
rate: its Beta posterior, drawn by Thompson sampling; latency and cost: their means), so the route's objective and its cost budget apply unchanged:
``score = P(success) * accuracy(x) - w_latency * latency - w_cost * cost``.

* ``linear_thompson`` draws ``samples`` joint posterior draws of every eligible model's accuracy
  at x (``x . w`` is exactly Normal under the diagonal posterior), picks one draw uniformly at
  random and ranks by it; the logged propensity is the share of the draws whose best model is the
  chosen primary, which is exactly the probability of that primary given the draws (the same
  scheme as :class:`~zeta_adaptive._policies.ThompsonPolicy`).
* ``lin_ucb`` ranks by the upper bound ``mean + alpha * sd`` of each model's accuracy at x, models
  never tried first; deterministic, propensity 1.

With ``discount`` < 1 the weights' precision decays toward the prior by ``discount`` per
contextual update (lazily, per weight, when next touched), so stale knowledge widens again. A
call's features wait in :class:`PendingContexts` (bounded by count and age) until its feedback
arrives; without features (feedback for an unknown context) only the bias weight learns.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from sqlalchemy import select

from ._features import Features, Featurizer
from ._policies import BELIEF_DRAWS, BELIEF_SEED, SUCC, N, Policy, Ranking, served_means
from ._store import Store, call_features
from ._store import feedback as feedback_table

__all__ = [
    "ContextualPolicy",
    "LinearThompsonPolicy",
    "LinUCBPolicy",
    "PendingContexts",
    "warm_start_contexts",
    "logged_features",
]


class ContextualPolicy(Policy):
    """Base of the per-prompt policies: the diagonal Gaussian linear model of accuracy per model.

    A model's accuracy at x is ``x . (w_shared + w_model)``: the shared weights learn from every
    model's feedback what makes a prompt easy or hard, the model's own weights (prior variance
    ``gap_var``, usually smaller than ``prior_var``) how that model departs from the others. The
    gap between two models is thus shrunk toward zero and estimated from its own evidence only.
    """

    contextual: ClassVar[bool] = True
    options: ClassVar[tuple[str, ...]] = ("feature_bits", "max_chars", "prior_var", "gap_var", "noise_var")

    def __init__(
        self,
        models: Sequence[str],
        *,
        feature_bits: int = 12,
        max_chars: int = 4096,
        prior_var: float = 0.1,
        gap_var: float = 0.05,
        noise_var: float = 0.25,
        **common: Any,
    ) -> None:
        super().__init__(models, **common)
        if prior_var <= 0 or gap_var <= 0 or noise_var <= 0:
            raise ValueError("prior_var, gap_var and noise_var must be > 0")
        self.featurizer = Featurizer(feature_bits, max_chars)
        size = self.featurizer.size
        self.bias = self.featurizer.hashed  # the first dense slot is the constant 1
        k = len(self.models)
        self.shared = k  # row of the shared weights, after one row per model
        self.noise_var = float(noise_var)
        self.prior_precision = np.r_[np.full(k, 1.0 / float(gap_var)), 1.0 / float(prior_var)][:, None]
        self.weights = np.zeros((k + 1, size))
        self.weights[self.shared, self.bias] = 0.5
        self.precision = np.repeat(self.prior_precision, size, axis=1)
        self.touched = np.zeros((k + 1, size), dtype=np.int64)  # the clock when each weight was last updated
        self.clock = 0  # contextual updates so far
        self.no_features = Features(np.array([self.bias], dtype=np.int64), np.array([1.0]))
        self._pairs = [np.array([[i], [k]]) for i in range(k)]

    # -- the linear model -----------------------------------------------------------------------
    def _precisions(self, rows: np.ndarray | slice, cols: np.ndarray) -> np.ndarray:
        """Precision of the given weights (rows: a column of row indices, or every row) now, after the
        discount's lazy decay toward the prior."""
        p = self.precision[rows, cols]
        if self.discount == 1.0:
            return p
        prior = self.prior_precision[rows] if isinstance(rows, slice) else self.prior_precision[rows[:, 0]]
        return prior + (p - prior) * self.discount ** (self.clock - self.touched[rows, cols])

    def _moments(self, features: Features | None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of ``x . w`` for each row of weights (models, then the shared row)."""
        x = features if features is not None else self.no_features
        mean = self.weights[:, x.indices] @ x.values
        var = (1.0 / self._precisions(slice(None), x.indices)) @ (x.values * x.values)
        return mean, var

    def predict(self, features: Features | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of every model's accuracy at these features (indexed like ``models``)."""
        mean, var = self._moments(features)
        return mean[:-1] + mean[-1], var[:-1] + var[-1]

    def context_probabilities(self, features: Sequence[Features], draws: int = 4096) -> np.ndarray:
        """P(the primary is each model | x) for each context (rows; columns: ``models``), the policy unchanged:
        exact for a deterministic ranking, else the share of ``draws`` posterior draws seeded by the row."""
        parts = self._parts(self._all)
        out = np.zeros((len(features), len(self.models)))
        for row, x in enumerate(features):
            out[row] = self._primary_shares(*self._moments(x), parts, np.random.default_rng(row), draws)
        return out

    def _primary_shares(
        self, mean: np.ndarray, var: np.ndarray, parts: tuple[np.ndarray, ...], rng: np.random.Generator, draws: int
    ) -> np.ndarray:
        """P(primary) of every model at one context's moments and the models' :meth:`_parts`."""
        raise NotImplementedError

    def learn(self, model: str, accuracy: float, features: Features | None = None) -> None:
        """One Kalman step of the shared and the model's weights toward an observed accuracy at these features."""
        rows = self._pairs[self.index[model]]  # the model's row and the shared row, as a column
        x = features if features is not None else self.no_features
        j, v = x.indices, x.values
        var = 1.0 / self._precisions(rows, j)  # (2, nnz)
        w = self.weights[rows, j]
        s = self.noise_var + (var[0] + var[1]) @ (v * v)
        gain = var * (v / s)
        self.weights[rows, j] = w + gain * (accuracy - (w[0] + w[1]) @ v)
        self.precision[rows, j] = 1.0 / (var - gain * v * var)
        if self.discount < 1.0:
            self.touched[rows, j] = self.clock
        self.clock += 1

    def feedback(self, model: str, accuracy: float, features: Features | None = None) -> None:
        """Learn one answer's accuracy: the per-model statistics and the linear model at the call's features."""
        super().feedback(model, accuracy)
        self.learn(model, accuracy, features)

    def _parts(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Success Beta posterior (successes + 1, failures + 1), latency and cost means of the eligible
        models (latency and cost 0 if never served)."""
        s = self.stats[:, idx]
        return s[SUCC] + 1.0, s[N] - s[SUCC] + 1.0, *served_means(s)

    def _belief(self, draws: np.ndarray, utility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P(primary) for a prompt without features (the bias alone), from a generator of its own;
        ranked by it, then by utility."""
        mean, var = self._moments(None)
        rng = np.random.default_rng(BELIEF_SEED)
        p_best = self._primary_shares(mean, var, self._parts(self._all), rng, BELIEF_DRAWS)
        return np.lexsort((-utility, -p_best)), p_best

    # -- deciding -------------------------------------------------------------------------------
    def rank(self, eligible: Sequence[str] | None = None, features: Features | None = None) -> Ranking:
        """Order the eligible models for a prompt with these features (None: the bias alone)."""
        idx = self._eligible(eligible)
        mean, var = self._moments(features)
        order, propensity = self._decide(idx, mean, var, *self._parts(idx))
        return Ranking(tuple([self.models[i] for i in idx[order].tolist()]), propensity)

    def _decide(
        self,
        idx: np.ndarray,
        mean: np.ndarray,
        var: np.ndarray,
        ok: np.ndarray,
        failed: np.ndarray,
        latency: np.ndarray,
        cost: np.ndarray,
    ) -> tuple[np.ndarray, float]:
        """The eligible models' order (positions in ``idx``) and P(primary), from the rows' moments."""
        raise NotImplementedError


class LinearThompsonPolicy(ContextualPolicy):
    """Thompson sampling on the linear accuracy model; propensity exact for its batch of draws.

    Per decision: one draw of each model's success rate from its Beta posterior, and ``samples``
    joint draws of the accuracies at x (their spread around the posterior mean scaled by
    ``explore``: 1 is plain Thompson sampling; the default 0.3 explores less, because a diagonal
    posterior over hashed n-grams counts every unseen n-gram's prior variance and so overstates
    the uncertainty of a new prompt); one of those is picked uniformly at random and ranks the
    models. The logged propensity, the share of the batch's draws won by the chosen primary, is
    the exact probability of that primary given the decision's draws.
    """

    name = "linear_thompson"
    options = (*ContextualPolicy.options, "samples", "explore")

    def __init__(self, models: Sequence[str], *, samples: int = 64, explore: float = 0.3, **common: Any) -> None:
        super().__init__(models, **common)
        if samples < 16:
            raise ValueError(f"samples must be >= 16, got {samples}")
        if explore < 0:
            raise ValueError(f"explore must be >= 0, got {explore}")
        self.samples = int(samples)
        self.explore = float(explore)

    def _accuracy_draws(self, mean: np.ndarray, var: np.ndarray, rows: np.ndarray | slice, z: np.ndarray) -> np.ndarray:
        """One draw of the rows' accuracies at x per row of ``z``, its spread scaled by ``explore``; the
        last column of ``z`` draws the shared part, one for all models."""
        sd = self.explore * np.sqrt(var)
        return mean[rows] + sd[rows] * z[:, :-1] + (mean[-1] + sd[-1] * z[:, -1:])

    def _primary_shares(
        self, mean: np.ndarray, var: np.ndarray, parts: tuple[np.ndarray, ...], rng: np.random.Generator, draws: int
    ) -> np.ndarray:
        ok, failed, latency, cost = parts
        k = len(self.models)
        accuracy = self._accuracy_draws(mean, var, slice(None, -1), rng.standard_normal((draws, k + 1)))
        success = rng.beta(ok, failed, size=(draws, k))
        return np.bincount(self.objective.score(success, accuracy, latency, cost).argmax(axis=1), minlength=k) / draws

    def _decide(
        self,
        idx: np.ndarray,
        mean: np.ndarray,
        var: np.ndarray,
        ok: np.ndarray,
        failed: np.ndarray,
        latency: np.ndarray,
        cost: np.ndarray,
    ) -> tuple[np.ndarray, float]:
        accuracy = self._accuracy_draws(mean, var, idx, self.rng.standard_normal((self.samples, len(idx) + 1)))
        success = self.rng.beta(ok, np.maximum(failed, 1.0))  # one draw per decision, shared by the batch
        scores = self.objective.score(success, accuracy, latency, cost)
        best = scores.argmax(axis=1)
        u = int(self.rng.random() * self.samples)
        order = np.argsort(-scores[u], kind="stable")
        return order, float(np.count_nonzero(best == best[u])) / self.samples


class LinUCBPolicy(ContextualPolicy):
    """LinUCB on the linear accuracy model: rank by ``mean + alpha * sd`` of each model's accuracy; propensity 1."""

    name = "lin_ucb"
    options = (*ContextualPolicy.options, "alpha")

    def __init__(self, models: Sequence[str], *, alpha: float = 0.3, **common: Any) -> None:
        super().__init__(models, **common)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)

    def _primary_shares(
        self, mean: np.ndarray, var: np.ndarray, parts: tuple[np.ndarray, ...], rng: np.random.Generator, draws: int
    ) -> np.ndarray:
        out = np.zeros(len(self.models))
        out[self._decide(self._all, mean, var, *parts)[0][0]] = 1.0
        return out

    def _decide(
        self,
        idx: np.ndarray,
        mean: np.ndarray,
        var: np.ndarray,
        ok: np.ndarray,
        failed: np.ndarray,
        latency: np.ndarray,
        cost: np.ndarray,
    ) -> tuple[np.ndarray, float]:
        upper = mean[idx] + mean[-1] + self.alpha * np.sqrt(var[idx] + var[-1])
        index = self.objective.score(ok / (ok + failed), upper, latency, cost)
        untried = ok + failed <= 2.0
        return np.argsort(-np.where(untried, np.inf, index), kind="stable"), 1.0  # models never tried come first


class PendingContexts:
    """Features of recent calls by call id, until their feedback arrives: at most ``capacity`` calls, none older than ``max_age_s``."""

    def __init__(self, capacity: int = 100_000, max_age_s: float = 7 * 86400.0) -> None:
        if capacity < 1 or max_age_s <= 0:
            raise ValueError("capacity must be >= 1 and max_age_s > 0")
        self.capacity = capacity
        self.max_age_s = max_age_s
        self._items: OrderedDict[str, tuple[float, Features]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, call_id: str, features: Features, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self._items[call_id] = (now, features)
            self._evict(now)

    def pop(self, call_id: str, now: float | None = None) -> Features | None:
        """The call's features (forgotten from here on), or None if unknown, evicted or too old."""
        with self._lock:
            self._evict(time.time() if now is None else now)
            item = self._items.pop(call_id, None)
        return item[1] if item is not None else None

    def _evict(self, now: float) -> None:
        items = self._items
        while items and (len(items) > self.capacity or next(iter(items.values()))[0] < now - self.max_age_s):
            items.popitem(last=False)


def logged_features(store: Store, call_id: str, space: str) -> Features | None:
    """A call's features from the log (None if not logged, or logged in another feature space)."""
    query = select(call_features.c.features).where(call_features.c.call_id == call_id, call_features.c.space == space)
    with store.engine.connect() as conn:
        text = conn.execute(query).scalar_one_or_none()
    return Features.from_json(text) if text is not None else None


#: the most rated calls an undiscounted contextual policy relearns at warm start
WARM_LIMIT = 200_000


def warm_start_contexts(store: Store, task_type: str, policy: ContextualPolicy) -> int:
    """Refit a contextual policy's linear model from the logged feedback of calls with logged features.

    Reads the latest rated calls of the task type whose features were logged in the policy's
    feature space (the last ``horizon()`` for a discounted policy, at most ``WARM_LIMIT``) and
    replays them in time order. The per-model statistics are the router's usual warm start.
    Returns the number of calls learned.
    """
    f, c = feedback_table.c, call_features.c
    limit = min(policy.horizon() or WARM_LIMIT, WARM_LIMIT)
    query = (
        select(f.model, f.accuracy, c.features)
        .join(call_features, c.call_id == f.call_id)
        .where(f.task_type == task_type, c.space == policy.featurizer.space)
        .order_by(f.ts.desc())
        .limit(limit)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()[::-1]  # oldest first
    learned = 0
    for model, accuracy, text in rows:
        if model in policy.index:
            policy.learn(model, float(accuracy), Features.from_json(text))
            learned += 1
    return learned
