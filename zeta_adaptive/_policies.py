"""Bandit policies: pure objects that rank a task type's candidate models and learn from outcomes.

A policy never does I/O and draws randomness only from its own seeded generator, so the same seed
and the same history give the same decisions. Each policy keeps per-model statistics in one numpy
array (rows below), optionally discounted:

* attempts (updated at once, after every attempt): ``n``, ``succ``; for successful attempts
  ``lat_n``, ``lat_sum`` (seconds), ``loglat_sum``, ``loglat_sq`` (log seconds) and ``cost_sum``;
* feedback (updated when it arrives, possibly much later, or never): ``acc_n``, ``acc_sum`` with
  accuracy in [0, 1] as Bernoulli-equivalent pseudo-counts. A call without feedback never counts
  as accuracy 0, and a policy that has had no feedback at all scores accuracy as 1;
* counts never discounted: ``seen`` (attempts learned) and ``rated`` (feedback learned).

With ``discount`` gamma < 1, every update first multiplies the statistics of its stream by gamma, so
old observations fade and a model that degrades (or improves) changes place. :meth:`Policy.statistics`
says what a policy believes of each model now (its rank, probability of being the best, utility
with an interval, counts, latency and cost), each policy in its own terms. ``rank`` returns the
full order of the eligible models, primary first, and the probability with which the primary was
chosen: exact for static, random and epsilon-greedy, and for Thompson sampling the exact
probability under its batch of posterior draws (see :class:`ThompsonPolicy`). ``rank_under_load``
does the same with some models' latency given: their expected latency at their current load, which
the caller measures (the policy stays pure), in place of the average the policy learned.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "Objective",
    "Ranking",
    "Policy",
    "StaticPolicy",
    "RandomPolicy",
    "EpsilonGreedyPolicy",
    "UCB1Policy",
    "KLUCBPolicy",
    "ThompsonPolicy",
]


@dataclass(frozen=True)
class Objective:
    """How a model's outcomes become one number to maximise.

    ``kind="utility"`` (default): ``P(success) * accuracy - w_latency * latency_s - w_cost * cost``,
    so a failure scores the worst (it earns no accuracy and still costs the time it took).
    ``kind="ratio"``: ``P(success) * accuracy / latency_s``, the fixed-table era's score.
    """

    w_latency: float = 0.1
    w_cost: float = 0.0
    kind: str = "utility"

    KINDS: ClassVar[tuple[str, ...]] = ("utility", "ratio")

    def score(
        self, p_success: np.ndarray, accuracy: np.ndarray | float, latency_s: np.ndarray, cost: np.ndarray
    ) -> np.ndarray:
        """Vectorised score of each model (or of each posterior draw: arrays broadcast)."""
        value = p_success * accuracy
        if self.kind == "ratio":
            return value / np.maximum(latency_s, 1e-3)
        return value - self.w_latency * latency_s - self.w_cost * cost

    def line(self, p_success: float, latency_s: float, cost: float) -> tuple[float, float]:
        """One model's score as a line in its accuracy, ``(score at accuracy 0, slope)``: :meth:`score` in
        closed form for Python floats, for a policy that scores many accuracy draws of a few models."""
        if self.kind == "ratio":
            return 0.0, p_success / max(latency_s, 1e-3)
        return -self.w_latency * latency_s - self.w_cost * cost, p_success

    @property
    def uses_latency(self) -> bool:
        return self.kind == "ratio" or self.w_latency > 0


@dataclass(frozen=True)
class Ranking:
    """A policy's decision: every eligible model, best first, and P(primary chosen)."""

    order: tuple[str, ...]
    propensity: float

    @property
    def primary(self) -> str:
        return self.order[0]


# rows of the statistics array
N, SUCC, LAT_N, LAT_SUM, LOGLAT_SUM, LOGLAT_SQ, COST_SUM, ACC_N, ACC_SUM, SEEN, RATED = range(11)
ATTEMPT_ROWS = slice(N, COST_SUM + 1)
FEEDBACK_ROWS = slice(ACC_N, ACC_SUM + 1)
#: the rows :meth:`Policy.add_sums` takes, by name (it adds ``lat_n``, ``seen`` and ``rated`` from them)
_SUMMED = {"n": N, "succ": SUCC, "lat_sum": LAT_SUM, "loglat_sum": LOGLAT_SUM, "loglat_sq": LOGLAT_SQ}
_SUMMED |= {"cost_sum": COST_SUM, "acc_n": ACC_N, "acc_sum": ACC_SUM}

#: the shortest latency a log is taken of (a zero or negative clock difference counts as this)
LATENCY_FLOOR_S = 1e-6
#: posterior draws behind :meth:`Policy.statistics`' ``p_best`` and utility interval, and the seed of
#: the generator of their own that draws them, so reading a policy's beliefs leaves its decisions alone
BELIEF_DRAWS = 1000
BELIEF_SEED = 0
#: the standard normal quantile of 0.95: a log-normal latency's 95th percentile is exp(mu + Z95 * sigma)
Z95 = 1.6448536269514722


def log_latency(latency_s: float) -> float:
    """The log of a latency in seconds, floored at :data:`LATENCY_FLOOR_S`."""
    return math.log(LATENCY_FLOOR_S if latency_s < LATENCY_FLOOR_S else latency_s)  # max(), without its call


def served_means(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean latency and cost per successful attempt of each column of ``stats`` (0 where none succeeded)."""
    served = stats[LAT_N] > 0
    zeros = np.zeros(stats.shape[1])
    latency = np.divide(stats[LAT_SUM], stats[LAT_N], out=zeros, where=served)
    return latency, np.divide(stats[COST_SUM], stats[LAT_N], out=zeros.copy(), where=served)


def one_hot(order: np.ndarray, k: int) -> np.ndarray:
    """1 for the first model of an order, 0 for the others: a deterministic policy's ``p_best``."""
    p = np.zeros(k)
    p[order[0]] = 1.0
    return p


class Policy:
    """Base class: statistics, discounting, warm start, point estimates; subclasses implement ``_order``."""

    name: ClassVar[str] = ""
    #: keyword options a route may set for this policy, beyond ``seed`` and ``discount``
    options: ClassVar[tuple[str, ...]] = ()
    #: the Beta prior of success and accuracy in posterior draws (Thompson sampling sets its own)
    prior_alpha: float = 1.0
    prior_beta: float = 1.0

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
        self.stats = np.zeros((11, len(self.models)))
        self._cells: Any = self.stats.data  # stats[row, i] as Python floats: no numpy scalars per update
        self.updates = 0  # undiscounted number of update() and feedback() calls
        self._all = np.arange(len(self.models))  # every model eligible: what _eligible returns in the usual case
        self._all_ids = list(range(len(self.models)))  # the same as Python ints, for a policy that loops over them

    # named views of the statistics rows
    n = property(lambda self: self.stats[N])
    succ = property(lambda self: self.stats[SUCC])
    lat_n = property(lambda self: self.stats[LAT_N])
    lat_sum = property(lambda self: self.stats[LAT_SUM])
    cost_sum = property(lambda self: self.stats[COST_SUM])
    acc_n = property(lambda self: self.stats[ACC_N])
    acc_sum = property(lambda self: self.stats[ACC_SUM])

    # -- learning -------------------------------------------------------------------------------
    def update(self, model: str, success: bool, latency_s: float, cost: float = 0.0) -> None:
        """Learn one attempt's outcome (called right after the attempt)."""
        i = self.index[model]
        if self.discount < 1.0:
            self.stats[ATTEMPT_ROWS] *= self.discount
        s = self._cells
        s[N, i] += 1.0
        s[SEEN, i] += 1.0
        if success:
            loglat = log_latency(latency_s)
            s[SUCC, i] += 1.0
            s[LAT_N, i] += 1.0
            s[LAT_SUM, i] += latency_s
            s[LOGLAT_SUM, i] += loglat
            s[LOGLAT_SQ, i] += loglat * loglat
            s[COST_SUM, i] += cost
        self.updates += 1
        self._changed(i if self.discount == 1.0 else None)

    def feedback(self, model: str, accuracy: float) -> None:
        """Learn one answer's accuracy in [0, 1], whenever it arrives."""
        i = self.index[model]
        if self.discount < 1.0:
            self.stats[FEEDBACK_ROWS] *= self.discount
        self._cells[ACC_N, i] += 1.0
        self._cells[ACC_SUM, i] += accuracy
        self._cells[RATED, i] += 1.0
        self.updates += 1
        self._changed(i if self.discount == 1.0 else None)

    def fit(
        self,
        attempt_models: Sequence[str],
        success: np.ndarray,
        latency_s: np.ndarray,
        cost: np.ndarray,
        feedback_models: Sequence[str] = (),
        accuracy: np.ndarray | None = None,
    ) -> None:
        """Learn a time-ordered history exactly as the same updates one by one would, vectorised.

        The k-th of n events weighs ``discount ** (n - 1 - k)``. Models not in this policy are ignored.
        """
        k = len(self.models)
        idx, keep = self._indices(attempt_models)
        w, decay = self._weights(int(keep.sum()))
        idx = idx[keep]
        ok = np.asarray(success, dtype=float)[keep]
        lat = np.asarray(latency_s, dtype=float)[keep]
        loglat = np.log(np.maximum(lat, LATENCY_FLOOR_S))
        wok = w * ok
        rows = [w, wok, wok, wok * lat, wok * loglat, wok * loglat * loglat, wok * np.asarray(cost, dtype=float)[keep]]
        self.stats[ATTEMPT_ROWS] = self.stats[ATTEMPT_ROWS] * decay + np.stack([np.bincount(idx, r, k) for r in rows])
        self.stats[SEEN] += np.bincount(idx, minlength=k)
        n_events = len(idx)
        if accuracy is not None and len(feedback_models):
            fidx, fkeep = self._indices(feedback_models)
            fw, fdecay = self._weights(int(fkeep.sum()))
            fidx = fidx[fkeep]
            acc = np.asarray(accuracy, dtype=float)[fkeep]
            self.stats[FEEDBACK_ROWS] = self.stats[FEEDBACK_ROWS] * fdecay + np.stack(
                [np.bincount(fidx, fw, k), np.bincount(fidx, fw * acc, k)]
            )
            self.stats[RATED] += np.bincount(fidx, minlength=k)
            n_events += len(fidx)
        self.updates += n_events
        self._changed()

    def add_sums(self, models: Sequence[str], sums: dict[str, np.ndarray]) -> None:
        """Add per-model sums (keys: the statistics' names, e.g. from an aggregate query).

        Exact for an undiscounted policy, whose statistics are plain sums in any order.
        """
        if self.discount != 1.0:
            raise ValueError("sums lose the order a discounted policy needs: use fit()")
        idx, keep = self._indices(models)
        for name, values in sums.items():
            kept = np.asarray(values, dtype=float)[keep]
            np.add.at(self.stats[_SUMMED[name]], idx[keep], kept)
            if name in ("succ", "n", "acc_n"):
                np.add.at(self.stats[{"succ": LAT_N, "n": SEEN, "acc_n": RATED}[name]], idx[keep], kept)
            if name in ("n", "acc_n"):
                self.updates += int(kept.sum())
        self._changed()

    #: events older than this weight no longer count when a discounted policy warm-starts
    NEGLIGIBLE_WEIGHT = 1e-12

    def horizon(self) -> int | None:
        """How many of the latest events decide a discounted policy's statistics (None: all)."""
        if self.discount == 1.0:
            return None
        return math.ceil(math.log(self.NEGLIGIBLE_WEIGHT) / math.log(self.discount))

    def _indices(self, models: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.fromiter((self.index.get(m, -1) for m in models), dtype=np.int64, count=len(models))
        return idx, idx >= 0

    def _weights(self, n: int) -> tuple[np.ndarray, float]:
        """Weights of n time-ordered events (the last weighs 1) and the decay of older statistics."""
        if self.discount == 1.0:
            return np.ones(n), 1.0
        return self.discount ** np.arange(n - 1, -1, -1, dtype=float), self.discount**n

    def _changed(self, model: int | None = None) -> None:
        """Hook for subclasses that cache anything derived from the statistics: called after every
        change, with the index of the only model whose statistics changed, or None when any may have
        (code that writes ``stats`` directly calls it too)."""

    # -- deciding -------------------------------------------------------------------------------
    def rank(self, eligible: Sequence[str] | None = None) -> Ranking:
        """Order the eligible models (default: all), best first, with P(primary chosen)."""
        return self._ranking(self._eligible(eligible), None)

    def rank_under_load(self, eligible: Sequence[str] | None, latency: Mapping[str, float]) -> Ranking:
        """:meth:`rank` with the objective taking each model named in ``latency`` at that latency
        (seconds: its expected latency at its current load) instead of the average it learned."""
        return self._ranking(self._eligible(eligible), self._latency_now(latency))

    def _ranking(self, idx: np.ndarray, latency: np.ndarray | None) -> Ranking:
        """The Ranking of :meth:`_order` over the eligible indices ``idx``, as model names."""
        order, propensity = self._order(idx, latency)
        models = self.models
        return Ranking(tuple([models[i] for i in order]), propensity)

    def _latency_now(self, latency: Mapping[str, float]) -> np.ndarray:
        """The given latencies indexed like ``models``, NaN for the models not given."""
        now = np.full(len(self.models), np.nan)
        for name, value in latency.items():
            now[self.index[name]] = value
        return now

    def _eligible(self, eligible: Sequence[str] | None) -> np.ndarray:
        if eligible is None:
            return self._all
        if not eligible:
            raise ValueError("no eligible model to rank")
        if len(eligible) == len(self.models) and tuple(eligible) == self.models:
            return self._all  # the router's usual case: every model eligible, in configured order
        return np.array([self.index[m] for m in eligible], dtype=np.int64)

    def _order(self, idx: np.ndarray, latency: np.ndarray | None = None) -> tuple[Sequence[int], float]:
        """The eligible indices ``idx`` best first and P(primary chosen); ``latency`` (NaN: not
        given) replaces the learned latency in the objective (see :meth:`rank_under_load`)."""
        raise NotImplementedError

    def primary_probabilities(self) -> np.ndarray | None:
        """P(each model is the primary) in the policy's current state, indexed like ``models``, for a
        random ranking (a ranking of propensity 1 needs none); None if the policy does not expose it."""
        return None

    # -- point estimates --------------------------------------------------------------------------
    def _accuracy(self) -> np.ndarray | float:
        """Posterior-mean accuracy per model, or 1 when no feedback has ever arrived."""
        if not self.stats[ACC_N].any():
            return 1.0
        return (self.stats[ACC_SUM] + 1.0) / (self.stats[ACC_N] + 2.0)

    def means(self, latency_now: np.ndarray | None = None) -> dict[str, Any]:
        """Point estimates per model: success (Laplace-smoothed), accuracy, mean latency (or the
        one in ``latency_now`` where given) and cost."""
        s = self.stats
        latency, cost = served_means(s)
        if latency_now is not None:
            latency = np.where(np.isnan(latency_now), latency, latency_now)
        success = (s[SUCC] + 1.0) / (s[N] + 2.0)
        return {"success": success, "accuracy": self._accuracy(), "latency_s": latency, "cost": cost}

    def scores(self, latency_now: np.ndarray | None = None) -> np.ndarray:
        """The objective at the point estimates, per model (see :meth:`means`)."""
        m = self.means(latency_now)
        return self.objective.score(m["success"], m["accuracy"], m["latency_s"], m["cost"])

    def statistics(self) -> dict[str, np.ndarray]:
        """What the policy believes of each model now, one array per column, indexed like ``models``.

        ``rank`` (1 = primary now; see :meth:`_belief`), ``p_best`` (probability of being the best
        under the current belief), ``utility`` (the objective at the point estimates) with its 90 %
        interval ``utility_low``/``utility_high`` (from :data:`BELIEF_DRAWS` posterior draws: Beta
        success and accuracy, Normal-Inverse-Gamma log-latency), ``n`` and ``n_rated`` (attempts and
        feedback learned, not discounted), ``n_effective`` (the discounted attempt count the
        estimates rest on), ``success_rate``, ``accuracy``, ``latency_p50_s``/``latency_p95_s``
        (log-normal fit of successful latencies; NaN before one) and ``cost`` (per successful
        attempt). The draws come from a generator of their own, so reading never moves the
        policy's decisions.
        """
        k = len(self.models)
        draws = self._posterior_scores(np.random.default_rng(BELIEF_SEED), BELIEF_DRAWS)
        m = self.means()
        utility = self.objective.score(m["success"], m["accuracy"], m["latency_s"], m["cost"])
        order, p_best = self._belief(draws, utility)
        rank = np.empty(k, dtype=np.int64)
        rank[np.asarray(order)] = np.arange(1, k + 1)
        ordered = np.sort(draws, axis=0)
        low, high = ordered[round(0.05 * (BELIEF_DRAWS - 1))], ordered[round(0.95 * (BELIEF_DRAWS - 1))]
        n, mu, sq_dev = self._log_latency_moments()
        served = n > 0
        sigma = np.sqrt(np.divide(sq_dev, n, out=np.zeros(k), where=served))
        s = self.stats
        return {
            "rank": rank,
            "p_best": p_best,
            "utility": utility,
            "utility_low": low,
            "utility_high": high,
            "n": np.rint(s[SEEN]).astype(np.int64),
            "n_effective": s[N].copy(),
            "n_rated": np.rint(s[RATED]).astype(np.int64),
            "success_rate": m["success"],
            "accuracy": np.broadcast_to(m["accuracy"], (k,)).copy(),
            "latency_p50_s": np.where(served, np.exp(mu), np.nan),
            "latency_p95_s": np.where(served, np.exp(mu + Z95 * sigma), np.nan),
            "cost": m["cost"],
        }

    def _belief(self, draws: np.ndarray, utility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every model's index, primary now first, and each model's probability of being the best,
        given ``BELIEF_DRAWS`` posterior draws of the scores and the point utility."""
        raise NotImplementedError

    def _posterior_scores(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` joint posterior draws of every model's score from ``rng``, shape (size, models)."""
        return self.objective.score(*self._posterior_parts(rng, size))

    def _posterior_parts(
        self, rng: np.random.Generator, size: int
    ) -> tuple[np.ndarray, float | np.ndarray, np.ndarray, np.ndarray]:
        """What :meth:`_posterior_scores` scores: draws of P(success) and accuracy (1 without
        feedback), latency draws (zeros when the objective ignores latency) and mean cost."""
        s = self.stats
        k = len(self.models)
        a, b = self.prior_alpha, self.prior_beta
        shapes = [a + s[SUCC], b + np.maximum(s[N] - s[SUCC], 0.0)]
        rated = s[ACC_N].any()
        if rated:
            shapes += [a + s[ACC_SUM], b + np.maximum(s[ACC_N] - s[ACC_SUM], 0.0)]
        g = rng.standard_gamma(np.concatenate(shapes), size=(size, len(shapes) * k))
        p_success = g[:, :k] / (g[:, :k] + g[:, k : 2 * k])
        accuracy = g[:, 2 * k : 3 * k] / (g[:, 2 * k : 3 * k] + g[:, 3 * k :]) if rated else 1.0
        latency = self._latency_draws(rng, size) if self.objective.uses_latency else np.zeros(k)
        return p_success, accuracy, latency, served_means(s)[1]

    def _log_latency_moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per model: successful attempts, mean log-latency (0 without any) and sum of squared deviations."""
        s = self.stats
        n = s[LAT_N]
        mean = np.divide(s[LOGLAT_SUM], n, out=np.zeros_like(n), where=n > 0)
        return n, mean, np.maximum(s[LOGLAT_SQ] - n * mean * mean, 0.0)

    def _latency_draws(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Median latency exp(mu) with (mu, sigma^2) from each model's Normal-Inverse-Gamma posterior."""
        s = self.stats
        mu0, kappa0, alpha0, beta0 = math.log(0.5), 1.0, 1.0, 0.5  # weak prior around 0.5 s
        n, mean, sq_dev = self._log_latency_moments()
        kappa = kappa0 + n
        mu = (kappa0 * mu0 + s[LOGLAT_SUM]) / kappa
        alpha = alpha0 + n / 2.0
        beta = beta0 + 0.5 * sq_dev + kappa0 * n * (mean - mu0) ** 2 / (2.0 * kappa)
        sigma2 = beta / rng.standard_gamma(alpha, size=(size, len(n)))
        return np.exp(np.minimum(mu + np.sqrt(sigma2 / kappa) * rng.standard_normal((size, len(n))), 7.0))

    def preferences(self) -> list[dict[str, Any]]:
        """Deprecated: use :meth:`statistics` (or ``Router.preferences()``, a DataFrame)."""
        warnings.warn("Policy.preferences() is deprecated; use Policy.statistics()", DeprecationWarning, stacklevel=2)
        return self._preference_rows()

    def _preference_rows(self) -> list[dict[str, Any]]:
        """The old shape of :meth:`preferences`: one dict per model, best first by the point estimate."""
        m = self.means()
        score = self.scores()
        accuracy = np.broadcast_to(m["accuracy"], score.shape)
        return [
            {
                "model": self.models[i],
                "score": float(score[i]),
                "success": float(m["success"][i]),
                "accuracy": float(accuracy[i]),
                "latency_s": float(m["latency_s"][i]),
                "cost": float(m["cost"][i]),
                "n": float(self.stats[N, i]),
                "feedback_n": float(self.stats[ACC_N, i]),
            }
            for i in np.argsort(-score, kind="stable")
        ]

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_cells"}  # a memoryview does not pickle

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cells = self.stats.data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(models={list(self.models)}, discount={self.discount})"


class StaticPolicy(Policy):
    """The fixed table: always the configured order (propensity 1); keeps statistics for reading only."""

    name = "static"

    def rank(self, eligible: Sequence[str] | None = None) -> Ranking:
        """The eligible models in configured order: a filter, with no numpy on a call's path."""
        if eligible is None:
            return Ranking(self.models, 1.0)
        keep = set(eligible)
        order = tuple([m for m in self.models if m in keep])
        if not order or len(order) != len(keep):  # nothing eligible, or names the policy does not know
            return super().rank(eligible)
        return Ranking(order, 1.0)

    def _order(self, idx: np.ndarray, latency: np.ndarray | None = None) -> tuple[Sequence[int], float]:
        return np.sort(idx).tolist(), 1.0

    def _belief(self, draws: np.ndarray, utility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The configured order, its first model surely primary."""
        return self._all, one_hot(self._all, len(self.models))


class RandomPolicy(Policy):
    """Uniformly random order: the logging policy that makes offline evaluation exact."""

    name = "random"

    def _order(self, idx: np.ndarray, latency: np.ndarray | None = None) -> tuple[Sequence[int], float]:
        return self.rng.permutation(idx).tolist(), 1.0 / len(idx)

    def _belief(self, draws: np.ndarray, utility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every model equally likely first (its ``rank`` follows the utility it has seen, for reading)."""
        k = len(self.models)
        return np.argsort(-utility, kind="stable"), np.full(k, 1.0 / k)

    def primary_probabilities(self) -> np.ndarray:
        """Uniform over the models."""
        return np.full(len(self.models), 1.0 / len(self.models))


class _IndexPolicy(Policy):
    """Deterministic ranking by an index per model (propensity 1); models never tried come first.

    ``c`` scales the exploration term of the index. A model's index is a function of its own
    statistics, the total count and the objective only, so models with equal statistics tie and
    keep their configured order (the sort is stable). The parts that come from a model's own
    statistics (mean, penalty, count) are cached and recomputed only for the models whose
    statistics changed since the last decision (all of them when a discount fades every model),
    so a decision computes just the exploration part from the total count, in plain Python: for
    the few models of a route (up to about ten) several times cheaper than numpy's per-call overhead.
    """

    options = ("c",)
    default_c: ClassVar[float] = 1.0

    def __init__(self, models: Sequence[str], *, c: float | None = None, **common: Any) -> None:
        super().__init__(models, **common)
        c = self.default_c if c is None else c
        if c < 0:
            raise ValueError(f"c must be >= 0, got {c}")
        self.c = float(c)
        k = len(self.models)
        # per model, from its own statistics (see _refresh)
        self._mean = [0.0] * k  # success rate x accuracy, clipped to [0, 1]
        self._penalty = [0.0] * k  # w_latency x mean latency + w_cost x mean cost
        self._latency = [0.0] * k  # mean latency (0 before a success)
        self._n = [0.0] * k  # the (discounted) attempt count
        self._count = [0.0] * k  # the same, at least 1e-12; 0 for a model never tried
        self._acc_n = [0.0] * k  # the (discounted) feedback count
        self._total = 0.0  # the attempt count of every model
        self._rated = False  # whether any feedback has arrived (before, accuracy counts as 1)
        self._stale = set(self._all_ids)  # the models whose cached parts are out of date
        self._rankings: dict[tuple[int, ...], Ranking] = {}  # see _ranking

    def _changed(self, model: int | None = None) -> None:
        if model is None:
            self._stale.update(self._all_ids)
        else:
            self._stale.add(model)

    def _refresh(self) -> list[int]:
        """Recompute the cached parts of the stale models (every model's when the first feedback
        arrives) and say which (conditional expressions where min/max would cost a call each)."""
        s, stale, n_, acc_n = self._cells, self._stale, self._n, self._acc_n
        for i in stale:
            n_[i], acc_n[i] = s[N, i], s[ACC_N, i]
        rated = any(acc_n)
        if rated != self._rated:  # accuracy now counts as 1 for no model, or (reset) for every model
            self._rated = rated
            stale.update(self._all_ids)
        count, mean, penalty, latency = self._count, self._mean, self._penalty, self._latency
        w_latency, w_cost = self.objective.w_latency, self.objective.w_cost
        for i in stale:
            n, served, lat_sum = n_[i], s[LAT_N, i], s[LAT_SUM, i]
            floor = n if n > 1e-12 else 1e-12
            count[i] = floor if n > 0 else 0.0
            m = s[SUCC, i] / floor * ((s[ACC_SUM, i] + 1.0) / (acc_n[i] + 2.0) if rated else 1.0)
            mean[i] = 0.0 if m < 0.0 else 1.0 if m > 1.0 else m  # min(max(m, 0), 1), NaN kept as max/min keep it
            if served > 0:
                penalty[i] = (w_latency * lat_sum + w_cost * s[COST_SUM, i]) / served
                latency[i] = lat_sum / served
            else:
                penalty[i] = latency[i] = 0.0
        refreshed = list(stale)
        stale.clear()
        self._total = sum(n_)
        return refreshed

    def _order(self, idx: np.ndarray, latency: np.ndarray | None = None) -> tuple[Sequence[int], float]:
        if self._stale:
            self._refresh()
        ids = self._all_ids if idx is self._all else idx.tolist()
        penalty = self._penalty
        if latency is not None:  # a given latency (not NaN) replaces the learned mean in the penalty
            w_latency = self.objective.w_latency
            penalty = [
                p if now != now else p + w_latency * (now - mean)
                for p, now, mean in zip(penalty, latency.tolist(), self._latency)
            ]
        index = self._index_values(ids, penalty)
        return sorted(ids, key=index.__getitem__, reverse=True), 1.0

    def _index_values(self, ids: list[int], penalty: list[float]) -> dict[int, float]:
        """The index of each model in ``ids`` (infinite for a model never tried), given its penalty."""
        raise NotImplementedError

    #: how many Rankings an index policy keeps for reuse (its orders recur) before it starts afresh
    RANKINGS_KEPT: ClassVar[int] = 256

    def _ranking(self, idx: np.ndarray, latency: np.ndarray | None) -> Ranking:
        """As for every policy, but each order's Ranking is built once and reused while it recurs."""
        order = tuple(self._order(idx, latency)[0])
        ranking = self._rankings.get(order)
        if ranking is None:
            if len(self._rankings) >= self.RANKINGS_KEPT:
                self._rankings.clear()
            models = self.models
            ranking = self._rankings[order] = Ranking(tuple([models[i] for i in order]), 1.0)
        return ranking

    def _belief(self, draws: np.ndarray, utility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The index order a decision takes now (deterministic), its first model surely primary."""
        order = np.asarray(self._order(self._all)[0])
        return order, one_hot(order, len(self.models))


class EpsilonGreedyPolicy(Policy):
    """With probability epsilon a uniformly random order, else the order of the point estimates."""

    name = "epsilon_greedy"
    options = ("epsilon",)

    def __init__(self, models: Sequence[str], *, epsilon: float = 0.1, **common: Any) -> None:
        super().__init__(models, **common)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = float(epsilon)

    def _order(self, idx: np.ndarray, latency: np.ndarray | None = None) -> tuple[Sequence[int], float]:
        greedy = idx[np.argsort(-self.scores(latency)[idx], kind="stable")]
        explore = self.rng.random() < self.epsilon
        order = self.rng.permutation(idx) if explore else greedy
        share = self.epsilon / len(idx)
        return order.tolist(), share + (1.0 - self.epsilon) * float(order[0] == greedy[0])

    def _belief(self, draws: np.ndarray, utility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The greedy order of the point estimates (exploration is no belief), its first model the best."""
        order = np.argsort(-utility, kind="stable")
        return order, one_hot(order, len(self.models))


class UCB1Policy(_IndexPolicy):
    """UCB1: empirical score plus ``c * sqrt(2 ln N / n)``."""

    name = "ucb1"

    def _index_values(self, ids: list[int], penalty: list[float]) -> dict[int, float]:
        shared = 2.0 * math.log(max(self._total, 1.0 + 1e-9))
        c, mean, count, sqrt = self.c, self._mean, self._count, math.sqrt
        return {i: mean[i] - penalty[i] + c * sqrt(shared / count[i]) if count[i] else math.inf for i in ids}


def kl_ucb_bound(p: float, budget: float) -> float:
    """The largest q in [p, 1] with ``KL(p, q) <= budget`` for Bernoulli KL, to about 1e-10."""
    return _kl_ucb(p, budget)[0]


#: (q, x): a bound q, and the root ``x = -log(1 - q)`` Newton's method found; x is None without a root
_Bound = tuple[float, float | None]


def _kl_ucb(p: float, budget: float, start: float = math.inf) -> _Bound:
    """:func:`kl_ucb_bound` with its root, optionally started from ``start``: a root nearby, or the
    end of the tangent at one (at or above the root), as :meth:`KLUCBPolicy._root` gives.

    Newton's method on ``h(x) = KL(p, 1 - exp(-x)) - budget``, where ``h`` is convex, increasing
    above ``p`` (``h'(x) = (q - p) / q``) and close to linear far from it, so Newton steps from above
    decrease monotonically to the root (a start below it is sent above it by the first step). The
    start is ``start`` (from a tangent's end, usually one step from the root), capped by the upper
    bound ``x <= (budget + H(p)) / (1 - p)`` (from ``-p log q >= 0``); without one, the smaller of
    that bound and, when the budget is small enough for it to be accurate, a
    third-order expansion of KL around ``p`` (if that lands below the root, the first step goes
    above it). Newton steps stop after a step from above whose remaining error is below 1e-10:
    usually two or three from scratch.
    """
    if budget <= 0.0 or p >= 1.0:
        return min(max(p, 0.0), 1.0), None
    if p < 1e-12:
        return -math.expm1(-budget), budget  # KL(0, q) = -log(1 - q), to 1e-11 for p this small
    log = math.log
    p1 = 1.0 - p
    neg_entropy = p * log(p) + p1 * log(p1)
    x = (budget - neg_entropy) / p1
    x = x if x < start else start  # min(start, x), without its call
    if start == math.inf:
        var = p * p1
        g = math.sqrt(2.0 * var * budget)
        skew = (p1 - p) * g / (3.0 * var)
        if -0.5 < skew < 0.5 and p + g * (1.0 + skew) < 1.0:
            x = min(x, -math.log1p(-(p + g * (1.0 + skew))))
    offset = neg_entropy - budget
    for _ in range(_KL_MAX_STEPS):
        q = -math.expm1(-x)
        if q <= p:  # a budget too small to move q off p in floating point
            break
        step = (offset - p * log(q) + p1 * x) * q / (q - p)
        x -= step
        if step >= 0.0 and step * step * p * (1.0 - q) * (1.0 - q) < 2e-10 * q * (q - p):
            break
    return -math.expm1(-x), x


_KL_MAX_STEPS = 50


def _tangent(p: float, q: float) -> tuple[float, float]:
    """At the root ``x`` of the bound ``q = 1 - exp(-x) > p``: ``dx / dbudget``, and how far in x
    the tangent stays exact to 1e-10 (its error is ``p (1 - q)^2 dx^2 / 2q(q - p)`` in q; at most 1e-3)."""
    curvature = p * (1.0 - q) * (1.0 - q)
    exact = 2e-10 * q * (q - p)
    reach = math.sqrt(exact / curvature) if curvature > 0.0 else 1e-3
    return q / (q - p), reach if reach < 1e-3 else 1e-3


class KLUCBPolicy(_IndexPolicy):
    """KL-UCB (Garivier & Cappe 2011): the largest q with ``n * KL(mean, q) <= log N + c log log N``.

    The Bernoulli KL applies to success x accuracy in [0, 1]; latency and cost are then subtracted.
    The bound is found by Newton's method (:func:`kl_ucb_bound`) and kept with the tangent at its
    root, written in the budget's shared part ``s = log N + c log log N``: ``q = 1 - exp(offset - s
    * rate)`` while ``s`` stays in the window where that tangent is exact to 1e-10. So a decision
    computes one exponential per model, and Newton's method only for a model whose mean or count
    changed (started from its previous root) or whose window the total count has left (started
    from the tangent's end: usually one step). Models with equal mean and count share one entry,
    so they tie exactly.
    """

    name = "kl_ucb"
    default_c = 0.0

    def __init__(self, models: Sequence[str], **options: Any) -> None:
        super().__init__(models, **options)
        k = len(self.models)
        # (mean, count) -> [bound, root x, window low, window high, offset, rate], one per pair in use
        self._now: dict[tuple[float, float], list[Any]] = {}
        self._keys: list[tuple[float, float] | None] = [None] * k  # each model's (mean, count)
        self._entry: list[list[Any] | None] = [None] * k  # and its entry in _now (None: never tried)
        self._last: list[float | None] = [None] * k  # each model's latest root x: where its next Newton starts

    def _refresh(self) -> list[int]:
        """As for every index policy, then each refreshed model's entry: the one of its (mean, count)."""
        refreshed = super()._refresh()
        now, entry, keys = self._now, self._entry, self._keys
        for i in refreshed:
            old, key = keys[i], (self._mean[i], self._count[i]) if self._count[i] else None
            if old == key:
                continue
            previous = entry[i]
            if previous is not None and previous[1] is not None:
                self._last[i] = previous[1]
            keys[i] = key
            e = now.get(key) if key is not None else None
            if key is not None and e is None:  # a new pair: an empty window, rooted at the next decision
                e = now[key] = [0.0, None, math.inf, -math.inf, 0.0, 0.0]
            entry[i] = e
            if old is not None and old not in keys:
                del now[old]
        return refreshed

    def _index_values(self, ids: list[int], penalty: list[float]) -> dict[int, float]:
        total = self._total
        log_total = math.log(total) if total > math.e else 1.0
        shared = log_total + self.c * math.log(log_total) if self.c else log_total
        entry, expm1 = self._entry, math.expm1
        index = {}
        for i in ids:
            e = entry[i]
            if e is None:
                index[i] = math.inf
                continue
            if e[2] < shared < e[3]:
                e[0] = -expm1(e[4] - shared * e[5])
            else:
                self._root(i, e, shared)
            index[i] = e[0] - penalty[i]
        return index

    def _root(self, i: int, e: list[Any], shared: float) -> None:
        """Model i's bound at ``shared`` and the window of the tangent at a new root, into ``e``.

        A model whose window the growing total count has left is rooted ahead, at ``shared`` plus
        0.9 times its last window's half-width, so its next window lasts about twice as long.
        """
        p, n = self._mean[i], self._count[i]
        at, start = shared, self._last[i]
        if e[1] is not None:
            if shared >= e[3]:
                at = shared + 0.45 * (e[3] - e[2])
            start = at * e[5] - e[4]  # the tangent's end: at or above the root, close to it
        elif start is None or -math.expm1(-start) <= p:
            start = math.inf
        while True:  # the root at ``at`` and the window of s where its tangent is exact (empty without a root)
            budget = at / n
            q, x = _kl_ucb(p, budget, start)
            if x is not None and q > p:
                slope, reach = _tangent(p, q)
                rate = slope / n
                low, high, offset = at - reach / rate, at + reach / rate, budget * slope - x
            else:
                low, high, offset, rate = math.inf, -math.inf, 0.0, 0.0
            if at == shared or low < shared < high:
                break
            at, start = shared, math.inf  # the window shrank below the step ahead: root at ``shared``
        if low < high:  # the bound from the tangent even at its root, so models that tie, tie exactly
            q = -math.expm1(offset - shared * rate)
        e[:] = [q, x, low, high, offset, rate]

    def _belief(self, draws: np.ndarray, utility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As for every index policy, on a copy of the entries, so reading leaves the next decision's starts alone."""
        if self._stale:
            self._refresh()
        saved = copy.deepcopy((self._now, self._keys, self._entry, self._last))
        try:
            return super()._belief(draws, utility)
        finally:
            self._now, self._keys, self._entry, self._last = saved


#: per draw of a Thompson batch the eligible models best first, each model's share of wins, the Rankings built so far
_Ordering = tuple[list[list[int]], np.ndarray, list[Ranking | None]]


class ThompsonPolicy(Policy):
    """Thompson sampling: rank by one joint posterior draw of each model's score.

    Posteriors: success and accuracy are Beta(``prior_alpha`` + successes, ``prior_beta`` +
    failures), fractional accuracy counted as pseudo-counts; log-latency of successful attempts is
    Normal-Inverse-Gamma (the latency entering the score is the draw's median, ``exp(mu)``); prices
    are known, so cost is its running mean. Skipped parts: accuracy when no feedback has arrived,
    latency when the objective ignores it.

    Draws come in vectorised batches of ``samples`` joint draws. A decision picks one draw of the
    current batch uniformly at random and ranks by it, so the primary's propensity is exactly the
    share of the batch's draws whose best model it is. The batch is redrawn when statistics have
    changed, at most every ``max(1, min(max_lag, 1% of updates so far))`` updates: early on after
    every update, later in amortised batches, which keeps a decision cycle to microseconds.
    """

    name = "thompson"
    options = ("prior_alpha", "prior_beta", "samples", "max_lag")

    def __init__(
        self,
        models: Sequence[str],
        *,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
        samples: int = 256,
        max_lag: int = 32,
        **common: Any,
    ) -> None:
        super().__init__(models, **common)
        if prior_alpha <= 0 or prior_beta <= 0:
            raise ValueError("prior_alpha and prior_beta must be > 0")
        if samples < 16:
            raise ValueError(f"samples must be >= 16, got {samples}")
        if max_lag < 1:
            raise ValueError(f"max_lag must be >= 1, got {max_lag}")
        self.prior_alpha = float(prior_alpha)
        self.prior_beta = float(prior_beta)
        self.samples = int(samples)
        self.max_lag = int(max_lag)
        self._batch: np.ndarray | None = None
        self._parts: tuple[np.ndarray, float | np.ndarray, np.ndarray, np.ndarray] | None = None  # the batch's parts
        self._stale = 0
        self._orders: dict[bytes | tuple[bytes | None, bytes] | None, _Ordering] = {}  # see _ordering

    def _changed(self, model: int | None = None) -> None:
        self._stale += 1

    def draw(self, size: int) -> np.ndarray:
        """``size`` joint posterior draws of every model's score, shape (size, models)."""
        return self._posterior_scores(self.rng, size)

    def _belief(self, draws: np.ndarray, utility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each model's share of the draws it wins; ranked by that share, then by utility."""
        p_best = np.bincount(draws.argmax(axis=1), minlength=len(self.models)) / len(draws)
        return np.lexsort((-utility, -p_best)), p_best

    def _current_batch(self) -> np.ndarray:
        lag = max(1, min(self.max_lag, self.updates // 100))
        if self._batch is None or self._stale >= lag:
            self._parts = self._posterior_parts(self.rng, self.samples)
            self._batch = self.objective.score(*self._parts)  # what draw() would give
            self._stale = 0
            self._orders.clear()
        return self._batch

    def win_probabilities(self, eligible: Sequence[str] | None = None) -> np.ndarray:
        """P(each model is the primary) under the current batch of draws, indexed like ``models``."""
        return self._ordering(self._eligible(eligible))[1]

    def primary_probabilities(self) -> np.ndarray:
        """:meth:`win_probabilities` of every model (a copy: the policy reuses its array)."""
        return self.win_probabilities().copy()

    def rank(self, eligible: Sequence[str] | None = None) -> Ranking:
        """One draw of the batch, picked uniformly at random: its order, and the primary's share of wins.

        The Ranking of each draw is built the first time it is picked and reused until the batch
        is redrawn, so a decision allocates nothing but the random number.
        """
        return self._pick(self._ordering(self._eligible(eligible)))

    def rank_under_load(self, eligible: Sequence[str] | None, latency: Mapping[str, float]) -> Ranking:
        """:meth:`rank` on the same batch of draws, rescored with the given models' latency in place
        of their drawn one: the propensity is still exactly the primary's share of the batch's wins.
        The orders are kept per set of given latencies until the batch is redrawn, as :meth:`rank` keeps its own."""
        now = self._latency_now(latency) if self.objective.uses_latency else None
        return self._pick(self._ordering(self._eligible(eligible), now))

    def _pick(self, ordering: _Ordering) -> Ranking:
        """One draw of the batch, picked uniformly at random: its order (built once) and the primary's share of wins."""
        orders, wins, rankings = ordering
        j = int(self.rng.random() * self.samples)
        ranking = rankings[j]
        if ranking is None:
            order = orders[j]
            models = self.models
            ranking = rankings[j] = Ranking(tuple([models[i] for i in order]), float(wins[order[0]]))
        return ranking

    def _ordering(self, idx: np.ndarray, latency: np.ndarray | None = None) -> _Ordering:
        """Per draw of the batch, the eligible models best first; each model's share of wins
        (indexed by model, zero for models not eligible); and the Rankings built so far, per draw.
        With ``latency`` (NaN: not given), the draws scored with those latencies."""
        batch = self._current_batch()
        eligible = None if idx is self._all else idx.tobytes()
        given = None if latency is None or np.isnan(latency[idx]).all() else latency
        key = eligible if given is None else (eligible, bytes(given[idx].tobytes()))
        cached = self._orders.get(key)
        if cached is None:
            if given is not None:
                assert self._parts is not None
                success, accuracy, drawn, cost = self._parts
                batch = self.objective.score(success, accuracy, np.where(np.isnan(given), drawn, given), cost)
            pos = np.argsort(-batch[:, idx], axis=1, kind="stable")
            wins = np.zeros(len(self.models))
            wins[idx] = np.bincount(pos[:, 0], minlength=len(idx)) / self.samples
            cached = self._orders[key] = (idx[pos].tolist(), wins, [None] * self.samples)
        return cached
