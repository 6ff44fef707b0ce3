"""One rule says which attempts teach the policy and the breaker: live, in SQL and over logged rows alike."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from loopback_http import send_json
from sqlalchemy import select

from zeta_adaptive import Router, Store
from zeta_adaptive._backends import Outcome, Reply, classify_error
from zeta_adaptive._config import REJECTING_DEFAULT
from zeta_adaptive._health import CLOSED, OPEN
from zeta_adaptive._lessons import teaches, teaches_rows, teaches_sql
from zeta_adaptive._store import attempts

MSG = [{"role": "user", "content": "hi"}]
LITELLM_UNKNOWN = {"error": {"message": "/chat/completions: Invalid model name passed in model=gpt-9.", "code": "400"}}
OPENAI_UNKNOWN = {"error": {"message": "The model `gpt-9` does not exist.", "code": "model_not_found"}}
BAD_PARAM = {"error": {"message": "temperature must be <= 2", "type": "invalid_request_error"}}
TOO_LONG = {"error": {"message": "This model's maximum context length is 4096 tokens."}}


def _error(status: int, body: Any) -> Reply:
    return classify_error(status, json.dumps(body), 0.1)


# what a backend answered, and whether the attempt teaches the policy and the breaker
CASES: list[tuple[Reply, bool]] = [
    (Reply(Outcome.OK, 0.1, 200), True),
    (Reply(Outcome.SERVER_ERROR, 0.1, 500, error="boom"), True),
    (Reply(Outcome.TIMEOUT, 1.0), True),
    (Reply(Outcome.CANCELLED, 0.1, error="lost the hedge race"), False),
    (_error(400, TOO_LONG), False),  # context_exceeded: the prompt's fault
    (_error(400, BAD_PARAM), False),  # a rejected request
    (_error(422, {"error": "unprocessable"}), False),  # a rejected request
    (_error(400, LITELLM_UNKNOWN), True),  # a misconfigured endpoint, though its status rejects
    (_error(404, OPENAI_UNKNOWN), True),  # a misconfigured endpoint
    (_error(401, {"error": "bad key"}), True),  # a misconfigured endpoint
]


def test_the_rule_reads_the_same_live_in_sql_and_over_logged_rows(sqlite_url):
    rejecting = REJECTING_DEFAULT
    expected = [teach for _, teach in CASES]
    live = [teaches(r.outcome, r.status, r.misconfigured, rejecting) for r, _ in CASES]
    assert live == expected
    assert CASES[4][0].outcome is Outcome.CONTEXT_EXCEEDED and CASES[7][0].misconfigured  # the cases are what they say
    store = Store(sqlite_url)
    try:
        for i, (reply, _) in enumerate(CASES):
            row = {"call_id": "c" * 32, "idx": i, "ts": 1.0, "task_type": "t", "model": "m"}
            row |= {"outcome": str(reply.outcome), "status": reply.status, "latency_s": 0.1, "tokens_in": 0}
            row |= {"tokens_out": 0, "cost": 0.0, "error": reply.error or None}
            store.put("attempts", row)
        assert store.flush(10)
        with store.engine.connect() as conn:
            kept = {i for (i,) in conn.execute(select(attempts.c.idx).where(teaches_sql(attempts, rejecting)))}
        rows = store.columns("attempts")
    finally:
        store.close()
    assert [i in kept for i in range(len(CASES))] == expected
    assert teaches_rows(rows, rejecting) == expected
    del rows["error"]
    assert teaches_rows(rows, rejecting)[:7] == expected[:7]  # without errors too


@contextmanager
def _fleet() -> Iterator[str]:
    """Two endpoints on one loopback server: ``/unknown`` answers as a LiteLLM proxy that does not know the model."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path.startswith("/unknown"):
                send_json(self, 400, LITELLM_UNKNOWN)
                return
            message = {"role": "assistant", "content": "fine"}
            usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
            send_json(self, 200, {"choices": [{"index": 0, "message": message}], "usage": usage})

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.integration  # real HTTP over loopback
def test_a_misconfigured_endpoint_teaches_the_policy_the_breaker_and_the_warm_start_alike(sqlite_url, tmp_path):
    with _fleet() as url:
        cfg = {
            "store": sqlite_url,
            "journal_dir": str(tmp_path),
            "deadline_s": 5.0,
            "models": {name: {"base_url": f"{url}/{name}/v1", "timeout_s": 2.0} for name in ("unknown", "good")},
            "routes": {"simple": {"models": ["unknown", "good"], "policy": "static"}},
            "breaker": {"consecutive_failures": 3, "cooldown_s": 60.0},
        }
        with Router(cfg) as live:
            results = [live.chat("simple", MSG) for _ in range(3)]
            assert [r.model for r in results] == ["good"] * 3
            assert [a.outcome for a in results[0].attempts] == ["client_error", "ok"]
            assert live.health.snapshot("unknown")["breaker"] == OPEN  # the breaker learned three failures
            assert live.health.snapshot("good")["breaker"] == CLOSED
            stats = live.policies["simple"].stats.copy()
        assert stats[0, 0] == 3 and stats[1, 0] == 0  # the policy too: 3 attempts, no success
        with Router(cfg) as again:  # the warm start reads the log by the same rule
            np.testing.assert_allclose(again.policies["simple"].stats, stats, rtol=1e-9, atol=1e-12)
