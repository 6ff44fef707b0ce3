"""What every estimator reads of a target: its action probabilities at each logged round, made once per log.

The Open Bandit Pipeline's ``action_dist``, kept compact: a fixed target has one row of
probabilities per task type, a learning one a row per decision of its replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._exceptions import ReplayError
from .data import Logged


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

    def resolve(self, data: Logged, progress: bool = False) -> Resolved:
        """Already probabilities: checked against the log's shape."""
        if len(self.row) != data.n or self.table.shape[1] != len(data.actions):
            raise ReplayError(
                f"action probabilities for {len(self.row)} rounds of {self.table.shape[1]} actions do not fit "
                f"a log of {data.n} rounds of {len(data.actions)} actions"
            )
        return Resolved("probabilities", self)


@dataclass(frozen=True, eq=False)
class Resolved:
    """A target made concrete on one log: its action probabilities (a learning one's result is a ``Replayed``)."""

    name: str
    probs: ActionProbs | None  # None: the policy exposes no action probabilities while it learns

    def require_probs(self, estimator: str) -> ActionProbs:
        """The action probabilities, or a ReplayError naming the estimator that needs them."""
        if self.probs is None:
            raise ReplayError(
                f"{self.name} does not expose its action probabilities while it learns: "
                f"{estimator} does not apply to it; use the replay estimator"
            )
        return self.probs
