"""Targets, the policies evaluated offline, and their resolution on a log into action probabilities (once each).

Fixed targets (:class:`Uniform`, :class:`Static`, :class:`Always`, :class:`Distribution`) have
known action probabilities at every round; a :class:`~zeta_adaptive.replay.learning.Learning`
target is replayed along the log. :func:`resolve` makes either concrete on a prepared log and
remembers the result for as long as that log lives, so every estimate, interval and ESS of the
same target on the same :class:`Logged` reads one replay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np

from .._exceptions import ReplayError
from .._policies import Objective
from .._registry import POLICIES
from .data import Logged
from .learning import Learning
from .probabilities import ActionProbs, Resolved


class _Fixed:
    """A target whose action probabilities do not depend on what it observes."""

    @property
    def name(self) -> str:
        """The target's name in tables and errors."""
        raise NotImplementedError

    def _fill(self, row: np.ndarray, data: Logged, g: int) -> None:
        """Set task type ``g``'s probability of each action (columns of ``data.actions``) in ``row``."""
        raise NotImplementedError

    def probabilities(self, data: Logged) -> ActionProbs:
        """One row of action probabilities per task type, checked against what the log covers."""
        table = np.zeros((len(data.groups), len(data.actions)))
        for g in range(len(data.groups)):
            self._fill(table[g], data, g)
        counts = np.bincount(data.group * len(data.actions) + data.action, minlength=table.size).reshape(table.shape)
        unlogged = np.argwhere((table > 0) & (counts == 0))
        if len(unlogged):
            g, a = unlogged[0]
            raise ReplayError(
                f"{self.name} chooses {data.actions[a]!r} for task type {data.groups[g]!r} with probability "
                f"{table[g, a]:.3g}, but the log never chose it there: no estimator can value it "
                "(log some traffic to it, or leave it out of the models)"
            )
        return ActionProbs(table, data.group)

    def resolve(self, data: Logged, progress: bool = False) -> Resolved:
        """The target on this log: its probabilities (nothing to replay)."""
        return Resolved(self.name, self.probabilities(data))


@dataclass(frozen=True)
class Uniform(_Fixed):
    """Every model of the task type with equal probability at every round: the ``random`` policy.

    With positions, 1/(number of actions) at every position.
    """

    name: str = "random"

    def _fill(self, row: np.ndarray, data: Logged, g: int) -> None:
        idx = data.model_index(g)
        row[idx] = 1.0 / len(idx)


@dataclass(frozen=True)
class Static(_Fixed):
    """The static table: always the task type's first configured model (the ``static`` policy's primary)."""

    name: str = "static"

    def _fill(self, row: np.ndarray, data: Logged, g: int) -> None:
        row[data.model_index(g)[0]] = 1.0


@dataclass(frozen=True)
class Always(_Fixed):
    """Always the one model ``model``."""

    model: str

    @property
    def name(self) -> str:
        """``always:MODEL``."""
        return f"always:{self.model}"

    def _fill(self, row: np.ndarray, data: Logged, g: int) -> None:
        if self.model not in data.models[g]:
            raise ReplayError(
                f"{self.name}: {self.model!r} is not a model of task type {data.groups[g]!r} "
                f"(models: {list(data.models[g])})"
            )
        row[data.actions.index(self.model)] = 1.0


@dataclass(frozen=True, eq=False)
class Distribution(_Fixed):
    """A fixed random choice: model -> probability, the same in every task type (each must sum to 1)."""

    weights: Mapping[str, float]
    label: str = "distribution"

    @property
    def name(self) -> str:
        """The label."""
        return self.label

    def _fill(self, row: np.ndarray, data: Logged, g: int) -> None:
        for m, w in self.weights.items():
            if w < 0 or (w > 0 and m not in data.models[g]):
                raise ReplayError(f"{self.name}: weight {w} for {m!r}, not a model of task type {data.groups[g]!r}")
            if w > 0:
                row[data.actions.index(m)] = w
        if not math.isclose(row.sum(), 1.0, abs_tol=1e-9):
            raise ReplayError(f"{self.name}: probabilities for task type {data.groups[g]!r} sum to {row.sum()}, not 1")


Target = Uniform | Static | Always | Distribution | Learning

#: per prepared log (while it lives), each target resolved on it so far
_RESOLVED: WeakKeyDictionary[Logged, dict[Any, Resolved]] = WeakKeyDictionary()


def resolve(data: Logged, target: Any, progress: bool = False) -> Resolved:
    """A target's action probabilities on this log, running the replay for a learning one, once per log and target.

    ``target``: a target of this module, an :class:`ActionProbs` or an (n, actions) probability
    matrix. The result is remembered while ``data`` lives (by target value for fixed targets, by
    identity for learning ones), so estimators reading the same target share one replay.
    """
    if isinstance(target, np.ndarray):
        if target.shape != (data.n, len(data.actions)):
            raise ReplayError(f"a probability matrix must have shape {(data.n, len(data.actions))}, got {target.shape}")
        return Resolved("probabilities", ActionProbs.per_round(target))
    if not isinstance(target, _Fixed | Learning | ActionProbs):
        raise ReplayError(f"cannot evaluate {target!r}: use a target of this module or parse_target('...')")
    known = _RESOLVED.setdefault(data, {})
    if target not in known:
        known[target] = target.resolve(data, progress)
    return known[target]


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
    :data:`zeta_adaptive.POLICIES` with optional options, e.g. ``thompson:discount=0.98``.
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
