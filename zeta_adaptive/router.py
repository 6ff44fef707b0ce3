"""The router: one call in, an ordered list of candidate models tried within a deadline, a logged result out.

For each call the task type's policy ranks the candidates (primary first, then the fallback
order) and reports the probability of its primary choice. The router tries them in order, each
attempt bounded by the model's timeout and by what is left of the call's deadline, updates the
policy with every attempt's outcome, hands the call and its attempts to the store's background
writer and returns the answer. Sync and async calls share one :class:`_Call` state machine.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from .backends import Backend, HttpxBackend, Messages, Reply
from .config import Config, ModelConfig, RouteConfig, load_config
from .exceptions import AllModelsFailed, ConfigError, RequestRejected, UnknownTaskType
from .feedback import FeedbackBook
from .policies import Policy, Ranking, make_policy
from .store import Store

__all__ = ["Router", "Attempt", "ChatResult", "EmbedResult", "classify"]

Classifier = Callable[[Messages], str]

_CODE = re.compile(r"```|\bdef \w+\(|\bclass \w+[:(]|\bimport \w+|#include|\bfunction\b|=>|\bSELECT\b.+\bFROM\b|\w+\(\)\s*[{;]")
_STEPS = re.compile(r"step by step|prove|derive|explain why|first,.+then|^\s*\d+[.)]\s", re.IGNORECASE | re.MULTILINE | re.DOTALL)


def classify(messages: Messages) -> str:
    """The default task classifier: code markers -> ``code``; long or multi-step prompts -> ``reasoning``; else ``simple``.

    It is deliberately small: pass ``Router(config, classifier=your_function)`` to replace it.
    """
    content = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") != "system")
    if _CODE.search(content):
        return "code"
    if len(content) > 1200 or len(_STEPS.findall(content)) >= 2:
        return "reasoning"
    return "simple"


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


class _Call:
    """The state of one routed call: which model is next, how much time is left, what happened."""

    def __init__(self, router: Router, task_type: str, route: RouteConfig, deadline_s: float, prompt: str | None) -> None:
        self.router = router
        self.task_type = task_type
        self.call_id = uuid.uuid4().hex
        self.ts = time.time()
        self.start = time.perf_counter()
        self.deadline = self.start + deadline_s
        self.policy = router.policies[task_type]
        with router.locks[task_type]:
            self.ranking: Ranking = self.policy.rank()
        self.attempts: list[Attempt] = []
        self.starts: list[float] = []
        self.answer: Reply | None = None
        self.rejected = False
        self.prompt = prompt
        self._pos = 0

    def next(self) -> tuple[ModelConfig, float] | None:
        """The next model to try and its timeout, or None when done or out of time."""
        if self.answer is not None or self.rejected or self._pos >= len(self.ranking.order):
            return None
        remaining = self.deadline - time.perf_counter()
        if remaining <= 0:
            return None
        model = self.router.config.models[self.ranking.order[self._pos]]
        self._pos += 1
        self.starts.append(time.time())
        return model, min(model.timeout_s, remaining)

    def record(self, model: ModelConfig, reply: Reply) -> None:
        """Keep one attempt's reply and teach the policy at once."""
        cost = model.cost(reply.tokens_in, reply.tokens_out)
        self.attempts.append(
            Attempt(model.name, str(reply.outcome), reply.latency_s, reply.status, reply.tokens_in, reply.tokens_out, cost, reply.error)
        )
        with self.router.locks[self.task_type]:
            self.policy.update(model.name, reply.ok, reply.latency_s, cost)
        if reply.ok:
            self.answer = reply
        elif reply.rejects_request:
            self.rejected = True

    def finish(self) -> tuple[Reply, dict[str, Any]]:
        """Log the call; return the answering reply and the common result fields, or raise."""
        latency = time.perf_counter() - self.start
        answer = self.answer
        model = self.attempts[-1].model if answer is not None else None
        outcome = "ok" if answer is not None else ("rejected" if self.rejected else "failed")
        self.router._log(self, model, outcome, latency)
        if self.rejected:
            raise RequestRejected(self.call_id, self.attempts)
        if answer is None:
            reason = "deadline exceeded" if time.perf_counter() >= self.deadline else ""
            raise AllModelsFailed(self.call_id, self.task_type, self.attempts, reason)
        common = {
            "call_id": self.call_id,
            "task_type": self.task_type,
            "model": model,
            "attempts": self.attempts,
            "ranking": self.ranking.order,
            "propensity": self.ranking.propensity,
            "latency_s": latency,
        }
        return answer, common


class Router:
    """Routes calls by task type across a fleet, falls back within a deadline, logs and learns.

    Use it as a context manager (sync or async) so the log is flushed on exit.
    """

    def __init__(
        self,
        config: Config | Mapping[str, Any] | str | Path,
        *,
        backend: Backend | None = None,
        store: Store | None = None,
        classifier: Classifier = classify,
        warm_start: bool = True,
    ) -> None:
        self.config = load_config(config)
        self.backend: Backend = backend if backend is not None else HttpxBackend(self.config.models)
        self.store = store if store is not None else Store(self.config.store)
        self.classifier = classifier
        seed = self.config.seed
        self.policies: dict[str, Policy] = {}
        for i, (task, route) in enumerate(self.config.routes.items()):
            options = dict(route.options)
            if "seed" not in options and seed is not None:
                options["seed"] = seed + i
            self.policies[task] = make_policy(route.policy, route.models, self.config.objective, **options)
        self.locks = {task: threading.Lock() for task in self.policies}
        self.book = FeedbackBook(self.store)
        self._closed = False
        if warm_start:
            self._warm_start()

    @classmethod
    def from_toml(cls, path: str | Path, **kwargs: Any) -> Router:
        """Open a router described by a TOML file."""
        return cls(Config.from_toml(path), **kwargs)

    def __repr__(self) -> str:
        return f"Router(routes={sorted(self.config.routes)}, store={self.store.safe_url!r})"

    # -- calls ----------------------------------------------------------------------------------
    def _begin(self, task_type: str | None, kind: str, deadline_s: float | None, messages: Messages | None, prompt: Any) -> _Call:
        if self._closed:
            raise RuntimeError("the router is closed")
        task = task_type if task_type is not None else self.classifier(messages or [])
        route = self.config.routes.get(task)
        if route is None:
            raise UnknownTaskType(task, list(self.config.routes))
        route_kind = self.config.models[route.models[0]].kind
        if route_kind != kind:
            raise ConfigError(f"routes.{task}", f"is a {route_kind} route; this call needs a {kind} route")
        deadline = self.config.deadline_s if deadline_s is None else deadline_s
        if not deadline > 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s!r}")
        logged = json.dumps(prompt) if self.config.log_prompts else None
        return _Call(self, task, route, deadline, logged)

    def chat(self, task_type: str | None, messages: Messages, *, deadline_s: float | None = None, **params: Any) -> ChatResult:
        """Route a chat completion; ``params`` (max_tokens, temperature, ...) go to the backend as they are.

        ``task_type=None`` lets the classifier choose. Raises :class:`AllModelsFailed` when no model
        answered in time and :class:`RequestRejected` when a backend refused the request itself.
        """
        call = self._begin(task_type, "chat", deadline_s, messages, messages)
        while (step := call.next()) is not None:
            model, timeout = step
            call.record(model, self.backend.chat(model, messages, params, timeout))
        answer, common = call.finish()
        return ChatResult(**common, text=answer.text or "")

    async def achat(self, task_type: str | None, messages: Messages, *, deadline_s: float | None = None, **params: Any) -> ChatResult:
        """Async twin of :meth:`chat`."""
        call = self._begin(task_type, "chat", deadline_s, messages, messages)
        while (step := call.next()) is not None:
            model, timeout = step
            call.record(model, await self.backend.achat(model, messages, params, timeout))
        answer, common = call.finish()
        return ChatResult(**common, text=answer.text or "")

    def embed(self, texts: Sequence[str], *, task_type: str = "embedding", deadline_s: float | None = None) -> EmbedResult:
        """Route an embedding call; fallbacks are only models of the same embedding space."""
        texts = _texts(texts)
        call = self._begin(task_type, "embedding", deadline_s, None, texts)
        while (step := call.next()) is not None:
            model, timeout = step
            call.record(model, self.backend.embed(model, texts, timeout))
        answer, common = call.finish()
        return EmbedResult(**common, vectors=answer.vectors)

    async def aembed(self, texts: Sequence[str], *, task_type: str = "embedding", deadline_s: float | None = None) -> EmbedResult:
        """Async twin of :meth:`embed`."""
        texts = _texts(texts)
        call = self._begin(task_type, "embedding", deadline_s, None, texts)
        while (step := call.next()) is not None:
            model, timeout = step
            call.record(model, await self.backend.aembed(model, texts, timeout))
        answer, common = call.finish()
        return EmbedResult(**common, vectors=answer.vectors)

    # -- feedback and state ---------------------------------------------------------------------
    def feedback(self, call_id: str, accuracy: float) -> None:
        """Record the accuracy in [0, 1] of a call's answer and teach the policy that chose it.

        Raises :class:`FeedbackError` (and writes nothing) for an unknown call id, a call that had
        no answer, a call already rated, NaN or a value outside [0, 1].
        """
        call, value = self.book.accept(call_id, accuracy)
        self.store.put("feedback", {"call_id": call.call_id, "ts": time.time(), "task_type": call.task_type, "model": call.model, "accuracy": value})
        policy = self.policies.get(call.task_type)
        if policy is not None and call.model in policy.index:
            with self.locks[call.task_type]:
                policy.feedback(call.model, value)

    def preferences(self, task_type: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """What each task's policy currently believes: one row per model, best first."""
        tasks = [task_type] if task_type is not None else list(self.policies)
        out = {}
        for task in tasks:
            if task not in self.policies:
                raise UnknownTaskType(task, list(self.policies))
            with self.locks[task]:
                out[task] = self.policies[task].preferences()
        return out

    def _log(self, call: _Call, model: str | None, outcome: str, latency: float) -> None:
        answer = call.answer
        answer_text = None
        if self.config.log_prompts and answer is not None:
            answer_text = answer.text if answer.text is not None else None
        rows: list[tuple[str, Mapping[str, Any]]] = [
            (
                "calls",
                {
                    "call_id": call.call_id,
                    "ts": call.ts,
                    "task_type": call.task_type,
                    "policy": call.policy.name,
                    "propensity": call.ranking.propensity,
                    "ranking": json.dumps(call.ranking.order),
                    "model": model,
                    "outcome": outcome,
                    "latency_s": latency,
                    "tokens_in": sum(a.tokens_in for a in call.attempts),
                    "tokens_out": sum(a.tokens_out for a in call.attempts),
                    "cost": sum(a.cost for a in call.attempts),
                    "n_attempts": len(call.attempts),
                    "prompt": call.prompt,
                    "answer": answer_text,
                },
            )
        ]
        for i, (a, ts) in enumerate(zip(call.attempts, call.starts, strict=True)):
            rows.append(
                (
                    "attempts",
                    {
                        "call_id": call.call_id, "idx": i, "ts": ts, "task_type": call.task_type, "model": a.model,
                        "outcome": a.outcome, "status": a.status, "latency_s": a.latency_s, "tokens_in": a.tokens_in,
                        "tokens_out": a.tokens_out, "cost": a.cost, "error": a.error or None,
                    },
                )
            )
        self.store.put_many(rows)
        self.book.remember(call.call_id, call.task_type, model)

    def _warm_start(self) -> None:
        """Rebuild every policy's statistics from the logged history of its task type."""
        tasks = list(self.policies)
        tried = self.store.frame("attempts", tasks)
        rated = self.store.frame("feedback", tasks)
        for task, policy in self.policies.items():
            a = tried[tried["task_type"] == task]
            f = rated[rated["task_type"] == task]
            if len(a) or len(f):
                policy.fit(
                    a["model"].tolist(), (a["outcome"] == "ok").to_numpy(), a["latency_s"].to_numpy(),
                    a["cost"].to_numpy(), f["model"].tolist(), f["accuracy"].to_numpy(),
                )

    # -- lifecycle ------------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every logged record so far is in the database."""
        return self.store.flush(timeout)

    def close(self) -> None:
        """Flush the log and release connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.backend.close()
        self.store.close()

    async def aclose(self) -> None:
        """Async twin of :meth:`close`: also closes the async connection pools."""
        if self._closed:
            return
        await self.backend.aclose()
        self.close()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


def _texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    items = list(texts)
    if not items or not all(isinstance(t, str) for t in items):
        raise ValueError("embed() needs a non-empty list of strings")
    return items
