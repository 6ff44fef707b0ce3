"""Deprecated alias of :mod:`zeta_adaptive.replay.contextual`, where contextual replay now lives (kept for one release)."""

import warnings

from .replay.contextual import ESTIMATORS, ContextualLog, action_probabilities, evaluate, load_contextual

__all__ = ["ContextualLog", "load_contextual", "action_probabilities", "evaluate", "ESTIMATORS"]

warnings.warn(
    "zeta_adaptive.contextual_replay is deprecated: import zeta_adaptive.replay.contextual instead",
    DeprecationWarning,
    stacklevel=2,
)
