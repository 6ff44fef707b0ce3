"""Logged bandit data for offline evaluation: read once (router log, any DataFrame), checked, and held as arrays.

:func:`load_logged` reads the router's own log (one row per call: the action is the logged
primary, the reward is defined from the primary attempt and its feedback); :func:`from_frame`
takes any DataFrame with named columns. Both return a DataFrame in one schema, and
:func:`prepare` turns it into :class:`Logged`, the numpy arrays every target and estimator reads.
Invalid rows (missing or zero propensity, duplicated call ids, an action that is not one of the
policy's models, ...) raise :class:`ReplayError`, or with ``on_invalid="drop"`` are excluded and
counted in ``attrs["dropped"]`` / :attr:`Logged.dropped`: never a silent wrong number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._exceptions import ReplayError, StoreError
from .._policies import Objective

if TYPE_CHECKING:
    from .._store import Store

#: how a logged call's reward is defined (see :func:`load_logged`)
REWARDS = ("accuracy", "success", "utility")
_ON_INVALID = ("raise", "drop")
_CONTEXT = "context."
_FEATURE = "feature."


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


def _propensity_problems(p: np.ndarray) -> dict[str, np.ndarray]:
    """The rows whose logged propensity cannot weigh them: missing, non-positive or above 1."""
    return {"with a missing or non-positive propensity": ~(p > 0), "with a propensity above 1": p > 1.0 + 1e-9}


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

    from .._config import sqlite_file
    from .._store import Store

    if isinstance(store, Store):
        store.flush()
        return store, False
    path = sqlite_file(str(store))
    if path is not None and not path.exists():
        safe = make_url(str(store)).render_as_string(hide_password=True)
        raise StoreError(f"no log at {safe}: the file does not exist")
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

    from .._store import attempts, calls, feedback

    _check_on_invalid(on_invalid)
    if reward not in REWARDS:
        raise ReplayError(f"reward must be one of {REWARDS}, got {reward!r}")
    tasks = [task_type] if isinstance(task_type, str) else (list(task_type) if task_type is not None else None)
    s, own = _open_store(store)

    def query(table: Any, *columns: str) -> Any:
        q = select(*(table.c[name] for name in columns))
        return q.where(table.c.task_type.in_(tasks)) if tasks is not None else q

    try:
        with s.engine.connect() as conn:
            c = pd.read_sql(query(calls, "call_id", "ts", "task_type", "policy", "propensity", "ranking"), conn)
            primary = query(attempts, "call_id", "model", "outcome", "latency_s", "cost").where(attempts.c.idx == 0)
            a = pd.read_sql(primary, conn)
            f = pd.read_sql(query(feedback, "call_id", "model", "accuracy"), conn)
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
    problems = {
        "without a readable ranking": action.isna(),
        "without a primary attempt": df["attempt_model"].isna(),
        "whose primary attempt is not the ranking's first model": (df["attempt_model"] != action) & action.notna(),
        **_propensity_problems(out["propensity"].to_numpy()),
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
    features: Sequence[str] = (),
    position: str | None = None,
    time: str | None = None,
    call_id: str | None = None,
    group: str | None = None,
    on_invalid: str = "raise",
) -> pd.DataFrame:
    """Take logged bandit data from any DataFrame with named columns, in the schema of :func:`load_logged`.

    ``position`` and ``context`` columns define the cells of the DM/DR reward model; ``features``
    are numeric context columns a :class:`~zeta_adaptive.replay.FeatureRidge` reward model regresses
    on (a missing or non-numeric value raises, or drops the row); ``time`` orders
    the rounds (else the frame's order); ``group`` names a column whose values get separate
    policies (the router's task type); ``call_id`` is checked for duplicates. Actions become
    strings. Rows with a missing action, a missing or non-numeric reward, a missing, non-positive
    or >1 propensity or a duplicated call id raise :class:`ReplayError`, or are dropped and counted.
    """
    _check_on_invalid(on_invalid)
    context = [context] if isinstance(context, str) else list(context)
    features = list(features)
    named = [action, reward, propensity, *context, *features]
    named += [c for c in (position, time, call_id, group) if c is not None]
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
    for c in features:
        out[_FEATURE + c] = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
    problems = {
        "with a missing action": out["action"].isna(),
        "with a missing or non-numeric reward": ~np.isfinite(out["reward"].to_numpy()),
        **_propensity_problems(out["propensity"].to_numpy()),
    }
    if features:
        problems["with a missing or non-numeric feature"] = ~np.isfinite(out[[_FEATURE + c for c in features]]).all(
            axis=1
        )
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
    ``cell`` numbers the reward model's cells (task type x position x context); ``features`` holds
    the numeric context features of each round (no columns if none were given).
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
    features: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))

    @property
    def n(self) -> int:
        """Number of logged rounds."""
        return len(self.action)

    def model_index(self, g: int) -> np.ndarray:
        """Column indices of group ``g``'s models, in the policy's order."""
        pos = {a: i for i, a in enumerate(self.actions)}
        return np.array([pos[m] for m in self.models[g]], dtype=np.int64)

    def take(self, idx: np.ndarray, outcomes: bool = True) -> Logged:
        """The rounds at ``idx`` (a bootstrap resample). Without ``outcomes`` only what the estimators
        read is taken and the learning outcomes are left empty, so anything reading them fails loudly."""
        learned = (self.success, self.latency_s, self.cost, self.accuracy)
        success, latency_s, cost, accuracy = (a[idx] if outcomes else np.empty(0) for a in learned)
        return replace(
            self,
            action=self.action[idx],
            reward=self.reward[idx],
            propensity=self.propensity[idx],
            group=self.group[idx],
            cell=self.cell[idx],
            features=self.features[idx],
            success=success,
            latency_s=latency_s,
            cost=cost,
            accuracy=accuracy,
        )


def _natural(values: Sequence[str]) -> list[str]:
    """Sort names numerically when they all are numbers (item ids), else alphabetically."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def prepare(
    frame: pd.DataFrame, models: Sequence[str] | Mapping[str, Sequence[str]] | None = None, *, on_invalid: str = "raise"
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
        features=frame[[c for c in frame.columns if c.startswith(_FEATURE)]].to_numpy(dtype=float),
    )


def as_logged(data: Logged | pd.DataFrame) -> Logged:
    """Estimators accept a prepared log or a frame (prepared anew, with default models, on every call)."""
    return data if isinstance(data, Logged) else prepare(data)
