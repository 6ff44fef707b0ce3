"""Delayed feedback: check an accuracy and the call it rates before anything is written or learned.

The router remembers recent answered calls in memory (bounded); feedback for an older call, or one
made by another process, is found in the log. Each call takes one accuracy: a second one, from this
process (even before it is written) or logged by another, is rejected, so nothing counts twice.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from .exceptions import FeedbackError
from .store import Store

__all__ = ["validate_accuracy", "RatedCall", "FeedbackBook"]


def validate_accuracy(accuracy: object) -> float:
    """The accuracy as a float in [0, 1] (numpy scalars too); NaN, bools, strings or out of range raise FeedbackError."""
    if isinstance(accuracy, (bool, np.bool_)) or not isinstance(accuracy, numbers.Real):
        raise FeedbackError(f"accuracy must be a number in [0, 1], got {accuracy!r}")
    value = float(accuracy)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise FeedbackError(f"accuracy must be in [0, 1], got {accuracy!r}")
    return value


@dataclass(frozen=True, slots=True)
class RatedCall:
    """The call a feedback refers to: what the policy needs to learn from it."""

    call_id: str
    task_type: str
    model: str


class FeedbackBook:
    """Recent calls by id (task type, answering model, whether rated), backed by the log."""

    def __init__(self, store: Store, capacity: int = 1_000_000) -> None:
        self.store = store
        self.capacity = capacity
        self._recent: OrderedDict[str, tuple[str, str | None, bool]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, call_id: str, task_type: str, model: str | None) -> None:
        """Note a finished call (model None when no model answered)."""
        with self._lock:
            self._recent[call_id] = (task_type, model, False)
            if len(self._recent) > self.capacity:
                self._recent.popitem(last=False)

    def accept(self, call_id: str, accuracy: object) -> tuple[RatedCall, float]:
        """Validate feedback and mark the call as rated; raises FeedbackError and changes nothing if invalid."""
        value = validate_accuracy(accuracy)
        if not isinstance(call_id, str) or not call_id:
            raise FeedbackError(f"call_id must be a non-empty string, got {call_id!r}")
        with self._lock:
            entry = self._recent.get(call_id)
            if entry is None:
                entry = self._from_log(call_id)
            task_type, model, rated = entry
            if model is None:
                raise FeedbackError(f"call {call_id} has no answer to rate: every model failed")
            if rated or self._rated_elsewhere(call_id):
                raise FeedbackError(f"call {call_id} already has feedback")
            self._recent[call_id] = (task_type, model, True)
        return RatedCall(call_id, task_type, model), value

    def _rated_elsewhere(self, call_id: str) -> bool:
        """Whether another process already logged feedback for this call (unknown if the log is down)."""
        try:
            return self.store.has_feedback(call_id)
        except SQLAlchemyError:
            return False

    def _from_log(self, call_id: str) -> tuple[str, str | None, bool]:
        row = self.store.find_call(call_id)
        if row is None:
            raise FeedbackError(f"unknown call id {call_id!r}")
        return row["task_type"], row["model"], self.store.has_feedback(call_id)
