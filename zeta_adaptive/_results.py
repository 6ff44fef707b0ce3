"""What the router returns: a call's attempts, chat and embedding results, the streams that end in
one, and the table of what its policies believe (``Router.preferences()``).

These are plain values, kept apart from :mod:`zeta_adaptive._router` so that the exceptions, the
gateway and user code can name them without importing the router.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from ._engine import Call

__all__ = [
    "Attempt",
    "ChatResult",
    "EmbedResult",
    "ChatStream",
    "AsyncChatStream",
    "CallInfo",
    "PREFERENCE_COLUMNS",
    "preference_frame",
    "preference_records",
]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at one model within a call."""

    model: str
    outcome: str
    latency_s: float
    status: int | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    error: str = ""
    ttft_s: float | None = None  # time to first token (streamed attempts)


@dataclass(frozen=True)
class _Result:
    call_id: str
    task_type: str
    model: str
    attempts: list[Attempt]
    ranking: tuple[str, ...]
    propensity: float
    latency_s: float

    @property
    def tokens_in(self) -> int:
        return sum(a.tokens_in for a in self.attempts)

    @property
    def tokens_out(self) -> int:
        return sum(a.tokens_out for a in self.attempts)

    @property
    def cost(self) -> float:
        return sum(a.cost for a in self.attempts)


@dataclass(frozen=True)
class ChatResult(_Result):
    """A chat answer: ``text`` from ``model``, with every attempt the call made; ``tool_calls`` the
    answer's tool calls (OpenAI's shape: ``id``, ``type``, ``function`` with ``name`` and ``arguments``)
    and ``finish_reason`` why the model stopped, as the server said them (None where it did not)."""

    text: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None


@dataclass(frozen=True)
class EmbedResult(_Result):
    """Embedding vectors, one row per input text, from ``model``."""

    vectors: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))


class _Stream:
    """What both streams share: the ChatResult that ends them, once read to the end."""

    _result: ChatResult | None = None

    @property
    def result(self) -> ChatResult:
        if self._result is None:
            raise RuntimeError("the stream has not been read to its end")
        return self._result


class ChatStream(_Stream):
    """A streamed chat call: iterate for text deltas; once exhausted, ``result`` is the ChatResult.

    Fallback happens only before the first delta reaches you; a stream that breaks after that
    raises :class:`StreamBroken`. Stopping early (``close()`` or leaving the loop) logs the call,
    its open attempt as cancelled, with the tokens of the text you received and of the prompt
    (estimated, four characters a token) and their cost.
    """

    def __init__(self, items: Iterator[str | ChatResult]) -> None:
        self._items = items

    def __iter__(self) -> Iterator[str]:
        for item in self._items:
            if isinstance(item, ChatResult):
                self._result = item
            else:
                yield item

    def close(self) -> None:
        """Stop reading: the call is logged with what happened so far."""
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


class AsyncChatStream(_Stream):
    """Async twin of :class:`ChatStream`: ``async for delta in stream``, then ``stream.result``."""

    def __init__(self, items: AsyncIterator[str | ChatResult]) -> None:
        self._items = items

    async def __aiter__(self) -> AsyncIterator[str]:
        async for item in self._items:
            if isinstance(item, ChatResult):
                self._result = item
            else:
                yield item

    async def aclose(self) -> None:
        """Stop reading: the call is logged with what happened so far."""
        aclose = getattr(self._items, "aclose", None)
        if aclose is not None:
            await aclose()


class CallInfo:
    """A call seen while it runs, read-only: what ``Router.achat(on_call=...)`` and ``Router.aembed(on_call=...)`` hand over.

    It names the call before its result exists (a stream's first delta, or a call cancelled or
    failed before it returns), so a server can put the call id on every chunk and account for calls
    whose caller left.
    """

    __slots__ = ("_call",)

    def __init__(self, call: Call) -> None:
        self._call = call

    def __repr__(self) -> str:
        return f"CallInfo(call_id={self.call_id!r}, task_type={self.task_type!r}, model={self.model!r})"

    @property
    def call_id(self) -> str:
        return self._call.call_id

    @property
    def task_type(self) -> str:
        return self._call.task_type

    @property
    def ts(self) -> float:
        """Unix time the call began."""
        return self._call.ts

    @property
    def model(self) -> str | None:
        """The model of the attempt under way (a stream's: the one streaming), else the model that
        answered, else None."""
        for model, _started in self._call.open.values():
            return model.name
        return self._call.answer_model

    @property
    def attempts(self) -> list[Attempt]:
        """The attempts finished so far, in completion order."""
        return list(self._call.attempts)

    def remaining_s(self) -> float:
        """Seconds left before the call's deadline (zero or less once it has passed)."""
        return self._call.remaining()

    def out_of_time(self) -> bool:
        """Whether the call used up its deadline (none left, or an attempt timed out at it)."""
        return self._call.out_of_time()


#: the columns of ``Router.preferences()`` every route has, in order; a route with a cost budget
#: adds ``budget_per_call``, ``spend_per_call``, ``cost_weight`` and ``budget_calls``
PREFERENCE_COLUMNS = (
    # the policy's belief
    "rank",
    "p_best",
    "utility",
    "utility_low",
    "utility_high",
    # what it rests on
    "n",
    "n_effective",
    "n_rated",
    # its estimates
    "success_rate",
    "accuracy",
    "latency_p50_s",
    "latency_p95_s",
    "cost",
    # the model's health and load
    "breaker",
    "cooldown_left_s",
    "in_flight",
    "limit",
    "no_load_s",
)


def preference_frame(
    task_type: str,
    models: Sequence[str],
    statistics: Mapping[str, np.ndarray],
    health: Sequence[Mapping[str, Any]],
    budget: Mapping[str, Any],
) -> pd.DataFrame:
    """One route's rows of ``Router.preferences()``: indexed by (``task_type``, ``model``), best rank first.

    ``statistics`` is the policy's :meth:`~zeta_adaptive._policies.Policy.statistics`, ``health``
    each model's breaker and load snapshot (in ``models``' order), ``budget`` the route's cost
    budget snapshot (empty without one), the same on every row.
    """
    import pandas as pd

    per_model = {
        key: [np.nan if row[key] is None else row[key] for row in health] for key in (health[0] if health else {})
    }
    frame = pd.DataFrame(
        {**statistics, **per_model, **budget},
        index=pd.MultiIndex.from_product([[task_type], list(models)], names=["task_type", "model"]),
    )
    columns = [c for c in PREFERENCE_COLUMNS if c in frame] + [c for c in budget if c in frame]
    return frame[columns].sort_values("rank", kind="stable")


def preference_records(frame: pd.DataFrame) -> dict[str, list[dict[Hashable, Any]]]:
    """``Router.preferences()`` as JSON-ready rows per task type, best rank first (NaN as None)."""
    flat = frame.reset_index()
    flat = flat.astype(object).where(flat.notna(), None)
    return {
        str(task): rows.drop(columns="task_type").to_dict(orient="records")
        for task, rows in flat.groupby("task_type", sort=False)
    }
