"""Fault injection on the call path: cooldowns, waits, 429 retries, hedging, saturation."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from in_process import fake_router

from zeta_adaptive import AllModelsFailed, Outcome, Reply, Router, Store
from zeta_adaptive._config import BreakerConfig, ModelConfig
from zeta_adaptive._health import CLOSED, HALF_OPEN, OPEN, Breaker, Health
from zeta_adaptive.simulate import Fleet, ModelSpec, Step

MSG = [{"role": "user", "content": "hi"}]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _fail(outcome=Outcome.SERVER_ERROR, retry_after=None) -> Reply:
    return Reply(outcome, 0.01, 500, retry_after_s=retry_after)


OK = Reply(Outcome.OK, 0.01, 200, text="x")


# -- the breaker on its own ------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_and_probes_once():
    cfg = BreakerConfig(consecutive_failures=3, cooldown_s=5.0, max_cooldown_s=20.0, min_calls=100)
    b = Breaker(cfg)
    for _ in range(2):
        b.record(False, 0.0)
    assert b.state == CLOSED and b.available(0.0)
    b.record(False, 0.0)
    assert b.state == OPEN and not b.available(4.9)
    assert b.available(5.0) and b.state == HALF_OPEN
    b.probing = True  # the probe is out: nobody else gets through
    assert not b.available(5.1)
    b.record(False, 5.2)  # a failed probe doubles the cooldown
    b.probing = False  # the probe is back (Health clears the flag as it releases the probe's attempt)
    assert b.state == OPEN and b.cooldown_s == 10.0 and not b.available(15.1) and b.available(15.2)
    b.record(False, 15.3)
    b.record(False, 15.3)
    assert b.cooldown_s == 20.0  # capped
    assert b.available(35.3)
    b.record(True, 35.4)
    assert b.state == CLOSED and b.available(35.4) and b.opened == 1


def test_breaker_opens_on_failure_rate_over_a_window():
    cfg = BreakerConfig(consecutive_failures=100, failure_rate=0.5, window=10, min_calls=10)
    b = Breaker(cfg)
    for i in range(9):
        b.record(i % 2 == 0, 0.0)  # 5 ok, 4 failed: not enough calls yet
    assert b.state == CLOSED
    b.record(False, 0.0)  # 10 calls, 5 failed
    assert b.state == OPEN


def test_retry_after_sets_the_cooldown():
    b = Breaker(BreakerConfig(cooldown_s=5.0, max_cooldown_s=60.0))
    b.record(False, 0.0, retry_after_s=1.5)
    assert b.state == OPEN and b.open_until == 1.5


def test_health_splits_candidates_and_counts_in_flight():
    models = {n: ModelConfig(n, "http://127.0.0.1:9/v1", max_in_flight=1) for n in "ab"}
    clock = Clock()
    health = Health(models, BreakerConfig(consecutive_failures=1, cooldown_s=2.0), clock)
    health.acquire("a")
    usable, skipped = health.split(["a", "b"])
    assert usable == ["b"] and skipped == {"a": "saturated"}
    health.release("a", OK)
    health.acquire("b")
    health.release("b", _fail())
    usable, skipped = health.split(["a", "b"])
    assert usable == ["a"] and skipped == {"b": "cooling_down"}
    assert health.reopens_in(["b"]) == pytest.approx(2.0)
    clock.now += 2.0
    assert health.split(["a", "b"])[0] == ["a", "b"]
    assert health.snapshot("b")["breaker"] == HALF_OPEN


# -- the router --------------------------------------------------------------------------------------


def _router(url: str, script: dict[str, list[Step | str]], breaker: dict | None = None, **route) -> Router:
    """A router over the models the script names, in order, each answering as its steps say."""
    cfg = {
        "store": url,
        "deadline_s": 5.0,
        "breaker": {"consecutive_failures": 2, "cooldown_s": 30.0, "max_cooldown_s": 60.0, **(breaker or {})},
        "max_attempts": 1,  # no retries: these tests pin down cooldowns and fallback
        "models": {n: {"base_url": f"http://127.0.0.1:{9000 + i}/v1", "timeout_s": 1.0} for i, n in enumerate(script)},
        "routes": {"simple": {"models": list(script), "policy": "static", **route}},
    }
    return fake_router(cfg, *(ModelSpec(name, script=steps) for name, steps in script.items()))


def test_a_failing_model_is_skipped_while_cooling_down_and_logged(sqlite_url):
    with _router(sqlite_url, {"a": ["error"], "b": ["ok"]}) as router:
        for _ in range(2):
            assert [a.model for a in router.chat("simple", MSG).attempts] == ["a", "b"]
        result = router.chat("simple", MSG)
        assert [a.model for a in result.attempts] == ["b"]
        prefs = router.preferences("simple").T
        assert prefs["a"]["breaker"] == OPEN and prefs["a"]["cooldown_left_s"] > 25
        assert prefs["b"]["breaker"] == CLOSED
        call_id = result.call_id
    store = Store(sqlite_url)
    assert json.loads(store.find_call(call_id)["skipped"]) == {"a": "cooling_down"}
    store.close()


def test_a_cooling_model_is_still_tried_last(sqlite_url):
    script: dict[str, list[Step | str]] = {"a": ["error", "error", "ok"], "b": ["ok", "ok", "error"]}
    with _router(sqlite_url, script) as router:
        router.chat("simple", MSG)  # a fails, b answers
        router.chat("simple", MSG)  # a fails again: a cools down
        result = router.chat("simple", MSG)  # b fails; a, cooling, is tried last and answers
    assert [(a.model, a.outcome) for a in result.attempts] == [("b", "server_error"), ("a", "ok")]


def test_when_every_model_cools_down_the_call_waits_for_the_first_to_reopen(sqlite_url):
    script: dict[str, list[Step | str]] = {"a": ["error", "error", "ok"]}
    with _router(sqlite_url, script, breaker={"cooldown_s": 0.3, "max_cooldown_s": 1.0}) as router:
        for _ in range(2):
            with pytest.raises(AllModelsFailed):
                router.chat("simple", MSG)
        start = time.perf_counter()
        result = router.chat("simple", MSG)
        waited = time.perf_counter() - start
    assert result.model == "a" and 0.2 <= waited <= 0.3 + 0.25


def test_try_mode_does_not_wait(sqlite_url):
    script: dict[str, list[Step | str]] = {"a": ["error", "error", "ok"]}
    breaker = {"cooldown_s": 5.0, "max_cooldown_s": 10.0, "when_all_cooling": "try"}
    with _router(sqlite_url, script, breaker=breaker) as router:
        for _ in range(2):
            with pytest.raises(AllModelsFailed):
                router.chat("simple", MSG)
        start = time.perf_counter()
        assert router.chat("simple", MSG).model == "a"
        assert time.perf_counter() - start < 0.2


def test_a_wait_longer_than_the_deadline_is_not_taken(sqlite_url):
    script: dict[str, list[Step | str]] = {"a": ["error", "error", "ok"]}
    with _router(sqlite_url, script, breaker={"cooldown_s": 10.0, "max_cooldown_s": 10.0}) as router:
        for _ in range(2):
            with pytest.raises(AllModelsFailed):
                router.chat("simple", MSG)
        start = time.perf_counter()
        assert router.chat("simple", MSG, deadline_s=0.5).model == "a"  # tried anyway, at once
        assert time.perf_counter() - start < 0.2


def test_429_is_retried_on_the_same_model_after_retry_after(sqlite_url):
    limited = Step("rate_limit", retry_after_s=0.2)
    with _router(sqlite_url, {"a": [limited, "ok"], "b": ["ok"]}) as router:
        start = time.perf_counter()
        result = router.chat("simple", MSG)
        elapsed = time.perf_counter() - start
    assert [(a.model, a.outcome) for a in result.attempts] == [("a", "rate_limited"), ("a", "ok")]
    assert elapsed >= 0.2  # waited what the backend asked, not less


def test_429_falls_back_when_the_deadline_cannot_wait(sqlite_url):
    limited = Step("rate_limit", retry_after_s=5.0)
    with _router(sqlite_url, {"a": [limited, "ok"], "b": ["ok"]}) as router:
        start = time.perf_counter()
        result = router.chat("simple", MSG, deadline_s=1.0)
        assert time.perf_counter() - start < 0.5
    assert [(a.model, a.outcome) for a in result.attempts] == [("a", "rate_limited"), ("b", "ok")]


# -- over loopback HTTP --------------------------------------------------------------------------------


@pytest.mark.integration
def test_hedged_request_wins_over_a_hanging_primary(sqlite_url):
    specs = [
        ModelSpec("primary", latency_s=0.01, latency_sigma=0.1),
        ModelSpec("backup", latency_s=0.01, latency_sigma=0.1),
    ]
    with Fleet(specs, seed=2) as fleet:
        cfg = fleet.fleet_config({"simple": ["primary", "backup"]}, store=sqlite_url, deadline_s=5.0)
        cfg["routes"]["simple"].update(policy="static", hedge_quantile=0.9)
        cfg["models"]["primary"]["timeout_s"] = 3.0

        async def main():
            async with Router(cfg) as router:
                for _ in range(15):  # learn the primary's latency
                    await router.achat("simple", MSG)
                fleet.update("primary", hang_rate=1.0, hang_s=3.0)
                start = time.perf_counter()
                result = await router.achat("simple", MSG)
                return result, time.perf_counter() - start

        result, elapsed = asyncio.run(main())
    assert result.model == "backup"
    assert elapsed < 0.5  # not the primary's 3 s timeout
    assert sorted((a.model, a.outcome) for a in result.attempts) == [("backup", "ok"), ("primary", "cancelled")]
    store = Store(sqlite_url)
    logged = store.frame("attempts")
    store.close()
    assert set(logged[logged["call_id"] == result.call_id]["outcome"]) == {"ok", "cancelled"}


@pytest.mark.integration
def test_a_saturated_model_is_skipped(sqlite_url):
    specs = [ModelSpec("small", latency_s=0.3, latency_sigma=0.0), ModelSpec("spare", latency_s=0.01)]
    with Fleet(specs) as fleet:
        cfg = fleet.fleet_config({"simple": ["small", "spare"]}, store=sqlite_url)
        cfg["routes"]["simple"]["policy"] = "static"
        cfg["models"]["small"]["max_in_flight"] = 1

        async def main():
            async with Router(cfg) as router:
                return await asyncio.gather(router.achat("simple", MSG), router.achat("simple", MSG))

        first, second = asyncio.run(main())
    assert first.model == "small"
    assert [a.model for a in second.attempts] == ["spare"]
    store = Store(sqlite_url)
    assert json.loads(store.find_call(second.call_id)["skipped"]) == {"small": "saturated"}
    store.close()


def test_a_rejected_request_teaches_nothing_about_the_model(sqlite_url):
    bad = Step("error", status=400, message="context too long")
    from zeta_adaptive import RequestRejected

    with _router(sqlite_url, {"a": [bad], "b": ["ok"]}) as router:
        with pytest.raises(RequestRejected):
            router.chat("simple", MSG)
        assert router.policies["simple"].n.sum() == 0
        assert router.health.snapshot("a")["breaker"] == CLOSED
    with _router(sqlite_url, {"a": ["ok"]}) as again:  # warm start agrees
        assert again.policies["simple"].n.sum() == 0


@pytest.mark.slow
def test_a_timeout_cut_short_by_the_deadline_does_not_extend_the_cooldown(sqlite_url):
    script: dict[str, list[Step | str]] = {"a": ["error", "error", Step(latency_s=0.4)]}
    with _router(sqlite_url, script, breaker={"cooldown_s": 0.3, "max_cooldown_s": 5.0}) as router:
        for _ in range(2):
            with pytest.raises(AllModelsFailed):
                router.chat("simple", MSG)
        with pytest.raises(AllModelsFailed) as info:
            router.chat("simple", MSG, deadline_s=0.6)  # waits ~0.3 s, then only ~0.3 s are left
        assert info.value.attempts[-1].outcome == "timeout"
        state = router.health.snapshot("a")
    assert state["breaker"] != OPEN  # the cut-short timeout taught the breaker nothing
