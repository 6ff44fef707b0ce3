"""Warm start rebuilds exactly what the live policies learned, on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest
from in_process import fake_router

from zeta_adaptive import AllModelsFailed
from zeta_adaptive.simulate import ModelSpec


@pytest.mark.parametrize("discount", [1.0, 0.9])
@pytest.mark.slow
def test_warm_start_matches_live_statistics(store_url, tmp_path, discount):
    rng = np.random.default_rng(3)
    flaky = [ModelSpec(name, error_rate=0.3, latency_s=0.004, latency_sigma=0.5, tokens_out=2) for name in "abc"]

    cfg = {
        "store": store_url,
        "journal_dir": str(tmp_path / "journal"),
        "breaker": {"consecutive_failures": 1000, "min_calls": 1000},
        "models": {
            n: {"base_url": f"http://127.0.0.1:{9200 + i}/v1", "price_in_per_1k": 1.0} for i, n in enumerate("abc")
        },
        "routes": {"simple": {"models": ["a", "b", "c"], "policy": "thompson", "discount": discount, "seed": 1}},
    }
    with fake_router(cfg, *flaky) as live:
        for i in range(120):
            try:
                result = live.chat("simple", [{"role": "user", "content": "q"}])
            except AllModelsFailed:
                continue
            if i % 3:
                live.feedback(result.call_id, float(rng.uniform(0, 1)))
        stats = live.policies["simple"].stats.copy()
    with fake_router(cfg) as again:
        np.testing.assert_allclose(again.policies["simple"].stats, stats, rtol=1e-9, atol=1e-9)
