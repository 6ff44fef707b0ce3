"""Load-aware routing: learned concurrency limits in the router, spill-over, propensities under
load, the config keys, and the simulated fleet's request slots.

Concurrency is checked on the loopback server of test_callpath, which counts the requests each
model has out at once, so the tests see what a backend would see; they count requests, not time.
"""

from __future__ import annotations

import asyncio
import csv
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from helpers import run_experiment
from test_callpath import Loopback, answer, loopback_config

from zeta_adaptive import Outcome, Reply, Router
from zeta_adaptive._config import Config
from zeta_adaptive._exceptions import ConfigError
from zeta_adaptive._health import Health
from zeta_adaptive._limits import LoadConfig
from zeta_adaptive.replay import IPS, Always, load_logged, prepare
from zeta_adaptive.simulate import Fleet, ModelSpec

pytestmark = pytest.mark.integration  # servers with slots on loopback

MSG = [{"role": "user", "content": "hi"}]


def test_load_keys_parse_round_trip_and_default_off() -> None:
    base = {"models": {"a": {"base_url": "http://127.0.0.1:1/v1"}}, "routes": {"simple": {"models": ["a"]}}}
    assert Config.from_dict(base).routes["simple"].load == "off"
    assert Config.from_dict(base).load == LoadConfig()
    data = {
        **base,
        "routes": {"simple": {"models": ["a"], "load": "adaptive"}},
        "load": {"max_limit": 8, "tolerance": 1.5},
    }
    config = Config.from_dict(data)
    assert config.routes["simple"].load == "adaptive" and config.load.max_limit == 8 and config.load.tolerance == 1.5
    assert Config.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"routes": {"simple": {"models": ["a"], "load": "auto"}}}, "routes.simple.load"),
        ({"load": {"window": 0}}, "load.window"),
        ({"load": {"tolerance": 1.0}}, "load.tolerance"),
        ({"load": {"baseline_s": 0}}, "load.baseline_s"),
        ({"load": {"initial": 9, "max_limit": 4}}, "load"),
        ({"load": {"speed": 2}}, "load.speed"),
        ({"load": {"fast_after": 0}}, "load.fast_after"),
        ({"load": {"fast_factor": 1.0}}, "load.fast_factor"),
    ],
)
def test_bad_load_keys_name_the_key(patch: dict, where: str) -> None:
    data = {"models": {"a": {"base_url": "http://127.0.0.1:1/v1"}}, "routes": {"simple": {"models": ["a"]}}, **patch}
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    assert info.value.field == where


def _burst(router: Router, n: int) -> list[Any]:
    async def go() -> list[Any]:
        return await asyncio.gather(*(router.achat("simple", MSG) for _ in range(n)))

    return asyncio.run(go())


@pytest.mark.parametrize("load", ["adaptive", "off"])
def test_a_model_at_its_limit_is_passed_over_not_queued(sqlite_url: str, load: str) -> None:
    with Loopback() as server:
        server.behaviour["a"] = answer(0.3)
        config = loopback_config(server, sqlite_url, ["a", "b"], load={"initial": 2, "min_limit": 2, "max_limit": 2})
        config["routes"]["simple"]["load"] = load
        with Router(config) as router:
            results = _burst(router, 4)
            router.flush()
            rows = router.store.frame("calls", ["simple"])
            prefs = router.preferences("simple").T
    models = [r.model for r in results]
    if load == "adaptive":
        assert server.peak["a"] == 2 and models.count("a") == 2 and models.count("b") == 2
        spilled = [json.loads(s) for s in rows["skipped"] if isinstance(s, str)]
        assert spilled.count({"a": "saturated"}) == 2  # each spill-over is logged with why
        assert prefs["a"]["limit"] == 2 and prefs["a"]["in_flight"] == 0
    else:
        assert server.peak["a"] == 4 and models == ["a"] * 4  # the static table sends it everything


def test_the_limit_is_learned_from_a_server_with_two_slots(sqlite_url: str) -> None:
    """A model with two slots behind a static route, bursts of twelve calls: the learned limit stays
    near two (it grows only while latency stays within ``tolerance`` of the no-load latency, which
    six requests on two slots cannot), and the rest spills over to b."""
    with Fleet(
        [ModelSpec("a", latency_s=0.15, latency_sigma=0.0, slots=2), ModelSpec("b", latency_s=0.15, latency_sigma=0.0)]
    ) as fleet:
        config = fleet.fleet_config({"simple": ["a", "b"]}, store=sqlite_url)
        config["routes"]["simple"].update(policy="static", load="adaptive")
        config["load"] = {"window": 8}
        with Router(config) as router:
            for _ in range(10):
                _burst(router, 12)
            limit = router.health.limits["a"].limit
            results = _burst(router, 12)
    assert 1 <= limit <= 4
    assert "b" in [r.model for r in results]  # a burst beyond a's limit spills over (static would send a everything)


def _hold(server: Loopback, release: threading.Event, started: threading.Event, delay: float = 0.0):
    """Answer after ``delay``; a request saying "hold" first waits for ``release`` (``started`` tells it arrived)."""

    def behave(body: dict) -> tuple[int, float, dict]:
        if body["messages"][0]["content"] == "hold":
            started.set()
            release.wait(10.0)
        return answer(delay)(body)

    return behave


HOLD = [{"role": "user", "content": "hold"}]


def _held(router: Router, pool: ThreadPoolExecutor, started: threading.Event, n: int) -> list[Any]:
    """Start ``n`` calls on the route "hold" that stay out until released; returns their futures."""
    futures = []
    for _ in range(n):
        started.clear()
        futures.append(pool.submit(router.chat, "hold", HOLD))
        assert started.wait(10.0)
    return futures


def test_spilled_propensities_are_the_primarys_probability_given_the_load(sqlite_url: str) -> None:
    """Uniformly random routing over a, b, c; every other call finds a at its limit (1). The logged
    propensity is P(primary | eligible models): 1/3 or 1/2, and the inverse-propensity estimate of
    "always b" (reward 1) is 1, its known value; the unconditional 1/3 would give 1.25."""
    with Loopback() as server:
        release, started = threading.Event(), threading.Event()
        server.behaviour["a"] = _hold(server, release, started)
        config = loopback_config(server, sqlite_url, ["a", "b", "c"], seed=3, load={"max_limit": 1})
        config["routes"] = {
            "simple": {"models": ["a", "b", "c"], "policy": "random", "load": "adaptive"},
            "hold": {"models": ["a"]},
        }
        results = []
        with Router(config) as router, ThreadPoolExecutor(1) as pool:
            for i in range(160):
                held = None
                if i % 2:
                    release.clear()
                    (held,) = _held(router, pool, started, 1)
                results.append(router.chat("simple", MSG))
                if held is not None:
                    release.set()
                    held.result()
            router.flush()
    primaries = [r.ranking[0] for r in results]
    propensities = [r.propensity for r in results]
    assert set(propensities) == {1 / 3, 1 / 2}
    assert all(p == 1 / 2 and m != "a" for p, m in zip(propensities[1::2], primaries[1::2], strict=True))
    logged = prepare(load_logged(sqlite_url, "simple", reward="success"))  # the offline replay reads the log
    assert len(logged.reward) == 160
    assert IPS().estimate(logged, Always("b")) == pytest.approx(1.0, abs=0.2)
    assert primaries.count("a") > 0  # a is tried when it is free: it is not punished for the held calls


def test_the_objective_takes_each_model_at_its_latency_at_its_current_load(sqlite_url: str) -> None:
    """a and b answer alike (200 ms) and have the same record; with three calls held at a (limit 4)
    a's expected latency is 1.375 times its no-load one, which a latency-weighted objective sees:
    Thompson sends every call to b, with a propensity near 1. On the learned averages (what ranking
    did before) the two are even, and ten calls in a row to b would take odds of 1e-3."""
    with Loopback() as server:
        release, started = threading.Event(), threading.Event()
        for m in ("a", "b"):
            server.behaviour[m] = _hold(server, release, started, delay=0.2)
        limits = {"initial": 4, "min_limit": 4, "max_limit": 4, "window": 4}
        config = loopback_config(server, sqlite_url, ["a", "b"], seed=1, load=limits, objective={"w_latency": 10.0})
        config["routes"] = {
            "simple": {"models": ["a", "b"], "policy": "thompson", "load": "adaptive"},
            "hold": {"models": ["a"]},
            "only_b": {"models": ["b"]},
        }
        with Router(config) as router, ThreadPoolExecutor(3) as pool:
            for _ in range(4):  # both models' no-load latency is learned (any route teaches the model's limit)
                router.chat("hold", MSG), router.chat("only_b", MSG)
            for _ in range(10):
                router.chat("simple", MSG)
            held = _held(router, pool, started, 3)
            expected = router.health.expected_latencies(["a", "b"])
            loaded = [router.chat("simple", MSG) for _ in range(10)]
            release.set()
            for future in held:
                future.result()
    assert expected["a"] == pytest.approx(expected["b"] * 1.375, rel=0.1)
    assert [r.ranking[0] for r in loaded] == ["b"] * 10 and all(0.9 < r.propensity <= 1.0 for r in loaded)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_gateway_metrics_show_each_models_learned_limit_and_in_flight(sqlite_url: str) -> None:
    pytest.importorskip("prometheus_client")
    pytest.importorskip("starlette")
    from zeta_adaptive.gateway import create_app

    with Loopback() as server:
        release, started = threading.Event(), threading.Event()
        server.behaviour["a"] = _hold(server, release, started)
        config = loopback_config(server, sqlite_url, ["a", "b"], load={"initial": 3, "max_limit": 3})
        config["routes"] = {"simple": {"models": ["a", "b"], "load": "adaptive"}, "hold": {"models": ["a"]}}
        with Router(config) as router, ThreadPoolExecutor(2) as pool:
            registry = create_app(router).state.gateway.metrics.registry
            held = _held(router, pool, started, 2)
            gauges = {
                (name, m): registry.get_sample_value(name, {"model": m})
                for name in ("zeta_concurrency_limit", "zeta_in_flight")
                for m in ("a", "b")
            }
            prefs = router.preferences("simple")
            release.set()
            for future in held:
                future.result()
    assert gauges == {
        ("zeta_concurrency_limit", "a"): 3,
        ("zeta_concurrency_limit", "b"): 3,
        ("zeta_in_flight", "a"): 2,
        ("zeta_in_flight", "b"): 0,
    }
    assert prefs.loc["a", "limit"] == 3 and prefs.loc["a", "in_flight"] == 2  # and preferences() says the same


def test_a_saturated_model_teaches_the_policy_nothing(sqlite_url: str) -> None:
    with Loopback() as server:
        server.behaviour["a"] = answer(0.3)
        config = loopback_config(server, sqlite_url, ["a", "b"], load={"initial": 1, "max_limit": 1})
        config["routes"]["simple"]["load"] = "adaptive"
        with Router(config) as router:
            _burst(router, 2)
            n = router.preferences("simple")["n"].to_dict()
    assert n == {"a": 1.0, "b": 1.0}  # the call a never received counts for nothing


def test_calls_waiting_for_a_slot_are_woken_one_per_release_in_turn() -> None:
    config = Config.from_dict(
        {"models": {"a": {"base_url": "http://127.0.0.1:1/v1"}}, "routes": {"simple": {"models": ["a"]}}}
    )
    health = Health(config.models, config.breaker)
    since = health.generation
    woken: list[int] = []
    threads = [
        threading.Thread(target=lambda i=i: (health.wait_release(since, 10.0, fifo=True), woken.append(i)))
        for i in range(3)
    ]
    for n, thread in enumerate(threads, 1):
        thread.start()
        while len(health._queue) < n:  # queued in this order
            time.sleep(0.001)
    for n in (1, 2, 3):
        health.acquire("a")
        health.release("a", Reply(Outcome.OK, 0.01))
        threads[n - 1].join(10.0)
        assert woken == list(range(n))  # the longest waiting one, and only it
    assert health.generation == since + 3


def test_health_shows_the_limit_how_long_its_attempts_have_been_out() -> None:
    """Three attempts out for longer than fast_factor x no-load shrink the limit when the next call
    looks at the model, before any of them answers; the expected latency grows with those out."""
    config = Config.from_dict(
        {"models": {"a": {"base_url": "http://127.0.0.1:1/v1"}}, "routes": {"simple": {"models": ["a"]}}}
    )
    now = [0.0]
    health = Health(config.models, config.breaker, clock=lambda: now[0], load=LoadConfig(initial=8, window=8))
    for _ in range(8):  # one window at 50 ms: the no-load latency
        health.acquire("a", True)
        health.release("a", Reply(Outcome.OK, 0.05))
    before = health.limits["a"].limit
    assert health.expected_latencies(["a"]) == {"a": pytest.approx(0.05)}
    for _ in range(3):
        health.acquire("a", True)
    assert health.expected_latencies(["a"])["a"] == pytest.approx(0.05 * (1 + 0.5 * 3 / before))
    now[0] = 0.06  # out 60 ms: not late yet (1.3 x 50 ms = 65 ms)
    assert health.split(["a"], True)[0] == ["a"] and health.limits["a"].limit == before
    now[0] = 0.1  # out 100 ms, all three
    health.split(["a"], True)
    assert health.limits["a"].limit == before // 2  # no-load / their age = 0.5


# -- the simulated fleet's request slots ---------------------------------------------------------


def _concurrent(url: str, n: int) -> float:
    """Send n chat requests at once; how long until the last answered (seconds)."""
    body = {"model": "m", "messages": MSG}
    start = time.perf_counter()
    with httpx.Client(timeout=10.0) as client, ThreadPoolExecutor(n) as pool:
        statuses = list(pool.map(lambda _: client.post(url + "/chat/completions", json=body).status_code, range(n)))
    assert statuses == [200] * n
    return time.perf_counter() - start


def test_slots_queue_requests_and_change_during_a_run() -> None:
    """Lower bounds only: a loaded machine can make these slower, never faster."""
    service = 0.1
    with Fleet([ModelSpec("m", latency_s=service, latency_sigma=0.0, slots=1)]) as fleet:
        url = fleet.base_url("m")
        assert _concurrent(url, 4) >= 4 * service * 0.95  # one slot: four requests one after the other
        fleet.update("m", slots=2)
        assert fleet.spec("m").slots == 2
        assert _concurrent(url, 4) >= 2 * service * 0.95
    with pytest.raises(ValueError, match="slots"):
        ModelSpec("m", slots=0)


def test_the_load_experiment_runs_and_writes_its_files(tmp_path) -> None:
    """Smoke run (about 20 s: twelve one-second runs): every scenario and policy gives a row. No timing is asserted."""
    run_experiment("load", tmp_path, timeout=300)
    with open(tmp_path / "load.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["scenario"], r["policy"]) for r in rows} == {
        (s, p) for s in ("quarter", "halving", "three") for p in ("static", "thompson", "thompson+adaptive", "oracle")
    }
    assert all(float(r["throughput_per_s"]) > 0 for r in rows)
    assert (tmp_path / "load.md").read_text().count("thompson+adaptive") >= 3 and (tmp_path / "load.png").exists()
