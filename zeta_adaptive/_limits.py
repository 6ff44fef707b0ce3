"""Adaptive concurrency: each model's in-flight limit learned from its latency, as in Netflix's
concurrency-limits and Envoy's adaptive concurrency filter (a gradient controller).

A model with ``N`` request slots answers in its no-load latency while at most ``N`` requests are
out; beyond that the extra requests queue on the server and the latency grows with them. The
controller watches each window of successful replies (``window`` of them, and at least as many as
the limit, so a window sees a whole round of requests) and compares its upper quartile with the
model's no-load latency, the lowest window median of the last ``baseline_s`` seconds. The upper
quartile, not the median, because a limit one above the capacity makes only a part of the requests
wait: their wait shows in the window's slower quarter long before it moves the median.

* upper quartile within ``tolerance`` times the no-load latency, and the window actually used the
  limit (at least ``floor(limit)`` requests were out at once), and its last replies are not slow
  (see ``fast_after``): the limit grows, doubling until the first shrink (a slow start, as in TCP,
  so a large server is found in a few windows), then by one;
* above it: queueing inflated the latency, the limit shrinks multiplicatively by the gradient
  ``tolerance * no_load / upper quartile`` (at most halving it per window);
* a timeout in the window (a drop) halves it;
* ``fast_after`` replies in a row, each slower than ``fast_factor`` times the no-load latency, end
  the window at once and shrink the limit by ``no-load / their median latency`` (at most halving):
  a capacity that drops shows in the first replies queued behind it, and the calls sent while a
  whole window fills would all queue. One slow reply alone (a long answer, a pause) decides nothing.
  Such a short window's median counts towards the no-load latency like any other, so a model that
  became slower for good is recognised once ``baseline_s`` has passed. Requests still out count as
  such replies once they are that late (:meth:`AdaptiveLimit.overdue`), which shows it sooner still.

Answers of varying length make an LLM's latency spread at no load (lognormal sigma 0.3-1), and a
rule that took the slow half of such replies for queueing cut every limit to 1. So the controller
also learns the no-load **spread** (a robust standard deviation of log latency, 1.4826 MAD, smoothed
over windows) and measures in its units: a window holds enough replies for its median to be within
a third of ``tolerance``; and the spread beyond ``SPREAD_COVERED`` (what the default factors
already absorb) raises the no-load latency by the bias of a minimum (the lowest of K noisy window
medians lies about sqrt(2 ln K) standard errors low) and moves the upper quartile and the
slow-reply thresholds to the same quantiles of the no-load distribution (the 95th percentile for
replies in a row, the 99th for requests out, whose oldest are the long ones).

Replies to requests sent before the limit last shrank are ignored: they measure a larger limit.
Those sent before it grew still count: queueing under a smaller limit tells all the more, and a
capacity that drops just as the limit grows must not go unseen until the next window.

The limit stays within ``[min_limit, min(max_limit, cap)]``, ``cap`` being the model's
``max_in_flight``. The module does no I/O and reads time only through the injected clock, so a
sequence of samples always gives the same limits.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ._exceptions import ConfigError

__all__ = ["LoadConfig", "AdaptiveLimit"]

#: the most a single window may shrink the limit by (a gradient below this is cut to it)
MIN_GRADIENT = 0.5
#: a spread of log latency (a robust standard deviation) the default factors absorb: the thresholds widen beyond it
SPREAD_COVERED = 0.1


@dataclass(frozen=True)
class LoadConfig:
    """Bounds and speed of every model's adaptive limit (the ``[load]`` table of the config)."""

    initial: int = 1  # the limit before any latency is known: low, so the first windows see no-load latency
    min_limit: int = 1
    max_limit: int = 256
    window: int = 8  # successful replies per decision (and at least as many as the limit)
    tolerance: float = 1.5  # a median latency up to this many times the no-load latency is not queueing
    baseline_s: float = 60.0  # the no-load latency is the lowest window median of this many seconds
    fast_after: int = 3  # this many replies in a row slower than fast_factor x no-load shrink the limit at once
    fast_factor: float = 1.3

    def __post_init__(self) -> None:
        """Reject bounds that cannot hold together, naming the key (:class:`ConfigError`)."""
        if not 1 <= self.min_limit <= self.initial <= self.max_limit:
            raise ConfigError(
                "load",
                f"needs 1 <= min_limit <= initial <= max_limit, got {self.min_limit}, {self.initial}, {self.max_limit}",
            )
        if self.window < 1:
            raise ConfigError("load.window", f"must be >= 1, got {self.window!r}")
        if not self.tolerance > 1.0:
            raise ConfigError("load.tolerance", f"must be > 1, got {self.tolerance!r}")
        if not self.baseline_s > 0.0:
            raise ConfigError("load.baseline_s", f"must be > 0, got {self.baseline_s!r}")
        if self.fast_after < 1:
            raise ConfigError("load.fast_after", f"must be >= 1, got {self.fast_after!r}")
        if not self.fast_factor > 1.0:
            raise ConfigError("load.fast_factor", f"must be > 1, got {self.fast_factor!r}")


class AdaptiveLimit:
    """One model's learned concurrency limit (not thread-safe on its own: :class:`Health` locks)."""

    def __init__(self, config: LoadConfig, cap: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.cap = min(config.max_limit, cap) if cap is not None else config.max_limit
        self.clock = clock
        self.value = float(max(min(config.initial, self.cap), config.min_limit))
        self._window: list[float] = []
        self._busiest = 0  # most requests out at once since the last decision
        self._dropped = False
        self._slow: list[float] = []  # the latest replies, in a row, slower than fast_factor x no-load
        self._slow_start = True
        self._changed_at = -math.inf  # replies to requests sent before the last shrink tell of the larger limit
        # (time, median) of recent windows that may still be the lowest: each is lower than every
        # older one kept (a sliding-window minimum, so a decision costs O(1) however many windows fit)
        self._medians: deque[tuple[float, float]] = deque()
        self._decided: deque[float] = deque()  # when each window of the last baseline_s was decided
        self.no_load_s: float | None = None
        self._window_n = config.window  # replies per decision for the spread learned (see _window_for_spread)
        self.spread = 0.0  # the no-load latency's spread: a robust standard deviation of log latency
        # a reply slower than this, or a request out longer than that, is queueing (inf until the
        # no-load latency is known); both change only when a window is decided (see _slow_s)
        self._slow_reply_s = self._overdue_s = math.inf

    def _slow_s(self, z: float) -> float:
        """Replies slower than this are queueing (``no_load_s`` is known): ``fast_factor`` times a
        high quantile of the no-load latency (``z`` its normal score), so a model whose answers vary
        in length is not taken for a queueing one."""
        assert self.no_load_s is not None
        return self.config.fast_factor * self.no_load_s * math.exp(z * self._excess())

    def _excess(self) -> float:
        """The no-load spread beyond what ``tolerance`` and ``fast_factor`` already absorb."""
        return max(0.0, self.spread - SPREAD_COVERED)

    def _window_for_spread(self) -> int:
        """Replies per decision: ``window``, and enough that the window's median
        of a spread latency is within a third of ``tolerance`` (its standard error is 1.25
        spread / sqrt(n) in log latency)."""
        c = self.config
        return max(c.window, math.ceil((3.0 * self.spread / math.log(c.tolerance)) ** 2))

    @property
    def limit(self) -> int:
        """Requests that may be out at once now."""
        return max(self.config.min_limit, min(math.floor(self.value), self.cap))

    def started(self, in_flight: int) -> None:
        """Note a request sent, with the requests out (itself included): whether the limit was reached."""
        self._busiest = max(self._busiest, in_flight)

    def sample(self, latency_s: float) -> None:
        """Learn one successful reply's latency."""
        if self.clock() - latency_s < self._changed_at:
            return
        self._window.append(latency_s)
        c = self.config
        if latency_s > self._slow_reply_s:
            self._slow.append(latency_s)
            if len(self._slow) >= c.fast_after:
                self._decide()
                return
        else:
            self._slow.clear()
        if len(self._window) >= max(self._window_n, self.limit):  # and at least the limit
            self._decide()

    def overdue(self, sent: Iterable[float]) -> None:
        """Learn from the requests still out, by send time (clock), oldest first: ``fast_after`` of them
        sent since the limit last shrank and out longer than ``fast_factor`` times the no-load
        latency are queueing as surely as slow replies, and show it before any of them answers."""
        if self.no_load_s is None:
            return
        c = self.config
        now = self.clock()
        late = now - self._overdue_s
        ages: list[float] = []
        for at in sent:
            if at > late:
                return
            if at >= self._changed_at:
                ages.append(now - at)
                if len(ages) >= c.fast_after:
                    self._window, self._busiest, self._slow = [], 0, []  # the replies so far measured a larger limit
                    self._cut(ages)
                    return

    def drop(self) -> None:
        """Learn a timeout: the model could not answer in time, a sign of overload."""
        self._dropped = True
        self._decide()

    def expected_latency(self, in_flight: int) -> float | None:
        """A request's expected latency if sent now with ``in_flight`` others out (None before the
        first window): the no-load latency, growing linearly to ``tolerance`` times it at the limit,
        as far as the controller lets queueing go, and on at that rate beyond it."""
        if self.no_load_s is None:
            return None
        return self.no_load_s * (1.0 + (self.config.tolerance - 1.0) * in_flight / self.limit)

    def _decide(self) -> None:
        c = self.config
        now = self.clock()
        window, busiest, dropped, slow = self._window, self._busiest, self._dropped, self._slow
        self._window, self._busiest, self._dropped, self._slow = [], 0, False, []
        if dropped:
            self._set(self.value * MIN_GRADIENT)
            return
        logs = sorted(math.log(max(x, 1e-9)) for x in window)
        center = _median(logs)
        spread = 1.4826 * _median(sorted(abs(x - center) for x in logs))  # a robust standard deviation
        self.spread = spread if self.no_load_s is None else 0.75 * self.spread + 0.25 * spread
        self._window_n = self._window_for_spread()
        median = math.exp(center)
        medians, decided = self._medians, self._decided
        while medians and medians[0][0] < now - c.baseline_s:
            medians.popleft()
        while medians and medians[-1][1] >= median:  # never the lowest again: this one is lower and newer
            medians.pop()
        medians.append((now, median))
        while decided and decided[0] < now - c.baseline_s:
            decided.popleft()
        decided.append(now)
        # the lowest of K noisy window medians lies about sqrt(2 ln K) standard errors below their centre
        bias = math.sqrt(2.0 * math.log(len(decided))) * 1.2533 * self._excess() / math.sqrt(len(logs))
        self.no_load_s = medians[0][1] * math.exp(bias)
        self._slow_reply_s = self._slow_s(1.6449)  # the 95th percentile: replies in a row
        self._overdue_s = self._slow_s(2.3263)  # the 99th: the oldest of many requests out are the long ones
        if len(slow) >= c.fast_after:  # queueing shown by replies in a row: no need to wait for the whole window
            self._cut(slow)
            return
        # the upper quartile (a queue of one shows in a quarter) against the no-load latency's own
        upper = math.exp(logs[(3 * len(logs)) // 4] - 0.6745 * self._excess())
        if upper > c.tolerance * self.no_load_s:
            self._set(self.value * max(MIN_GRADIENT, c.tolerance * self.no_load_s / upper))
            return
        if busiest >= self.limit and not slow:  # only a limit reached, and no queue forming at the end, holds
            self._set(self.value * 2.0 if self._slow_start else self.value + 1.0)

    def _cut(self, slow: list[float]) -> None:
        """Shrink by the slowdown of requests that queued (at most halving): the share of the limit
        the server still serves at once."""
        assert self.no_load_s is not None
        gradient = self.no_load_s / statistics.median(slow)
        if gradient < 1.0:
            self._set(self.value * max(MIN_GRADIENT, gradient))

    def _set(self, value: float) -> None:
        if value < self.value:
            self._slow_start = False
        before = self.limit
        self.value = min(max(value, float(self.config.min_limit)), float(self.cap))
        if self.limit < before:
            self._changed_at = self.clock()

    def snapshot(self) -> dict[str, float | int | None]:
        """The limit and what it is based on, for preferences() and logs."""
        return {"limit": self.limit, "no_load_s": self.no_load_s}


def _median(ordered: list[float]) -> float:
    """The median of a sorted non-empty list, as ``statistics.median`` computes it (which sorts again)."""
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
