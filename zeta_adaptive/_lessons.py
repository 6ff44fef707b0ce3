"""Which attempts teach: one rule for the live policy and breaker, the warm start's SQL and logged rows.

An attempt teaches its model's policy and breaker alike, unless it says nothing about the model:
it was ``cancelled`` (a hedge's loser, an abandoned call), it ended ``context_exceeded`` (the prompt,
not the model), or the request itself was rejected (a ``client_error`` whose status is in
``rejecting_statuses`` from an endpoint that is not misconfigured). A misconfigured endpoint (401,
403, 404, or an error naming an unknown model) teaches both as a failure. The breaker alone also
skips a timeout the call's deadline cut short, which the log does not record (see :mod:`.health`).
The same rule is written here three ways, for a reply, for SQL rows and for rows read from the log,
so the warm start learns from the log exactly what the live path learned.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import and_, func, not_, or_

from ._backends import UNKNOWN_MODEL_MARKERS, Outcome

__all__ = [
    "SILENT",
    "MISCONFIGURED_STATUSES",
    "rejected",
    "teaches",
    "names_unknown_model",
    "unknown_model_sql",
    "teaches_sql",
    "teaches_rows",
]

#: outcomes that never teach: they say nothing about the model
SILENT = frozenset({Outcome.CANCELLED, Outcome.CONTEXT_EXCEEDED})
#: statuses of an endpoint set up wrong (a bad key, an unknown model), never a rejected request
MISCONFIGURED_STATUSES = (401, 403, 404)
_SILENT_NAMES = sorted(str(o) for o in SILENT)


def rejected(outcome: str, status: int | None, misconfigured: bool, rejecting: Collection[int]) -> bool:
    """Whether a backend refused the request itself: no model should see it again."""
    return outcome == Outcome.CLIENT_ERROR and status in rejecting and not misconfigured


def teaches(outcome: str, status: int | None, misconfigured: bool, rejecting: Collection[int]) -> bool:
    """Whether an attempt teaches its model's policy and breaker (see the module's rule)."""
    return outcome not in SILENT and not rejected(outcome, status, misconfigured, rejecting)


def names_unknown_model(error: str | None) -> bool:
    """Whether an attempt's error names an unknown model (a misconfigured endpoint)."""
    lowered = error.lower() if error else ""
    return any(marker in lowered for marker in UNKNOWN_MODEL_MARKERS)


def unknown_model_sql(error: Any) -> Any:
    """:func:`names_unknown_model` as a SQLAlchemy condition on an error column."""
    lowered = func.lower(func.coalesce(error, ""))
    return or_(*(lowered.contains(marker, autoescape=True) for marker in UNKNOWN_MODEL_MARKERS))


def teaches_sql(table: Any, rejecting: Collection[int]) -> Any:
    """The rule as a SQLAlchemy condition on an ``attempts`` table (misconfiguration read from status
    and error) or on ``attempt_rollups`` (whose ``unknown_model`` says what the error said)."""
    c = table.c
    unknown_model = c.unknown_model == 1 if "unknown_model" in c else unknown_model_sql(c.error)
    misconfigured = or_(c.status.in_(MISCONFIGURED_STATUSES), unknown_model)
    refused = and_(c.outcome == str(Outcome.CLIENT_ERROR), c.status.in_(sorted(rejecting)), not_(misconfigured))
    return and_(c.outcome.notin_(_SILENT_NAMES), not_(refused))


def teaches_rows(rows: Mapping[str, Sequence[Any]], rejecting: Collection[int]) -> list[bool]:
    """The rule over logged attempt rows, column by column (``outcome``, ``status`` and, if present,
    ``error``; misconfiguration read from status and error as in :func:`teaches_sql`)."""
    errors = rows["error"] if "error" in rows else [None] * len(rows["outcome"])
    return [
        teaches(outcome, status, status in MISCONFIGURED_STATUSES or names_unknown_model(error), rejecting)
        for outcome, status, error in zip(rows["outcome"], rows["status"], errors)
    ]
