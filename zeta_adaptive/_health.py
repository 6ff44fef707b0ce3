"""Model health: per-model circuit breakers (cooldowns), in-flight limits and learned latency quantiles.

A breaker opens after ``consecutive_failures`` failures in a row, or when the failure rate over
the last ``window`` attempts reaches ``failure_rate`` with at least ``min_calls`` of them. While
open the model is skipped; when the cooldown ends it is half-open. A model whose breaker is not
closed admits one attempt at a time, its probe: :meth:`Health.acquire` checks and claims in one
step under the lock, so however many calls (threads or tasks) find it at once, one gets through and
the others move on or wait for :meth:`Health.wait_release`. The probe's success closes the breaker,
its failure reopens it with twice the previous cooldown (capped at ``max_cooldown_s``). An HTTP
429's ``Retry-After`` sets the cooldown to what the backend asked. Which attempts count is the caller's
answer to :func:`.lessons.teaches` (cancelled attempts, context-length errors and rejected requests do
not), and a timeout the call's deadline cut short does not count either.

In-flight limits are claimed by the same :meth:`Health.acquire`: a model at ``max_in_flight`` is
busy, which is the router's own saturation and never a failure of the model. On routes with
``load = "adaptive"`` a model is also busy at its learned concurrency limit (:mod:`.limits`), which
every successful reply and every timeout of the model teaches. Health also remembers
the prompt-length bands in which a model answered ``context_exceeded``.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._backends import Outcome, Reply
from ._config import BreakerConfig, ModelConfig
from ._limits import AdaptiveLimit, LoadConfig

__all__ = ["Breaker", "Health", "CLOSED", "OPEN", "HALF_OPEN"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class Breaker:
    """The circuit breaker of one model (not thread-safe on its own: :class:`Health` locks)."""

    config: BreakerConfig
    state: str = CLOSED
    open_until: float = 0.0
    cooldown_s: float = 0.0
    consecutive: int = 0
    probing: bool = False  # a probe is out (set and cleared by Health, which knows which attempt it is)
    opened: int = 0  # how many times it opened

    def __post_init__(self) -> None:
        self.recent: deque[bool] = deque(maxlen=self.config.window)

    def available(self, now: float) -> bool:
        """Whether a call may try this model now (a half-open breaker only while no probe is out)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and now >= self.open_until:
            self.state = HALF_OPEN
        return self.state == HALF_OPEN and not self.probing

    def record(self, ok: bool, now: float, retry_after_s: float | None = None) -> None:
        """Learn one attempt's outcome and move between states."""
        self.recent.append(ok)
        if ok:
            self.consecutive = 0
            if self.state != CLOSED:
                self.state, self.cooldown_s = CLOSED, 0.0
                self.recent.clear()
            return
        self.consecutive += 1
        c = self.config
        failures = self.recent.count(False)
        tripped = (
            self.consecutive >= c.consecutive_failures
            or (len(self.recent) >= c.min_calls and failures / len(self.recent) >= c.failure_rate)
            or retry_after_s is not None
        )
        if self.state == CLOSED and not tripped:
            return
        if retry_after_s is not None:
            cooldown = min(max(retry_after_s, 0.0), c.max_cooldown_s)
        elif self.state == CLOSED:
            cooldown = c.cooldown_s
        else:  # a failure while cooling down, or a failed probe, extends the cooldown
            cooldown = min(max(self.cooldown_s, c.cooldown_s) * 2.0, c.max_cooldown_s)
        if self.state == CLOSED:
            self.opened += 1
        self.state, self.cooldown_s, self.open_until = OPEN, cooldown, now + cooldown


class Health:
    """Breakers, in-flight counts and latency windows of every model, behind one lock."""

    def __init__(
        self,
        models: Mapping[str, ModelConfig],
        config: BreakerConfig,
        clock: Callable[[], float] = time.monotonic,
        load: LoadConfig | None = None,
    ) -> None:
        self.models = dict(models)
        self.config = config
        self.clock = clock
        self.breakers = {name: Breaker(config) for name in models}
        self.limits = {name: AdaptiveLimit(load or LoadConfig(), m.max_in_flight, clock) for name, m in models.items()}
        self.in_flight = dict.fromkeys(models, 0)
        # send times of the attempts out, oldest first (one leaves per attempt ending: the oldest, as
        # a server answers in turn; out of turn, the ages left read younger, never older, than they are)
        self._sent: dict[str, deque[float]] = {name: deque() for name in models}
        self.latencies: dict[str, deque[float]] = {name: deque(maxlen=config.latency_window) for name in models}
        self.too_long: dict[str, int] = {}  # model -> the lowest prompt band in which it exceeded its context
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self._generation = 0  # attempts ended so far: a waiter wakes when it moves
        self._sync_waiting = 0  # threads in wait_release (not fifo): only then does a release notify
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._queue: deque[Callable[[], None]] = deque()  # FIFO waiters (load-aware routes): one woken per release

    def _full(self, name: str, adaptive: bool) -> bool:
        """Whether the model is at its in-flight limit: ``max_in_flight``, or the learned one if ``adaptive``
        after it learned from the attempts out how late they are (lock held)."""
        if not adaptive:
            return self.in_flight[name] >= self.models[name].max_in_flight
        limit = self.limits[name]
        limit.overdue(self._sent[name])
        return self.in_flight[name] >= limit.limit

    def split(self, candidates: Sequence[str], adaptive: bool = False) -> tuple[list[str], dict[str, str]]:
        """The candidates a call may try now, and the others with why: ``cooling_down`` or ``saturated``."""
        now = self.clock()
        usable: list[str] = []
        skipped: dict[str, str] = {}
        with self._lock:
            for name in candidates:
                if not self.breakers[name].available(now):
                    skipped[name] = "cooling_down"
                elif self._full(name, adaptive):
                    skipped[name] = "saturated"
                else:
                    usable.append(name)
        return usable, skipped

    def expected_latencies(self, names: Sequence[str]) -> dict[str, float]:
        """Each model's expected latency at its current load, of those whose no-load latency is known
        (:meth:`.AdaptiveLimit.expected_latency`)."""
        out = {}
        with self._lock:
            for name in names:
                latency = self.limits[name].expected_latency(self.in_flight[name])
                if latency is not None:
                    out[name] = latency
        return out

    def reopens_in(self, names: Sequence[str]) -> float:
        """Seconds until the first of these models may be tried again (0 if one may now)."""
        now = self.clock()
        with self._lock:
            waits = [
                0.0 if self.breakers[n].available(now) else max(self.breakers[n].open_until - now, 0.0) for n in names
            ]
        return min(waits, default=0.0)

    @property
    def generation(self) -> int:
        """How many attempts have ended: read it before :meth:`acquire`, pass it to the wait."""
        with self._lock:
            return self._generation

    def acquire(self, name: str, adaptive: bool = False) -> bool | None:
        """Claim an attempt at a model, checking and claiming in one step.

        Returns None when the model is busy (at ``max_in_flight`` or, if ``adaptive``, at its learned
        limit; or its breaker is not closed and its probe is out), else whether this attempt is the
        probe (True) or an ordinary one (False).
        A breaker that is open or half-open admits one attempt at a time, even one tried before its
        cooldown ends (a model that is cooling down is still tried last, rather than never).
        """
        with self._lock:
            if self._full(name, adaptive):
                return None
            breaker = self.breakers[name]
            breaker.available(self.clock())  # an expired cooldown turns half-open
            probe = breaker.state != CLOSED
            if probe:
                if breaker.probing:
                    return None
                breaker.probing = True
            self.in_flight[name] += 1
            self._sent[name].append(self.clock())
            self.limits[name].started(self.in_flight[name])
            return probe

    def release(self, name: str, reply: Reply, learn: bool = True, probe: bool = False) -> None:
        """Note an attempt ending and, if ``learn``, learn its outcome (see :mod:`.lessons`)."""
        with self._lock:
            self.in_flight[name] -= 1
            self._sent[name].popleft()
            breaker = self.breakers[name]
            if probe:
                breaker.probing = False
            if learn:
                retry_after = reply.retry_after_s if reply.outcome is Outcome.RATE_LIMITED else None
                breaker.record(reply.ok, self.clock(), retry_after)
                if reply.ok:
                    self.latencies[name].append(reply.latency_s)
                    self.limits[name].sample(reply.latency_s)
                elif reply.outcome is Outcome.TIMEOUT:
                    self.limits[name].drop()
            self._generation += 1
            if self._sync_waiting:
                self._released.notify_all()
            waiters = self._async_waiters
            if waiters:
                self._async_waiters = []
            first = self._queue.popleft() if self._queue else None
        if first is not None:
            first()
        for loop, future in waiters:
            _wake_in(loop, future)

    def wait_release(self, since: int, timeout_s: float, fifo: bool = False, again: bool = False) -> None:
        """Block until an attempt has ended after ``generation`` was ``since``, or ``timeout_s`` passed.

        With ``fifo`` the waiter queues: each attempt that ends wakes only the longest waiting one,
        so a crowd of calls waiting for a slot is served in turn and not woken all at once; a waiter
        that waits ``again`` (its slot was taken before it could claim it) goes back to the front.
        """
        if not fifo:
            with self._released:
                self._sync_waiting += 1
                try:
                    self._released.wait_for(lambda: self._generation != since, max(timeout_s, 0.0))
                finally:
                    self._sync_waiting -= 1
            return
        woken = threading.Event()
        if self._enqueue(since, woken.set, again):
            woken.wait(max(timeout_s, 0.0))
            self._dequeue(woken.set)

    async def await_release(self, since: int, timeout_s: float, fifo: bool = False, again: bool = False) -> None:
        """Async twin of :meth:`wait_release`: the event loop keeps running while it waits."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        wake = functools.partial(_wake_in, loop, future)
        if fifo:
            if not self._enqueue(since, wake, again):
                return
        else:
            with self._lock:
                if self._generation != since:
                    return
                self._async_waiters.append((loop, future))
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await future
        except TimeoutError:
            pass
        finally:
            with self._lock:
                if (loop, future) in self._async_waiters:
                    self._async_waiters.remove((loop, future))
            self._dequeue(wake)

    def _enqueue(self, since: int, wake: Callable[[], None], front: bool) -> bool:
        """Join the FIFO waiters, unless an attempt ended already since ``since`` (then False: no need to wait)."""
        with self._lock:
            if self._generation != since:
                return False
            (self._queue.appendleft if front else self._queue.append)(wake)
            return True

    def _dequeue(self, wake: Callable[[], None]) -> None:
        """Leave the FIFO waiters (after a timeout; a woken waiter has left already)."""
        with self._lock:
            if wake in self._queue:
                self._queue.remove(wake)

    def exceeded_context(self, name: str, band: int) -> None:
        """Remember that a prompt of this length band was too long for the model."""
        with self._lock:
            self.too_long[name] = min(band, self.too_long.get(name, band))

    def fits(self, name: str, band: int) -> bool:
        """False when the model already exceeded its context on a prompt of this band or a shorter one."""
        with self._lock:
            return band < self.too_long.get(name, band + 1)

    def latency_quantile(self, name: str, q: float) -> float | None:
        """The q-quantile of recent successful latencies, or None with fewer than ``min_calls`` of them."""
        with self._lock:
            window = list(self.latencies[name])
        if len(window) < self.config.min_calls:
            return None
        return float(np.quantile(window, q))

    def snapshot(self, name: str) -> dict[str, Any]:
        """The model's breaker state and load, for preferences() and logs."""
        now = self.clock()
        with self._lock:
            b = self.breakers[name]
            b.available(now)  # let an expired cooldown show as half-open
            return {
                "breaker": b.state,
                "cooldown_left_s": max(b.open_until - now, 0.0) if b.state == OPEN else 0.0,
                "in_flight": self.in_flight[name],
                **self.limits[name].snapshot(),
            }


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _wake_in(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    """Wake an async waiter from any thread."""
    try:
        loop.call_soon_threadsafe(_wake, future)
    except RuntimeError:  # that event loop is closed: nobody waits there any more
        pass
