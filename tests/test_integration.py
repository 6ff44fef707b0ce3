"""The router over real loopback HTTP against the simulated fleet, logging to real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from zeta_adaptive import AllModelsFailed, Router, Store
from zeta_adaptive.simulate import Fleet, ModelSpec

pytestmark = pytest.mark.integration  # the simulated fleet on loopback

MSG = [{"role": "user", "content": "hello"}]
MARGIN_S = 0.25  # documented bound on how far a call may outlive its deadline


def _config(fleet: Fleet, url: str, order: list[str], **top) -> dict:
    cfg = fleet.fleet_config({"simple": order}, store=url, deadline_s=top.pop("deadline_s", 5.0), **top)
    cfg["routes"]["simple"]["policy"] = "static"
    for name in order:
        cfg["models"][name]["timeout_s"] = 0.5
    return cfg


@pytest.fixture
def faulty_fleet():
    specs = [
        ModelSpec("refuses", down=True),
        ModelSpec("hangs", hang_rate=1.0, hang_s=30.0),
        ModelSpec("errors", error_rate=1.0),
        ModelSpec("garbage", malformed_rate=1.0),
        ModelSpec("empty", empty_rate=1.0),
        ModelSpec("good", latency_s=0.002, accuracy={"simple": 0.9}),
    ]
    with Fleet(specs, seed=1) as fleet:
        yield fleet


def test_every_fault_falls_back_to_the_healthy_model(faulty_fleet, store_url):
    order = ["refuses", "hangs", "errors", "garbage", "empty", "good"]
    with Router(_config(faulty_fleet, store_url, order)) as router:
        start = time.perf_counter()
        result = router.chat("simple", MSG, max_tokens=8)
        elapsed = time.perf_counter() - start
    assert result.model == "good" and result.text
    assert [a.outcome for a in result.attempts] == [
        "connect_error",
        "timeout",
        "server_error",
        "malformed",
        "malformed",
        "ok",
    ]
    assert [a.model for a in result.attempts] == order
    assert result.attempts[2].status == 500
    assert 0.45 <= result.attempts[1].latency_s <= 0.5 + MARGIN_S  # the hang was cut at its timeout
    assert elapsed < 5.0 + MARGIN_S  # within the call deadline, whatever the load on the machine
    store = Store(store_url)
    try:
        logged = store.frame("attempts")
        assert logged["outcome"].tolist() == [a.outcome for a in result.attempts]
        assert (logged["call_id"] == result.call_id).all()
        call = store.find_call(result.call_id)
        assert call["model"] == "good" and call["n_attempts"] == 6 and call["outcome"] == "ok"
    finally:
        store.close()


def test_deadline_is_never_exceeded_by_more_than_the_margin(faulty_fleet, sqlite_url):
    faulty_fleet.update("good", down=True)
    cfg = _config(faulty_fleet, sqlite_url, ["hangs", "errors", "good"], deadline_s=0.3)
    with Router(cfg) as router:
        for _ in range(3):
            start = time.perf_counter()
            with pytest.raises(AllModelsFailed) as info:
                router.chat("simple", MSG)
            elapsed = time.perf_counter() - start
            assert elapsed <= 0.3 + MARGIN_S
            assert "deadline" in str(info.value)
            assert info.value.attempts[0].outcome == "timeout"


def test_async_calls_fall_back_and_respect_the_deadline(faulty_fleet, sqlite_url):
    cfg = _config(faulty_fleet, sqlite_url, ["hangs", "errors", "good"], deadline_s=2.0)

    async def main():
        async with Router(cfg) as router:
            start = time.perf_counter()
            results = await asyncio.gather(*(router.achat("simple", MSG) for _ in range(8)))
            return results, time.perf_counter() - start

    results, elapsed = asyncio.run(main())
    assert all(r.model == "good" for r in results)
    assert all([a.outcome for a in r.attempts] == ["timeout", "server_error", "ok"] for r in results)
    assert elapsed < 0.5 + MARGIN_S + 0.5  # concurrent, so about one timeout in all


def test_logged_attempts_equal_attempts_made(store_url):
    specs = [ModelSpec("flaky", error_rate=0.4, latency_s=0.001), ModelSpec("steady", latency_s=0.001)]
    with Fleet(specs, seed=3) as fleet:
        cfg = fleet.fleet_config({"simple": ["flaky", "steady"]}, store=store_url, seed=7)
        made_attempts = made_calls = 0
        with Router(cfg) as router:
            for _ in range(120):
                result = router.chat("simple", MSG)
                made_calls += 1
                made_attempts += len(result.attempts)
                router.feedback(result.call_id, 0.5)
    store = Store(store_url)
    try:
        assert store.count("calls") == made_calls
        assert store.count("attempts") == made_attempts
        assert store.count("feedback") == made_calls
    finally:
        store.close()


def test_embedding_route_over_http(sqlite_url):
    specs = [ModelSpec("emb-a", kind="embedding", dim=8, error_rate=1.0), ModelSpec("emb-b", kind="embedding", dim=8)]
    with Fleet(specs) as fleet:
        cfg = fleet.fleet_config({"embedding": ["emb-a", "emb-b"]}, store=sqlite_url)
        for name in ("emb-a", "emb-b"):
            cfg["models"][name]["space"] = "shared-8"
        cfg["routes"]["embedding"]["policy"] = "static"
        with Router(cfg) as router:
            result = router.embed(["alpha", "beta", "gamma"])
    assert result.model == "emb-b"
    assert result.vectors.shape == (3, 8)
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


def test_the_router_learns_to_avoid_a_failing_model(sqlite_url):
    specs = [ModelSpec("bad", error_rate=0.9, latency_s=0.001), ModelSpec("fine", latency_s=0.001)]
    with Fleet(specs, seed=5) as fleet:
        cfg = fleet.fleet_config({"simple": ["bad", "fine"]}, store=sqlite_url, seed=11)
        with Router(cfg) as router:
            primaries = [router.chat("simple", MSG).ranking[0] for _ in range(150)]
    assert primaries[-50:].count("fine") >= 40
