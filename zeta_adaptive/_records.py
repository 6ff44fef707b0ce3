"""The typed record of what a call did (its decision, its attempts, its answer), as the log keeps it.

The call engine fills one :class:`CallRecord` per call and hands it to the store as it is; the
store's writer turns it into rows (:meth:`CallRecord.rows`) off the call path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._features import Features
    from ._results import Attempt

__all__ = ["CallRecord"]


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One routed call as logged: its decision, its attempts (in completion order, each with its
    unix start time in ``starts``), its answer and, when it has them, its prompt features."""

    call_id: str
    ts: float
    task_type: str
    policy: str
    propensity: float
    order: Sequence[str]  # the whole order tried: the policy's ranking, then skipped models
    model: str | None  # the model that answered, None if none did
    outcome: str  # ok | failed | rejected
    latency_s: float
    attempts: Sequence[Attempt]
    starts: Sequence[float]
    router_id: str
    prompt: str | None = None
    answer: str | None = None
    skipped: Mapping[str, str] | None = None
    features: Features | None = None
    space: str | None = None  # the featurizer's label of ``features``

    def rows(self) -> list[tuple[str, dict[str, Any]]]:
        """The log rows of this call: its ``calls`` row, one ``attempts`` row each, its ``call_features`` row."""
        attempts = self.attempts
        rows: list[tuple[str, dict[str, Any]]] = [
            (
                "calls",
                {
                    "call_id": self.call_id,
                    "ts": self.ts,
                    "task_type": self.task_type,
                    "policy": self.policy,
                    "propensity": self.propensity,
                    "ranking": json.dumps(self.order),
                    "model": self.model,
                    "outcome": self.outcome,
                    "latency_s": self.latency_s,
                    "tokens_in": sum(a.tokens_in for a in attempts),
                    "tokens_out": sum(a.tokens_out for a in attempts),
                    "cost": sum(a.cost for a in attempts),
                    "n_attempts": len(attempts),
                    "prompt": self.prompt,
                    "answer": self.answer,
                    "skipped": json.dumps(self.skipped) if self.skipped else None,
                },
            )
        ]
        rows.extend(
            (
                "attempts",
                {
                    "call_id": self.call_id,
                    "idx": index,
                    "ts": ts,
                    "task_type": self.task_type,
                    "model": a.model,
                    "outcome": a.outcome,
                    "status": a.status,
                    "latency_s": a.latency_s,
                    "tokens_in": a.tokens_in,
                    "tokens_out": a.tokens_out,
                    "cost": a.cost,
                    "error": a.error or None,
                    "ttft_s": a.ttft_s,
                    "router_id": self.router_id,
                },
            )
            for index, (a, ts) in enumerate(zip(attempts, self.starts, strict=True))
        )
        if self.features is not None:
            rows.append(
                (
                    "call_features",
                    {
                        "call_id": self.call_id,
                        "ts": self.ts,
                        "task_type": self.task_type,
                        "space": self.space,
                        "features": self.features.to_json(),
                    },
                )
            )
        return rows
