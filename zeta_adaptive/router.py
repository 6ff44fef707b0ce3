"""The router: one call in, an ordered list of candidate models tried within a deadline, a logged result out.

For each call the task type's policy ranks the candidates (primary first, then the fallback
order) and reports the probability of its primary choice. The router tries them in order, each
attempt bounded by the model's timeout and by what is left of the call's deadline, updates the
policy with every attempt's outcome, hands the call and its attempts to the store's background
writer and returns the answer. Sync and async calls share one :class:`_Call` state machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
from sqlalchemy import and_, not_, or_

from .backends import Backend, HttpxBackend, Messages, Outcome, Reply, StreamItem, Transport
from .budget import BudgetPacer
from .config import Config, ModelConfig, RouteConfig, load_config
from .contextual import ContextualPolicy, PendingContexts, logged_features, warm_start_contexts
from .exceptions import (
    AllModelsFailed,
    ConfigError,
    FeedbackError,
    RequestRejected,
    StoreError,
    StreamBroken,
    UnknownTaskType,
)
from .features import Features, Featurizer
from .feedback import FeedbackBook, RatedCall, check_call_id, validate_accuracy
from .health import Health
from .ids import new_call_id
from .inputs import (
    check_deadline,
    check_messages,
    check_params,
    check_stream,
    check_task_type,
    check_texts,
    prompt_band,
)
from .policies import Policy, Ranking, make_policy
from .results import AsyncChatStream, Attempt, ChatResult, ChatStream, EmbedResult, preference_frame
from .scrub import Scrubber
from .store import Store
from .store import attempts as attempts_table
from .store import feedback as feedback_table
from .validators import Validator
from .validators import build as build_validators
from .validators import check as check_answer

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Router", "Attempt", "ChatResult", "EmbedResult", "ChatStream", "AsyncChatStream", "classify"]

Classifier = Callable[[Messages], str]
log = logging.getLogger(__name__)

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


@dataclass(frozen=True, slots=True)
class _Step:
    """The next move of a call: wait ``wait_s`` (or, with ``release_since``, until an attempt at a
    busy model ends, at most ``wait_s``), then try ``model`` (None: only wait)."""

    model: ModelConfig | None
    wait_s: float = 0.0
    release_since: int | None = None


@dataclass(frozen=True, slots=True)
class _Started:
    """An attempt that has begun: its token for :meth:`_Call.record` and its bounds, cut to the
    deadline at the moment it starts (a wait or a busy event loop may have eaten some)."""

    token: int
    timeout_s: float
    first_token_s: float


#: the least time worth waiting for a cooling model to reopen before trying it
MIN_ATTEMPT_S = 0.1
#: outcomes worth another try (on the same model or another) while the budget and the deadline allow
TRANSIENT = frozenset({Outcome.SERVER_ERROR, Outcome.CONNECT_ERROR, Outcome.MALFORMED, Outcome.TIMEOUT})
#: a retry of a model this call already tried waits a seeded random pause in this range first
RETRY_BACKOFF_S = (0.01, 0.05)
#: characters per token, to tell from a prompt's length whether it fits a declared context window
CHARS_PER_TOKEN = 4


class _Call:
    """The state of one routed call: which model is next, how much time is left, what happened.

    The candidates a call may try now (breaker closed or half-open, not saturated) are ranked by
    the policy; models that are cooling down or saturated follow, so they are tried last rather
    than never, and models the prompt is too long for (see below) come last of all. When every
    candidate is cooling down the call first waits for the earliest one to reopen, within its
    deadline (``breaker.when_all_cooling = "wait"``), or tries at once ("try").

    Claiming a model is atomic (:meth:`Health.acquire`): a model at its ``max_in_flight`` limit, or
    whose probe is out, is busy. The call puts a busy model aside and goes on with the next one;
    when only busy models are left it waits until an attempt at one of them ends, as long as what
    is left of the deadline then covers the model's usual latency, and tries them again. Such
    waits are the router's own saturation: they are not part of any attempt's timeout and never
    teach the breaker or the policy. On a route with ``load = "adaptive"`` a model is also busy at
    its learned concurrency limit (:mod:`.limits`): the policy then ranks only the models below
    their limits (spill-over), so the logged propensity is the probability of the primary among
    the models eligible given the load, and a model passed over learns nothing from that call.

    Retries: a transient failure (``TRANSIENT``; a timeout only when the deadline did not cut it)
    puts the model back at the end of the queue, so the other models come first; a retry is
    made only while the call has made fewer than ``max_attempts`` attempts (the route's, else the
    top-level one), while the model's breaker is not cooling down, and after a short seeded random
    pause (``RETRY_BACKOFF_S``) that the deadline must cover. A 429 with ``Retry-After`` is retried once on the same model after waiting what the
    backend asked, if the deadline allows; otherwise the call falls back. A request rejected for
    every model (``rejecting_statuses``) ends the call.

    Context length: a model whose declared ``context_window`` is smaller than the prompt's
    estimated tokens (characters / ``CHARS_PER_TOKEN``), or that answered ``context_exceeded`` for
    a prompt of this length band or a shorter one, is tried last (``skipped``: ``prompt_too_long``).
    After a ``context_exceeded`` attempt the models with a larger declared window go first; the
    breaker and the policy do not count it as a failure.
    """

    def __init__(
        self,
        router: Router,
        task_type: str,
        route: RouteConfig,
        deadline_s: float,
        prompt: str | None,
        chars: int,
        features: Features | None = None,
    ) -> None:
        self.router = router
        self.route = route
        self.task_type = task_type
        self.call_id = new_call_id()
        self.ts = time.time()
        self.start = time.perf_counter()
        self.deadline = self.start + deadline_s
        self.policy = router.policies[task_type]
        self.band = prompt_band(chars)
        self.max_attempts = route.max_attempts or router.config.max_attempts
        self.adaptive = route.load == "adaptive"  # learned concurrency limits bound the models too
        health = router.health
        usable, self.skipped = health.split(route.models, self.adaptive)
        models = router.config.models
        too_long = {m for m in route.models if not health.fits(m, self.band) or _over_window(models[m], chars)}
        for name in sorted(too_long):
            self.skipped.setdefault(name, "prompt_too_long")
        pool = [m for m in usable if m not in too_long]
        self.features = features  # the prompt's features, when the route is contextual or the caller gave some
        with router.locks[task_type]:
            if isinstance(self.policy, ContextualPolicy):
                self.ranking: Ranking = self.policy.rank(pool or None, features)
            else:
                self.ranking = self.policy.rank(pool or None)
        ranked = list(self.ranking.order)
        # the policy's ranking, then the skipped models in route order; too long for the prompt: last
        self.queue = sorted(ranked + [m for m in route.models if m not in ranked], key=lambda m: m in too_long)
        self.order = tuple(self.queue)  # the whole order tried: the policy's ranking, then skipped models
        self._wait_first = not usable and router.config.breaker.when_all_cooling == "wait"
        self._retry: tuple[str, float] | None = None
        self._retried: set[str] = set()
        self.tried: set[str] = set()  # models this call has made an attempt at
        self.deferred: list[str] = []  # busy models put aside, tried again after an attempt at one ends
        self._busy_since: int | None = None  # Health.generation before the first claim that found a model busy
        self._waited = False  # the call has just waited for a busy model
        self._slot_waits = 0  # waits for a slot so far (a call that waits again goes back to the front)
        self.busy = False  # the call ended because every model left stayed busy
        self.attempts: list[Attempt] = []
        self.starts: list[float] = []  # unix start time of each attempt, in start order
        self.tokens: list[int] = []  # for each attempt (in completion order), its index in starts
        self.open: dict[int, tuple[ModelConfig, float]] = {}  # attempts started and not yet recorded
        self.cut: dict[int, bool] = {}  # whether an attempt's timeout was cut by the deadline
        self.probes: set[int] = set()  # attempts that are their model's probe
        self.answer: Reply | None = None
        self.answer_model: str | None = None
        self.rejected = False
        self.final = False  # a streamed attempt showed text: no fallback any more
        self.prompt = prompt
        self.validators = router.validators[task_type]

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def _needed(self, name: str) -> float:
        """The least time worth starting an attempt at a model with: its usual (p90) latency."""
        return max(MIN_ATTEMPT_S, self.router.health.latency_quantile(name, 0.9) or 0.0)

    def next(self) -> _Step | None:
        """The next move, or None when the call is answered, rejected, out of models or of time."""
        while self.answer is None and not self.rejected and not self.final:
            remaining = self.remaining()
            wait = 0.0
            if self._retry is not None:
                name, wait = self._retry
                self._retry = None
            elif self.queue:
                name = self.queue.pop(0)
                if name in self.tried:  # a retry of a transient failure, unless the failures opened the breaker
                    wait = self.router._jitter.uniform(*RETRY_BACKOFF_S)
                    if (
                        len(self.attempts) >= self.max_attempts
                        or wait + MIN_ATTEMPT_S >= remaining
                        or self.router.health.reopens_in([name])
                    ):
                        continue
                elif self._wait_first:
                    self._wait_first = False
                    wait = self.router.health.reopens_in([name, *self.queue])
                    # wait only if what is left then covers the model's usual latency; else try anyway now
                    wait = wait if wait + self._needed(name) < remaining else 0.0
            elif self.deferred and not self._waited:  # only busy models are left: wait for one of them
                wait = remaining - self._needed(self.deferred[0])
                if wait <= 0:
                    self.busy = True
                    return None
                self._waited = True
                return _Step(None, wait, self._busy_since)
            elif self.deferred:  # after the wait, try them again (a failed probe may have reopened a breaker)
                self.queue, self.deferred, self._busy_since, self._waited = self.deferred, [], None, False
                usable, _ = self.router.health.split(self.queue, self.adaptive)
                self._wait_first = not usable and self.router.config.breaker.when_all_cooling == "wait"
                continue
            else:
                return None
            if remaining - wait <= 0:
                return None
            return _Step(self.router.config.models[name], wait)
        return None

    def pause(self, step: _Step) -> None:
        """Wait as the step says, blocking this thread."""
        if step.release_since is not None:
            self.router.health.wait_release(step.release_since, step.wait_s, self.adaptive, self._slot_waits > 0)
            self._slot_waits += 1
        elif step.wait_s:
            time.sleep(step.wait_s)

    async def apause(self, step: _Step) -> None:
        """Wait as the step says, letting the event loop run."""
        if step.release_since is not None:
            await self.router.health.await_release(step.release_since, step.wait_s, self.adaptive, self._slot_waits > 0)
            self._slot_waits += 1
        elif step.wait_s:
            await asyncio.sleep(step.wait_s)

    def hedge_delay(self, step: _Step) -> float | None:
        """When to ask the next model too: the primary's learned latency quantile, if hedging is on."""
        q = self.route.hedge_quantile
        if q is None or not self.queue or step.model is None:
            return None
        delay = self.router.health.latency_quantile(step.model.name, q)
        return delay if delay is not None and delay < min(step.model.timeout_s, self.remaining()) else None

    def begin(self, model: ModelConfig) -> _Started | None:
        """Start an attempt now; None if the deadline has passed, or if the model is busy (it is put aside)."""
        timeout = min(model.timeout_s, self.remaining())
        if timeout <= 0:
            return None
        health = self.router.health
        since = health.generation  # read before the claim, so a release in between is not missed
        probe = health.acquire(model.name, self.adaptive)
        if probe is None:
            if model.name not in self.deferred:
                self.deferred.append(model.name)
            self._busy_since = since if self._busy_since is None else self._busy_since
            return None
        self.tried.add(model.name)
        self.starts.append(time.time())
        token = len(self.starts) - 1
        self.open[token] = (model, time.perf_counter())
        self.cut[token] = timeout < model.timeout_s
        if probe:
            self.probes.add(token)
        return _Started(token, timeout, min(model.first_token_timeout_s or timeout, timeout))

    def cancel_open(self, why: str) -> None:
        """Record every attempt still in flight as cancelled (a hedge's loser, or an aborted call)."""
        for token, (model, started) in list(self.open.items()):
            self.record(model, Reply(Outcome.CANCELLED, time.perf_counter() - started, error=why[:200]), token)

    def abort(self, exc: BaseException) -> None:
        """The call was cancelled or a backend raised: close its open attempts and log what happened."""
        self.cancel_open(f"{type(exc).__name__}: {exc}")
        self.router._log(
            self, self.answer_model, "ok" if self.answer is not None else "failed", time.perf_counter() - self.start
        )

    def record(self, model: ModelConfig, reply: Reply, token: int, shown: bool = False) -> None:
        """Keep one attempt's reply, validate it, teach the policy and the breaker at once.

        ``shown`` means text of this attempt already reached the caller (a stream): the call then
        ends here whatever happened, since answers from two models must never be spliced.
        """
        if reply.ok and self.validators:
            problem = check_answer(self.validators, reply.text or "")
            if problem:
                reply = replace(reply, outcome=Outcome.INVALID, error=problem)
        self.final = self.final or shown
        cost = model.cost(reply.tokens_in, reply.tokens_out)
        error = self.router.scrub(reply.error) if reply.error else ""  # bodies and exceptions may echo a key
        attempt = Attempt(
            model.name,
            str(reply.outcome),
            reply.latency_s,
            reply.status,
            reply.tokens_in,
            reply.tokens_out,
            cost,
            error,
            reply.ttft_s,
        )
        self.attempts.append(attempt)
        self.tokens.append(token)
        del self.open[token]
        rejects = self.router.rejects(reply)
        cut = reply.outcome is Outcome.TIMEOUT and self.cut.get(token, False)
        # a timeout the deadline cut short says little about the model, a rejected request nothing
        self.router.health.release(model.name, reply, neutral=rejects or cut, probe=token in self.probes)
        self.probes.discard(token)
        if (
            reply.outcome not in (Outcome.CANCELLED, Outcome.CONTEXT_EXCEEDED) and not rejects
        ):  # neither says the model is worse
            latency = (
                reply.ttft_s if self.route.latency_measure == "ttft" and reply.ttft_s is not None else reply.latency_s
            )
            with self.router.locks[self.task_type]:
                self.policy.update(model.name, reply.ok, latency, cost)
        if reply.ok and self.answer is None:
            self.answer, self.answer_model = reply, model.name
        elif rejects:
            self.rejected = True
        elif reply.outcome is Outcome.CONTEXT_EXCEEDED:
            self.router.health.exceeded_context(model.name, self.band)
            self._prefer_larger(model)
        elif (
            reply.outcome is Outcome.RATE_LIMITED
            and reply.retry_after_s is not None
            and model.name not in self._retried
        ):
            if reply.retry_after_s + 0.05 < self.remaining():
                self._retried.add(model.name)
                self._retry = (model.name, reply.retry_after_s)
        elif reply.outcome in TRANSIENT and not cut and model.name not in self.queue:
            self.queue.append(model.name)

    def _prefer_larger(self, model: ModelConfig) -> None:
        """After a context-length error, the models left with a larger declared window go first."""
        if model.context_window is None:
            return
        models = self.router.config.models
        larger = [n for n in self.queue if (models[n].context_window or 0) > model.context_window]
        self.queue = larger + [n for n in self.queue if n not in larger]

    def finish(self) -> tuple[Reply, dict[str, Any]]:
        """Log the call; return the answering reply and the common result fields, or raise."""
        latency = time.perf_counter() - self.start
        answer = self.answer
        outcome = "ok" if answer is not None else ("rejected" if self.rejected else "failed")
        self.router._log(self, self.answer_model, outcome, latency)
        if answer is None and self.rejected:
            raise RequestRejected(self.call_id, self.attempts)
        if answer is None and self.attempts and self.attempts[-1].outcome == Outcome.STREAM_BROKEN:
            raise StreamBroken(self.call_id, self.attempts)
        if answer is None:
            reason = (
                "deadline exceeded" if self.remaining() <= 0 else ("every model left was busy" if self.busy else "")
            )
            raise AllModelsFailed(self.call_id, self.task_type, self.attempts, reason)
        common = {
            "call_id": self.call_id,
            "task_type": self.task_type,
            "model": self.answer_model,
            "attempts": self.attempts,
            "ranking": self.order,
            "propensity": self.ranking.propensity,
            "latency_s": latency,
        }
        return answer, common


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
        seed = self.config.seed
        self.policies: dict[str, Policy] = {}
        for i, (task, route) in enumerate(self.config.routes.items()):
            options = dict(route.options)
            if "seed" not in options and seed is not None:
                options["seed"] = seed + i
            self.policies[task] = make_policy(route.policy, route.models, self.config.objective, **options)
        self.locks = {task: threading.Lock() for task in self.policies}
        self.pacers = {
            task: BudgetPacer(route.budget_per_call, self.config.objective)
            for task, route in self.config.routes.items()
            if route.budget_per_call is not None
        }
        self.contexts = PendingContexts(
            self.config.feedback_window, self.config.feedback_window_s
        )  # features awaiting feedback
        self._featurizer = Featurizer()  # for caller features on routes that are not contextual
        self.health = Health(self.config.models, self.config.breaker, load=self.config.load)
        self._jitter = random.Random(self.config.seed)  # retry pauses
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
        self._synced_until = time.time()  # rows of other routers from here on are learned by sync()
        self._warm_until = 0.0  # rows stamped before this were learned by the warm start: sync() never re-reads them
        self._seen: dict[tuple[str, str, int], float] = {}
        self._stop = threading.Event()
        self.warm = not warm_start  # whether the policies hold what the log knows
        if warm_start:
            try:
                self._warm_start()
            except StoreError as exc:  # start anyway: route on what we learn live, read the log when it answers
                log.warning("warm start postponed, %s", exc)
                threading.Thread(target=self._warm_start_later, name="zeta-warm-start", daemon=True).start()
        self._refresher: threading.Thread | None = None
        if self.config.refresh_s is not None:
            self._refresher = threading.Thread(target=self._refresh_loop, name="zeta-refresh", daemon=True)
            self._refresher.start()

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
    ) -> _Call:
        """Check the call's task type and deadline, choose its route and open it (the arguments are checked by then)."""
        if self._closed:
            raise RuntimeError("the router is closed")
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
        return _Call(self, task, route, deadline, logged, chars, self._features(task, messages, features))

    def _begin_chat(
        self,
        task_type: str | None,
        messages: Messages,
        stream: bool,
        deadline_s: float | None,
        params: Mapping[str, Any],
        features: Mapping[str, float] | None = None,
    ) -> _Call:
        check_stream(stream)
        check_params(params)
        chars = check_messages(messages)
        return self._begin(task_type, "chat", deadline_s, messages, messages, chars, features)

    def _begin_embed(self, texts: Sequence[str], task_type: str, deadline_s: float | None) -> tuple[list[str], _Call]:
        items = check_texts(texts)
        return items, self._begin(task_type, "embedding", deadline_s, None, items, max(map(len, items)))

    def rejects(self, reply: Reply) -> bool:
        """Whether a backend refused the request itself (a status in ``rejecting_statuses``, not an
        endpoint that does not know its model name): no model should see it again."""
        return (
            reply.outcome is Outcome.CLIENT_ERROR
            and reply.status in self.config.rejecting_statuses
            and not reply.misconfigured
        )

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
        if stream:
            return ChatStream(self._stream(call, lambda m, t, f: self.backend.stream_chat(m, messages, params, t, f)))
        answer, common = self._run(call, lambda m, t: self.backend.chat(m, messages, params, t))
        return ChatResult(**common, text=answer.text or "")

    @overload
    async def achat(
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
    async def achat(
        self,
        task_type: str | None,
        messages: Messages,
        *,
        stream: Literal[True],
        deadline_s: float | None = None,
        features: Mapping[str, float] | None = None,
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
        **params: Any,
    ) -> ChatResult | AsyncChatStream:
        """Async twin of :meth:`chat`; on routes with ``hedge_quantile`` it also hedges slow primaries."""
        call = self._begin_chat(task_type, messages, stream, deadline_s, params, features)
        if stream:
            return AsyncChatStream(
                self._astream(call, lambda m, t, f: self.backend.astream_chat(m, messages, params, t, f))
            )
        answer, common = await self._arun(call, lambda m, t: self.backend.achat(m, messages, params, t))
        return ChatResult(**common, text=answer.text or "")

    def embed(
        self, texts: Sequence[str], *, task_type: str = "embedding", deadline_s: float | None = None
    ) -> EmbedResult:
        """Route an embedding call; fallbacks are only models of the same embedding space.

        ``texts`` is one string or a non-empty list of non-empty strings, else :class:`InvalidRequest`.
        """
        texts, call = self._begin_embed(texts, task_type, deadline_s)
        answer, common = self._run(call, lambda m, t: self.backend.embed(m, texts, t))
        return EmbedResult(**common, vectors=answer.vectors)

    async def aembed(
        self, texts: Sequence[str], *, task_type: str = "embedding", deadline_s: float | None = None
    ) -> EmbedResult:
        """Async twin of :meth:`embed`."""
        texts, call = self._begin_embed(texts, task_type, deadline_s)
        answer, common = await self._arun(call, lambda m, t: self.backend.aembed(m, texts, t))
        return EmbedResult(**common, vectors=answer.vectors)

    @staticmethod
    def _run(call: _Call, send: Callable[[ModelConfig, float], Reply]) -> tuple[Reply, dict[str, Any]]:
        """Try the call's models in order, synchronously."""
        try:
            while (step := call.next()) is not None:
                call.pause(step)
                if step.model is not None and (started := call.begin(step.model)) is not None:
                    call.record(step.model, send(step.model, started.timeout_s), started.token)
        except BaseException as exc:
            call.abort(exc)
            raise
        return call.finish()

    @staticmethod
    def _stream(
        call: _Call, send: Callable[[ModelConfig, float, float], Iterator[StreamItem]]
    ) -> Iterator[str | ChatResult]:
        """Stream from the call's models in order; fall back only while nothing was shown."""
        try:
            while (step := call.next()) is not None:
                call.pause(step)
                if step.model is None or (started := call.begin(step.model)) is None:
                    continue
                shown, reply = False, None
                for item in send(step.model, started.timeout_s, started.first_token_s):
                    if isinstance(item, str):
                        shown = True
                        yield item
                    else:
                        reply = item
                call.record(
                    step.model,
                    reply or Reply(Outcome.MALFORMED, 0.0, error="stream gave no result"),
                    started.token,
                    shown,
                )
        except BaseException as exc:  # includes GeneratorExit: the caller stopped reading
            call.abort(exc)
            raise
        answer, common = call.finish()
        yield ChatResult(**common, text=answer.text or "")

    @staticmethod
    async def _astream(
        call: _Call, send: Callable[[ModelConfig, float, float], AsyncIterator[StreamItem]]
    ) -> AsyncIterator[str | ChatResult]:
        """Async twin of :meth:`_stream`."""
        try:
            while (step := call.next()) is not None:
                await call.apause(step)
                if step.model is None or (started := call.begin(step.model)) is None:
                    continue
                shown, reply = False, None
                async for item in send(step.model, started.timeout_s, started.first_token_s):
                    if isinstance(item, str):
                        shown = True
                        yield item
                    else:
                        reply = item
                call.record(
                    step.model,
                    reply or Reply(Outcome.MALFORMED, 0.0, error="stream gave no result"),
                    started.token,
                    shown,
                )
        except BaseException as exc:
            call.abort(exc)
            raise
        answer, common = call.finish()
        yield ChatResult(**common, text=answer.text or "")

    @staticmethod
    async def _arun(
        call: _Call, send: Callable[[ModelConfig, float], Awaitable[Reply]]
    ) -> tuple[Reply, dict[str, Any]]:
        """Try the call's models in order, asynchronously, hedging where the route asks for it."""
        try:
            while (step := call.next()) is not None:
                await call.apause(step)
                if step.model is None:
                    continue
                delay = call.hedge_delay(step)
                if delay is None:
                    if (started := call.begin(step.model)) is not None:
                        call.record(step.model, await send(step.model, started.timeout_s), started.token)
                else:
                    await _hedge(call, send, step, delay)
        except BaseException as exc:  # the caller cancelled us, or a backend raised
            call.abort(exc)
            raise
        return call.finish()

    # -- feedback and state ---------------------------------------------------------------------
    def feedback(self, call_id: str, accuracy: float) -> None:
        """Record the accuracy in [0, 1] of a call's answer and teach the policy that chose it.

        Raises :class:`FeedbackError` (and writes and learns nothing) for an unknown call id, a call
        that had no answer, a call already rated (here or by another process: the database's unique
        key decides), NaN or a value outside [0, 1]. A call this process made is checked from
        memory; while the store is away its rating is journaled like any row. A call of another
        process (or one older than ``feedback_window``) is checked in the log, bounded by
        ``store_timeout_s``: while the store is away that raises :class:`StoreError`.
        """
        value = validate_accuracy(accuracy)
        call_id = check_call_id(call_id)
        if self._closed:
            raise StoreError("the router is closed")
        call = self.book.claim(call_id)
        if call is None:
            call = self._claim_logged(call_id)
        else:
            row = self._feedback_row(call, value)
            won: bool | None = None
            if self.store.available:
                try:
                    won = self.store.call(self.store.insert_feedback, row)
                except StoreError:
                    won = None
            if won is False:
                raise FeedbackError(f"call {call_id} already has feedback", "already_rated")
            if won is None:
                self.store.put("feedback", row)
            self._learn_feedback(call, value)
            return
        if not self.store.call(self.store.insert_feedback, self._feedback_row(call, value)):
            raise FeedbackError(f"call {call_id} already has feedback", "already_rated")
        self._learn_feedback(call, value)

    async def afeedback(self, call_id: str, accuracy: float) -> None:
        """Async twin of :meth:`feedback` (the bounded database work runs on a worker thread)."""
        await asyncio.to_thread(self.feedback, call_id, accuracy)

    def _claim_logged(self, call_id: str) -> RatedCall:
        """A call found in the log (another process's, or older than the window), not yet rated."""
        row = self.store.call(self.store.find_call, call_id)
        if row is None:
            raise FeedbackError(f"unknown call id {call_id!r}", "unknown_call")
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

    def _learn_feedback(self, call: RatedCall, value: float) -> None:
        policy = self.policies.get(call.task_type)
        if isinstance(policy, ContextualPolicy) and call.model in policy.index:
            features = self.contexts.pop(call.call_id)
            if features is None:  # evicted, or another process's call: the log has its features
                try:
                    features = self.store.call(logged_features, self.store, call.call_id, policy.featurizer.space)
                except StoreError:
                    features = None  # the store is away: only the bias weight learns
            with self.locks[call.task_type]:
                policy.feedback(call.model, value, features)
        elif policy is not None and call.model in policy.index:
            with self.locks[call.task_type]:
                policy.feedback(call.model, value)

    def preferences(self, task_type: str | None = None) -> pd.DataFrame:
        """What the policies believe now: one row per candidate model, best ``rank`` first.

        With a task type, the route's rows indexed by ``model``; without, every route's, indexed by
        (``task_type``, ``model``), so ``prefs.loc[task]`` is one route's and ``reset_index()`` joins
        with :mod:`zeta_adaptive.analysis`' frames on those two columns. The columns are
        :data:`~zeta_adaptive.results.PREFERENCE_COLUMNS` (see
        :meth:`~zeta_adaptive.policies.Policy.statistics`), plus a route's cost budget when it has one.
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
        warnings.warn(
            "Router.preferences_dict() is deprecated; Router.preferences() returns a DataFrame",
            DeprecationWarning,
            stacklevel=2,
        )
        out = {}
        for task in self._routes(task_type):
            with self.locks[task]:
                rows = self.policies[task]._preference_rows()
                budget = self.pacers[task].snapshot() if task in self.pacers else {}
            out[task] = [{**row, **self.health.snapshot(row["model"]), **budget} for row in rows]
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
                    "ranking": json.dumps(call.order),
                    "model": model,
                    "outcome": outcome,
                    "latency_s": latency,
                    "tokens_in": sum(a.tokens_in for a in call.attempts),
                    "tokens_out": sum(a.tokens_out for a in call.attempts),
                    "cost": sum(a.cost for a in call.attempts),
                    "n_attempts": len(call.attempts),
                    "prompt": call.prompt,
                    "answer": answer_text,
                    "skipped": json.dumps(call.skipped) if call.skipped else None,
                },
            )
        ]
        for i, (a, token) in enumerate(zip(call.attempts, call.tokens, strict=True)):
            ts = call.starts[token]
            rows.append(
                (
                    "attempts",
                    {
                        "call_id": call.call_id,
                        "idx": i,
                        "ts": ts,
                        "task_type": call.task_type,
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
            )
        if call.features is not None:
            space = (
                call.policy.featurizer.space if isinstance(call.policy, ContextualPolicy) else self._featurizer.space
            )
            rows.append(
                (
                    "call_features",
                    {
                        "call_id": call.call_id,
                        "ts": call.ts,
                        "task_type": call.task_type,
                        "space": space,
                        "features": call.features.to_json(),
                    },
                )
            )
            if model is not None and isinstance(call.policy, ContextualPolicy):
                self.contexts.put(call.call_id, call.features)
        pacer = self.pacers.get(call.task_type)
        if pacer is not None:
            with self.locks[call.task_type]:
                pacer.observe(sum(a.cost for a in call.attempts), call.policy)
        self.store.put_many(rows)
        self.book.remember(call.call_id, call.task_type, model)

    def _warm_start(self) -> None:
        """Rebuild every policy's statistics from the logged history of its task type.

        An undiscounted policy's statistics are sums, so it reads one aggregate row per model; a
        discounted one reads only its last ``horizon()`` events, older ones weighing < 1e-12.
        Either way the cost does not grow with the length of the log.
        """
        a, f = attempts_table.c, feedback_table.c
        until = time.time()  # rows stamped from here on are sync()'s, so none is learned twice
        learnable = and_(self._learnable(), or_(a.router_id.is_(None), a.router_id != self.router_id), a.ts < until)
        others = and_(or_(f.router_id.is_(None), f.router_id != self.router_id), f.ts < until)  # our own: learned live
        read = self.store.call
        for task, policy in self.policies.items():
            horizon = policy.horizon()
            if horizon is None:
                tried = read(self.store.attempt_sums, task, learnable)
                rated = read(self.store.feedback_sums, task, others)
                with self.locks[task]:
                    policy.add_sums(
                        tried["model"].tolist(), {k: tried[k].to_numpy() for k in tried.columns if k != "model"}
                    )
                    policy.add_sums(
                        rated["model"].tolist(), {k: rated[k].to_numpy() for k in rated.columns if k != "model"}
                    )
            else:
                self._learn(
                    read(self.store.tail, "attempts", task, horizon, self.LEARNED_ATTEMPT_COLUMNS, learnable),
                    read(self.store.tail, "feedback", task, horizon, self.LEARNED_FEEDBACK_COLUMNS, others),
                )
            if isinstance(policy, ContextualPolicy):
                with self.locks[task]:
                    warm_start_contexts(self.store, task, policy)
        self._warm_until = until
        self.warm = True

    def _warm_start_later(self) -> None:
        """Retry the warm start until the store answers or the router closes (started during an outage)."""
        while not self._stop.wait(1.0):
            try:
                self._warm_start()
                return
            except StoreError:
                continue

    def _learnable(self) -> Any:
        """The attempts a live policy learns from: not cancelled, not a context-length error, not a rejected request."""
        a = attempts_table.c
        rejected = and_(a.outcome == str(Outcome.CLIENT_ERROR), a.status.in_(sorted(self.config.rejecting_statuses)))
        return and_(a.outcome.notin_([str(Outcome.CANCELLED), str(Outcome.CONTEXT_EXCEEDED)]), not_(rejected))

    LEARNED_ATTEMPT_COLUMNS = ("task_type", "model", "outcome", "status", "latency_s", "cost")
    LEARNED_FEEDBACK_COLUMNS = ("task_type", "model", "accuracy")

    def _learn(self, tried: pd.DataFrame, rated: pd.DataFrame) -> None:
        """Teach each policy a time-ordered slice of the log (vectorised, under its lock)."""
        rejected = (tried["outcome"] == str(Outcome.CLIENT_ERROR)) & tried["status"].isin(
            list(self.config.rejecting_statuses)
        )
        ignored = tried["outcome"].isin([str(Outcome.CANCELLED), str(Outcome.CONTEXT_EXCEEDED)])
        tried = tried[~ignored & ~rejected]  # live policies never learn from these
        for task, policy in self.policies.items():
            a = tried[tried["task_type"] == task]
            f = rated[rated["task_type"] == task]
            if len(a) or len(f):
                with self.locks[task]:
                    policy.fit(
                        a["model"].tolist(),
                        (a["outcome"] == "ok").to_numpy(),
                        a["latency_s"].to_numpy(),
                        a["cost"].to_numpy(),
                        f["model"].tolist(),
                        f["accuracy"].to_numpy(),
                    )

    #: beyond a call's deadline, how far back each sync() looks again for rows others wrote late
    SYNC_SLACK_S = 5.0

    def sync(self) -> int:
        """Learn what other router processes logged since the last sync; returns the rows learned.

        Run every ``refresh_s`` seconds by a background thread when the config sets it, so that all
        processes sharing one database converge to the same preferences. An attempt is stamped
        with its start but written when its call ends, in a batch; so rows are read again from a
        deadline plus ``SYNC_SLACK_S`` back and deduplicated by key. A row that reaches the
        database later than that (after an outage) is learned only at the next warm start.
        """
        overlap = self.config.deadline_s + self.SYNC_SLACK_S
        since = max(self._synced_until - overlap, self._warm_until)
        tasks = list(self.policies)
        tried = self.store.call(lambda: self.store.frame("attempts", tasks, since=since, exclude_router=self.router_id))
        rated = self.store.call(lambda: self.store.frame("feedback", tasks, since=since, exclude_router=self.router_id))
        tried_keys = list(zip(["a"] * len(tried), tried["call_id"], tried["idx"]))
        rated_keys = list(zip(["f"] * len(rated), rated["call_id"], [0] * len(rated)))
        new_tried = np.array([k not in self._seen for k in tried_keys], dtype=bool)
        new_rated = np.array([k not in self._seen for k in rated_keys], dtype=bool)
        self._learn(tried[new_tried], rated[new_rated])
        for key, ts in zip(tried_keys + rated_keys, [*tried["ts"], *rated["ts"]]):
            self._seen[key] = ts
        latest = max([self._synced_until, *tried["ts"], *rated["ts"]])
        self._synced_until = latest
        horizon = latest - 2 * overlap
        self._seen = {k: ts for k, ts in self._seen.items() if ts >= horizon}
        return int(new_tried.sum() + new_rated.sum())

    def _refresh_loop(self) -> None:
        assert self.config.refresh_s is not None
        while not self._stop.wait(self.config.refresh_s):
            try:
                self.sync()
            except StoreError as exc:  # the store is away: the journal has our rows, try again later
                log.warning("refresh failed: %s", exc)

    # -- lifecycle ------------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every logged record so far is in the database."""
        return self.store.flush(timeout)

    def close(self) -> None:
        """Flush the log and release connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join()
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


async def _hedge(
    call: _Call, send: Callable[[ModelConfig, float], Awaitable[Reply]], step: _Step, delay: float
) -> None:
    """Start the primary; if it has not answered after ``delay``, start the next model too.

    The first success wins and the other attempt is cancelled and logged as ``cancelled``; if the
    first to finish fails, the other keeps running, and the call goes on as usual afterwards.
    """
    running: dict[asyncio.Task[Reply], tuple[ModelConfig, int]] = {}

    def launch(s: _Step) -> None:
        if (started := call.begin(s.model)) is not None:
            running[asyncio.ensure_future(send(s.model, started.timeout_s))] = (s.model, started.token)

    launch(step)
    if not running:  # the deadline passed before the attempt could start
        return
    try:
        done, _ = await asyncio.wait(running, timeout=delay)
        if not done and (second := call.next()) is not None and second.model is not None:
            launch(second)  # a second step never waits: retries and cooldown waits come only before a first attempt
        while running:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                model, token = running.pop(task)
                call.record(model, task.result(), token)
            if call.answer is not None or call.rejected:
                break
    finally:  # the loser of the race, or everything if we were cancelled: abort() logs them
        for task in running:
            task.cancel()
    call.cancel_open("lost the hedge race")


def _over_window(model: ModelConfig, chars: int) -> bool:
    """Whether a prompt of ``chars`` characters is clearly longer than the model's declared context window."""
    return model.context_window is not None and chars > model.context_window * CHARS_PER_TOKEN
