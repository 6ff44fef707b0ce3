"""Contextual (per-prompt) policies: each model's accuracy is a Bayesian linear function of the prompt's features.

Per model, a Gaussian posterior with a diagonal covariance over the weights of the
:class:`~zeta_adaptive._features.Featurizer`'s space models the accuracy of that model's answer to
a prompt with features x as ``x . w`` (the bias slot's prior mean is 0.5). Feedback updates the
posterior with one Kalman (assumed-density) step on the prompt's non-zero features only: the
exact Bayesian update of the Gaussian linear model, projected back onto a diagonal covariance. So
a decision and an update cost O(models x non-zero features), whatever the dimension. With ``idf``
(the default) the hashed n-gram part of x is reweighted by each slot's inverse document frequency
among the prompts learned so far, counted online by the policy itself (so warm start and replay,
which relearn the same prompts, rebuild it), and rescaled to unit norm.

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

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
from sqlalchemy import select

from ._features import DENSE_NAMES, Features, Featurizer
from ._policies import BELIEF_DRAWS, BELIEF_SEED, SUCC, N, Policy, Ranking, one_hot, served_means
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


class _Context(NamedTuple):
    """A prompt as the linear model sees it, and the model's weights at its slots (valid until the next update)."""

    slots: np.ndarray  # the non-zero slots, hashed n-grams first
    x: np.ndarray  # the values the model sees
    hashed: int  # how many of the slots are hashed n-grams
    df: np.ndarray | None  # with idf: their document frequencies
    block: np.ndarray  # (2 rows, slots): every row's weights at the slots, then their variances (decayed)
    # x . w of every row (models, then the shared row) and its variance, as Python floats: a decision and an
    # update read a handful of them (cheaper than numpy's calls)
    mean: list[float]
    var: list[float]


class _Parts(NamedTuple):
    """What the objective needs of each model besides its accuracy at x."""

    ok: np.ndarray  # successes + 1 (the success rate's Beta posterior)
    failed: np.ndarray  # failures + 1
    latency: np.ndarray  # mean latency of a successful attempt (0 if none)
    cost: np.ndarray  # mean cost of a successful attempt (0 if none)
    untried: np.ndarray  # never attempted

    def per_model(self) -> list[tuple[float, float, float, float, bool]]:
        """The same by model, as Python values (a decision reads a handful: cheaper than numpy's calls)."""
        return list(zip(*(p.tolist() for p in self), strict=True))


#: a decision reads the per-model statistics as they were at most this many updates ago (as the
#: Thompson policy's batches do): after every update early on, then every 1 % of updates up to this
MAX_LAG = 32


class ContextualPolicy(Policy):
    """Base of the per-prompt policies: the diagonal Gaussian linear model of accuracy per model.

    A model's accuracy at x is ``x . (w_shared + w_model)``: the shared weights learn from every
    model's feedback what makes a prompt easy or hard, the model's own weights (prior variance
    ``gap_var``, usually smaller than ``prior_var``) how that model departs from the others. The
    gap between two models is thus shrunk toward zero and estimated from its own evidence only.

    Per slot, one column of ``table`` holds every row's weight mean, then their variances, so a
    prompt's weights are one gather and its moments two products. The prompt's vector and weights are kept from
    a decision to the feedback on the same :class:`Features` until the next update.
    """

    contextual: ClassVar[bool] = True
    options: ClassVar[tuple[str, ...]] = (
        "feature_bits",
        "max_chars",
        "prior_var",
        "gap_var",
        "noise_var",
        "idf",
    )

    def __init__(
        self,
        models: Sequence[str],
        *,
        feature_bits: int = 16,
        max_chars: int = 4096,
        prior_var: float = 0.1,
        gap_var: float = 0.05,
        noise_var: float = 0.25,
        idf: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(models, **common)
        if prior_var <= 0 or gap_var <= 0 or noise_var <= 0:
            raise ValueError("prior_var, gap_var and noise_var must be > 0")
        if not isinstance(idf, bool):
            raise ValueError(f"idf must be true or false, got {idf!r}")
        self.featurizer = Featurizer(feature_bits, max_chars)
        self.hashed = self.featurizer.hashed
        self.bias = self.hashed  # the first dense slot is the constant 1
        self.idf = bool(idf)
        self.df = np.zeros(self.hashed, dtype=np.int64)  # in how many learned prompts each hashed slot occurs
        self.docs = 0
        self.log_docs = 1.0  # 1 + log(docs + 1)
        self._log1p = np.log1p(np.arange(1024.0))  # log(1 + df) by df, grown with docs
        k = len(self.models)
        self.rows = r = k + 1  # one row of weights per model, then the shared row
        self.noise_var = float(noise_var)
        prior_var_rows = np.r_[np.full(k, float(gap_var)), float(prior_var)]
        self.prior_precision = 1.0 / prior_var_rows
        size = self.featurizer.size
        self.table = np.zeros((2 * r, size))
        self.table[r:] = prior_var_rows[:, None]
        self.table[k, self.bias] = 0.5
        self.touched = np.zeros(self.featurizer.size, dtype=np.int64)  # the clock when each slot was last updated
        self.clock = 0  # contextual updates so far
        self.no_features = Features(np.array([self.bias], dtype=np.int64), np.array([1.0]))
        self._learns = [np.array([i, k, r + i, r + k]) for i in range(k)]  # a model's rows and the shared one's
        # their offsets in the flattened table, as a column: plus a prompt's slots, where its update goes
        self._flat = [(rows * size)[:, None] for rows in self._learns]
        self._last: tuple[Features | None, int, _Context] | None = None
        self._parts_now: list[tuple[float, float, float, float, bool]] | None = None
        self._stale = 0

    # -- the prompt's vector and its weights ----------------------------------------------------
    def _state(self, features: Features | None) -> _Context:
        """The prompt's :class:`_Context` (None: the bias alone), kept until the next update.

        With ``idf``, the hashed n-gram part is reweighted by its inverse document frequency among
        the prompts learned so far (``1 + log((docs + 1) / (df + 1))``) and rescaled to unit norm:
        words every prompt has (the template's) weigh less, the rarer words that tell prompts apart more.
        """
        last = self._last
        if last is not None and last[0] is features and last[1] == self.clock:
            return last[2]
        j, v = (features or self.no_features).indices, (features or self.no_features).values
        h = self._hashed_count(j) if features is not None else 0
        df = None
        if self.idf and h:
            df = self.df.take(j[:h])
            v = v.copy()
            hv = v[:h]
            hv *= self.log_docs - self._log1p.take(df)
            hv *= 1.0 / math.sqrt(hv @ hv)
        block = self._block(j)
        r = self.rows
        state = _Context(j, v, h, df, block, block[:r].dot(v).tolist(), block[r:].dot(v * v).tolist())
        self._last = (features, self.clock, state)
        return state

    def _moments(self, features: Features | None) -> tuple[np.ndarray, np.ndarray]:
        """Every row's ``x . w`` at these features and its variance, as arrays."""
        state = self._state(features)
        return np.array(state.mean), np.array(state.var)

    def _hashed_count(self, slots: np.ndarray) -> int:
        """How many of these sorted slots are hashed n-grams (they come first, the dense slots after)."""
        dense = len(DENSE_NAMES)
        if len(slots) >= dense and slots[-dense] == self.hashed:  # every dense slot: the featurizer's usual case
            return len(slots) - dense
        return int(slots.searchsorted(self.hashed))

    def _block(self, slots: np.ndarray) -> np.ndarray:
        """The table's columns at these slots (a copy), the variances after the discount's lazy decay toward the prior."""
        block = self.table.take(slots, axis=1)
        if self.discount < 1.0:
            r, prior = self.rows, self.prior_precision[:, None]
            decay = self.discount ** (self.clock - self.touched.take(slots))
            block[r:] = 1.0 / (prior + (1.0 / block[r:] - prior) * decay)
        return block

    # -- the linear model -----------------------------------------------------------------------
    def predict(self, features: Features | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of every model's accuracy at these features (indexed like ``models``)."""
        mean, var = self._moments(features)
        return mean[:-1] + mean[-1], var[:-1] + var[-1]

    def context_probabilities(self, features: Sequence[Features], draws: int = 4096) -> np.ndarray:
        """P(the primary is each model | x) for each context (rows; columns: ``models``), the policy unchanged:
        exact for a deterministic ranking, else the share of ``draws`` posterior draws seeded by the row."""
        parts = self._parts()
        out = np.zeros((len(features), len(self.models)))
        for row, x in enumerate(features):
            out[row] = self._primary_shares(*self._moments(x), parts, np.random.default_rng(row), draws)
        return out

    def _primary_shares(
        self, mean: np.ndarray, var: np.ndarray, parts: _Parts, rng: np.random.Generator, draws: int
    ) -> np.ndarray:
        """P(primary) of every model at one context's moments and the models' :meth:`_parts`."""
        raise NotImplementedError

    def learn(self, model: str, accuracy: float, features: Features | None = None) -> None:
        """One Kalman step of the shared and the model's weights toward an observed accuracy at these features.

        The exact update of the Gaussian linear model restricted to the two rows, projected back on a
        diagonal covariance: with g = var * x and s the prediction's variance plus the noise's,
        w += g * residual / s and var -= g * g / s. Every operation is on whole rows of the same
        shape (numpy's broadcasting of a column costs more than the arithmetic at a hundred slots).
        """
        i = self.index[model]
        state = self._state(features)
        j, x, block, rows = state.slots, state.x, state.block, self._learns[i]
        if state.df is not None:
            self._absorb(j[: state.hashed], state.df)
        learned = block.take(rows, axis=0)  # the model's and the shared weights, then their variances
        mean, var = state.mean, state.var
        step, shrink = self._innovation(accuracy, mean[i] + mean[-1], var[i] + var[-1])
        g = learned[2:] * x
        weights = learned[:2]
        weights += g * step
        g *= g
        g *= shrink
        learned[2:] -= g
        table = self.table
        if self.discount < 1.0:  # every row's variances were decayed to now: write them all back
            block[rows] = learned
            table[:, j] = block
            self.touched.put(j, self.clock)
        else:
            table.reshape(-1)[self._flat[i] + j] = learned  # a flat view's setitem: cheaper than put
        self.clock += 1

    def _innovation(self, accuracy: float, mean: float, var: float) -> tuple[float, float]:
        """One observation's ``(step, shrink)`` for a prediction N(mean, var): the Gaussian model's residual over
        its variance plus the noise's, and one over that variance (the probit model overrides it)."""
        scale = 1.0 / (self.noise_var + var)
        return (accuracy - mean) * scale, scale

    def _absorb(self, slots: np.ndarray, df: np.ndarray) -> None:
        """Count a learned prompt's hashed slots (``df``: their counts so far) for the inverse document frequency."""
        self.df.put(slots, df + 1)
        self.docs += 1
        self.log_docs = 1.0 + math.log(self.docs + 1.0)
        if self.docs + 1 >= len(self._log1p):
            self._log1p = np.log1p(np.arange(2.0 * len(self._log1p)))

    def feedback(self, model: str, accuracy: float, features: Features | None = None) -> None:
        """Learn one answer's accuracy: the per-model statistics and the linear model at the call's features."""
        super().feedback(model, accuracy)
        self.learn(model, accuracy, features)

    def _parts(self) -> _Parts:
        """Every model's success Beta posterior (successes + 1, failures + 1), latency and cost means
        (latency and cost 0 if never served)."""
        s = self.stats
        return _Parts(s[SUCC] + 1.0, s[N] - s[SUCC] + 1.0, *served_means(s), s[N] == 0)

    def _changed(self, model: int | None = None) -> None:
        self._stale += 1

    def _current_parts(self) -> list[tuple[float, float, float, float, bool]]:
        """:meth:`_parts` by model as of at most ``max(1, min(MAX_LAG, updates // 100))`` updates ago."""
        if self._parts_now is None or self._stale >= max(1, min(MAX_LAG, self.updates // 100)):
            self._parts_now = self._parts().per_model()
            self._stale = 0
        return self._parts_now

    def _belief(self, draws: np.ndarray, utility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P(primary) for a prompt without features (the bias alone), from a generator of its own;
        ranked by it, then by utility."""
        rng = np.random.default_rng(BELIEF_SEED)
        p_best = self._primary_shares(*self._moments(None), self._parts(), rng, BELIEF_DRAWS)
        return np.lexsort((-utility, -p_best)), p_best

    # -- deciding -------------------------------------------------------------------------------
    def rank(self, eligible: Sequence[str] | None = None, features: Features | None = None) -> Ranking:
        """Order the eligible models for a prompt with these features (None: the bias alone)."""
        idx = self._eligible(eligible)
        ids = self._all_ids if idx is self._all else idx.tolist()
        state = self._state(features)
        order, propensity = self._decide(ids, state.mean, state.var, self._current_parts())
        models = self.models
        return Ranking(tuple([models[ids[i]] for i in order]), propensity)

    def _decide(
        self, ids: list[int], mean: list[float], var: list[float], parts: list[tuple[float, float, float, float, bool]]
    ) -> tuple[list[int], float]:
        """The eligible models' order (positions in ``ids``, their indices) and P(primary), from the rows'
        moments and every model's :meth:`_parts`."""
        raise NotImplementedError


class LinearThompsonPolicy(ContextualPolicy):
    """Thompson sampling on the linear accuracy model; propensity exact for its batch of draws.

    Per decision: one draw of each model's success rate from its Beta posterior, and ``samples``
    joint draws of the accuracies at x (their spread around the posterior mean scaled by
    ``explore``: 1 is plain Thompson sampling; the default 0.05 explores less, because a diagonal
    posterior over hashed n-grams counts every unseen n-gram's prior variance and so overstates
    the uncertainty of a new prompt); one of those is picked uniformly at random and ranks the
    models. The logged propensity, the share of the batch's draws won by the chosen primary, is
    the exact probability of that primary given the decision's draws. The standard normals behind
    the accuracy draws come from a buffer filled 64 decisions at a time (independent draws either way).
    """

    name = "linear_thompson"
    options = (*ContextualPolicy.options, "samples", "explore")

    def __init__(self, models: Sequence[str], *, samples: int = 64, explore: float = 0.05, **common: Any) -> None:
        super().__init__(models, **common)
        if samples < 16:
            raise ValueError(f"samples must be >= 16, got {samples}")
        if explore < 0:
            raise ValueError(f"explore must be >= 0, got {explore}")
        self.samples = int(samples)
        self.explore = float(explore)
        # 64 batches of normals, each (rows of weights + a row of ones, samples): a batch is contiguous for the product
        self._normals = np.ones((64, self.rows + 1, self.samples))
        self._picks: list[int] = []  # per batch, which of its draws ranks the models (uniform)
        self._used = 64  # batches used: the first decision fills the buffer
        self._successes: list[list[float]] = []  # success-rate draws from the current parts, one row per decision
        self._successes_of: object = None  # the parts they were drawn from

    def _accuracy_draws(self, mean: np.ndarray, var: np.ndarray, z: np.ndarray) -> np.ndarray:
        """One draw of every model's accuracy at x (rows) per column of ``z`` (a row per row of weights: the
        last draws the shared part, one for all models), by the same coefficients as a decision's."""
        rows = np.array(self._latent_rows(self._all_ids, mean.tolist(), var.tolist()))
        latent = rows[:, :-1].dot(z)
        latent += rows[:, -1:]
        return self._to_accuracy(latent)

    def _latent_rows(self, ids: list[int], mean: list[float], var: list[float]) -> list[list[float]]:
        """:meth:`_coefficients` of each model's scaled ``x . w`` itself (offset 0, its :meth:`_latent_scale`)."""
        return self._coefficients(ids, mean, var, [(0.0, a) for a in self._latent_scale(ids, var)])

    def _latent_scale(self, ids: list[int], var: list[float]) -> list[float]:
        """What each model's drawn ``x . w`` is multiplied by before :meth:`_to_accuracy` (the linear model: 1)."""
        return [1.0] * len(ids)

    def _to_accuracy(self, latent: np.ndarray) -> np.ndarray:
        """Accuracy draws from the scaled draws of ``x . w`` (the linear model: the same)."""
        return latent

    def _coefficients(
        self, ids: list[int], mean: list[float], var: list[float], lines: list[tuple[float, float]]
    ) -> list[list[float]]:
        """Per eligible model and its line ``(offset, scale)``, the coefficients that make
        ``offset + scale * (drawn x . w)`` one row of a product
        with a batch of normals: its own row's spread, the shared row's (one draw for all models), then the
        constant (the batch's row of ones)."""
        explore, sqrt, k = self.explore, math.sqrt, self.rows - 1
        shared_mean, shared_sd = mean[-1], explore * sqrt(var[-1])
        rows = []
        for i, (b, a) in zip(ids, lines):
            row = [0.0] * (k + 2)
            row[i], row[k], row[-1] = a * explore * sqrt(var[i]), a * shared_sd, a * (mean[i] + shared_mean) + b
            rows.append(row)
        return rows

    def _primary_shares(
        self, mean: np.ndarray, var: np.ndarray, parts: _Parts, rng: np.random.Generator, draws: int
    ) -> np.ndarray:
        k = len(self.models)
        accuracy = self._accuracy_draws(mean, var, rng.standard_normal((k + 1, draws)))
        success = rng.beta(parts.ok[:, None], parts.failed[:, None], size=(k, draws))
        scores = self.objective.score(success, accuracy, parts.latency[:, None], parts.cost[:, None])
        return np.bincount(scores.argmax(axis=0), minlength=k) / draws

    def _batch(self) -> tuple[np.ndarray, int]:
        """The next ``samples`` columns of standard normals (one row per row of weights) with a row of ones,
        and which of its columns ranks the models (uniform).

        Drawn 64 batches at a time as one (rows, 64 * samples) array, whose consecutive column
        blocks are the batches (the generator's stream as one draw of that shape), then the 64 picks."""
        used = self._used
        if used == len(self._normals):
            rows, samples = self.rows, self.samples
            drawn = self.rng.standard_normal((rows, len(self._normals) * samples))
            self._normals[:, :-1] = drawn.reshape(rows, -1, samples).transpose(1, 0, 2)
            self._picks = self.rng.integers(0, samples, len(self._normals)).tolist()
            used = 0
        self._used = used + 1
        return self._normals[used], self._picks[used]

    def _success_draw(self, parts: list[tuple[float, float, float, float, bool]]) -> list[float]:
        """One draw of every model's success rate from its Beta posterior in ``parts``: drawn ``MAX_LAG`` decisions
        at a time while the parts stay the same (one numpy call instead of one per model and decision)."""
        if self._successes_of is not parts or not self._successes:
            ok, failed = np.array([p[:2] for p in parts]).T
            self._successes = self.rng.beta(ok, failed, size=(MAX_LAG, len(parts))).tolist()
            self._successes_of = parts
        return self._successes.pop()

    def _decide(
        self, ids: list[int], mean: list[float], var: list[float], parts: list[tuple[float, float, float, float, bool]]
    ) -> tuple[list[int], float]:
        """The objective is affine in the accuracy (here ``x . w`` itself), so each model's ``samples`` scores are
        one row of a product with the batch of normals: its line's slope scales the draw, its base is added."""
        success, line = self._success_draw(parts), self.objective.line
        lines = [line(success[i], parts[i][2], parts[i][3]) for i in ids]
        normals, u = self._batch()
        return self._ranked(np.array(self._coefficients(ids, mean, var, lines)).dot(normals), u)

    def _ranked(self, scores: np.ndarray, u: int) -> tuple[list[int], float]:
        """The order by column ``u`` of the eligible models' sampled ``scores`` (rows), and P(primary):
        the share of the columns that the chosen primary wins."""
        best = scores.argmax(axis=0).tolist()
        drawn = scores[:, u].tolist()
        return sorted(range(len(drawn)), key=drawn.__getitem__, reverse=True), best.count(best[u]) / self.samples


class LinUCBPolicy(ContextualPolicy):
    """LinUCB on the linear accuracy model: rank by ``mean + alpha * sd`` of each model's accuracy; propensity 1."""

    name = "lin_ucb"
    options = (*ContextualPolicy.options, "alpha")

    def __init__(self, models: Sequence[str], *, alpha: float = 0.1, **common: Any) -> None:
        super().__init__(models, **common)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)

    def _primary_shares(
        self, mean: np.ndarray, var: np.ndarray, parts: _Parts, rng: np.random.Generator, draws: int
    ) -> np.ndarray:
        order = self._decide(self._all_ids, mean.tolist(), var.tolist(), parts.per_model())[0]
        return one_hot(np.array(order), len(self.models))

    def _decide(
        self, ids: list[int], mean: list[float], var: list[float], parts: list[tuple[float, float, float, float, bool]]
    ) -> tuple[list[int], float]:
        m, v = mean, var
        shared_mean, shared_var, alpha, line = m[-1], v[-1], self.alpha, self.objective.line
        index = []
        for i in ids:
            ok, failed, latency, cost, untried = parts[i]
            upper = m[i] + shared_mean + alpha * math.sqrt(v[i] + shared_var)
            base, slope = line(ok / (ok + failed), latency, cost)
            index.append(math.inf if untried else base + slope * upper)  # untried first
        return sorted(range(len(index)), key=index.__getitem__, reverse=True), 1.0


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
