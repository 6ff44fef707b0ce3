"""Offline evaluation of routing policies on logged traffic, before they go live.

The router logs, for every call, the primary model it chose and the probability with which its
policy chose it (``calls.propensity``). That makes off-policy evaluation possible: estimating what
another policy would have earned on the same traffic. The module follows the Open Bandit Pipeline
(OBP): each estimator is a small frozen dataclass with ``estimate``, ``interval`` (seeded
percentile bootstrap) and ``ess`` (effective sample size), vectorised with numpy.

Data. :func:`load_logged` reads the router's own log (one row per call: the action is the logged
primary, the reward is defined from the primary attempt and its feedback); :func:`from_frame`
takes any DataFrame with named columns. Both return a DataFrame in one schema, and
:func:`prepare` turns it into the numpy arrays (:class:`Logged`) every estimator works on.
Invalid rows (missing or zero propensity, duplicated call ids, an action that is not one of the
policy's models, ...) raise :class:`ReplayError`, or with ``on_invalid="drop"`` are excluded and
counted in ``attrs["dropped"]`` / :attr:`Logged.dropped`: never a silent wrong number.

Targets, and which estimator applies to which:

* fixed targets (:class:`Uniform`, :class:`Static`, :class:`Always`, :class:`Distribution`) have
  known action probabilities at every round: IPS, SNIPS, DM and DR apply, and so does
  :class:`Replay` (rejection sampling of the rounds);
* learning targets (:class:`Learning`: any policy of :mod:`zeta_adaptive.policies`, learning as it
  goes) are evaluated by :class:`Replay` (Li et al. 2011): the policy is run along the log and
  updated only on the rounds it is matched with. Where the policy exposes its action
  probabilities (deterministic policies, ``random``, Thompson sampling's ``win_probabilities``),
  the replay also records them at every logged round, and IPS, SNIPS, DM and DR then estimate
  the same quantity from every round instead of only the matched ones. Policies that do not
  expose them (epsilon-greedy) get the replay estimate only.

The value of a learning policy is its mean reward per decision over the decisions it made in the
replay, i.e. over its first ``ess`` calls online: compare it with online runs of that length. (IPS
and the others weigh each state of the policy by the logged rounds it held, which estimates the
same mean.) Its interval is a bootstrap of the whole procedure: the replay is rerun on resampled
logs with fresh seeds, so it covers both sampling noise and the policy's own randomness.

Assumptions, stated once: rounds are exchangeable given the logged propensities (no drift that
the logging policy did not see); every model had a positive logging probability when the policy
might pick it; the reward model and the bootstrap treat rows as independent; a policy learns
during replay only from the primary attempt of matched rounds (fallback attempts follow the
logged order, not the policy's, so they cannot be replayed) and gets feedback at once.
"""

from __future__ import annotations

import json
import math
import os
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .exceptions import ReplayError, StoreError
from .policies import POLICIES, Objective, Policy, make_policy

if TYPE_CHECKING:
    from .store import Store

__all__ = [
    "ReplayError",
    "REWARDS",
    "load_logged",
    "from_frame",
    "prepare",
    "Logged",
    "ActionProbs",
    "Uniform",
    "Static",
    "Always",
    "Distribution",
    "Learning",
    "parse_target",
    "CellMeans",
    "Estimate",
    "Replay",
    "IPS",
    "SNIPS",
    "DM",
    "DR",
    "ESTIMATORS",
    "Comparison",
    "compare",
]

#: how a logged call's reward is defined (see :func:`load_logged`)
REWARDS = ("accuracy", "success", "utility")
_ON_INVALID = ("raise", "drop")
_CONTEXT = "context."
_BOOT_ELEMENTS = 1 << 23  # resampled values per bootstrap chunk: bounds memory to about 100 MB


# -- loading ----------------------------------------------------------------------------------------


def _check_on_invalid(on_invalid: str) -> None:
    """Reject an unknown ``on_invalid`` before any work, so a typo never drops rows."""
    if on_invalid not in _ON_INVALID:
        raise ReplayError(f"on_invalid must be one of {_ON_INVALID}, got {on_invalid!r}")


def _screen(frame: pd.DataFrame, problems: Mapping[str, Any], on_invalid: str) -> pd.DataFrame:
    """Raise on invalid rows, or drop them and add their counts (one reason per row) to ``attrs['dropped']``."""
    bad = np.zeros(len(frame), dtype=bool)
    counts: dict[str, int] = {}
    for reason, mask in problems.items():
        fresh = np.asarray(mask, dtype=bool) & ~bad
        if fresh.any():
            counts[reason] = int(fresh.sum())
            bad |= fresh
    dropped = dict(frame.attrs.get("dropped", {}))
    if counts and on_invalid == "raise":
        first = int(np.flatnonzero(bad)[0])
        where = f"call {frame['call_id'].iloc[first]}" if "call_id" in frame else f"row {first}"
        detail = "; ".join(f"{n} {reason}" for reason, n in counts.items())
        raise ReplayError(
            f"{int(bad.sum())} of {len(frame)} logged rows are invalid: {detail} (first: {where}). "
            "Fix the log, or pass on_invalid='drop' to exclude them; they are counted."
        )
    for reason, n in counts.items():
        dropped[reason] = dropped.get(reason, 0) + n
    out = frame.loc[~bad].reset_index(drop=True)
    out.attrs = {**frame.attrs, "dropped": dropped}
    return out


def _primary(ranking: Any) -> str | None:
    """The first model of a logged ranking (a JSON list), or None if it is not one."""
    try:
        order = json.loads(ranking)
    except (TypeError, ValueError):
        return None
    return order[0] if isinstance(order, list) and order and isinstance(order[0], str) else None


def _open_store(store: Store | str) -> tuple[Store, bool]:
    """A Store for a URL (refusing to create a missing SQLite file), or the given Store, flushed."""
    from sqlalchemy.engine import make_url

    from .store import Store

    if isinstance(store, Store):
        store.flush()
        return store, False
    url = make_url(str(store))
    if (
        url.get_backend_name() == "sqlite"
        and url.database not in (None, "", ":memory:")
        and not os.path.exists(url.database)
    ):
        raise StoreError(f"no log at {url.render_as_string(hide_password=True)}: the file does not exist")
    return Store(str(store), migrate=False), True


def load_logged(
    store: Store | str,
    task_type: str | Sequence[str] | None = None,
    reward: str = "accuracy",
    *,
    objective: Objective | None = None,
    on_invalid: str = "raise",
) -> pd.DataFrame:
    """Read the router's log (a Store or a store URL) as one row per call, in time order, for evaluation.

    The action is the logged primary (first model of ``calls.ranking``), the propensity is
    ``calls.propensity``; ``success``, ``latency_s`` and ``cost`` come from the primary attempt
    (``attempts.idx == 0``) and ``accuracy`` from the call's feedback when it rates the primary.
    The reward of a call is defined by ``reward``:

    * ``"accuracy"`` (default): primary success (1/0) times its accuracy feedback. A failed primary
      earns 0 (a fallback's answer is not the primary's); a successful primary without feedback has
      no reward, so its row is invalid (dropping such rows assumes feedback is missing at random);
    * ``"success"``: primary success, 1 or 0; feedback is not needed;
    * ``"utility"``: the router's objective on the one call, ``objective.score(success, accuracy,
      latency_s, cost)``, e.g. ``success * accuracy - w_latency * latency_s - w_cost * cost``.

    A rejected request (HTTP 400/413/422, the request's own fault) counts as a failed primary: it
    lowers every policy's value alike.

    Rows without a readable ranking or primary attempt, whose primary attempt is not the ranking's
    first model, with a missing, non-positive or >1 propensity, with a duplicated call id or without
    a defined reward raise :class:`ReplayError`, or with ``on_invalid="drop"`` are dropped and
    counted in ``attrs["dropped"]``.
    """
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from .store import attempts, calls, feedback

    _check_on_invalid(on_invalid)
    if reward not in REWARDS:
        raise ReplayError(f"reward must be one of {REWARDS}, got {reward!r}")
    tasks = [task_type] if isinstance(task_type, str) else (list(task_type) if task_type is not None else None)
    s, own = _open_store(store)

    def query(table: Any, *columns: Any) -> Any:
        q = select(*columns)
        return q.where(table.c.task_type.in_(tasks)) if tasks is not None else q

    try:
        with s.engine.connect() as conn:
            c = pd.read_sql(
                query(
                    calls,
                    calls.c.call_id,
                    calls.c.ts,
                    calls.c.task_type,
                    calls.c.policy,
                    calls.c.propensity,
                    calls.c.ranking,
                ),
                conn,
            )
            a = pd.read_sql(
                query(
                    attempts,
                    attempts.c.call_id,
                    attempts.c.model,
                    attempts.c.outcome,
                    attempts.c.latency_s,
                    attempts.c.cost,
                ).where(attempts.c.idx == 0),
                conn,
            )
            f = pd.read_sql(query(feedback, feedback.c.call_id, feedback.c.model, feedback.c.accuracy), conn)
    except SQLAlchemyError as exc:
        raise StoreError(
            f"cannot read the log from {s.safe_url}: {type(exc).__name__}: {getattr(exc, 'orig', exc)}"
        ) from None
    finally:
        if own:
            s.close()
    if c.empty:
        raise ReplayError(
            f"no logged calls in {s.safe_url}" + (f" for task types {tasks}" if tasks is not None else "")
        )
    df = c.merge(a.rename(columns={"model": "attempt_model"}), on="call_id", how="left")
    df = df.merge(f.rename(columns={"model": "rated_model"}), on="call_id", how="left")
    df = df.sort_values(["ts", "call_id"], kind="stable").reset_index(drop=True)
    action = pd.Series([_primary(r) for r in df["ranking"]], dtype=object)
    success = (df["outcome"] == "ok").to_numpy()
    accuracy = df["accuracy"].where(success & (df["rated_model"] == action).to_numpy())
    out = pd.DataFrame(
        {
            "call_id": df["call_id"],
            "time": df["ts"],
            "task_type": df["task_type"],
            "policy": df["policy"],
            "action": action,
            "propensity": df["propensity"].astype(float),
            "success": success.astype(float),
            "latency_s": df["latency_s"].astype(float),
            "cost": df["cost"].astype(float),
            "accuracy": accuracy.astype(float),
        }
    )
    acc0 = out["accuracy"].fillna(0.0).to_numpy()
    if reward == "success":
        out["reward"] = out["success"]
    elif reward == "accuracy":
        out["reward"] = out["success"] * acc0
    else:
        out["reward"] = (objective or Objective()).score(
            out["success"].to_numpy(), acc0, out["latency_s"].to_numpy(), out["cost"].to_numpy()
        )
    p = out["propensity"].to_numpy()
    problems = {
        "without a readable ranking": action.isna(),
        "without a primary attempt": df["attempt_model"].isna(),
        "whose primary attempt is not the ranking's first model": (df["attempt_model"] != action) & action.notna(),
        "with a missing or non-positive propensity": ~(p > 0),
        "with a propensity above 1": p > 1.0 + 1e-9,
        "with a duplicated call id": out["call_id"].duplicated(keep=False),
    }
    if reward != "success":
        problems["whose successful primary has no accuracy feedback (use reward='success' to ignore feedback)"] = (
            success & out["accuracy"].isna().to_numpy()
        )
    return _screen(out, problems, on_invalid)


def from_frame(
    df: pd.DataFrame,
    *,
    action: str,
    reward: str,
    propensity: str,
    context: Sequence[str] | str = (),
    position: str | None = None,
    time: str | None = None,
    call_id: str | None = None,
    group: str | None = None,
    on_invalid: str = "raise",
) -> pd.DataFrame:
    """Take logged bandit data from any DataFrame with named columns, in the schema of :func:`load_logged`.

    ``position`` and ``context`` columns define the cells of the DM/DR reward model; ``time`` orders
    the rounds (else the frame's order); ``group`` names a column whose values get separate
    policies (the router's task type); ``call_id`` is checked for duplicates. Actions become
    strings. Rows with a missing action, a missing or non-numeric reward, a missing, non-positive
    or >1 propensity or a duplicated call id raise :class:`ReplayError`, or are dropped and counted.
    """
    _check_on_invalid(on_invalid)
    context = [context] if isinstance(context, str) else list(context)
    named = [action, reward, propensity, *context] + [c for c in (position, time, call_id, group) if c is not None]
    missing = [c for c in named if c not in df.columns]
    if missing:
        raise ReplayError(f"no column(s) {missing} in the data; it has {list(df.columns)}")
    out = pd.DataFrame(
        {
            "action": df[action].to_numpy(),
            "reward": pd.to_numeric(df[reward], errors="coerce").to_numpy(dtype=float),
            "propensity": pd.to_numeric(df[propensity], errors="coerce").to_numpy(dtype=float),
        }
    )
    for name, column in (("call_id", call_id), ("time", time), ("task_type", group), ("position", position)):
        if column is not None:
            out[name] = df[column].to_numpy()
    for c in context:
        out[_CONTEXT + c] = df[c].to_numpy()
    p = out["propensity"].to_numpy()
    problems = {
        "with a missing action": out["action"].isna(),
        "with a missing or non-numeric reward": ~np.isfinite(out["reward"].to_numpy()),
        "with a missing or non-positive propensity": ~(p > 0),
        "with a propensity above 1": p > 1.0 + 1e-9,
    }
    if call_id is not None:
        problems["with a duplicated call id"] = out["call_id"].duplicated(keep=False)
    out = _screen(out, problems, on_invalid)
    out["action"] = out["action"].astype(str)
    if group is not None:
        out["task_type"] = out["task_type"].astype(str)
    if time is not None:
        out = out.sort_values("time", kind="stable").reset_index(drop=True)
    return out


# -- prepared arrays --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Logged:
    """A log as numpy arrays, in time order: what every estimator reads.

    ``actions`` names every model (column index of action probabilities); ``groups`` are the task
    types, each with its policy's ``models`` in order (the first is the static table's choice);
    ``cell`` numbers the reward model's cells (task type x position x context).
    """

    actions: tuple[str, ...]
    action: np.ndarray
    reward: np.ndarray
    propensity: np.ndarray
    groups: tuple[str, ...]
    group: np.ndarray
    models: tuple[tuple[str, ...], ...]
    cell: np.ndarray
    n_cells: int
    success: np.ndarray
    latency_s: np.ndarray
    cost: np.ndarray
    accuracy: np.ndarray
    dropped: Mapping[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of logged rounds."""
        return len(self.action)

    def model_index(self, g: int) -> np.ndarray:
        """Column indices of group ``g``'s models, in the policy's order."""
        pos = {a: i for i, a in enumerate(self.actions)}
        return np.array([pos[m] for m in self.models[g]], dtype=np.int64)


def _natural(values: Sequence[str]) -> list[str]:
    """Sort names numerically when they all are numbers (item ids), else alphabetically."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def prepare(
    frame: pd.DataFrame,
    models: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    *,
    on_invalid: str = "raise",
) -> Logged:
    """Turn a frame from :func:`load_logged` or :func:`from_frame` into arrays for the estimators.

    ``models`` gives each task type's policy models in order (a list for every task type, or a
    mapping task type -> list, e.g. a router config's routes); by default the models logged for that
    task type, sorted. A row whose action is not one of its task type's models raises
    :class:`ReplayError`, or is dropped and counted with ``on_invalid="drop"``. A frame without
    ``success``/``latency_s``/``cost``/``accuracy`` columns (any :func:`from_frame` data) lets
    learning policies see each reward as the accuracy of a successful, instant, free answer.
    """
    _check_on_invalid(on_invalid)
    missing = [c for c in ("action", "reward", "propensity") if c not in frame.columns]
    if missing:
        raise ReplayError(f"the frame lacks {missing}: build it with load_logged() or from_frame()")
    frame = frame.copy()
    if "task_type" not in frame:
        frame["task_type"] = "all"
    frame["task_type"] = frame["task_type"].astype(str)
    groups = tuple(sorted(frame["task_type"].unique()))
    if models is None:
        per_group = {g: tuple(_natural(frame.loc[frame["task_type"] == g, "action"].unique().tolist())) for g in groups}
    elif isinstance(models, Mapping):
        absent = [g for g in groups if g not in models]
        if absent:
            raise ReplayError(f"no models given for task type(s) {absent}; models are given for {sorted(models)}")
        per_group = {g: tuple(models[g]) for g in groups}
    else:
        per_group = {g: tuple(models) for g in groups}
    for g, names in per_group.items():
        if not names or len(set(names)) != len(names):
            raise ReplayError(f"task type {g!r}: models must be a non-empty list without duplicates, got {list(names)}")
    outside = np.zeros(len(frame), dtype=bool)
    for g, names in per_group.items():
        outside |= ((frame["task_type"] == g) & ~frame["action"].isin(names)).to_numpy()
    frame = _screen(frame, {"whose action is not one of the policy's models": outside}, on_invalid)
    if frame.empty:
        raise ReplayError("no valid logged rows left to evaluate")
    groups = tuple(g for g in groups if (frame["task_type"] == g).any())
    actions = tuple(dict.fromkeys(m for g in groups for m in per_group[g]))
    action = pd.Categorical(frame["action"], categories=list(actions)).codes.astype(np.int64)
    group = pd.Categorical(frame["task_type"], categories=list(groups)).codes.astype(np.int64)
    cell_cols = (
        ["task_type"]
        + (["position"] if "position" in frame else [])
        + [c for c in frame.columns if c.startswith(_CONTEXT)]
    )
    cell = frame.groupby(cell_cols, sort=False, dropna=False).ngroup().to_numpy(dtype=np.int64)
    reward = frame["reward"].to_numpy(dtype=float)

    def column(name: str, default: np.ndarray) -> np.ndarray:
        return frame[name].to_numpy(dtype=float) if name in frame else default

    n = len(frame)
    return Logged(
        actions=actions,
        action=action,
        reward=reward,
        propensity=frame["propensity"].to_numpy(dtype=float),
        groups=groups,
        group=group,
        models=tuple(per_group[g] for g in groups),
        cell=cell,
        n_cells=int(cell.max()) + 1,
        success=column("success", np.ones(n)),
        latency_s=column("latency_s", np.zeros(n)),
        cost=column("cost", np.zeros(n)),
        accuracy=column("accuracy", reward),
        dropped=dict(frame.attrs.get("dropped", {})),
    )


def _logged(data: Logged | pd.DataFrame) -> Logged:
    """Estimators accept a prepared log or a frame (prepared with default models)."""
    return data if isinstance(data, Logged) else prepare(data)


# -- targets ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ActionProbs:
    """A target's probability of each action at each logged round: round i uses ``table[row[i]]``.

    Compact because fixed targets have one row per task type and learning ones one per replay step.
    """

    table: np.ndarray
    row: np.ndarray

    @classmethod
    def per_round(cls, matrix: np.ndarray) -> ActionProbs:
        """From an (n, actions) matrix, one row per logged round."""
        matrix = np.asarray(matrix, dtype=float)
        return cls(matrix, np.arange(len(matrix)))

    def of_logged(self, data: Logged) -> np.ndarray:
        """The target's probability of the logged action at each round."""
        return self.table[self.row, data.action]


class _Fixed:
    """A target whose action probabilities do not depend on what it observes."""

    name: str

    def _table(self, data: Logged) -> np.ndarray:
        raise NotImplementedError

    def probabilities(self, data: Logged) -> ActionProbs:
        """One row of action probabilities per task type, checked against what the log covers."""
        table = self._table(data)
        counts = np.bincount(data.group * len(data.actions) + data.action, minlength=table.size).reshape(table.shape)
        g, a = np.nonzero((table > 0) & (counts == 0))
        if len(g):
            raise ReplayError(
                f"{self.name} chooses {data.actions[a[0]]!r} for task type {data.groups[g[0]]!r} with probability "
                f"{table[g[0], a[0]]:.3g}, but the log never chose it there: no estimator can value it "
                "(log some traffic to it, or leave it out of the models)"
            )
        return ActionProbs(table, data.group)


@dataclass(frozen=True)
class Uniform(_Fixed):
    """Every model of the task type with equal probability at every round: the ``random`` policy.

    With positions, 1/(number of actions) at every position.
    """

    name: str = "random"

    def _table(self, data: Logged) -> np.ndarray:
        table = np.zeros((len(data.groups), len(data.actions)))
        for g in range(len(data.groups)):
            idx = data.model_index(g)
            table[g, idx] = 1.0 / len(idx)
        return table


@dataclass(frozen=True)
class Static(_Fixed):
    """The static table: always the task type's first configured model (the ``static`` policy's primary)."""

    name: str = "static"

    def _table(self, data: Logged) -> np.ndarray:
        table = np.zeros((len(data.groups), len(data.actions)))
        for g in range(len(data.groups)):
            table[g, data.model_index(g)[0]] = 1.0
        return table


@dataclass(frozen=True)
class Always(_Fixed):
    """Always the one model ``model``."""

    model: str

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"always:{self.model}"

    def _table(self, data: Logged) -> np.ndarray:
        table = np.zeros((len(data.groups), len(data.actions)))
        for g, models in enumerate(data.models):
            if self.model not in models:
                raise ReplayError(
                    f"{self.name}: {self.model!r} is not a model of task type {data.groups[g]!r} (models: {list(models)})"
                )
            table[g, data.actions.index(self.model)] = 1.0
        return table


@dataclass(frozen=True, eq=False)
class Distribution(_Fixed):
    """A fixed random choice: model -> probability, the same in every task type (each must sum to 1)."""

    weights: Mapping[str, float]
    label: str = "distribution"

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.label

    def _table(self, data: Logged) -> np.ndarray:
        table = np.zeros((len(data.groups), len(data.actions)))
        for g, models in enumerate(data.models):
            for m, w in self.weights.items():
                if w < 0 or (w > 0 and m not in models):
                    raise ReplayError(f"{self.name}: weight {w} for {m!r}, not a model of task type {data.groups[g]!r}")
                if w > 0:
                    table[g, data.actions.index(m)] = w
            if not math.isclose(table[g].sum(), 1.0, abs_tol=1e-9):
                raise ReplayError(
                    f"{self.name}: probabilities for task type {data.groups[g]!r} sum to {table[g].sum()}, not 1"
                )
        return table


@dataclass(frozen=True, eq=False)
class Learning:
    """A policy of this package that learns during the replay, one instance per task type.

    ``policy`` is a name for :func:`make_policy` (with ``options`` and ``objective``) or a factory
    ``(models, seed) -> Policy``; task type ``i`` (in sorted order) gets seed ``seed + i``, as in the
    router. ``seed`` also draws the replay's rejection sampling, so a trajectory is reproducible.
    """

    policy: str | Callable[[Sequence[str], int], Policy]
    options: Mapping[str, Any] = field(default_factory=dict)
    objective: Objective | None = None
    seed: int = 0
    label: str = ""

    @property
    def name(self) -> str:
        """The label, else the policy's name."""
        return self.label or (
            self.policy if isinstance(self.policy, str) else getattr(self.policy, "__name__", "policy")
        )

    def build(self, models: Sequence[str], index: int) -> Policy:
        """A fresh policy for one task type's models."""
        if callable(self.policy):
            return self.policy(models, self.seed + index)
        try:
            return make_policy(self.policy, models, self.objective, seed=self.seed + index, **self.options)
        except (TypeError, ValueError) as exc:
            raise ReplayError(f"policy {self.name}: {exc}") from None


Target = Uniform | Static | Always | Distribution | Learning


def _option(text: str) -> tuple[str, Any]:
    """One ``key=value`` policy option from the command line, the value as an int or a float."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ReplayError(f"policy option {text!r} must look like key=value")
    for kind in (int, float):
        try:
            return key.strip(), kind(value)
        except ValueError:
            pass
    raise ReplayError(f"policy option {text!r}: {value!r} is not a number")


def parse_target(spec: str, *, objective: Objective | None = None, seed: int = 0) -> Target:
    """A target from its command-line spelling.

    ``random`` (the config's name; ``uniform`` is an alias), ``static``, ``always:MODEL``, or any policy name of
    :data:`zeta_adaptive.policies.POLICIES` with optional options, e.g. ``thompson:discount=0.98``.
    """
    spec = spec.strip()
    if spec in ("uniform", "random"):
        return Uniform(name=spec)
    if spec == "static":
        return Static()
    if spec.startswith("always:"):
        if not spec[7:]:
            raise ReplayError("always: needs a model, e.g. always:coder-7b")
        return Always(spec[7:])
    name, _, opts = spec.partition(":")
    if name not in POLICIES:
        choices = ["random", "static", "always:MODEL", *sorted(set(POLICIES) - {"static", "random"})]
        raise ReplayError(f"unknown policy {spec!r}; choose from {choices} (learning ones take :key=value,...)")
    options = dict(_option(o) for o in opts.split(",") if o.strip())
    return Learning(name, options, objective, seed, label=spec)


# -- replay of learning policies ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Resolved:
    """A target made concrete on one log: its action probabilities and, for learning ones, the replay."""

    name: str
    probs: ActionProbs | None  # None: the policy exposes no action probabilities while it learns
    accepted: np.ndarray | None = None  # rows a learning policy was matched with, in time order
    learning: Learning | None = None  # the learning target replayed, for the interval


def _probabilities_of(policy: Policy) -> Callable[[], np.ndarray] | None:
    """Where the policy exposes it, a function giving its probability of each model being primary
    now (used when its ranking is not deterministic: propensity < 1)."""
    if policy.name == "random":
        uniform = np.full(len(policy.models), 1.0 / len(policy.models))
        return lambda: uniform
    win = getattr(policy, "win_probabilities", None)
    return (lambda: np.array(win(), dtype=float)) if callable(win) else None  # a copy: the policy may reuse its array


def _replay_learning(data: Logged, target: Learning, progress: bool, record: bool = True) -> _Resolved:
    """Run a learning policy along the log (Li et al. 2011, with rejection for non-uniform logs).

    Per task type, a round is a candidate with probability ``min propensity / propensity`` (1 for
    uniformly random logs), drawn once, vectorised. The policy ranks; the next candidate round whose
    logged primary is the policy's primary is matched, and only then does the policy learn (from the
    primary attempt and its feedback). Every candidate round holds each model with the same
    probability (``min propensity``), so skipping to it is equivalent in distribution to Li et al.'s
    round-by-round test, and only matched rounds cost Python work. ``record``: also keep the
    policy's action probabilities at every decision, where it exposes them (IPS and the others).
    """
    if np.any((data.accuracy < 0) | (data.accuracy > 1)):
        raise ReplayError(f"{target.name} learns rewards as accuracies in [0, 1]; this log's rewards range outside it")
    u = np.random.default_rng(np.random.SeedSequence([target.seed, 1])).random(data.n)
    accepted: list[np.ndarray] = []
    tables: list[np.ndarray] = []
    row_step = np.zeros(data.n, dtype=np.int64)
    exposes = record
    with tqdm(
        total=data.n, desc=f"replay {target.name}", unit="round", disable=not progress, leave=False, delay=1.0
    ) as bar:
        for g, models in enumerate(data.models):
            rows = np.flatnonzero(data.group == g)
            act = data.action[rows]
            idx = data.model_index(g)
            unseen = [m for m, a in zip(models, idx) if not np.any(act == a)]
            if unseen:
                raise ReplayError(
                    f"{target.name}: task type {data.groups[g]!r} has model(s) {unseen} the log never chose; "
                    "a policy that tries them cannot be replayed (log traffic to them, or leave them out of the models)"
                )
            mu = data.propensity[rows]
            candidate = u[rows] * mu < mu.min()
            positions = {m: np.flatnonzero(candidate & (act == a)).tolist() for m, a in zip(models, idx)}
            succ = (data.success[rows] > 0).tolist()
            lat = data.latency_s[rows].tolist()
            cost = data.cost[rows].tolist()
            acc = data.accuracy[rows].tolist()
            policy = target.build(models, g)
            probabilities = _probabilities_of(policy)
            steps: list[int] = []
            dists: list[
                int | np.ndarray
            ] = []  # per decision: the primary's index if deterministic, else all probabilities
            pos = 0
            while True:
                ranking = policy.rank()
                model = ranking.primary
                if exposes:
                    if ranking.propensity >= 1.0:
                        dists.append(policy.index[model])
                    elif probabilities is not None:
                        dists.append(probabilities())
                    else:
                        exposes = False
                cand = positions[model]
                j = bisect_left(cand, pos)
                if j == len(cand):
                    break
                t = cand[j]
                steps.append(t)
                policy.update(model, succ[t], lat[t], cost[t])
                if acc[t] == acc[t]:  # not NaN: the primary was rated
                    policy.feedback(model, acc[t])
                if progress:
                    bar.update(t + 1 - pos)
                pos = t + 1
            if progress:
                bar.update(len(rows) - pos)
            if not steps:
                raise ReplayError(f"{target.name}: no round of task type {data.groups[g]!r} could be replayed")
            local = np.asarray(steps, dtype=np.int64)
            accepted.append(rows[local])
            if exposes:
                table = np.zeros((len(dists), len(data.actions)))
                one_hot = np.array([isinstance(d, int) for d in dists], dtype=bool)
                if one_hot.any():
                    table[np.flatnonzero(one_hot), idx[[d for d in dists if isinstance(d, int)]]] = 1.0
                if not one_hot.all():
                    table[np.ix_(np.flatnonzero(~one_hot), idx)] = np.stack(
                        [d for d in dists if not isinstance(d, int)]
                    )
                row_step[rows] = sum(len(done) for done in tables) + local.searchsorted(
                    np.arange(len(rows)), side="left"
                )
                tables.append(table)
    probs = ActionProbs(np.concatenate(tables), row_step) if exposes else None
    return _Resolved(target.name, probs, np.sort(np.concatenate(accepted)), target)


def _resolve(data: Logged, target: Any, progress: bool = False, record: bool = True) -> _Resolved:
    """Action probabilities of a target on this log (running the replay for a learning one, which
    keeps its probabilities only if ``record``)."""
    if isinstance(target, Learning):
        return _replay_learning(data, target, progress, record)
    if isinstance(target, ActionProbs):
        return _Resolved("probabilities", target)
    if isinstance(target, np.ndarray):
        if target.shape != (data.n, len(data.actions)):
            raise ReplayError(f"a probability matrix must have shape {(data.n, len(data.actions))}, got {target.shape}")
        return _Resolved("probabilities", ActionProbs.per_round(target))
    if isinstance(target, _Fixed):
        return _Resolved(target.name, target.probabilities(data))
    raise ReplayError(f"cannot evaluate {target!r}: use a target of this module or parse_target('...')")


# -- reward model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellMeans:
    """Reward model for DM and DR: the mean reward of each action in each cell, shrunk toward coarser means.

    A cell is a task type x position x context combination. The estimate for (cell, action) is
    ``(sum + m * parent) / (count + m)`` with ``m = pseudo_count``, where the parent is the action's
    mean over its task type, itself shrunk the same way toward the task type's mean reward: cells
    and actions with little data fall back smoothly, and none is left at 0/0. Without position or
    context a cell is a task type, and the action level is the model. Fitted in-sample.
    """

    pseudo_count: float = 1.0

    def __post_init__(self) -> None:
        if not self.pseudo_count > 0:
            raise ReplayError(f"pseudo_count must be > 0, got {self.pseudo_count}")

    def fit(self, data: Logged) -> np.ndarray:
        """The (cells, actions) table of predicted rewards."""
        m = self.pseudo_count
        k, n_groups, n_cells = len(data.actions), len(data.groups), data.n_cells
        r = data.reward
        sizes = np.bincount(data.group, minlength=n_groups)
        group_mean = np.divide(np.bincount(data.group, r, n_groups), sizes, out=np.zeros(n_groups), where=sizes > 0)
        key = data.group * k + data.action
        n_ga = np.bincount(key, minlength=n_groups * k)
        s_ga = np.bincount(key, r, n_groups * k)
        per_action = ((s_ga + m * np.repeat(group_mean, k)) / (n_ga + m)).reshape(n_groups, k)
        cell_group = np.zeros(n_cells, dtype=np.int64)
        cell_group[data.cell] = data.group
        if n_cells == n_groups:  # no position or context: a cell is a task type, already fitted
            return per_action[cell_group]
        key = data.cell * k + data.action
        n_ca = np.bincount(key, minlength=n_cells * k).reshape(n_cells, k)
        s_ca = np.bincount(key, r, n_cells * k).reshape(n_cells, k)
        return (s_ca + m * per_action[cell_group]) / (n_ca + m)


def _direct(probs: ActionProbs, q: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Per round, the reward model's value of the target: sum over actions of probability x prediction."""
    if probs.table.shape[0] * q.shape[0] <= max(len(cell), 1 << 20):
        return (probs.table @ q.T)[probs.row, cell]
    out = np.empty(len(cell))
    step = max(1, (1 << 22) // q.shape[1])
    for s in range(0, len(cell), step):
        out[s : s + step] = np.einsum("ij,ij->i", probs.table[probs.row[s : s + step]], q[cell[s : s + step]])
    return out


# -- estimators -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """One estimator's value of one policy, its bootstrap interval, effective sample size and rows used."""

    estimator: str
    policy: str
    value: float
    ci_low: float
    ci_high: float
    ess: float
    n: int


def _kish(w: np.ndarray) -> float:
    """Kish's effective sample size of weights: (sum w)^2 / sum w^2."""
    sq = float(np.dot(w, w))
    return float(w.sum()) ** 2 / sq if sq > 0 else 0.0


def _bootstrap(
    num: np.ndarray, den: np.ndarray | None, n_boot: int, alpha: float, seed: int, progress: bool, desc: str
) -> tuple[float, float]:
    """Percentile interval of sum(num)/sum(den) (or mean(num)) over rows resampled with replacement."""
    n = len(num)
    rng = np.random.default_rng(seed)
    per = max(1, _BOOT_ELEMENTS // n)
    stats = np.empty(n_boot)
    with (
        tqdm(total=n_boot, desc=desc, unit="resample", disable=not progress, leave=False, delay=1.0) as bar,
        np.errstate(invalid="ignore", divide="ignore"),
    ):
        for start in range(0, n_boot, per):
            b = min(per, n_boot - start)
            idx = rng.integers(0, n, size=(b, n), dtype=np.int64 if n >= 2**31 else np.int32)
            top = num[idx].sum(axis=1)
            stats[start : start + b] = top / (den[idx].sum(axis=1) if den is not None else n)
            bar.update(b)
    return _percentiles(stats, alpha)


def _percentiles(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    """The alpha/2 and 1 - alpha/2 quantiles of the finite bootstrap statistics."""
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return math.nan, math.nan
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _take(data: Logged, idx: np.ndarray, outcomes: bool = True) -> Logged:
    """The log's rounds at ``idx`` (a bootstrap resample). Without ``outcomes`` only what DM and DR
    read is taken and the learning outcomes are left empty, so anything reading them fails loudly."""
    names = ["action", "reward", "propensity", "group", "cell"]
    rest = ["success", "latency_s", "cost", "accuracy"]
    taken = {name: getattr(data, name)[idx] for name in names + (rest if outcomes else [])}
    return replace(data, **taken, **({} if outcomes else {name: np.empty(0) for name in rest}))


def _learning_bootstrap(
    data: Logged, target: Learning, estimators: Sequence[_Estimator], n_boot: int, seed: int, progress: bool
) -> np.ndarray:
    """Bootstrap of the whole procedure for a learning target: per resample, a fresh replay with its
    own seed, and every estimator's value on it.

    So the interval covers both the data and the policy's own randomness (which models it happened
    to explore). A resample is n rounds drawn with replacement in draw order, an exchangeable log as
    the replay assumes (kept in time order, the copies of a round would sit side by side, which
    biases estimators normalised by n). Under drift the interval is only indicative. Returns
    (estimators, n_boot) values. A resample that cannot be replayed (a model left without rounds)
    is NaN; if more than a tenth of them are, the whole row is NaN: no interval rather than one
    from the lucky resamples only.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    stats = np.full((len(estimators), n_boot), np.nan)
    record = any(e.needs_probabilities for e in estimators)
    for b in tqdm(
        range(n_boot), desc=f"bootstrap {target.name}", unit="replay", disable=not progress, leave=False, delay=1.0
    ):
        idx = rng.integers(0, data.n, data.n)
        sub = _take(data, idx)
        child = int(np.random.SeedSequence([target.seed, b]).generate_state(1)[0])
        try:
            resolved = _replay_learning(sub, replace(target, seed=child), False, record)
        except ReplayError:
            continue
        for i, est in enumerate(estimators):
            if resolved.probs is not None or isinstance(est, Replay):
                try:
                    stats[i, b] = _ratio(*est._parts(sub, resolved)[:2])
                except ReplayError:
                    pass
    stats[np.isnan(stats).sum(axis=1) > 0.1 * n_boot] = np.nan
    return stats


@dataclass(frozen=True)
class _Estimator:
    """Shared machinery: a value sum(num)/sum(den) over per-round parts, its bootstrap interval and ESS."""

    n_boot: int = 1000
    alpha: float = 0.05
    seed: int = 0
    learning_boot: int = 200

    name: ClassVar[str] = ""
    #: whether each bootstrap resample refits the reward model (else the per-round parts are resampled)
    refits: ClassVar[bool] = False
    #: whether it reads the target's action probabilities (all but the replay)
    needs_probabilities: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.n_boot < 1 or self.learning_boot < 1:
            raise ReplayError(f"n_boot and learning_boot must be >= 1, got {self.n_boot} and {self.learning_boot}")
        if not 0.0 < self.alpha < 1.0:
            raise ReplayError(f"alpha must be in (0, 1), got {self.alpha}")
        clip = getattr(self, "clip", None)
        if clip is not None and not clip > 0:
            raise ReplayError(f"clip must be > 0, got {clip}")

    def estimate(self, data: Logged | pd.DataFrame, target: Any) -> float:
        """The estimated mean reward per round of ``target``."""
        logged = _logged(data)
        num, den, _ = self._parts(logged, self._resolve(logged, target))
        return _ratio(num, den)

    def interval(self, data: Logged | pd.DataFrame, target: Any) -> tuple[float, float]:
        """The ``1 - alpha`` percentile bootstrap interval (seeded).

        Fixed targets: ``n_boot`` resamples of the rounds (DM and DR refit their reward model on
        each). Learning targets: ``learning_boot`` resamples, each replayed afresh with its own seed
        (see :func:`_learning_bootstrap`).
        """
        logged = _logged(data)
        resolved = self._resolve(logged, target)
        num, den, _ = self._parts(logged, resolved)
        return self._interval(logged, resolved, num, den, False)

    def ess(self, data: Logged | pd.DataFrame, target: Any) -> float:
        """Effective sample size: Kish's (sum w)^2 / sum w^2 of the importance weights (DM: the
        number of rounds; replay: of the matched rounds, weighted by task type)."""
        logged = _logged(data)
        return self._parts(logged, self._resolve(logged, target))[2]

    def evaluate(self, data: Logged | pd.DataFrame, target: Any, progress: bool = False) -> Estimate:
        """Value, interval and ESS at once."""
        logged = _logged(data)
        return self._evaluate(logged, self._resolve(logged, target, progress), progress)

    def _resolve(self, data: Logged, target: Any, progress: bool = False) -> _Resolved:
        return _resolve(data, target, progress, record=self.needs_probabilities)

    def _evaluate(
        self, data: Logged, resolved: _Resolved, progress: bool, learned: np.ndarray | None = None
    ) -> Estimate:
        """``learned``: this estimator's values on the resamples of a learning target, if already run."""
        num, den, ess = self._parts(data, resolved)
        value = _ratio(num, den)
        if learned is not None:
            lo, hi = _percentiles(learned, self.alpha)
        else:
            lo, hi = self._interval(data, resolved, num, den, progress)
        return Estimate(self.name, resolved.name, value, lo, hi, ess, data.n)

    def _interval(
        self, data: Logged, resolved: _Resolved, num: np.ndarray, den: np.ndarray | None, progress: bool
    ) -> tuple[float, float]:
        desc = f"{self.name} {resolved.name}"
        if resolved.learning is not None:
            learned = _learning_bootstrap(data, resolved.learning, [self], self.learning_boot, self.seed, progress)[0]
            return _percentiles(learned, self.alpha)
        if not self.refits:
            return _bootstrap(num, den, self.n_boot, self.alpha, self.seed, progress, desc)
        probs = self._probs(resolved)
        rng = np.random.default_rng(self.seed)
        stats = np.empty(self.n_boot)
        for b in tqdm(range(self.n_boot), desc=desc, unit="resample", disable=not progress, leave=False, delay=1.0):
            idx = rng.integers(0, data.n, data.n)
            part_num, part_den, _ = self._parts(
                _take(data, idx, outcomes=False), _Resolved(resolved.name, ActionProbs(probs.table, probs.row[idx]))
            )
            stats[b] = _ratio(part_num, part_den)
        return _percentiles(stats, self.alpha)

    def _parts(self, data: Logged, resolved: _Resolved) -> tuple[np.ndarray, np.ndarray | None, float]:
        raise NotImplementedError

    def _probs(self, resolved: _Resolved) -> ActionProbs:
        if resolved.probs is None:
            raise ReplayError(
                f"{resolved.name} does not expose its action probabilities while it learns: "
                f"{self.name} does not apply to it; use the replay estimator"
            )
        return resolved.probs

    def _weights(self, data: Logged, probs: ActionProbs) -> np.ndarray:
        w = probs.of_logged(data) / data.propensity
        clip = getattr(self, "clip", None)
        return np.minimum(w, clip) if clip is not None else w


def _ratio(num: np.ndarray, den: np.ndarray | None) -> float:
    """An estimator's value from its per-round parts: sum(num) / sum(den), or mean(num)."""
    if den is None:
        return float(num.mean())
    total = float(den.sum())
    if total <= 0:
        raise ReplayError("no logged round has a positive weight under this target")
    return float(num.sum()) / total


@dataclass(frozen=True)
class Replay(_Estimator):
    """Replay (Li et al. 2011): the mean reward of the rounds the target is matched with.

    For learning targets the policy runs along the log and learns only from matched rounds (see
    :func:`_replay_learning`); for fixed targets each round is kept with probability
    ``pi(action) * min propensity / propensity`` (rejection sampling, Dudik et al. 2012), drawn with
    ``seed``. Unbiased when the logs are uniformly random; with other logs it is still valid but keeps
    only a ``min propensity`` share of rounds. Several task types are weighted by their traffic.
    ESS is the number of matched rounds. The interval of a fixed target resamples the matched
    rounds; that of a learning target replays resampled logs afresh (see :meth:`interval`).
    """

    name: ClassVar[str] = "replay"
    needs_probabilities: ClassVar[bool] = False

    def matched(self, data: Logged | pd.DataFrame, target: Any) -> np.ndarray:
        """Indices of the logged rounds the target was matched with, in time order."""
        logged = _logged(data)
        return self._matched(logged, self._resolve(logged, target))

    def _matched(self, data: Logged, resolved: _Resolved) -> np.ndarray:
        if resolved.accepted is not None:
            return resolved.accepted
        mu_min = np.full(len(data.groups), np.inf)
        np.minimum.at(mu_min, data.group, data.propensity)
        u = np.random.default_rng(np.random.SeedSequence([self.seed, 2])).random(data.n)
        return np.flatnonzero(u * data.propensity < self._probs(resolved).of_logged(data) * mu_min[data.group])

    def _parts(self, data: Logged, resolved: _Resolved) -> tuple[np.ndarray, np.ndarray | None, float]:
        rows = self._matched(data, resolved)
        groups = data.group[rows]
        matched = np.bincount(groups, minlength=len(data.groups))
        empty = [data.groups[g] for g in np.flatnonzero(matched == 0) if np.any(data.group == g)]
        if empty:
            raise ReplayError(
                f"replay of {resolved.name} matched no round of task type(s) {empty}: too few logged rounds for it"
            )
        weight = (np.bincount(data.group, minlength=len(data.groups)) / np.maximum(matched, 1))[groups]
        return weight * data.reward[rows], weight, _kish(weight)


@dataclass(frozen=True)
class IPS(_Estimator):
    """Inverse propensity scoring: mean of ``w * reward`` with ``w = pi(action) / propensity``.

    Unbiased for any target whose probabilities are known at every round (fixed targets; learning
    ones along their replay) when logged propensities are right and positive wherever the target
    chooses. ``clip`` caps the weights: lower variance, biased toward 0 for non-negative rewards by
    the clipped weight mass (the bias is ``-mean((w - clip)+ * reward)`` in expectation).
    """

    clip: float | None = None

    name: ClassVar[str] = "ips"

    def _parts(self, data: Logged, resolved: _Resolved) -> tuple[np.ndarray, np.ndarray | None, float]:
        w = self._weights(data, self._probs(resolved))
        return w * data.reward, None, _kish(w)


@dataclass(frozen=True)
class SNIPS(_Estimator):
    """Self-normalised IPS: ``sum(w * reward) / sum(w)``.

    Biased by O(1/n) but always within the reward range, and far less variable than IPS when
    weights are large. ``clip`` as in :class:`IPS`.
    """

    clip: float | None = None

    name: ClassVar[str] = "snips"

    def _parts(self, data: Logged, resolved: _Resolved) -> tuple[np.ndarray, np.ndarray | None, float]:
        w = self._weights(data, self._probs(resolved))
        return w * data.reward, w, _kish(w)


@dataclass(frozen=True)
class DM(_Estimator):
    """Direct method: mean over rounds of ``sum_a pi(a) * q(cell, a)`` with a fitted reward model.

    No weights, so low variance, but biased wherever the reward model is wrong (by default
    :class:`CellMeans`). ESS is the number of rounds. The interval refits the model on every resample.
    """

    reward_model: CellMeans = field(default_factory=CellMeans)

    name: ClassVar[str] = "dm"
    refits: ClassVar[bool] = True

    def _parts(self, data: Logged, resolved: _Resolved) -> tuple[np.ndarray, np.ndarray | None, float]:
        q = self.reward_model.fit(data)
        return _direct(self._probs(resolved), q, data.cell), None, float(data.n)


@dataclass(frozen=True)
class DR(_Estimator):
    """Doubly robust: DM plus the IPS-weighted residual of the reward model, per round.

    Unbiased if either the propensities or the reward model are right, usually with less variance
    than IPS. ``clip`` caps the weights of the residual term (bias as in :class:`IPS`, on residuals).
    The interval refits the reward model on every resample.
    """

    clip: float | None = None
    reward_model: CellMeans = field(default_factory=CellMeans)

    name: ClassVar[str] = "dr"
    refits: ClassVar[bool] = True

    def _parts(self, data: Logged, resolved: _Resolved) -> tuple[np.ndarray, np.ndarray | None, float]:
        probs = self._probs(resolved)
        q = self.reward_model.fit(data)
        w = self._weights(data, probs)
        residual = data.reward - q[data.cell, data.action]
        return _direct(probs, q, data.cell) + w * residual, None, _kish(w)


ESTIMATORS: dict[str, type[_Estimator]] = {e.name: e for e in (Replay, IPS, SNIPS, DM, DR)}


# -- side by side ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Comparison:
    """Several policies under several estimators on one log, with what was skipped and dropped."""

    table: pd.DataFrame  # columns: estimator, policy, value, ci_low, ci_high, ess, n
    skipped: tuple[str, ...]
    dropped: Mapping[str, int]
    n: int
    alpha: float
    notes: tuple[str, ...] = ()

    def render(self) -> str:
        """A plain-text comparison table, policy by policy."""
        lines = [f"{self.n:,} logged rounds"]
        for reason, count in self.dropped.items():
            lines.append(f"dropped {count:,} rows {reason}")
        lines += list(self.notes)
        if self.table[["ci_low", "ci_high"]].isna().any(axis=None):
            lines.append(
                "an unavailable interval: over a tenth of the bootstrap replays could not be replayed, or the "
                "estimate fell outside its interval (too few matched rounds to trust either)"
            )
        level = f"{100 * (1 - self.alpha):g}% interval"
        header = f"{'policy':<24} {'estimator':<9} {'value':>9}  {level:<22} {'ess':>10} {'n':>10}"
        lines += ["", header, "-" * len(header)]
        for r in self.table.itertuples(index=False):
            ci = (
                "unavailable" if math.isnan(r.ci_low) or math.isnan(r.ci_high) else f"[{r.ci_low:.4g}, {r.ci_high:.4g}]"
            )
            lines.append(f"{r.policy:<24} {r.estimator:<9} {r.value:>9.4g}  {ci:<22} {r.ess:>10,.0f} {r.n:>10,}")
        lines += [f"skipped: {s}" for s in self.skipped]
        return "\n".join(lines)


def compare(
    data: Logged | pd.DataFrame,
    targets: Sequence[Any],
    estimators: Sequence[str | _Estimator] = ("replay", "ips", "snips", "dm", "dr"),
    *,
    objective: Objective | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    learning_boot: int = 200,
    alpha: float = 0.05,
    clip: float | None = None,
    progress: bool = False,
    skip_failing: bool = False,
) -> Comparison:
    """Evaluate every target (a spec string or a target object) with every estimator, side by side.

    Estimators given by name are built with ``n_boot``, ``alpha``, ``seed`` and ``clip``; instances
    keep their own settings. A learning target is replayed once and all its estimators read that
    one trajectory; its ``learning_boot`` bootstrap replays are shared by the estimators too. An
    estimator that does not apply (IPS-style ones for a policy that exposes no action
    probabilities) is skipped and named in :attr:`Comparison.skipped`, never given a number.
    ``progress`` shows tqdm bars (stderr) for replays and bootstraps that take over a second.
    ``skip_failing``: a target or estimator that raises :class:`ReplayError` on this log (say, a
    replay that matches no round of a task type) is named in ``skipped`` with the reason, and the
    others are still evaluated.

    A learning target's value is one replay and its interval comes from fresh replays of resampled
    logs; where the value falls outside that interval, the interval is withheld (NaN) and a note says so.
    """
    logged = _logged(data)
    built: list[_Estimator] = []
    for e in estimators:
        if isinstance(e, _Estimator):
            built.append(e)
            continue
        if e not in ESTIMATORS:
            raise ReplayError(f"unknown estimator {e!r}; choose from {sorted(ESTIMATORS)}")
        cls = ESTIMATORS[e]
        extra = {"clip": clip} if "clip" in cls.__dataclass_fields__ else {}
        built.append(cls(n_boot=n_boot, alpha=alpha, seed=seed, learning_boot=learning_boot, **extra))
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    notes: list[str] = []
    for target in targets:
        try:
            target = parse_target(target, objective=objective, seed=seed) if isinstance(target, str) else target
            resolved = _resolve(logged, target, progress, record=any(e.needs_probabilities for e in built))
        except ReplayError as exc:
            if not skip_failing:
                raise
            name = str(getattr(target, "name", target))
            skipped.append(str(exc) if str(exc).startswith(name) else f"{name}: {exc}")
            continue
        if isinstance(target, Static):
            tables = ", ".join(f"{g} -> {m[0]}" for g, m in zip(logged.groups, logged.models))
            notes.append(f"static: the first of each task type's models ({tables})")
        usable = [e for e in built if resolved.probs is not None or isinstance(e, Replay)]
        skipped += [
            f"{e.name} for {resolved.name}: it exposes no action probabilities while it learns"
            for e in built
            if e not in usable
        ]
        learned = None
        if resolved.learning is not None and usable:
            learned = _learning_bootstrap(logged, resolved.learning, usable, learning_boot, seed, progress)
        for i, est in enumerate(usable):
            try:
                estimate = est._evaluate(logged, resolved, progress, None if learned is None else learned[i])
            except ReplayError as exc:
                if not skip_failing:
                    raise
                skipped.append(f"{est.name} for {resolved.name}: {exc}")
                continue
            if (
                resolved.learning is not None
                and not math.isnan(estimate.ci_low)
                and not estimate.ci_low <= estimate.value <= estimate.ci_high
            ):
                notes.append(
                    f"{est.name} for {resolved.name}: the estimate {estimate.value:.4g} lies outside its bootstrap interval; interval withheld"
                )
                estimate = replace(estimate, ci_low=math.nan, ci_high=math.nan)
            rows.append(vars(estimate))
    table = pd.DataFrame(rows, columns=["estimator", "policy", "value", "ci_low", "ci_high", "ess", "n"])
    return Comparison(table, tuple(skipped), dict(logged.dropped), logged.n, alpha, tuple(notes))
