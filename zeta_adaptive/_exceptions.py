"""Every exception zeta_adaptive raises, under one base class so callers can catch them all."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._results import Attempt

__all__ = [
    "ZetaError",
    "ConfigError",
    "UnknownTaskType",
    "InvalidRequest",
    "RequestRejected",
    "AllModelsFailed",
    "FeedbackError",
    "StoreError",
    "StreamBroken",
    "ReplayError",
    "MissingDependency",
]


class ZetaError(Exception):
    """Base class of every error raised by zeta_adaptive.

    Errors pickle (to cross a process pool, for example) with their message and attributes,
    whatever their constructor takes.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[ZetaError], args: tuple[Any, ...], state: dict[str, Any]) -> ZetaError:
    """A pickled error as it was, without calling its constructor."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigError(ZetaError, ValueError):
    """The configuration is invalid; `field` names the offending key (dotted path)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class UnknownTaskType(ZetaError, KeyError):
    """A call named (or the classifier chose) a task type that has no route."""

    def __init__(self, task_type: str, known: Sequence[str]) -> None:
        self.task_type = task_type
        self.known = tuple(known)
        super().__init__(task_type)

    def __str__(self) -> str:
        return f"unknown task type {self.task_type!r}; routes exist for {sorted(self.known)}"


def _describe(attempts: Sequence[Attempt]) -> str:
    return "; ".join(
        f"#{i} {a.model}: {a.outcome}"
        + (f" (HTTP {a.status})" if a.status else "")
        + (f" {a.error}" if a.error else "")
        for i, a in enumerate(attempts)
    )


class InvalidRequest(ZetaError, ValueError):
    """A call's own arguments are unusable (messages, texts, deadline, options); nothing was sent or logged."""


class RequestRejected(ZetaError):
    """A backend rejected the request itself (HTTP 400/413/422): it is not retried on other models."""

    def __init__(self, call_id: str, attempts: Sequence[Attempt]) -> None:
        self.call_id = call_id
        self.attempts = list(attempts)
        last = self.attempts[-1]
        super().__init__(f"call {call_id}: request rejected by {last.model} (HTTP {last.status}): {last.error}")


class AllModelsFailed(ZetaError):
    """Every candidate model failed (or the deadline ran out); `attempts` lists each error."""

    def __init__(self, call_id: str, task_type: str, attempts: Sequence[Attempt], reason: str = "") -> None:
        self.call_id = call_id
        self.task_type = task_type
        self.attempts = list(attempts)
        detail = _describe(self.attempts) or "no attempt was made"
        why = f" ({reason})" if reason else ""
        super().__init__(f"call {call_id} [{task_type}]: every candidate failed{why}: {detail}")


class StreamBroken(ZetaError):
    """A streamed answer failed after its first token reached the caller, so it cannot fall back."""

    def __init__(self, call_id: str, attempts: Sequence[Attempt]) -> None:
        self.call_id = call_id
        self.attempts = list(attempts)
        last = self.attempts[-1]
        super().__init__(f"call {call_id}: the stream from {last.model} broke after it started: {last.error}")


class FeedbackError(ZetaError, ValueError):
    """Feedback was rejected; ``reason`` says why: ``invalid`` (accuracy not in [0, 1], a bad call id),
    ``unknown_call``, ``no_answer`` (every model failed), ``already_rated`` or ``forbidden`` (the call
    is on a route the caller may not use)."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        self.reason = reason
        super().__init__(message)


class ReplayError(ZetaError, ValueError):
    """A log or a request that offline evaluation cannot turn into a trustworthy number."""


class StoreError(ZetaError):
    """The outcome log could not be opened, migrated or read."""


class MissingDependency(ZetaError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(
            f"{module} is not installed; it comes with the {extra!r} extra: pip install 'zeta_adaptive[{extra}]'",
            name=module,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.module, self.extra)  # ImportError's ``name`` is not in the instance dict
