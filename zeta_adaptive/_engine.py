"""The call engine: one step machine that decides a call's next attempt, waits, hedges and records,
run by one sync driver (:func:`run`) and one async driver (:func:`arun`).

A plain call is the degenerate stream: its backend yields one item, the reply. Each driver yields
a streamed call's text deltas and, last, what ``done`` makes of the answer, so one loop serves
plain calls and streams (as httpx's ``BaseClient`` serves ``Client`` and ``AsyncClient``). The
engine reaches nothing but its :class:`Lane` (what one route needs: policy, lock, health, models,
validators, limits) and reports each finished call as a :class:`.CallRecord` to ``lane.end``.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar, cast

from ._backends import CHARS_PER_TOKEN, Outcome, Reply, StreamItem
from ._config import ModelConfig, RouteConfig
from ._exceptions import AllModelsFailed, RequestRejected, StreamBroken
from ._ids import new_call_id
from ._inputs import prompt_band
from ._lessons import rejected, teaches
from ._records import CallRecord
from ._results import Attempt
from ._validators import Validator
from ._validators import check as check_answer

if TYPE_CHECKING:
    from ._features import Features
    from ._health import Health
    from ._policies import Policy, Ranking

__all__ = ["Lane", "Call", "run", "arun", "MIN_ATTEMPT_S", "TRANSIENT", "RETRY_BACKOFF_S"]

T = TypeVar("T")

#: the least time worth waiting for a cooling model to reopen before trying it
MIN_ATTEMPT_S = 0.1
#: outcomes worth another try (on the same model or another) while the budget and the deadline allow
TRANSIENT = frozenset({Outcome.SERVER_ERROR, Outcome.CONNECT_ERROR, Outcome.MALFORMED, Outcome.TIMEOUT})
#: a retry of a model this call already tried waits a seeded random pause in this range first
RETRY_BACKOFF_S = (0.01, 0.05)
#: what a stream that ended without its final reply counts as
_NO_RESULT = Reply(Outcome.MALFORMED, 0.0, error="stream gave no result")


@dataclass(frozen=True, slots=True)
class Lane:
    """Everything a call on one route needs, built once per route: the engine touches nothing else."""

    task_type: str
    route: RouteConfig
    policy: Policy
    lock: threading.Lock  # guards the policy
    health: Health
    models: Mapping[str, ModelConfig]
    validators: Sequence[Validator]
    max_attempts: int
    wait_when_cooling: bool  # ``breaker.when_all_cooling == "wait"``
    rejecting: frozenset[int]
    scrub: Callable[[str], str]  # for attempt errors: bodies and exceptions may echo a key
    jitter: random.Random  # retry pauses
    contextual: bool  # the policy ranks with the prompt's features
    space: str | None  # the label of the features a call on this route logs
    router_id: str
    begin: Callable[[], None]  # a call starts its attempts (the router counts the calls under way)
    end: Callable[[CallRecord], None]  # logs a finished call (and remembers it for feedback)
    # derived from the route once, not on every call
    adaptive: bool = field(init=False)  # learned concurrency limits bound the models too
    loaded: bool = field(init=False)  # the objective takes each model at its latency at its current load
    windows: tuple[tuple[str, int], ...] = field(init=False)  # models with a declared context window: its characters

    def __post_init__(self) -> None:
        adaptive = self.route.load == "adaptive"
        object.__setattr__(self, "adaptive", adaptive)
        object.__setattr__(self, "loaded", adaptive and not self.contextual and self.route.latency_measure == "total")
        windows = ((name, self.models[name].context_window) for name in self.route.models)
        object.__setattr__(self, "windows", tuple((n, w * CHARS_PER_TOKEN) for n, w in windows if w is not None))

    def rejects(self, reply: Reply) -> bool:
        """Whether a backend refused the request itself (no model should see it again)."""
        return rejected(reply.outcome, reply.status, reply.misconfigured, self.rejecting)


@dataclass(frozen=True, slots=True)
class Step:
    """The next move of a call: wait ``wait_s`` (or, with ``release_since``, until an attempt at a
    busy model ends, at most ``wait_s``), then try ``model`` (None: only wait)."""

    model: ModelConfig | None
    wait_s: float = 0.0
    release_since: int | None = None


@dataclass(frozen=True, slots=True)
class Started:
    """An attempt that has begun: its ``index`` (in start order) for :meth:`Call.record` and its
    bounds, cut to the deadline at the moment it starts (a wait or a busy event loop may have eaten some)."""

    index: int
    timeout_s: float
    first_token_s: float


class Call:
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
    the models eligible given the load, and a model passed over learns nothing from that call;
    and the policy's objective takes each model at its expected latency at its current load
    (:meth:`.Health.expected_latencies`, per-prompt policies excepted), not its learned average.

    Retries: a transient failure (``TRANSIENT``; a timeout only when the deadline did not cut it)
    puts the model back at the end of the queue, so the other models come first; a retry is
    made only while the call has made fewer than ``max_attempts`` attempts (the route's, else the
    top-level one), while the model's breaker is not cooling down, and after a short seeded random
    pause (``RETRY_BACKOFF_S``) that the deadline must cover. A 429 with ``Retry-After`` is retried
    once on the same model after waiting what the backend asked, if the deadline allows; otherwise
    the call falls back. A request rejected for every model (``rejecting_statuses``) ends the call.

    Context length: a model whose declared ``context_window`` is smaller than the prompt's
    estimated tokens (characters / ``CHARS_PER_TOKEN``), or that answered ``context_exceeded`` for
    a prompt of this length band or a shorter one, is tried last (``skipped``: ``prompt_too_long``).
    After a ``context_exceeded`` attempt the models with a larger declared window go first.
    What each attempt teaches the policy and the breaker is :mod:`.lessons`' rule.
    """

    def __init__(
        self, lane: Lane, deadline_s: float, prompt: str | None, chars: int, features: Features | None = None
    ) -> None:
        self.lane = lane
        self.call_id = new_call_id()
        self.ts = time.time()
        self.start = time.perf_counter()
        self.deadline = self.start + deadline_s
        self.band = prompt_band(chars)
        self.chars = chars  # the prompt's characters
        self.shown = 0  # characters of streamed text the caller received
        self.adaptive = lane.adaptive
        health, candidates = lane.health, lane.route.models
        usable, self.skipped = health.split(candidates, self.adaptive)
        too_long = {m for m, limit in lane.windows if chars > limit}  # clearly longer than the declared window
        if health.too_long:  # some model already exceeded its context: the prompt's band decides
            too_long.update(m for m in candidates if not health.fits(m, self.band))
        for name in sorted(too_long):
            self.skipped.setdefault(name, "prompt_too_long")
        pool = [m for m in usable if m not in too_long] if too_long else usable
        self.features = features  # the prompt's features, when the route is contextual or the caller gave some
        latency = health.expected_latencies(pool or candidates) if lane.loaded else None
        with lane.lock:
            if lane.contextual:
                self.ranking: Ranking = lane.policy.rank(pool or None, features)  # type: ignore[call-arg]
            elif latency:
                self.ranking = lane.policy.rank_under_load(pool or None, latency)
            else:
                self.ranking = lane.policy.rank(pool or None)
        ranked = self.ranking.order
        # the policy's ranking, then the skipped models in route order; too long for the prompt: last
        queue = [*ranked, *(m for m in candidates if m not in ranked)] if len(ranked) < len(candidates) else [*ranked]
        self.queue = sorted(queue, key=too_long.__contains__) if too_long else queue
        self.order = tuple(self.queue)  # the whole order tried: the policy's ranking, then skipped models
        self._wait_first = not usable and lane.wait_when_cooling
        self._retry: tuple[str, float] | None = None
        self._retried: set[str] = set()
        self.tried: set[str] = set()  # models this call has made an attempt at
        self.deferred: list[str] = []  # busy models put aside, tried again after an attempt at one ends
        self._busy_since: int | None = None  # Health.generation before the first claim that found a model busy
        self._waited = False  # the call has just waited for a busy model
        self._slot_waits = 0  # waits for a slot so far (a call that waits again goes back to the front)
        self.busy = False  # the call ended because every model left stayed busy
        self.attempts: list[Attempt] = []  # in completion order
        self.starts: list[float] = []  # unix start time of each attempt, in start order
        self.indices: list[int] = []  # for each attempt (in completion order), its index in starts
        self.open: dict[int, tuple[ModelConfig, float]] = {}  # attempts started and not yet recorded
        self.cut: dict[int, bool] = {}  # whether an attempt's timeout was cut by the deadline
        self.deadline_hit = False  # an attempt whose timeout was the rest of the deadline timed out
        self.probes: set[int] = set()  # attempts that are their model's probe
        self.answer: Reply | None = None
        self.answer_model: str | None = None
        self.rejected = False
        self.final = False  # a streamed attempt showed text: no fallback any more
        self._taken: Reply | None = None  # the reply the attempt in progress sent
        self.prompt = prompt
        self.latency_s = 0.0  # set when the call ends

    @property
    def task_type(self) -> str:
        return self.lane.task_type

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def _needed(self, name: str) -> float:
        """The least time worth starting an attempt at a model with: its usual (p90) latency."""
        return max(MIN_ATTEMPT_S, self.lane.health.latency_quantile(name, 0.9) or 0.0)

    def next(self) -> Step | None:
        """The next move, or None when the call is answered, rejected, out of models or of time."""
        lane = self.lane
        while self.answer is None and not self.rejected and not self.final:
            remaining = self.remaining()
            wait = 0.0
            if self._retry is not None:
                name, wait = self._retry
                self._retry = None
            elif self.queue:
                name = self.queue.pop(0)
                if name in self.tried:  # a retry of a transient failure, unless the failures opened the breaker
                    wait = lane.jitter.uniform(*RETRY_BACKOFF_S)
                    spent = len(self.attempts) >= lane.max_attempts or wait + MIN_ATTEMPT_S >= remaining
                    if spent or lane.health.reopens_in([name]):
                        continue
                elif self._wait_first:
                    self._wait_first = False
                    wait = lane.health.reopens_in([name, *self.queue])
                    # wait only if what is left then covers the model's usual latency; else try anyway now
                    wait = wait if wait + self._needed(name) < remaining else 0.0
            elif self.deferred and not self._waited:  # only busy models are left: wait for one of them
                wait = remaining - self._needed(self.deferred[0])
                if wait <= 0:
                    self.busy = True
                    return None
                self._waited = True
                return Step(None, wait, self._busy_since)
            elif self.deferred:  # after the wait, try them again (a failed probe may have reopened a breaker)
                self.queue, self.deferred, self._busy_since, self._waited = self.deferred, [], None, False
                usable, _ = lane.health.split(self.queue, self.adaptive)
                self._wait_first = not usable and lane.wait_when_cooling
                continue
            else:
                return None
            if remaining - wait <= 0:
                return None
            return Step(lane.models[name], wait)
        return None

    def pause(self, step: Step) -> None:
        """Wait as the step says, blocking this thread."""
        if step.release_since is not None:
            self.lane.health.wait_release(step.release_since, step.wait_s, self.adaptive, self._slot_waits > 0)
            self._slot_waits += 1
        elif step.wait_s:
            time.sleep(step.wait_s)

    async def apause(self, step: Step) -> None:
        """Wait as the step says, letting the event loop run."""
        if step.release_since is not None:
            health = self.lane.health
            await health.await_release(step.release_since, step.wait_s, self.adaptive, self._slot_waits > 0)
            self._slot_waits += 1
        elif step.wait_s:
            await asyncio.sleep(step.wait_s)

    def hedge_delay(self, step: Step) -> float | None:
        """When to ask the next model too: the primary's learned latency quantile, if hedging is on."""
        q = self.lane.route.hedge_quantile
        if q is None or not self.queue or step.model is None:
            return None
        delay = self.lane.health.latency_quantile(step.model.name, q)
        return delay if delay is not None and delay < min(step.model.timeout_s, self.remaining()) else None

    def begin(self, model: ModelConfig) -> Started | None:
        """Start an attempt now; None if the deadline has passed, or if the model is busy (it is put aside)."""
        timeout = min(model.timeout_s, self.remaining())
        if timeout <= 0:
            return None
        health = self.lane.health
        since = health.generation  # read before the claim, so a release in between is not missed
        probe = health.acquire(model.name, self.adaptive)
        if probe is None:
            if model.name not in self.deferred:
                self.deferred.append(model.name)
            self._busy_since = since if self._busy_since is None else self._busy_since
            return None
        self.tried.add(model.name)
        index = len(self.starts)
        self.starts.append(time.time())
        self.open[index] = (model, time.perf_counter())
        self.cut[index] = timeout < model.timeout_s
        if probe:
            self.probes.add(index)
        return Started(index, timeout, min(model.first_token_timeout_s or timeout, timeout))

    def cancel_open(self, why: str) -> None:
        """Record every attempt still in flight as cancelled (a hedge's loser, or an aborted call). A stream
        its caller left after text reached it is logged with the tokens of that text and of the prompt,
        estimated (``CHARS_PER_TOKEN``): the model generated at least that much, and is billed for it."""
        for index, (model, started) in list(self.open.items()):
            reply = Reply(Outcome.CANCELLED, time.perf_counter() - started, error=why[:200])
            if self.shown:
                reply.tokens_in, reply.tokens_out = self.chars // CHARS_PER_TOKEN, self.shown // CHARS_PER_TOKEN
                reply.tokens_estimated = True
            self.record(model, reply, index)

    def abort(self, exc: BaseException) -> None:
        """The call was cancelled or a backend raised: close its open attempts and log what happened."""
        self.cancel_open(f"{type(exc).__name__}: {exc}")
        self._end("ok" if self.answer is not None else "failed")

    def take(self, item: StreamItem) -> TypeGuard[str]:
        """Note one item the attempt in progress sent: True for a text delta to show the caller.

        Once text reached the caller the call ends with this attempt whatever happens, since
        answers from two models must never be spliced; the final item is the attempt's reply.
        """
        if isinstance(item, str):
            self.final = True
            self.shown += len(item)
            return True
        self._taken = item
        return False

    def record_taken(self, model: ModelConfig, index: int) -> None:
        """Record the attempt in progress with the reply it sent last (a malformed one if it sent none)."""
        reply, self._taken = self._taken or _NO_RESULT, None
        self.record(model, reply, index)

    def record(self, model: ModelConfig, reply: Reply, index: int) -> None:
        """Keep one attempt's reply, validate it, teach the policy and the breaker at once."""
        lane = self.lane
        if reply.ok and lane.validators and (reply.text or not reply.tool_calls):  # tool calls alone: no text to check
            problem = check_answer(lane.validators, reply.text or "")
            if problem:
                reply = replace(reply, outcome=Outcome.INVALID, error=problem)
        cost = model.cost(reply.tokens_in, reply.tokens_out)
        error = lane.scrub(reply.error) if reply.error else ""
        outcome = reply.outcome
        tokens = (reply.tokens_in, reply.tokens_out)
        self.attempts.append(
            Attempt(model.name, str(outcome), reply.latency_s, reply.status, *tokens, cost, error, reply.ttft_s)
        )
        self.indices.append(index)
        del self.open[index]
        learn = teaches(outcome, reply.status, reply.misconfigured, lane.rejecting)
        cut = outcome is Outcome.TIMEOUT and self.cut.get(index, False)
        self.deadline_hit = self.deadline_hit or cut  # it timed out at the call's deadline (a timer may fire early)
        # a timeout the deadline cut short says little about the model's health
        lane.health.release(model.name, reply, learn=learn and not cut, probe=index in self.probes)
        self.probes.discard(index)
        if learn:
            ttft = reply.ttft_s if lane.route.latency_measure == "ttft" else None
            with lane.lock:
                lane.policy.update(model.name, reply.ok, reply.latency_s if ttft is None else ttft, cost)
        if reply.ok and self.answer is None:
            self.answer, self.answer_model = reply, model.name
        elif lane.rejects(reply):
            self.rejected = True
        elif outcome is Outcome.CONTEXT_EXCEEDED:
            lane.health.exceeded_context(model.name, self.band)
            self._prefer_larger(model)
        elif outcome is Outcome.RATE_LIMITED and reply.retry_after_s is not None and model.name not in self._retried:
            if reply.retry_after_s + 0.05 < self.remaining():
                self._retried.add(model.name)
                self._retry = (model.name, reply.retry_after_s)
        elif outcome in TRANSIENT and not cut and model.name not in self.queue:
            self.queue.append(model.name)

    def _prefer_larger(self, model: ModelConfig) -> None:
        """After a context-length error, the models left with a larger declared window go first."""
        if model.context_window is None:
            return
        models = self.lane.models
        larger = [n for n in self.queue if (models[n].context_window or 0) > model.context_window]
        self.queue = larger + [n for n in self.queue if n not in larger]

    def _end(self, outcome: str) -> None:
        """Hand the finished call's record to the lane (the log, feedback and budget book-keeping)."""
        self.latency_s = time.perf_counter() - self.start
        lane, answer = self.lane, self.answer
        self.lane.end(
            CallRecord(
                self.call_id,
                self.ts,
                lane.task_type,
                lane.policy.name,
                self.ranking.propensity,
                self.order,
                self.answer_model,
                outcome,
                self.latency_s,
                self.attempts,
                [self.starts[i] for i in self.indices],
                lane.router_id,
                self.prompt,
                answer.text if self.prompt is not None and answer is not None else None,  # prompt: log_prompts
                self.skipped or None,
                self.features,
                lane.space if self.features is not None else None,
            )
        )

    def out_of_time(self) -> bool:
        """Whether the call used up its deadline: none of it left, or an attempt timed out at it."""
        return self.deadline_hit or self.remaining() <= 0

    def finish(self) -> Reply:
        """Log the call and return the answering reply, or raise what went wrong."""
        answer = self.answer
        self._end("ok" if answer is not None else ("rejected" if self.rejected else "failed"))
        if answer is not None:
            return answer
        if self.rejected:
            raise RequestRejected(self.call_id, self.attempts)
        if self.attempts and self.attempts[-1].outcome == Outcome.STREAM_BROKEN:
            raise StreamBroken(self.call_id, self.attempts)
        reason = "deadline exceeded" if self.out_of_time() else ("every model left was busy" if self.busy else "")
        raise AllModelsFailed(self.call_id, self.task_type, self.attempts, reason)

    def fields(self) -> dict[str, Any]:
        """The result fields every answered call has (after :meth:`finish`)."""
        return {
            "call_id": self.call_id,
            "task_type": self.task_type,
            "model": self.answer_model,
            "attempts": self.attempts,
            "ranking": self.order,
            "propensity": self.ranking.propensity,
            "latency_s": self.latency_s,
        }


#: one attempt at a model, given its bounds: the reply, or a stream's text deltas then its reply
Send = Callable[[ModelConfig, Started], Iterable[StreamItem]]
ASend = Callable[[ModelConfig, Started], AsyncIterator[StreamItem]]


def run(call: Call, send: Send, done: Callable[[Reply], T]) -> Iterator[str | T]:
    """Try the call's models in order on this thread; yield what they stream, then ``done(answer)``.

    Fallback happens only while nothing was shown; a plain call's ``send`` yields its reply alone.
    """
    call.lane.begin()
    try:
        while (step := call.next()) is not None:
            call.pause(step)
            if step.model is None or (started := call.begin(step.model)) is None:
                continue
            for item in send(step.model, started):
                if call.take(item):
                    yield item
            call.record_taken(step.model, started.index)
    except BaseException as exc:  # includes GeneratorExit: the caller stopped reading
        call.abort(exc)
        raise
    yield done(call.finish())


async def arun(call: Call, send: ASend, done: Callable[[Reply], T], hedge: bool = False) -> AsyncIterator[str | T]:
    """Async twin of :func:`run`; with ``hedge`` (plain calls), on routes with ``hedge_quantile`` it
    also asks the next model when the primary is slow."""
    call.lane.begin()
    try:
        while (step := call.next()) is not None:
            await call.apause(step)
            if step.model is None:
                continue
            delay = call.hedge_delay(step) if hedge else None
            if delay is not None:
                await _hedge(call, send, step, delay)
                continue
            if (started := call.begin(step.model)) is None:
                continue
            async for item in send(step.model, started):
                if call.take(item):
                    yield item
            call.record_taken(step.model, started.index)
    except BaseException as exc:  # the caller cancelled us or stopped reading, or a backend raised
        call.abort(exc)
        raise
    yield done(call.finish())


def last(items: Iterable[str | T]) -> T:
    """What a plain call's driver yields, ``done(answer)``, once it has run to its end."""
    result: Any = None
    for result in items:  # noqa: B007 (the last item is the result)
        pass
    return cast(T, result)


async def alast(items: AsyncIterator[str | T]) -> T:
    """Async twin of :func:`last`."""
    result: Any = None
    async for result in items:  # noqa: B007
        pass
    return cast(T, result)


async def _reply(attempt: AsyncIterator[StreamItem]) -> Reply:
    """A plain attempt's reply (a hedged attempt streams nothing to the caller)."""
    reply = None
    async for item in attempt:
        if isinstance(item, Reply):
            reply = item
    return reply or _NO_RESULT


async def _hedge(call: Call, send: ASend, step: Step, delay: float) -> None:
    """Start the primary; if it has not answered after ``delay``, start the next model too.

    The first success wins and the other attempt is cancelled and logged as ``cancelled``; if the
    first to finish fails, the other keeps running, and the call goes on as usual afterwards.
    """
    running: dict[asyncio.Future[Reply], tuple[ModelConfig, int]] = {}

    def launch(model: ModelConfig) -> None:
        if (started := call.begin(model)) is not None:
            running[asyncio.ensure_future(_reply(send(model, started)))] = (model, started.index)

    assert step.model is not None
    launch(step.model)
    if not running:  # the deadline passed before the attempt could start
        return
    try:
        done, _ = await asyncio.wait(running, timeout=delay)
        if not done and (second := call.next()) is not None and second.model is not None:
            launch(second.model)  # a second step never waits: retries and cooldown waits come before a first attempt
        while running:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                model, index = running.pop(task)
                call.record(model, task.result(), index)
            if call.answer is not None or call.rejected:
                break
    finally:  # the loser of the race, or everything if we were cancelled: abort() logs them
        for task in running:
            task.cancel()
    call.cancel_open("lost the hedge race")
