"""Several router processes on one PostgreSQL learn from each other's traffic (CI's real server)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner
from in_process import fake_router

from zeta_adaptive import Router, Store
from zeta_adaptive.cli import main
from zeta_adaptive.simulate import Fleet, ModelSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # router processes sharing one log

MSG = [{"role": "user", "content": "hi"}]

WORKER = textwrap.dedent(
    """
    import json, sys, time
    from zeta_adaptive import Router
    cfg, calls_first, calls_second, settle = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    made = attempts = 0
    with Router(cfg) as router:
        def run(n):
            global made, attempts
            for _ in range(n):
                result = router.chat("simple", [{"role": "user", "content": "hi"}])
                made += 1
                attempts += len(result.attempts)
        run(calls_first)
        print("ready", flush=True)
        sys.stdin.readline()
        run(calls_second)
        time.sleep(settle)
        best = router.preferences("simple").index[0]
    print(json.dumps({"calls": made, "attempts": attempts, "best": best}), flush=True)
    """
)


@pytest.mark.postgres
def test_three_processes_share_what_they_learn(pg_url, tmp_path):
    Store(pg_url).close()  # migrate once, before the workers start
    specs = [ModelSpec("a", latency_s=0.002, latency_sigma=0.0), ModelSpec("b", latency_s=0.002, latency_sigma=0.0)]
    with Fleet(specs, seed=8) as fleet:
        cfg = fleet.fleet_config({"simple": ["a", "b"]}, store=pg_url, refresh_s=0.3)
        cfg["routes"]["simple"].update(policy="thompson", discount=0.97)
        cfg["journal_dir"] = str(tmp_path / "journal")
        cfg["breaker"] = {"consecutive_failures": 1000, "min_calls": 1000}
        # every worker makes 60 calls while both models are healthy; then "b" breaks, and only the
        # first worker sees it: the other two must learn it from the shared log alone
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, json.dumps({**cfg, "seed": i}), "60", "150" if i == 0 else "0", "1.5"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(3)
        ]
        try:
            for w in workers:
                assert w.stdout.readline().strip() == "ready"
            fleet.update("a", error_rate=0.0)
            fleet.update("b", error_rate=1.0)
            for w in workers:
                w.stdin.write("go\n")
                w.stdin.flush()
            reports = [json.loads(w.communicate(timeout=120)[0].strip().splitlines()[-1]) for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
    assert all(w.returncode == 0 for w in workers)
    assert [r["best"] for r in reports] == ["a", "a", "a"]
    store = Store(pg_url)
    try:
        assert store.count("calls") == sum(r["calls"] for r in reports)
        assert store.count("attempts") == sum(r["attempts"] for r in reports)
    finally:
        store.close()


def test_sync_learns_other_routers_rows_once(sqlite_url):
    specs = [ModelSpec("a", latency_s=0.001), ModelSpec("b", latency_s=0.001, error_rate=1.0)]
    with Fleet(specs) as fleet:
        cfg = fleet.fleet_config({"simple": ["b", "a"]}, store=sqlite_url)
        cfg["routes"]["simple"]["policy"] = "static"
        cfg["breaker"] = {"consecutive_failures": 1000, "min_calls": 1000}
        with Router(cfg) as writer, Router(cfg) as reader:
            for _ in range(20):
                writer.chat("simple", MSG)
            writer.flush()
            learned = reader.sync()
            assert learned == 40  # 20 failures on b, 20 answers from a
            assert reader.sync() == 0  # the overlap window is read again, but nothing counts twice
            np_n = reader.policies["simple"].n
            assert list(np_n) == [20.0, 20.0]
            reader.chat("simple", MSG)
            reader.flush()
            assert writer.sync() == 2  # the writer learns the reader's attempts, not its own


def test_cli_prune(sqlite_url):
    with fake_router(
        {
            "store": sqlite_url,
            "models": {"a": {"base_url": "http://127.0.0.1:9/v1"}},
            "routes": {"simple": {"models": ["a"]}},
        }
    ) as router:
        old = router.chat("simple", MSG)
        router.feedback(old.call_id, 0.5)
    store = Store(sqlite_url)
    store.put("calls", {**store.find_call(old.call_id), "call_id": "recent", "ts": time.time() + 10})
    store.close()
    result = CliRunner().invoke(main, ["db", "prune", "--db", sqlite_url, "--older-than", "0s", "--yes"])
    assert result.exit_code == 0, result.output
    assert "deleted 1 calls, 1 attempts, 1 feedback" in result.output
    store = Store(sqlite_url)
    assert store.count("calls") == 1 and store.find_call("recent") is not None
    store.close()
    bad = CliRunner().invoke(main, ["db", "prune", "--db", sqlite_url, "--older-than", "soon"])
    assert bad.exit_code != 0 and "older-than" in bad.output
