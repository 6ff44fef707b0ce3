"""Analysis of the outcome log with pandas: what happened, per task type and model.

Every function takes DataFrames as :meth:`Store.frame` returns them (or :func:`load_log` for all
three tables at once), so the same code serves the demo, the notebooks and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .store import Store

__all__ = ["Log", "load_log", "model_summary"]


@dataclass(frozen=True)
class Log:
    """The three tables of a log as DataFrames, in time order."""

    calls: pd.DataFrame
    attempts: pd.DataFrame
    feedback: pd.DataFrame


def load_log(store: Store | str) -> Log:
    """Read a whole log from a Store or a store URL."""
    own = isinstance(store, str)
    s = Store(store) if own else store
    try:
        return Log(s.frame("calls"), s.frame("attempts"), s.frame("feedback"))
    finally:
        if own:
            s.close()


def model_summary(log: Log) -> pd.DataFrame:
    """Per task type and model: attempts, success rate, mean accuracy fed back, median latency of
    successful attempts, mean cost, and the model's share of the task's answered calls."""
    a = log.attempts
    if a.empty:
        return pd.DataFrame(
            columns=["task_type", "model", "attempts", "success_rate", "accuracy", "p50_latency_s", "mean_cost", "share"]
        )
    ok = a.assign(success=a["outcome"] == "ok")
    grouped = ok.groupby(["task_type", "model"])
    out = pd.DataFrame(
        {
            "attempts": grouped.size(),
            "success_rate": grouped["success"].mean(),
            "p50_latency_s": ok[ok["success"]].groupby(["task_type", "model"])["latency_s"].median(),
            "mean_cost": grouped["cost"].mean(),
        }
    )
    answered = log.calls.dropna(subset=["model"])
    share = answered.groupby("task_type")["model"].value_counts(normalize=True)
    out["share"] = share.reindex(out.index).fillna(0.0)
    accuracy = log.feedback.groupby(["task_type", "model"])["accuracy"].mean()
    out["accuracy"] = accuracy.reindex(out.index)
    cols = ["attempts", "success_rate", "accuracy", "p50_latency_s", "mean_cost", "share"]
    return out[cols].reset_index()
