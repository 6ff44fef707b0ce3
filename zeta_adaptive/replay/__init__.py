"""Offline evaluation of routing policies on logged traffic, before they go live.

The router logs, for every call, the primary model it chose and the probability with which its
policy chose it (``calls.propensity``). That makes off-policy evaluation possible: estimating what
another policy would have earned on the same traffic. The package follows the Open Bandit Pipeline
(OBP), one concept per module:

* :mod:`~zeta_adaptive.replay.data`: the logged data, read once (:func:`load_logged`,
  :func:`from_frame`) and held as arrays (:func:`prepare` -> :class:`Logged`);
* :mod:`~zeta_adaptive.replay.targets` and :mod:`~zeta_adaptive.replay.learning`: the policies
  evaluated, each resolved on a log into its action probabilities at every logged round
  (:class:`ActionProbs`), once per log: a learning target's replay is shared by every estimate,
  interval and ESS;
* :mod:`~zeta_adaptive.replay.estimators`: small frozen dataclasses over the arrays with
  ``estimate``, ``interval`` (seeded percentile bootstrap) and ``ess`` (effective sample size);
* :mod:`~zeta_adaptive.replay.compare`: targets x estimators side by side;
* :mod:`~zeta_adaptive.replay.contextual`: per-prompt (contextual) targets on logged features.

Fixed targets (:class:`Uniform`, :class:`Static`, :class:`Always`, :class:`Distribution`) suit
every estimator; a learning target (:class:`Learning`, any policy of :mod:`zeta_adaptive._policies`)
is replayed along the log (Li et al. 2011) and suits :class:`Replay`, and IPS, SNIPS, DM and DR
where the policy exposes its action probabilities (all but epsilon-greedy).

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

from .._exceptions import ReplayError
from .compare import Comparison, compare
from .data import REWARDS, Logged, from_frame, load_logged, prepare
from .estimators import DM, DR, ESTIMATORS, IPS, SNIPS, CellMeans, Estimate, Estimator, FeatureRidge, Replay
from .learning import Learning, Replayed
from .probabilities import ActionProbs, Resolved
from .targets import Always, Distribution, Static, Target, Uniform, parse_target, resolve

__all__ = [
    "ReplayError",
    "REWARDS",
    "load_logged",
    "from_frame",
    "prepare",
    "Logged",
    "ActionProbs",
    "Resolved",
    "Replayed",
    "resolve",
    "Target",
    "Uniform",
    "Static",
    "Always",
    "Distribution",
    "Learning",
    "parse_target",
    "CellMeans",
    "FeatureRidge",
    "Estimate",
    "Estimator",
    "Replay",
    "IPS",
    "SNIPS",
    "DM",
    "DR",
    "ESTIMATORS",
    "Comparison",
    "compare",
]
