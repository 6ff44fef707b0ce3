"""The router end to end on an in-process fleet (httpx transports, the real parsing) and a real
SQLite log in tmp_path."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from typing import Any

import httpx
import numpy as np
import pytest

from zeta_adaptive import (
    AllModelsFailed,
    ConfigError,
    RequestRejected,
    Router,
    Store,
    StoreError,
    UnknownTaskType,
    classify,
)
from zeta_adaptive.simulate import Fleet, ModelSpec, Step, mock_fleet

SECRET = "sk-router-secret-5d1e8f2a9b"
HELLO = [{"role": "user", "content": "Hello there"}]


def make_config(tmp_path, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "store": f"sqlite:///{tmp_path}/x.db",
        "journal_dir": str(tmp_path / "journal"),
        "deadline_s": 30.0,
        "seed": 1,
        # circuit breakers never open here: these tests pin down ranking, fallback, deadline and logging
        "breaker": {"consecutive_failures": 10_000, "min_calls": 10_000, "window": 10_000},
        "max_attempts": 1,  # no retries of transient failures: each model is tried once, in order
        "models": {
            # short timeouts: the fleet spends scripted latencies for real, up to the timeout
            "a": {"base_url": "http://a:8000/v1", "timeout_s": 0.25},
            "b": {"base_url": "http://b:8000/v1", "timeout_s": 0.25, "price_in_per_1k": 1.0, "price_out_per_1k": 2.0},
            "c": {"base_url": "http://c:8000/v1", "timeout_s": 0.25},
            "e1": {"base_url": "http://e1:8000/v1", "kind": "embedding", "dim": 4, "space": "s"},
            "e2": {"base_url": "http://e2:8000/v1", "kind": "embedding", "dim": 4, "space": "s"},
        },
        "routes": {
            "simple": {"models": ["a", "b", "c"], "policy": "static"},
            "code": {"models": ["b", "a"], "policy": "static"},
            "reasoning": {"models": ["c", "b"], "policy": "static"},
            "learned": {"models": ["a", "b", "c"], "policy": "thompson"},
            "embedding": {"models": ["e1", "e2"], "policy": "static"},
        },
    }
    cfg.update(overrides)
    return cfg


def fleet(cfg: dict[str, Any], *specs: ModelSpec) -> Fleet:
    """The config's models in process, answering at once unless a spec says otherwise, requests recorded."""
    return mock_fleet(cfg, *specs, record=True, latency_s=0.001)


def called(fleet: Fleet) -> list[str]:
    """The models the fleet received requests for, in order."""
    return [name for name, _ in fleet.received]


def answer_of(name: str) -> str:
    """The start of every answer the simulated model ``name`` gives."""
    return f"answer from {name}: "


def db_path(tmp_path) -> str:
    return str(tmp_path / "x.db")


def count(tmp_path, table: str) -> int:
    """Rows in a table, read through a fresh Store on the same URL."""
    store = Store(f"sqlite:///{tmp_path}/x.db", journal_dir=tmp_path / "journal")
    try:
        return store.count(table)
    finally:
        store.close()


def dump(tmp_path) -> str:
    """Every row of every table of the SQLite file, as text."""
    con = sqlite3.connect(db_path(tmp_path))
    try:
        out = []
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert {"calls", "attempts", "feedback"} <= set(tables)
        for table in tables:
            for row in con.execute(f'SELECT * FROM "{table}"'):
                out.append(f"{table}: {row!r}")
        return "\n".join(out)
    finally:
        con.close()


def rows(tmp_path, query: str) -> list[tuple]:
    con = sqlite3.connect(db_path(tmp_path))
    try:
        return list(con.execute(query))
    finally:
        con.close()


# -- fallback -----------------------------------------------------------------------------------------


def test_fallback_follows_static_ranking(tmp_path):
    cfg = make_config(tmp_path)
    fake = fleet(cfg, ModelSpec("a", script=["error"]), ModelSpec("b", tokens_out=5))
    with Router(cfg, transport=fake.transports()) as router:
        result = router.chat("simple", HELLO, temperature=0.2)
        assert result.text.startswith(answer_of("b"))
        assert result.model == "b"
        assert result.task_type == "simple"
        assert result.ranking == ("a", "b", "c")
        assert result.propensity == 1.0
        assert [(a.model, a.outcome, a.status) for a in result.attempts] == [
            ("a", "server_error", 500),
            ("b", "ok", 200),
        ]
        assert called(fake) == ["a", "b"]  # c never tried
        # params reach the backend as they are
        assert fake.received[1][1]["temperature"] == 0.2
        assert fake.received[1][1]["messages"] == HELLO
        # tokens and cost come from the answering attempt's usage and price
        prompt = len("Hello there") // 4 + 4  # the fleet counts tokens as the router estimates them
        assert (result.tokens_in, result.tokens_out) == (prompt, 5)
        assert result.cost == pytest.approx(prompt / 1000 * 1.0 + 5 / 1000 * 2.0)
        # the policy learned from both attempts
        policy = router.policies["simple"]
        np.testing.assert_allclose(policy.n, [1, 1, 0])
        np.testing.assert_allclose(policy.succ, [0, 1, 0])
    assert rows(tmp_path, "SELECT model, outcome, n_attempts, ranking FROM calls") == [
        ("b", "ok", 2, json.dumps(["a", "b", "c"]))
    ]
    assert rows(tmp_path, "SELECT idx, model, outcome, status FROM attempts ORDER BY idx") == [
        (0, "a", "server_error", 500),
        (1, "b", "ok", 200),
    ]


def test_fallback_order_per_route(tmp_path):
    cfg = make_config(tmp_path)
    fake = fleet(cfg, ModelSpec("b", script=[Step("error", status=429), "ok"]), ModelSpec("c", script=["malformed"]))
    with Router(cfg, transport=fake.transports()) as router:
        assert router.chat("code", HELLO).model == "a"  # code: b (rate limited), then a
        assert router.chat("reasoning", HELLO).model == "b"  # reasoning: c (malformed), then b
    assert called(fake) == ["b", "a", "c", "b"]


def test_client_error_400_is_rejected_without_fallback(tmp_path):
    cfg = make_config(tmp_path)
    fake = fleet(cfg, ModelSpec("a", script=[Step("error", status=400, message="context length exceeded")]))
    with Router(cfg, transport=fake.transports()) as router:
        with pytest.raises(RequestRejected) as info:
            router.chat("simple", HELLO)
    err = info.value
    assert called(fake) == ["a"]
    assert len(err.attempts) == 1 and err.attempts[0].status == 400
    assert "HTTP 400" in str(err) and "context length exceeded" in str(err)
    assert rows(tmp_path, "SELECT outcome, model, n_attempts FROM calls") == [("rejected", None, 1)]


@pytest.mark.parametrize("status", [413, 422])
def test_other_rejecting_statuses(tmp_path, status):
    cfg = make_config(tmp_path)
    fake = fleet(cfg, ModelSpec("a", script=[Step("error", status=status)]))
    with Router(cfg, transport=fake.transports()) as router:
        with pytest.raises(RequestRejected):
            router.chat("simple", HELLO)
    assert called(fake) == ["a"]


@pytest.mark.parametrize("status", [401, 403, 404])
def test_endpoint_client_errors_fall_back(tmp_path, status):
    cfg = make_config(tmp_path)
    fake = fleet(cfg, ModelSpec("a", script=[Step("error", status=status, message="unauthorized")]))
    with Router(cfg, transport=fake.transports()) as router:
        result = router.chat("simple", HELLO)
    assert result.model == "b"
    assert [(a.outcome, a.status) for a in result.attempts] == [("client_error", status), ("ok", 200)]


def test_all_failing_raises_all_models_failed(tmp_path):
    cfg = make_config(tmp_path)
    fake = fleet(
        cfg,
        ModelSpec("a", script=["error"]),
        ModelSpec("b", down=True),
        ModelSpec("c", script=[Step("error", status=429, message="slow down")]),
    )
    with Router(cfg, transport=fake.transports()) as router:
        with pytest.raises(AllModelsFailed) as info:
            router.chat("simple", HELLO)
        assert isinstance(info.value, Exception)
        policy = router.policies["simple"]
        np.testing.assert_allclose(policy.succ, [0, 0, 0])
        np.testing.assert_allclose(policy.n, [1, 1, 1])
    err = info.value
    msg = str(err)
    assert err.task_type == "simple"
    assert [a.model for a in err.attempts] == ["a", "b", "c"]
    assert [a.outcome for a in err.attempts] == ["server_error", "connect_error", "rate_limited"]
    for fragment in (
        "#0 a: server_error (HTTP 500)",
        "#1 b: connect_error",
        "Connection refused",
        "#2 c: rate_limited (HTTP 429)",
        "slow down",
    ):
        assert fragment in msg, (fragment, msg)
    assert "deadline" not in msg
    assert err.call_id in msg
    assert rows(tmp_path, "SELECT outcome, model, n_attempts FROM calls") == [("failed", None, 3)]


def test_rate_limited_with_retry_after_is_retried_once_on_same_model(tmp_path):
    cfg = make_config(tmp_path)
    fake = fleet(cfg, ModelSpec("a", script=[Step("rate_limit", retry_after_s=0.05), "ok"]))
    with Router(cfg, transport=fake.transports()) as router:
        result = router.chat("simple", HELLO)
    assert result.model == "a"
    assert [(a.model, a.outcome) for a in result.attempts] == [("a", "rate_limited"), ("a", "ok")]
    assert called(fake) == ["a", "a"]
    assert count(tmp_path, "attempts") == 2


def test_rate_limited_retry_after_beyond_deadline_falls_back(tmp_path):
    cfg = make_config(tmp_path, deadline_s=2.0)
    fake = fleet(cfg, ModelSpec("a", script=[Step("rate_limit", retry_after_s=60.0), "ok"]))
    with Router(cfg, transport=fake.transports()) as router:
        start = time.perf_counter()
        result = router.chat("simple", HELLO)
        assert time.perf_counter() - start < 1.0  # did not wait for the Retry-After
    assert result.model == "b"
    assert [(a.model, a.outcome, a.status) for a in result.attempts] == [("a", "rate_limited", 429), ("b", "ok", 200)]


def test_scripted_latency_above_timeout_becomes_timeout(tmp_path):
    cfg = make_config(tmp_path)
    with Router(cfg, transport=fleet(cfg, ModelSpec("a", script=[Step(latency_s=5.0)])).transports()) as router:
        result = router.chat("simple", HELLO)
    first = result.attempts[0]
    assert first.model == "a" and first.outcome == "timeout"
    assert 0.25 <= first.latency_s < 0.25 + 0.2  # at the model's timeout bound
    assert result.model == "b" and result.text.startswith(answer_of("b"))


def test_attempt_timeout_is_bounded_by_remaining_deadline(tmp_path):
    # timeout 0.25 s, but only 0.1 s of deadline: a 0.2 s answer is a timeout at ~0.1 s, and the call is over
    cfg = make_config(tmp_path, deadline_s=0.1)
    fake = fleet(cfg, ModelSpec("a", script=[Step(latency_s=0.2)]))
    with Router(cfg, transport=fake.transports()) as router:
        with pytest.raises(AllModelsFailed) as info:
            router.chat("simple", HELLO)
    (first,) = info.value.attempts
    assert first.model == "a" and first.outcome == "timeout"
    assert first.latency_s < 0.2  # cut at what was left of the deadline, not the 0.2 s answer
    assert "deadline" in str(info.value)
    assert called(fake) == ["a"]


@pytest.mark.slow
def test_deadline_stops_early_real_time(tmp_path):
    cfg = make_config(tmp_path, deadline_s=0.25)
    slow_failure = [Step("error", latency_s=0.15)]
    fake = fleet(cfg, *(ModelSpec(name, script=slow_failure) for name in "abc"))
    # sum of timeouts is 3 s; the deadline is far shorter
    with Router(cfg, transport=fake.transports()) as router:
        start = time.perf_counter()
        with pytest.raises(AllModelsFailed) as info:
            router.chat("simple", HELLO)
        elapsed = time.perf_counter() - start
    assert "deadline" in str(info.value)
    assert called(fake) == ["a", "b"]  # c was never tried
    assert len(info.value.attempts) == 2
    assert elapsed < 0.6


def test_per_call_deadline_overrides_config(tmp_path):
    cfg = make_config(tmp_path)
    fake = fleet(cfg, *(ModelSpec(name, script=[Step("error", latency_s=0.12)]) for name in "abc"))
    with Router(cfg, transport=fake.transports()) as router:
        with pytest.raises(AllModelsFailed) as info:
            router.chat("simple", HELLO, deadline_s=0.1)
        with pytest.raises(ValueError):
            router.chat("simple", HELLO, deadline_s=0)
    assert "deadline" in str(info.value)
    assert len(info.value.attempts) == 1


@pytest.mark.slow
def test_deadline_stops_early_with_scripted_latencies(tmp_path):
    """Three models that each time out at 0.25 s cannot all be tried within a 0.375 s deadline: the
    fleet spends 0.25 s on `a`, the remaining 0.125 s on `b`, and the call stops."""
    cfg = make_config(tmp_path, deadline_s=0.375)
    fake = fleet(cfg, *(ModelSpec(name, script=[Step(latency_s=5.0)]) for name in "abc"))
    with Router(cfg, transport=fake.transports()) as router:
        with pytest.raises(AllModelsFailed) as info:
            router.chat("simple", HELLO)
    err = info.value
    assert [a.outcome for a in err.attempts] == ["timeout", "timeout"]
    assert sum(a.latency_s for a in err.attempts) < 0.375 + 0.2
    assert called(fake) == ["a", "b"]
    assert "deadline" in str(err)


# -- the real parsing behind a hand-written transport ----------------------------------------------------


def test_a_hand_written_mock_transport_runs_the_real_parsing(tmp_path):
    """httpx.MockTransport answers each model: a's body is not JSON (malformed, fall back), b first
    says 429 with Retry-After (retried on b) and then answers with usage; a stream and an embedding go
    through the same transport and parser."""
    seen: list[tuple[str, str]] = []
    limited = {"b": 1}

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.host, request.url.path))
        if request.url.host == "a":
            return httpx.Response(200, content=b'{"choices": [', headers={"Content-Type": "application/json"})
        if request.url.path.endswith("/embeddings"):
            data = [{"index": i, "embedding": [0.5, 0.5, 0.5, 0.5]} for i in range(len(body["input"]))]
            return httpx.Response(200, json={"data": data, "usage": {"prompt_tokens": 7}})
        if limited["b"]:
            limited["b"] -= 1
            return httpx.Response(429, headers={"Retry-After": "0.05"}, json={"error": {"message": "busy"}})
        if body.get("stream"):
            events = [{"choices": [{"delta": {"content": word}}]} for word in ("streamed", " hi")]
            events.append({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2}})
            sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            return httpx.Response(200, content=sse.encode(), headers={"Content-Type": "text/event-stream"})
        message = {"role": "assistant", "content": "from b"}
        return httpx.Response(
            200, json={"choices": [{"message": message}], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}
        )

    with Router(make_config(tmp_path), transport=httpx.MockTransport(handler)) as router:
        result = router.chat("simple", HELLO)
        stream = router.chat("code", HELLO, stream=True)
        deltas = list(stream)
        vectors = router.embed(["x", "y"])
    assert [(a.model, a.outcome) for a in result.attempts] == [("a", "malformed"), ("b", "rate_limited"), ("b", "ok")]
    assert "not valid JSON" in result.attempts[0].error
    assert (result.text, result.tokens_in, result.tokens_out) == ("from b", 9, 3)
    assert deltas == ["streamed", " hi"] and (stream.result.tokens_in, stream.result.tokens_out) == (11, 2)
    assert vectors.vectors.shape == (2, 4) and vectors.model == "e1" and vectors.tokens_in == 7
    assert seen[:3] == [("a", "/v1/chat/completions"), ("b", "/v1/chat/completions"), ("b", "/v1/chat/completions")]
    assert seen[-1] == ("e1", "/v1/embeddings")


# -- the log -------------------------------------------------------------------------------------------


def test_rows_match_calls_and_attempts(tmp_path):
    cfg = make_config(tmp_path)
    fake = fleet(
        cfg,
        ModelSpec("a", script=["ok", "error", "error", Step("error", status=400), "hang", "ok"], hang_s=5.0),
        ModelSpec("b", script=["ok", "error", "ok"]),
        ModelSpec("c", script=["error"]),
    )
    n_calls = 0
    n_attempts = 0
    outcomes = []
    router = Router(cfg, transport=fake.transports())
    for _ in range(6):
        n_calls += 1
        try:
            result = router.chat("simple", HELLO)
            n_attempts += len(result.attempts)
            outcomes.append("ok")
        except (AllModelsFailed, RequestRejected) as exc:
            n_attempts += len(exc.attempts)
            outcomes.append("failed" if isinstance(exc, AllModelsFailed) else "rejected")
    assert outcomes == ["ok", "ok", "failed", "rejected", "ok", "ok"]
    assert n_attempts == len(fake.received) == 1 + 2 + 3 + 1 + 2 + 1
    router.close()
    router.close()  # idempotent
    assert router.store.count("attempts") == n_attempts
    assert router.store.count("calls") == n_calls
    assert count(tmp_path, "attempts") == n_attempts
    assert count(tmp_path, "calls") == n_calls
    assert count(tmp_path, "feedback") == 0
    logged = rows(tmp_path, "SELECT outcome, n_attempts FROM calls ORDER BY ts")
    assert [o for o, _ in logged] == outcomes
    assert sum(n for _, n in logged) == n_attempts
    # attempts are numbered 0.. within each call
    per_call = rows(tmp_path, "SELECT call_id, COUNT(*), MIN(idx), MAX(idx) FROM attempts GROUP BY call_id")
    assert all(lo == 0 and hi == n - 1 for _, n, lo, hi in per_call)
    with pytest.raises(StoreError, match="the router is closed"):  # as the README says: a ZetaError
        router.chat("simple", HELLO)


def test_flush_makes_rows_visible_before_close(tmp_path):
    cfg = make_config(tmp_path)
    with Router(cfg, transport=fleet(cfg).transports()) as router:
        result = router.chat("simple", HELLO)
        assert router.flush(timeout=10)
        row = router.store.find_call(result.call_id)
        assert row is not None and row["model"] == "a" and row["outcome"] == "ok"
        assert row["policy"] == "static" and row["propensity"] == 1.0
        assert router.store.count("attempts") == 1


def test_unknown_task_type_writes_nothing(tmp_path):
    cfg = make_config(tmp_path)
    fake = fleet(cfg)
    with Router(cfg, transport=fake.transports()) as router:
        with pytest.raises(UnknownTaskType) as info:
            router.chat("poetry", HELLO)
        assert isinstance(info.value, KeyError)
        assert info.value.task_type == "poetry"
        assert "poetry" in str(info.value) and "simple" in str(info.value)
        with pytest.raises(UnknownTaskType):
            router.embed(["x"], task_type="images")
        with pytest.raises(UnknownTaskType):
            router.preferences("poetry")
        for policy in router.policies.values():
            assert policy.n.sum() == 0
    assert fake.received == []
    assert count(tmp_path, "calls") == 0
    assert count(tmp_path, "attempts") == 0


def test_backend_exception_keeps_log_and_policy_consistent(tmp_path):
    """If a transport raises mid-call (a bug, or an error that is not a transport failure, which
    HttpxBackend re-raises), the attempts the policy already learned from must be in the log too:
    otherwise a restarted router's warm-started statistics differ from the live ones."""

    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("backend bug")

    cfg = make_config(tmp_path)
    transports = {**fleet(cfg, ModelSpec("a", script=["error"])).transports(), "b": httpx.MockTransport(broken)}
    router = Router(cfg, transport=transports)
    with pytest.raises(RuntimeError):
        router.chat("simple", HELLO)
    live_n = router.policies["simple"].n.copy()
    router.close()
    # the aborted call is logged like any failed call, with the attempt that was made
    assert count(tmp_path, "calls") == 1
    assert rows(tmp_path, "SELECT model, outcome FROM attempts WHERE idx = 0") == [("a", "server_error")]
    with Router(cfg, transport=fleet(cfg).transports()) as again:
        np.testing.assert_allclose(again.policies["simple"].n, live_n)


# -- classification ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        "```python\nprint(1)\n```",
        "Why does def parse(text): fail?",
        "import numpy as np is slow",
        "SELECT name FROM users WHERE id = 3",
        "what does x => x + 1 do",
        "#include <stdio.h>",
        "class Foo(Base): pass",
    ],
)
def test_classify_code(content):
    assert classify([{"role": "user", "content": content}]) == "code"


@pytest.mark.parametrize(
    "content",
    [
        "Explain why the sky is blue, step by step.",
        "Prove that there are infinitely many primes, and derive the bound.",
        "1. Read the data\n2. Clean it\n3. Plot it",
        "First, compute the mean, then compute the variance. Explain why.",
        "word " * 300,  # long
    ],
)
def test_classify_reasoning(content):
    assert classify([{"role": "user", "content": content}]) == "reasoning"


@pytest.mark.parametrize("content", ["Hello there", "What is the capital of France?", "Translate 'cat' to German", ""])
def test_classify_simple(content):
    assert classify([{"role": "user", "content": content}]) == "simple"


def test_classify_ignores_system_messages():
    msgs = [{"role": "system", "content": "```python\nimport os\n```" + "x" * 2000}, {"role": "user", "content": "hi"}]
    assert classify(msgs) == "simple"
    assert classify([]) == "simple"


def test_task_type_none_uses_default_classifier(tmp_path):
    cfg = make_config(tmp_path)
    with Router(cfg, transport=fleet(cfg).transports()) as router:
        assert router.chat(None, [{"role": "user", "content": "def f(x): return x"}]).task_type == "code"
        assert (
            router.chat(None, [{"role": "user", "content": "Explain why, step by step, and prove it"}]).task_type
            == "reasoning"
        )
        result = router.chat(None, HELLO)
        assert result.task_type == "simple" and result.model == "a"
    assert sorted(r[0] for r in rows(tmp_path, "SELECT task_type FROM calls")) == ["code", "reasoning", "simple"]


def test_custom_classifier_is_used(tmp_path):
    seen = []

    def always_code(messages):
        seen.append(list(messages))
        return "code"

    cfg = make_config(tmp_path)
    with Router(cfg, transport=fleet(cfg).transports(), classifier=always_code) as router:
        result = router.chat(None, HELLO)
        assert result.task_type == "code" and result.model == "b"
        assert seen == [HELLO]
        # an explicit task type bypasses the classifier
        assert router.chat("simple", HELLO).task_type == "simple"
        assert len(seen) == 1
    with Router(cfg, transport=fleet(cfg).transports(), classifier=lambda m: "poetry") as router:
        with pytest.raises(UnknownTaskType):
            router.chat(None, HELLO)


# -- embeddings and async -------------------------------------------------------------------------------


def test_embed_returns_one_row_per_text(tmp_path):
    cfg = make_config(tmp_path)
    fake = fleet(cfg, ModelSpec("e1", script=["error"]))
    with Router(cfg, transport=fake.transports()) as router:
        result = router.embed(["one", "two", "three"])
        assert result.vectors.shape == (3, 4)
        assert result.model == "e2"  # fell back within the embedding space
        assert [a.outcome for a in result.attempts] == ["server_error", "ok"]
        single = router.embed("just one")
        assert single.vectors.shape == (1, 4)
        with pytest.raises(ValueError):
            router.embed([])
        with pytest.raises(ValueError):
            router.embed(["ok", 3])  # type: ignore[list-item]
    assert fake.received[1] == ("e2", {"model": "e2", "input": ["one", "two", "three"]})


def test_embed_on_chat_route_and_chat_on_embedding_route(tmp_path):
    cfg = make_config(tmp_path)
    fake = fleet(cfg)
    with Router(cfg, transport=fake.transports()) as router:
        with pytest.raises(ConfigError) as info:
            router.embed(["x"], task_type="simple")
        assert info.value.field == "routes.simple"
        assert "chat route" in str(info.value)
        with pytest.raises(ConfigError) as info:
            router.chat("embedding", HELLO)
        assert info.value.field == "routes.embedding"
    assert fake.received == []
    assert count(tmp_path, "calls") == 0


def test_async_chat_and_embed(tmp_path):
    cfg = make_config(tmp_path)
    fake = fleet(cfg, ModelSpec("a", script=["error", "ok"]))

    async def main():
        async with Router(cfg, transport=fake.transports()) as router:
            first = await router.achat("simple", HELLO)
            second = await router.achat(None, HELLO)
            vectors = await router.aembed(["p", "q"])
            with pytest.raises(UnknownTaskType):
                await router.achat("poetry", HELLO)
            return first, second, vectors

    first, second, emb = asyncio.run(main())
    assert first.model == "b" and [a.model for a in first.attempts] == ["a", "b"]
    assert second.model == "a" and second.text.startswith(answer_of("a"))
    assert emb.vectors.shape == (2, 4)
    assert count(tmp_path, "calls") == 3
    assert count(tmp_path, "attempts") == 4


def test_async_all_failed(tmp_path):
    cfg = make_config(tmp_path)
    fake = fleet(
        cfg, ModelSpec("a", script=["error"]), ModelSpec("b", script=["error"]), ModelSpec("c", script=["hang"])
    )

    async def main():
        router = Router(cfg, transport=fake.transports())
        try:
            await router.achat("simple", HELLO)
        finally:
            await router.aclose()

    with pytest.raises(AllModelsFailed) as info:
        asyncio.run(main())
    assert len(info.value.attempts) == 3
    assert count(tmp_path, "attempts") == 3


# -- warm start -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("discount", [None, 0.9])
@pytest.mark.slow
def test_warm_start_restores_policy_statistics(tmp_path, discount):
    cfg = make_config(tmp_path)
    if discount is not None:
        cfg["routes"]["learned"]["discount"] = discount
    rng = np.random.default_rng(0)
    flaky = [ModelSpec(name, error_rate=1 - p, latency_s=0.02, tokens_out=5) for name, p in zip("abc", (0.3, 0.8, 0.5))]
    first = Router(cfg, transport=mock_fleet(cfg, *flaky).transports())
    for i in range(25):
        try:
            result = first.chat("learned", HELLO)
            if i % 3 == 0:
                first.feedback(result.call_id, float(rng.random()))
        except AllModelsFailed:
            pass
    first.chat("simple", HELLO)
    live = {
        task: {name: np.array(getattr(p, name)) for name in ("n", "succ", "lat_n", "lat_sum", "acc_n", "acc_sum")}
        for task, p in first.policies.items()
    }
    first.close()
    assert live["learned"]["n"].sum() > 0 and live["learned"]["acc_n"].sum() > 0

    with Router(cfg, transport=fleet(cfg).transports()) as second:
        for task, expected in live.items():
            for name, value in expected.items():
                np.testing.assert_allclose(
                    getattr(second.policies[task], name), value, rtol=1e-9, atol=1e-12, err_msg=f"{task}.{name}"
                )
    if discount is None:
        with Router(cfg, transport=fleet(cfg).transports(), warm_start=False) as cold:
            assert cold.policies["learned"].n.sum() == 0


# -- privacy ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_prompts", [False, True])
def test_log_prompts(tmp_path, log_prompts):
    secret_prompt = "my private question about zebras"
    cfg = make_config(tmp_path, log_prompts=log_prompts)
    fake = fleet(cfg, ModelSpec("a", script=["ok", "error"]), ModelSpec("b", script=["error"]))
    with Router(cfg, transport=fake.transports()) as router:
        router.chat("simple", [{"role": "user", "content": secret_prompt}])
        router.embed(["private embedding text"])
        with pytest.raises(AllModelsFailed):
            router.chat("code", [{"role": "user", "content": "failing " + secret_prompt}])  # b, then a fail
    logged = rows(tmp_path, "SELECT task_type, prompt, answer FROM calls ORDER BY ts")
    text = dump(tmp_path)
    if not log_prompts:
        assert all(p is None and a is None for _, p, a in logged)
        assert "zebras" not in text and "private embedding text" not in text and answer_of("a") not in text
    else:
        by_task = {t: (p, a) for t, p, a in logged}
        prompt, answer = by_task["simple"]
        assert json.loads(prompt) == [{"role": "user", "content": secret_prompt}]
        assert answer.startswith(answer_of("a"))
        assert json.loads(by_task["embedding"][0]) == ["private embedding text"]
        assert by_task["embedding"][1] is None  # vectors are not text
        assert "zebras" in by_task["code"][0] and by_task["code"][1] is None


def test_api_key_never_logged_nor_in_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("ZETA_ROUTER_TEST_KEY", SECRET)
    cfg = make_config(tmp_path, log_prompts=True)
    for name in cfg["models"]:
        cfg["models"][name]["api_key_env"] = "ZETA_ROUTER_TEST_KEY"
    fake = fleet(
        cfg,
        ModelSpec("a", script=["error", "ok", Step("error", status=400, message="bad request")]),
        ModelSpec("b", script=["hang", "ok"]),
        ModelSpec("c", script=[Step("error", status=429)]),
    )
    messages = []
    with Router(cfg, transport=fake.transports()) as router:
        assert SECRET not in repr(router)
        for _ in range(3):
            try:
                router.chat("simple", HELLO)
            except (AllModelsFailed, RequestRejected) as exc:
                messages.append(str(exc))
                messages.append(repr(exc))
        router.embed(["x"])
        try:
            router.feedback("0" * 32, 0.5)
        except Exception as exc:
            messages.append(str(exc))
        try:
            router.chat("poetry", HELLO)
        except UnknownTaskType as exc:
            messages.append(str(exc))
    assert len(messages) >= 3
    assert all(SECRET not in m for m in messages)
    text = dump(tmp_path)
    assert answer_of("a") in text  # the dump really contains the logged data
    assert SECRET not in text
    assert "ZETA_ROUTER_TEST_KEY" not in text
