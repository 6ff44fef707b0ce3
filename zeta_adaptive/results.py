"""What a routed call returns: its attempts, a chat or embedding result, and the streams that end in one.

These are plain values, kept apart from :mod:`zeta_adaptive.router` so that the exceptions, the
gateway and user code can name them without importing the router.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Attempt", "ChatResult", "EmbedResult", "ChatStream", "AsyncChatStream"]


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
    """A chat answer: ``text`` from ``model``, with every attempt the call made."""

    text: str = ""


@dataclass(frozen=True)
class EmbedResult(_Result):
    """Embedding vectors, one row per input text, from ``model``."""

    vectors: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))


class ChatStream:
    """A streamed chat call: iterate for text deltas; once exhausted, ``result`` is the ChatResult.

    Fallback happens only before the first delta reaches you; a stream that breaks after that
    raises :class:`StreamBroken`. Stopping early (``close()`` or leaving the loop) logs the call,
    its open attempt as cancelled.
    """

    def __init__(self, items: Iterator[str | ChatResult]) -> None:
        self._items = items
        self._result: ChatResult | None = None

    def __iter__(self) -> Iterator[str]:
        for item in self._items:
            if isinstance(item, ChatResult):
                self._result = item
            else:
                yield item

    @property
    def result(self) -> ChatResult:
        if self._result is None:
            raise RuntimeError("the stream has not been read to its end")
        return self._result

    def close(self) -> None:
        """Stop reading: the call is logged with what happened so far."""
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


class AsyncChatStream:
    """Async twin of :class:`ChatStream`: ``async for delta in stream``, then ``stream.result``."""

    def __init__(self, items: AsyncIterator[str | ChatResult]) -> None:
        self._items = items
        self._result: ChatResult | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        async for item in self._items:
            if isinstance(item, ChatResult):
                self._result = item
            else:
                yield item

    @property
    def result(self) -> ChatResult:
        if self._result is None:
            raise RuntimeError("the stream has not been read to its end")
        return self._result

    async def aclose(self) -> None:
        """Stop reading: the call is logged with what happened so far."""
        aclose = getattr(self._items, "aclose", None)
        if aclose is not None:
            await aclose()
