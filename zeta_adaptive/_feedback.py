"""Delayed feedback: check an accuracy and the call it rates before anything is written or learned.

The router remembers its recent answered calls in memory (bounded by count and age); feedback for
an older call, or one made by another process, is checked against the log. Each call takes one
accuracy: the database's unique key on ``feedback.call_id`` decides between processes, and the
policy learns only from the rating that won.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from ._exceptions import FeedbackError

__all__ = ["validate_accuracy", "check_call_id", "RatedCall", "FeedbackBook"]


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
    """This process's recent answered calls by id (task type, answering model, whether rated), in memory.

    Bounded by count (``capacity``) and age (``max_age_s``): a call older than the window is looked
    up in the log instead, as another process's call would be. No method touches the database, so
    a hung store never holds the lock that every call's completion takes.
    """

    def __init__(
        self, capacity: int = 100_000, max_age_s: float = 86_400.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self.max_age_s = max_age_s
        self.clock = clock
        self._recent: OrderedDict[str, tuple[str, str | None, bool, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._recent)

    def remember(self, call_id: str, task_type: str, model: str | None) -> None:
        """Note a finished call (model None when no model answered)."""
        now = self.clock()
        with self._lock:
            self._recent[call_id] = (task_type, model, False, now)
            while len(self._recent) > self.capacity:
                self._recent.popitem(last=False)
            while self._recent:
                oldest = next(iter(self._recent.values()))
                if now - oldest[3] <= self.max_age_s:
                    break
                self._recent.popitem(last=False)

    def claim(self, call_id: str, routes: Collection[str] | None = None) -> RatedCall | None:
        """Mark one of our calls as rated and return it; None if the call is not in the window.
        Raises FeedbackError (and changes nothing) for a call on a task type outside ``routes`` (when
        given), without answer, or already rated."""
        with self._lock:
            entry = self._recent.get(call_id)
            if entry is None or self.clock() - entry[3] > self.max_age_s:
                return None
            task_type, model, rated, at = entry
            check_route(call_id, task_type, routes)
            if model is None:
                raise FeedbackError(f"call {call_id} has no answer to rate: every model failed", "no_answer")
            if rated:
                raise FeedbackError(f"call {call_id} already has feedback", "already_rated")
            self._recent[call_id] = (task_type, model, True, at)
        return RatedCall(call_id, task_type, model)


def check_route(call_id: str, task_type: str, routes: Collection[str] | None) -> None:
    """FeedbackError ``forbidden`` for a call whose task type is not among ``routes`` (None: any)."""
    if routes is not None and task_type not in routes:
        raise FeedbackError(f"call {call_id} is on a route this caller may not use", "forbidden")


def check_call_id(call_id: object) -> str:
    """The call id, if it is a non-empty string of at most 64 characters; else FeedbackError."""
    if not isinstance(call_id, str) or not call_id or len(call_id) > 64:
        raise FeedbackError(f"call_id must be a non-empty string of at most 64 characters, got {call_id!r:.80}")
    return call_id
