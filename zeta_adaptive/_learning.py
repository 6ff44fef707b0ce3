"""What a router has learned and how: per-route policies behind their locks, model health, budgets,
the warm start from the log, learning other processes' rows from the shared log, and feedback.

The router composes one :class:`Learner`; the call engine reads its policies and health through
each route's :class:`.engine.Lane`. Which attempts teach is :mod:`.lessons`' one rule, here in
SQL (warm start of undiscounted policies) and over rows read column by column (discounted ones,
other processes' rows), without pandas, whose import would add 0.4 s to every start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy import and_, or_

from ._budget import BudgetPacer
from ._config import Config
from ._contextual import ContextualPolicy, PendingContexts, logged_features, warm_start_contexts
from ._exceptions import StoreError
from ._feedback import RatedCall
from ._health import Health
from ._lessons import teaches_rows, teaches_sql
from ._policies import Policy
from ._records import CallRecord
from ._registry import make_policy
from ._store import Columns, Store, attempt_rollups
from ._store import attempts as attempts_table
from ._store import feedback as feedback_table

__all__ = ["Learner"]

log = logging.getLogger("zeta_adaptive.learning")  # the name before the module became private


class Learner:
    """The policies, health and budgets of one router process, and everything that teaches them.

    ``router_id`` marks this process's rows in the log. The warm start sums everyone else's rows
    stamped more than an overlap (a deadline plus ``SYNC_SLACK_S``) before it began, all written
    by then; :meth:`learn_from_shared_log` reads the later ones row by row, deduplicated by key,
    including those still being written when the warm start ran: no row is learned twice or missed.
    """

    #: beyond a call's deadline, how far back each learn_from_shared_log() looks again for rows others wrote late
    SYNC_SLACK_S = 5.0
    #: the bound on each read of a warm start retried in the background (a long log's sums may
    #: take longer than the store's timeout, which only bounds what Router() waits for)
    LATER_TIMEOUT_S = 600.0
    LEARNED_ATTEMPT_COLUMNS = ("task_type", "model", "outcome", "status", "error", "latency_s", "cost")
    LEARNED_FEEDBACK_COLUMNS = ("task_type", "model", "accuracy")

    def __init__(self, config: Config, store: Store, router_id: str, warm_start: bool = True) -> None:
        self.config = config
        self.store = store
        self.router_id = router_id
        self.policies: dict[str, Policy] = {}
        for i, (task, route) in enumerate(config.routes.items()):
            options = dict(route.options)
            if "seed" not in options and config.seed is not None:
                options["seed"] = config.seed + i
            self.policies[task] = make_policy(route.policy, route.models, config.objective, **options)
        self.locks = {task: threading.Lock() for task in self.policies}
        self.pacers = {
            task: BudgetPacer(route.budget_per_call, config.objective)
            for task, route in config.routes.items()
            if route.budget_per_call is not None
        }
        self.contexts = PendingContexts(config.feedback_window, config.feedback_window_s)  # features awaiting feedback
        self.health = Health(config.models, config.breaker, load=config.load)
        self._started = time.time()  # our own rows are stamped from here on
        self._synced_until = self._started  # rows of other routers from here on are learned from the shared log
        self._warm_until = 0.0  # rows stamped before this were learned by the warm start: never read again
        self._seen: dict[tuple[str, str, int], float] = {}
        self._sharing = threading.Lock()  # one reader of the shared log at a time (refresher, warm start, caller)
        self._stop = threading.Event()
        self.warm = not warm_start  # whether the policies hold what the log knows
        if warm_start:
            try:
                self._warm_start()
            except StoreError as exc:  # start anyway: route on what we learn live, read the log when it answers
                log.warning("warm start postponed, %s", exc)
                threading.Thread(target=self._warm_start_later, name="zeta-warm-start", daemon=True).start()
        self._refresher: threading.Thread | None = None
        if config.refresh_s is not None:
            self._refresher = threading.Thread(target=self._refresh_loop, name="zeta-refresh", daemon=True)
            self._refresher.start()

    # -- live -----------------------------------------------------------------------------------
    def observe(self, record: CallRecord) -> None:
        """Learn from a finished call what attempts do not teach: its cost (budget), its features (awaiting feedback)."""
        policy = self.policies[record.task_type]
        if record.features is not None and record.model is not None and isinstance(policy, ContextualPolicy):
            self.contexts.put(record.call_id, record.features)
        pacer = self.pacers.get(record.task_type)
        if pacer is not None:
            with self.locks[record.task_type]:
                pacer.observe(sum(a.cost for a in record.attempts), policy)

    def learn_feedback(self, call: RatedCall, value: float) -> None:
        """Teach the policy that chose a rated call's model its accuracy (a contextual one with the call's features)."""
        policy = self.policies.get(call.task_type)
        if policy is None or call.model not in policy.index:
            return
        if isinstance(policy, ContextualPolicy):
            features = self.contexts.pop(call.call_id)
            if features is None:  # evicted, or another process's call: the log has its features
                try:
                    features = self.store.call(logged_features, self.store, call.call_id, policy.featurizer.space)
                except StoreError:
                    features = None  # the store is away: only the bias weight learns
            with self.locks[call.task_type]:
                policy.feedback(call.model, value, features)
        else:
            with self.locks[call.task_type]:
                policy.feedback(call.model, value)

    # -- from the log ---------------------------------------------------------------------------
    def _warm_start(self, timeout: float | None = None) -> None:
        """Rebuild every policy's statistics from the logged history of its task type, each read
        bounded by ``timeout`` (default: the store's).

        An undiscounted policy's statistics are sums: it reads them per model from the log's hourly
        rollups (whole hours before the cut and before this router began, so none of its own rows)
        and scans only the attempts and ratings after them; a discounted one reads only its last ``horizon()``
        events, older ones weighing < 1e-12.
        """
        a, f = attempts_table.c, feedback_table.c
        # rows stamped before the cut are all written (their calls ended a slack ago): summed here;
        # later ones, some maybe still in flight, are learn_from_shared_log()'s, row by row
        cut = time.time() - self._overlap()
        learnable = and_(
            teaches_sql(attempts_table, self.config.rejecting_statuses),
            or_(a.router_id.is_(None), a.router_id != self.router_id),
            a.ts < cut,
        )
        others = and_(or_(f.router_id.is_(None), f.router_id != self.router_id), f.ts < cut)  # our own: learned live
        # the rollups' whole hours end before the cut and before this router began (none of its rows)
        until = min(cut, self._started)
        rolled = (until, teaches_sql(attempt_rollups, self.config.rejecting_statuses))

        def read(fn: Callable[..., Any], *args: Any) -> Any:
            return self.store.call(fn, *args, timeout=timeout)

        found = {}  # every read first: a store error part way leaves the policies untouched for the retry
        for task, policy in self.policies.items():
            horizon = policy.horizon()
            if horizon is None:  # sums: one aggregate row per model
                found[task] = (
                    True,
                    read(self.store.attempt_sums, task, learnable, rolled),
                    read(self.store.feedback_sums, task, others, (until, None)),
                )
            else:  # discounted: the last events, in time order
                found[task] = (
                    False,
                    read(self.store.tail, "attempts", task, horizon, self.LEARNED_ATTEMPT_COLUMNS, learnable),
                    read(self.store.tail, "feedback", task, horizon, self.LEARNED_FEEDBACK_COLUMNS, others),
                )
        for task, (summed, tried, rated) in found.items():
            policy = self.policies[task]
            if summed:
                with self.locks[task]:
                    for sums in (tried, rated):
                        policy.add_sums(sums["model"], {k: v for k, v in sums.items() if k != "model"})
            else:
                self._learn(tried, rated)
            if isinstance(policy, ContextualPolicy):
                with self.locks[task]:
                    warm_start_contexts(self.store, task, policy)
        with self._sharing:
            self._warm_until = cut
            self._synced_until = cut + self._overlap()
            self._seen.clear()
        self.warm = True
        try:
            self.learn_from_shared_log()
        except StoreError as exc:  # the sums are in: the refresher (or the next call) reads the rest
            log.warning("reading the shared log after the warm start failed: %s", exc)

    def _warm_start_later(self) -> None:
        """Retry the warm start until the store answers or the learner stops (started during an outage,
        or when the log was too long to sum within the store's timeout: then each read may take longer)."""
        while not self._stop.wait(1.0):
            try:
                self._warm_start(timeout=self.LATER_TIMEOUT_S)
                return
            except StoreError:
                continue

    def _learn(
        self, tried: Columns, rated: Columns, new_tried: np.ndarray | bool = True, new_rated: np.ndarray | bool = True
    ) -> None:
        """Teach each policy a time-ordered slice of the log, the rows the masks keep (vectorised, under its lock)."""
        a = {k: np.array(v, dtype=object) for k, v in tried.items()}
        f = {k: np.array(v, dtype=object) for k, v in rated.items()}
        teach = np.array(teaches_rows(tried, self.config.rejecting_statuses), dtype=bool) & new_tried
        for task, policy in self.policies.items():
            mine = teach & (a["task_type"] == task)
            judged = new_rated & (f["task_type"] == task)
            if mine.any() or judged.any():
                with self.locks[task]:
                    policy.fit(
                        a["model"][mine].tolist(),
                        a["outcome"][mine] == "ok",
                        a["latency_s"][mine],
                        a["cost"][mine],
                        f["model"][judged].tolist(),
                        f["accuracy"][judged],
                    )

    def learn_from_shared_log(self) -> int:
        """Learn what other router processes logged since the last time; returns the rows learned.

        Run every ``refresh_s`` seconds by a background thread when the config sets it, so that all
        processes sharing one database converge to the same preferences. An attempt is stamped
        with its start but written when its call ends, in a batch; so rows are read again from a
        deadline plus ``SYNC_SLACK_S`` back and deduplicated by key. A row that reaches the
        database later than that (after an outage) is learned only at the next warm start. Nothing
        is read before the warm start is done: it sums the older rows, and would count them twice.
        """
        if not self.warm:
            return 0
        with self._sharing:
            return self._learn_shared()

    def _overlap(self) -> float:
        """How far back each read of the shared log looks again for rows others wrote late."""
        return self.config.deadline_s + self.SYNC_SLACK_S

    def _learn_shared(self) -> int:
        overlap = self._overlap()
        since = max(self._synced_until - overlap, self._warm_until)
        tasks = list(self.policies)
        read = self.store.columns
        tried = self.store.call(lambda: read("attempts", tasks, since=since, exclude_router=self.router_id))
        rated = self.store.call(lambda: read("feedback", tasks, since=since, exclude_router=self.router_id))
        tried_keys = [("a", call_id, idx) for call_id, idx in zip(tried["call_id"], tried["idx"])]
        rated_keys = [("f", call_id, 0) for call_id in rated["call_id"]]
        new_tried = np.array([k not in self._seen for k in tried_keys], dtype=bool)
        new_rated = np.array([k not in self._seen for k in rated_keys], dtype=bool)
        self._learn(tried, rated, new_tried, new_rated)
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
                self.learn_from_shared_log()
            except StoreError as exc:  # the store is away: the journal has our rows, try again later
                log.warning("refresh failed: %s", exc)

    def close(self) -> None:
        """Stop the background threads (the refresher is joined)."""
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join()
