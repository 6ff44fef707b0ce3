"""The router: one call in, an ordered list of candidate models tried within a deadline, a logged result out.

For each call the task type's policy ranks the candidates (primary first, then the fallback
order) and reports the probability of its primary choice. The :mod:`.engine` tries them in order,
each attempt bounded by the model's timeout and by what is left of the call's deadline, teaches
the policy every attempt's outcome, and hands the call's record to the store's background writer.
:class:`Router` is a facade: it checks a call's arguments, picks its route and composes the
config, the backend, the store, the :class:`.learning.Learner` and the feedback book.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import re
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import numpy as np

from ._backends import Backend, HttpxBackend, Messages, Reply, StreamItem, Transport
from ._config import Config, ModelConfig, load_config
from ._contextual import ContextualPolicy, PendingContexts
from ._engine import Call, Lane, Started, alast, arun, last, run
from ._exceptions import ConfigError, FeedbackError, StoreError, UnknownTaskType
from ._features import Features, Featurizer
from ._feedback import FeedbackBook, RatedCall, check_call_id, check_route, validate_accuracy
from ._inputs import check_deadline, check_messages, check_params, check_stream, check_task_type, check_texts
from ._learning import Learner
from ._records import CallRecord
from ._results import AsyncChatStream, Attempt, CallInfo, ChatResult, ChatStream, EmbedResult, preference_frame
from ._scrub import Scrubber
from ._store import Store
from ._validators import Validator
from ._validators import build as build_validators

if TYPE_CHECKING:
    import pandas as pd

    from ._budget import BudgetPacer
    from ._health import Health
    from ._policies import Policy

__all__ = ["Router", "Attempt", "ChatResult", "EmbedResult", "ChatStream", "AsyncChatStream", "CallInfo", "classify"]

#: what ``on_call`` of the async calls is given as soon as a call is routed
OnCall = Callable[[CallInfo], None]

Classifier = Callable[[Messages], str]

# linear-time patterns: no nested or unbounded-then-backtracking quantifiers over the whole text
_CODE = re.compile(
    r"```|\bdef \w+\(|\bclass \w+[:(]|\bimport \w+|#include|\bfunction\b|=>|\bSELECT\b[^\n]{1,200}?\bFROM\b|\w\(\)[ \t]*[{;]"
)
_STEPS = re.compile(
    r"step by step|prove|derive|explain why|first,.{1,500}?then|^[ \t]*\d+[.)]\s",
    re.IGNORECASE | re.MULTILINE | re.DOTALL,
)
#: the default classifier reads at most this many characters from each end of the prompt
SCAN_CHARS = 8_000


def classify(messages: Messages) -> str:
    """The default task classifier: code markers -> ``code``; long or multi-step prompts -> ``reasoning``; else ``simple``.

    It reads the non-system text, at most ``SCAN_CHARS`` characters from each end (see
    :func:`sample`), so its time is bounded whatever the prompt. It is deliberately small: pass
    ``Router(config, classifier=your_function)`` to replace it.
    """
    content, length = sample(messages)
    if _CODE.search(content):
        return "code"
    if length > 1200 or len(_STEPS.findall(content)) >= 2:
        return "reasoning"
    return "simple"


def sample(messages: Messages, limit: int = SCAN_CHARS) -> tuple[str, int]:
    """The text the classifier scans (non-system messages, at most ``limit`` characters from each end) and the whole length."""
    parts: list[str] = []
    for m in messages:
        if isinstance(m, Mapping) and m.get("role") != "system":
            content = m.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, (list, tuple)):
                parts.extend(p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    length = sum(map(len, parts)) + max(len(parts) - 1, 0)
    if length <= 2 * limit:
        return "\n".join(parts), length
    return _end(parts, limit, tail=False) + "\n" + _end(parts, limit, tail=True), length


def _end(parts: Sequence[str], limit: int, tail: bool) -> str:
    """The first (or last) ``limit`` characters of the parts joined by newlines, without joining the rest."""
    taken: list[str] = []
    left = limit
    for part in reversed(parts) if tail else parts:
        if left <= 0:
            break
        taken.append(part[-left:] if tail else part[:left])
        left -= len(taken[-1]) + 1
    return "\n".join(reversed(taken) if tail else taken)


_S = TypeVar("_S", ChatStream, AsyncChatStream)


class _UnderWay:
    """A count of the calls under way (attempts started, record not yet handed to the log), so that
    closing waits for them: a call that ended after the store closed lost its answer and its log rows."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = threading.Condition()

    def enter(self) -> None:
        with self._idle:
            self.count += 1

    def leave(self) -> None:
        with self._idle:
            self.count -= 1
            if self.count == 0:
                self._idle.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait until no call is under way, at most ``timeout`` seconds; whether none is."""
        with self._idle:
            return self._idle.wait_for(lambda: self.count == 0, timeout)


class Router:
    """Routes calls by task type across a fleet, falls back within a deadline, logs and learns.

    Use it as a context manager (sync or async) so the log is flushed on exit. ``transport`` (an
    httpx transport, or a mapping model name -> transport) carries requests instead of the network.
    """

    def __init__(
        self,
        config: Config | Mapping[str, Any] | str | Path,
        *,
        transport: Transport | Mapping[str, Transport] | None = None,
        store: Store | None = None,
        classifier: Classifier = classify,
        validators: Mapping[str, Sequence[Validator]] | None = None,
        warm_start: bool = True,
    ) -> None:
        self.config = load_config(config)
        self.scrub = Scrubber.from_env(m.api_key_env for m in self.config.models.values())
        self.backend: Backend = HttpxBackend(self.config.models, transport)
        c = self.config
        self.store = (
            store
            if store is not None
            else Store(
                c.store,
                journal_dir=c.journal_dir,
                pgbouncer=c.pgbouncer,
                timeout_s=c.store_timeout_s,
                durability=c.durability,
                background=True,
                scrub=self.scrub,
            )
        )
        self.classifier = classifier
        extra = dict(validators or {})
        unknown = sorted(set(extra) - set(self.config.routes))
        if unknown:
            raise UnknownTaskType(unknown[0], list(self.config.routes))
        self.validators = {
            task: build_validators(route.validators) + list(extra.get(task, ()))
            for task, route in self.config.routes.items()
        }
        self.book = FeedbackBook(self.config.feedback_window, self.config.feedback_window_s)
        self.router_id = uuid.uuid4().hex[:16]
        self._closed = False
        self._under_way = _UnderWay()  # calls that started their attempts and are not logged yet
        self._streams: weakref.WeakSet[ChatStream | AsyncChatStream] = weakref.WeakSet()  # closed with the router
        self._featurizer = Featurizer()  # for caller features on routes that are not contextual
        self.learner = Learner(self.config, self.store, self.router_id, warm_start)
        self._lanes = self._build_lanes(random.Random(c.seed))

    def _build_lanes(self, jitter: random.Random) -> dict[str, Lane]:
        """What the engine needs of each route, once: it reaches nothing else of the router."""
        c, learner = self.config, self.learner
        lanes = {}
        for task, route in c.routes.items():
            policy = learner.policies[task]
            contextual = isinstance(policy, ContextualPolicy)
            lanes[task] = Lane(
                task_type=task,
                route=route,
                policy=policy,
                lock=learner.locks[task],
                health=learner.health,
                models=c.models,
                validators=self.validators[task],
                max_attempts=route.max_attempts or c.max_attempts,
                wait_when_cooling=c.breaker.when_all_cooling == "wait",
                rejecting=c.rejecting_statuses,
                scrub=self.scrub,
                jitter=jitter,
                contextual=contextual,
                space=policy.featurizer.space if isinstance(policy, ContextualPolicy) else self._featurizer.space,
                router_id=self.router_id,
                begin=self._under_way.enter,
                end=self._ended,
            )
        return lanes

    def _ended(self, record: CallRecord) -> None:
        """A call ended: the learner observes it, the store logs it, the feedback book remembers it."""
        try:
            self.learner.observe(record)
            self.store.put_call(record)
            self.book.remember(record.call_id, record.task_type, record.model)
        finally:
            self._under_way.leave()

    # -- what the learner holds ------------------------------------------------------------------
    @property
    def policies(self) -> dict[str, Policy]:
        """Each task type's policy."""
        return self.learner.policies

    @property
    def health(self) -> Health:
        """The models' breakers, in-flight counts and latency windows."""
        return self.learner.health

    @property
    def locks(self) -> dict[str, threading.Lock]:
        """Each task type's policy lock."""
        return self.learner.locks

    @property
    def pacers(self) -> dict[str, BudgetPacer]:
        """The cost budgets of the routes that set ``budget_per_call``."""
        return self.learner.pacers

    @property
    def contexts(self) -> PendingContexts:
        """Features of recent calls awaiting feedback (contextual routes)."""
        return self.learner.contexts

    @contexts.setter
    def contexts(self, value: PendingContexts) -> None:
        self.learner.contexts = value

    @property
    def warm(self) -> bool:
        """Whether the policies hold what the log knows (False while a postponed warm start waits for the store)."""
        return self.learner.warm

    def learn_from_shared_log(self) -> int:
        """Learn what other router processes logged since the last time; returns the rows learned
        (see :meth:`.Learner.learn_from_shared_log`; run every ``refresh_s`` when the config sets it)."""
        return self.learner.learn_from_shared_log()

    def sync(self) -> int:
        """Deprecated alias of :meth:`learn_from_shared_log`."""
        warnings.warn("Router.sync() is deprecated: use learn_from_shared_log()", DeprecationWarning, stacklevel=2)
        return self.learn_from_shared_log()

    @classmethod
    def from_toml(cls, path: str | Path, **kwargs: Any) -> Router:
        """Open a router described by a TOML file."""
        return cls(Config.from_toml(path), **kwargs)

    def __repr__(self) -> str:
        return f"Router(routes={sorted(self.config.routes)}, store={self.store.safe_url!r})"

    # -- calls ----------------------------------------------------------------------------------
    def _begin(
        self,
        task_type: str | None,
        kind: str,
        deadline_s: float | None,
        messages: Messages | None,
        prompt: Any,
        chars: int,
        features: Mapping[str, float] | None = None,
    ) -> Call:
        """Check the call's task type and deadline, choose its route and open it (the arguments are checked by then)."""
        if self._closed:
            raise StoreError("the router is closed")
        self.store.check_process()  # a forked child: before anything is sent
        check_task_type(task_type, required=messages is None)
        check_deadline(deadline_s)
        task = task_type if task_type is not None else self.classifier(messages or [])
        route = self.config.routes.get(task)
        if route is None:
            raise UnknownTaskType(task, list(self.config.routes))
        route_kind = self.config.models[route.models[0]].kind
        if route_kind != kind:
            raise ConfigError(f"routes.{task}", f"is a {route_kind} route; this call needs a {kind} route")
        deadline = self.config.deadline_s if deadline_s is None else deadline_s
        logged = json.dumps(prompt) if self.config.log_prompts else None
        return Call(self._lanes[task], deadline, logged, chars, self._features(task, messages, features))

    def _begin_chat(
        self,
        task_type: str | None,
        messages: Messages,
        stream: bool,
        deadline_s: float | None,
        params: Mapping[str, Any],
        features: Mapping[str, float] | None = None,
    ) -> Call:
        check_stream(stream)
        check_params(params)
        chars = check_messages(messages)
        return self._begin(task_type, "chat", deadline_s, messages, messages, chars, features)

    def _begin_embed(self, texts: Sequence[str], task_type: str, deadline_s: float | None) -> tuple[list[str], Call]:
        items = check_texts(texts)
        return items, self._begin(task_type, "embedding", deadline_s, None, items, max(map(len, items)))

    def _features(self, task: str, messages: Messages | None, extra: Mapping[str, float] | None) -> Features | None:
        """A call's prompt features: for contextual routes, and for any route when the caller gives some."""
        policy = self.policies[task]
        if isinstance(policy, ContextualPolicy):
            return policy.featurizer(messages or [], extra)
        return self._featurizer(messages or [], extra) if extra is not None else None

    @overload
    def chat(
        self,
        task_type: str | None,
        messages: Messages,
        *,
        stream: Literal[False] = False,
        deadline_s: float | None = None,
        features: Mapping[str, float] | None = None,
        **params: Any,
    ) -> ChatResult: ...
    @overload
    def chat(
        self,
        task_type: str | None,
        messages: Messages,
        *,
        stream: Literal[True],
        deadline_s: float | None = None,
        features: Mapping[str, float] | None = None,
        **params: Any,
    ) -> ChatStream: ...

    def chat(
        self,
        task_type: str | None,
        messages: Messages,
        *,
        stream: bool = False,
        deadline_s: float | None = None,
        features: Mapping[str, float] | None = None,
        **params: Any,
    ) -> ChatResult | ChatStream:
        """Route a chat completion; ``params`` (max_tokens, temperature, ...) go to the backend as they are.

        ``task_type=None`` lets the classifier choose. Raises :class:`AllModelsFailed` when no model
        answered in time and :class:`RequestRejected` when a backend refused the request itself.
        With ``stream=True`` returns a :class:`ChatStream` of text deltas (see there). ``features``
        adds the caller's named numbers to the prompt's features (see :mod:`.features`). Bad arguments
        (messages, deadline, a keyword that looks like a router option) raise :class:`InvalidRequest`
        before anything is sent or logged.
        """
        call = self._begin_chat(task_type, messages, stream, deadline_s, params, features)
        done = _chat_result(call)
        if stream:

            def deltas(m: ModelConfig, s: Started) -> Iterator[StreamItem]:
                return self.backend.stream_chat(m, messages, params, s.timeout_s, s.first_token_s)

            chat_stream = ChatStream(run(call, deltas, done))
            self._streams.add(chat_stream)
            return chat_stream
        return last(run(call, lambda m, s: (self.backend.chat(m, messages, params, s.timeout_s),), done))

    @overload
    async def achat(
        self,
        task_type: str | None,
        messages: Messages,
        *,
        stream: Literal[False] = False,
        deadline_s: float | None = None,
        features: Mapping[str, float] | None = None,
        on_call: OnCall | None = None,
        **params: Any,
    ) -> ChatResult: ...
    @overload
    async def achat(
        self,
        task_type: str | None,
        messages: Messages,
        *,
        stream: Literal[True],
        deadline_s: float | None = None,
        features: Mapping[str, float] | None = None,
        on_call: OnCall | None = None,
        **params: Any,
    ) -> AsyncChatStream: ...

    async def achat(
        self,
        task_type: str | None,
        messages: Messages,
        *,
        stream: bool = False,
        deadline_s: float | None = None,
        features: Mapping[str, float] | None = None,
        on_call: OnCall | None = None,
        **params: Any,
    ) -> ChatResult | AsyncChatStream:
        """Async twin of :meth:`chat`; on routes with ``hedge_quantile`` it also hedges slow primaries.

        ``on_call`` is given the call's :class:`CallInfo` once it is routed, before any attempt: its
        id, model and attempts while it runs, also when it fails or is cancelled before returning.
        """
        call = self._begin_chat(task_type, messages, stream, deadline_s, params, features)
        if on_call is not None:
            on_call(CallInfo(call))
        done = _chat_result(call)
        if stream:

            def deltas(m: ModelConfig, s: Started) -> AsyncIterator[StreamItem]:
                return self.backend.astream_chat(m, messages, params, s.timeout_s, s.first_token_s)

            astream = AsyncChatStream(arun(call, deltas, done))
            self._streams.add(astream)
            return astream

        async def reply(m: ModelConfig, s: Started) -> AsyncIterator[StreamItem]:
            yield await self.backend.achat(m, messages, params, s.timeout_s)

        return await alast(arun(call, reply, done, hedge=True))

    def embed(
        self, texts: Sequence[str], *, task_type: str = "embedding", deadline_s: float | None = None
    ) -> EmbedResult:
        """Route an embedding call; fallbacks are only models of the same embedding space.

        ``texts`` is one string or a non-empty list of non-empty strings, else :class:`InvalidRequest`.
        """
        texts, call = self._begin_embed(texts, task_type, deadline_s)
        return last(run(call, lambda m, s: (self.backend.embed(m, texts, s.timeout_s),), _embed_result(call)))

    async def aembed(
        self,
        texts: Sequence[str],
        *,
        task_type: str = "embedding",
        deadline_s: float | None = None,
        on_call: OnCall | None = None,
    ) -> EmbedResult:
        """Async twin of :meth:`embed`; ``on_call`` as in :meth:`achat`."""
        texts, call = self._begin_embed(texts, task_type, deadline_s)
        if on_call is not None:
            on_call(CallInfo(call))

        async def reply(m: ModelConfig, s: Started) -> AsyncIterator[StreamItem]:
            yield await self.backend.aembed(m, texts, s.timeout_s)

        return await alast(arun(call, reply, _embed_result(call), hedge=True))

    # -- feedback and state ---------------------------------------------------------------------
    def feedback(self, call_id: str, accuracy: float, *, routes: Collection[str] | None = None) -> None:
        """Record the accuracy in [0, 1] of a call's answer and teach the policy that chose it.

        Raises :class:`FeedbackError` (and writes and learns nothing) for an unknown call id, a call
        that had no answer, a call already rated (here or by another process: the database's unique
        key decides), NaN or a value outside [0, 1]. A call this process made is checked from
        memory; while the store is away its rating is journaled like any row. A call of another
        process (or one older than ``feedback_window``) is checked in the log, bounded by
        ``store_timeout_s``: while the store is away that raises :class:`StoreError`. With ``routes``
        (the gateway passes a key's), a call on another task type is refused (``forbidden``).
        """
        value = validate_accuracy(accuracy)
        call_id = check_call_id(call_id)
        if self._closed:
            raise StoreError("the router is closed")
        self.store.check_process()
        remembered = self.book.claim(call_id, routes)
        call = self._claim_logged(call_id, routes) if remembered is None else remembered
        row = self._feedback_row(call, value)
        won: bool | None = None
        if remembered is None:  # the log decides, now (a StoreError while it is away)
            won = self.store.call(self.store.insert_feedback, row)
        elif self.store.available:  # else the row is journaled like any other
            try:
                won = self.store.call(self.store.insert_feedback, row)
            except StoreError:
                won = None
        if won is False:
            raise FeedbackError(f"call {call_id} already has feedback", "already_rated")
        if won is None:
            self.store.put("feedback", row)
        self.learner.learn_feedback(call, value)

    async def afeedback(self, call_id: str, accuracy: float, *, routes: Collection[str] | None = None) -> None:
        """Async twin of :meth:`feedback` (the bounded database work runs on a worker thread)."""
        await asyncio.to_thread(functools.partial(self.feedback, call_id, accuracy, routes=routes))

    def _claim_logged(self, call_id: str, routes: Collection[str] | None) -> RatedCall:
        """A call found in the log (another process's, or older than the window), not yet rated."""
        row = self.store.call(self.store.find_call, call_id)
        if row is None:
            raise FeedbackError(f"unknown call id {call_id!r}", "unknown_call")
        check_route(call_id, row["task_type"], routes)
        if row["model"] is None:
            raise FeedbackError(f"call {call_id} has no answer to rate: every model failed", "no_answer")
        return RatedCall(call_id, row["task_type"], row["model"])

    def _feedback_row(self, call: RatedCall, value: float) -> dict[str, Any]:
        return {
            "call_id": call.call_id,
            "ts": time.time(),
            "task_type": call.task_type,
            "model": call.model,
            "accuracy": value,
            "router_id": self.router_id,
        }

    def preferences(self, task_type: str | None = None) -> pd.DataFrame:
        """What the policies believe now: one row per candidate model, best ``rank`` first.

        With a task type, the route's rows indexed by ``model``; without, every route's, indexed by
        (``task_type``, ``model``), so ``prefs.loc[task]`` is one route's and ``reset_index()`` joins
        with :mod:`zeta_adaptive.analysis`' frames on those two columns. The columns are
        :data:`~zeta_adaptive._results.PREFERENCE_COLUMNS` (see
        :meth:`~zeta_adaptive._policies.Policy.statistics`), plus a route's cost budget when it has one.
        """
        import pandas as pd

        frames = []
        for task in self._routes(task_type):
            policy = self.policies[task]
            with self.locks[task]:
                statistics = policy.statistics()
                budget = self.pacers[task].snapshot() if task in self.pacers else {}
            health = [self.health.snapshot(model) for model in policy.models]
            frames.append(preference_frame(task, policy.models, statistics, health, budget))
        return frames[0].droplevel("task_type") if task_type is not None else pd.concat(frames)

    def _routes(self, task_type: str | None) -> list[str]:
        """Every route's task type, or only ``task_type`` (:class:`UnknownTaskType` if there is no such route)."""
        if task_type is None:
            return list(self.policies)
        if task_type not in self.policies:
            raise UnknownTaskType(task_type, list(self.policies))
        return [task_type]

    def preferences_dict(self, task_type: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Deprecated: :meth:`preferences` before it was a DataFrame (rows best first by the point estimate)."""
        message = "Router.preferences_dict() is deprecated; Router.preferences() returns a DataFrame"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        out = {}
        for task in self._routes(task_type):
            with self.locks[task]:
                rows = self.policies[task]._preference_rows()
                budget = self.pacers[task].snapshot() if task in self.pacers else {}
            out[task] = [{**row, **self.health.snapshot(row["model"]), **budget} for row in rows]
        return out

    # -- lifecycle ------------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every logged record so far is in the database."""
        return self.store.flush(timeout)

    def close(self) -> None:
        """Refuse new calls, end the streams still held (logged as cancelled, with what they showed), let
        the calls under way end (at most ``deadline_s``: theirs are bounded by it), then flush the log
        and release connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if not self.store.inherited:
            for stream in self._held(ChatStream):
                with contextlib.suppress(ValueError):  # it is being read on another thread: waited for
                    stream.close()
            self._under_way.wait(self.config.deadline_s)
        self._release()

    async def aclose(self) -> None:
        """Async twin of :meth:`close`: the streams and calls under way are ended and awaited without
        blocking the loop that runs them; also closes the async connection pools."""
        if self._closed:
            return
        self._closed = True
        if not self.store.inherited:
            for stream in self._held(ChatStream):
                with contextlib.suppress(ValueError):
                    stream.close()
            for astream in self._held(AsyncChatStream):
                with contextlib.suppress(RuntimeError):  # it is being read by another task: waited for
                    await astream.aclose()
            await asyncio.to_thread(self._under_way.wait, self.config.deadline_s)
        await self.backend.aclose()
        self._release()

    def _held(self, kind: type[_S]) -> list[_S]:
        """The streams of this kind that callers still hold."""
        return [s for s in list(self._streams) if isinstance(s, kind)]

    def _release(self) -> None:
        """Stop learning from the shared log, close the connection pools and the store."""
        self.learner.close()
        self.backend.close()
        self.store.close()

    def __enter__(self) -> Router:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _chat_result(call: Call) -> Callable[[Reply], ChatResult]:
    """What a chat call returns once answered."""
    return lambda answer: ChatResult(
        **call.fields(), text=answer.text or "", tool_calls=answer.tool_calls, finish_reason=answer.finish_reason
    )


_EMPTY = np.empty((0, 0), dtype=np.float32)  # no answer ends ok without vectors: for the type checker


def _embed_result(call: Call) -> Callable[[Reply], EmbedResult]:
    """What an embedding call returns once answered."""
    return lambda answer: EmbedResult(**call.fields(), vectors=_EMPTY if answer.vectors is None else answer.vectors)
