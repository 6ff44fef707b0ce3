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
  limit (at least ``floor(limit)`` requests were out at once): the limit grows, doubling until the
  first shrink (a slow start, as in TCP, so a large server is found in a few windows), then by one;
* above it: queueing inflated the latency, the limit shrinks multiplicatively by the gradient
  ``tolerance * no_load / upper quartile`` (at most halving it per window);
* a timeout in the window (a drop) halves it.

Replies to requests sent before the limit last changed are ignored: they measure the old limit.

The limit stays within ``[min_limit, min(max_limit, cap)]``, ``cap`` being the model's
``max_in_flight``. The module does no I/O and reads time only through the injected clock, so a
sequence of samples always gives the same limits.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ._exceptions import ConfigError

__all__ = ["LoadConfig", "AdaptiveLimit"]

#: the most a single window may shrink the limit by (a gradient below this is cut to it)
MIN_GRADIENT = 0.5


@dataclass(frozen=True)
class LoadConfig:
    """Bounds and speed of every model's adaptive limit (the ``[load]`` table of the config)."""

    initial: int = 1  # the limit before any latency is known: low, so the first windows see no-load latency
    min_limit: int = 1
    max_limit: int = 256
    window: int = 8  # successful replies per decision (and at least as many as the limit)
    tolerance: float = 1.5  # a median latency up to this many times the no-load latency is not queueing
    baseline_s: float = 60.0  # the no-load latency is the lowest window median of this many seconds

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
        self._slow_start = True
        self._changed_at = -math.inf  # replies to requests sent before the last change tell of the old limit
        # (time, median) of recent windows that may still be the lowest: each is lower than every
        # older one kept (a sliding-window minimum, so a decision costs O(1) however many windows fit)
        self._medians: deque[tuple[float, float]] = deque()
        self.no_load_s: float | None = None

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
        if len(self._window) >= max(self.config.window, self.limit):
            self._decide()

    def drop(self) -> None:
        """Learn a timeout: the model could not answer in time, a sign of overload."""
        self._dropped = True
        self._decide()

    def _decide(self) -> None:
        c = self.config
        now = self.clock()
        window, busiest, dropped = self._window, self._busiest, self._dropped
        self._window, self._busiest, self._dropped = [], 0, False
        if dropped:
            self._set(self.value * MIN_GRADIENT)
            return
        median = statistics.median(window)
        medians = self._medians
        while medians and medians[0][0] < now - c.baseline_s:
            medians.popleft()
        while medians and medians[-1][1] >= median:  # never the lowest again: this one is lower and newer
            medians.pop()
        medians.append((now, median))
        self.no_load_s = medians[0][1]
        upper = sorted(window)[(3 * len(window)) // 4]  # the upper quartile: a queue of one shows in a quarter
        if upper <= c.tolerance * self.no_load_s:
            if busiest >= self.limit:  # only a limit that was reached has shown it holds
                self._set(self.value * 2.0 if self._slow_start else self.value + 1.0)
        else:
            self._set(self.value * max(MIN_GRADIENT, c.tolerance * self.no_load_s / upper))

    def _set(self, value: float) -> None:
        if value < self.value:
            self._slow_start = False
        before = self.limit
        self.value = min(max(value, float(self.config.min_limit)), float(self.cap))
        if self.limit != before:
            self._changed_at = self.clock()

    def snapshot(self) -> dict[str, float | int | None]:
        """The limit and what it is based on, for preferences() and logs."""
        return {"limit": self.limit, "no_load_s": self.no_load_s}
