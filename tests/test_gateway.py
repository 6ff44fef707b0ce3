"""The gateway end to end: the official `openai` client over loopback, uvicorn serving the app,
simulated loopback models behind it, real SQLite (and PostgreSQL) logs.

In-process tests run uvicorn in a thread (stopped with `should_exit`); the SIGTERM and two-worker
tests run `zeta-adaptive serve` as a subprocess, stopped by its PID.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from helpers import serving  # noqa: E402

from zeta_adaptive import gateway  # noqa: E402
from zeta_adaptive._config import Config, ConfigError, KeyLimits, ServerConfig  # noqa: E402
from zeta_adaptive.gateway import create_app, load_keys  # noqa: E402
from zeta_adaptive.simulate import Fleet, ModelSpec  # noqa: E402

pytestmark = pytest.mark.integration  # the gateway served over loopback, or in its own processes

HELLO = [{"role": "user", "content": "Say hello."}]
KEYS_ENV = "ZETA_TEST_GATEWAY_KEYS"
SECRET_A, SECRET_B = "sk-test-alpha-0123456789", "sk-test-beta-9876543210"


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    specs = [
        ModelSpec("good", latency_s=0.005, latency_sigma=0.0, accuracy={"simple": 0.8, "code": 0.8}),
        ModelSpec("broken", error_rate=1.0),
        ModelSpec("hangs", hang_rate=1.0, hang_s=5.0),
        ModelSpec("breaks", latency_s=0.0, break_stream_rate=1.0),
        ModelSpec("dribbles", latency_s=0.0, chunk_delay_s=0.2),
        ModelSpec("vectors", kind="embedding", dim=8),
    ]
    with Fleet(specs, seed=3) as f:
        yield f


def config(
    fleet: Fleet, url: str, tmp_path: Path, routes: dict[str, list[str]] | None = None, **top: Any
) -> dict[str, Any]:
    routes = routes or {"simple": ["good"], "code": ["good"], "embedding": ["vectors"]}
    cfg = fleet.fleet_config(routes, store=url, journal_dir=str(tmp_path / "journal"), seed=1, **top)
    for spec in cfg["routes"].values():
        spec["policy"] = "static"  # try the listed order: what each test expects
    return cfg


def client(base: str, key: str = "unused") -> Any:
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=20)


def rows(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(text(sql), params).mappings()]
    finally:
        engine.dispose()


def wait_for(check: Any, seconds: float = 10.0) -> Any:
    """Poll ``check()`` until it returns something truthy (bounded); returns its last value."""
    until = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > until:
            return value
        time.sleep(0.05)


def metric(base: str, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 when absent)."""
    body = httpx.get(base.removesuffix("/v1") + "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    return 0.0


# -- chat, streaming, embeddings ------------------------------------------------------------------


def test_chat_answer_is_the_logged_call(fleet, sqlite_url, tmp_path):
    app = create_app(config(fleet, sqlite_url, tmp_path, log_prompts=True))
    with serving(app) as base:
        raw = client(base).chat.completions.with_raw_response.create(
            model="simple", messages=HELLO, max_tokens=3, temperature=0.2
        )
        answer = raw.parse()
        auto = client(base).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "def f(): pass"}]
        )
        app.state.router.flush()
        logged = rows(sqlite_url, "SELECT * FROM calls ORDER BY ts")
    assert [r["call_id"] for r in logged] == [answer.id, auto.id]
    assert raw.headers["x-zeta-call-id"] == answer.id and raw.headers["x-zeta-model"] == "good" == answer.model
    assert answer.object == "chat.completion" and answer.choices[0].message.content == logged[0]["answer"]
    # max_tokens reached the backend: the simulated model answers with that many words
    assert answer.usage.completion_tokens == 3 and answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 3
    assert logged[0]["task_type"] == "simple" and logged[1]["task_type"] == "code"  # "auto": the classifier saw code


def test_stream_deltas_make_the_answer_and_usage_comes_when_asked(fleet, sqlite_url, tmp_path):
    app = create_app(config(fleet, sqlite_url, tmp_path, log_prompts=True))
    with serving(app) as base:
        with_usage = list(
            client(base).chat.completions.create(
                model="simple",
                messages=HELLO,
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=20,
            )
        )
        without = list(client(base).chat.completions.create(model="simple", messages=HELLO, stream=True))
        app.state.router.flush()
        logged = {r["call_id"]: r for r in rows(sqlite_url, "SELECT * FROM calls")}
    # the backend's own finish_reason: max_tokens=20 cut the simulated model's answer short, the other ended
    for chunks, finish in ((with_usage, "length"), (without, "stop")):
        call_id = chunks[0].id
        assert {c.id for c in chunks} == {call_id} and {c.model for c in chunks} == {"good"}
        text_ = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text_ == logged[call_id]["answer"] and logged[call_id]["outcome"] == "ok"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens == 20
    assert all(c.usage is None for c in without)


def test_a_stream_falls_back_before_its_first_token(fleet, sqlite_url, tmp_path):
    app = create_app(config(fleet, sqlite_url, tmp_path, routes={"simple": ["broken", "good"]}))
    with serving(app) as base:
        chunks = list(client(base).chat.completions.create(model="simple", messages=HELLO, stream=True))
        app.state.router.flush()
        attempts = rows(sqlite_url, "SELECT model, outcome FROM attempts ORDER BY idx")
    assert {c.model for c in chunks} == {"good"} and {c.id for c in chunks} == {chunks[0].id}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert attempts == [{"model": "broken", "outcome": "server_error"}, {"model": "good", "outcome": "ok"}]


def test_embeddings_match_the_backend(fleet, sqlite_url, tmp_path):
    app = create_app(config(fleet, sqlite_url, tmp_path))
    texts = ["one", "two", "three"]
    with serving(app) as base:
        ours = client(base).embeddings.create(model="embedding", input=texts)  # the client asks for base64
        floats = httpx.post(base + "/embeddings", json={"model": "embedding", "input": "one"}).json()
        with pytest.raises(openai.NotFoundError):
            client(base).embeddings.create(model="simple", input=texts)  # a chat route
        with pytest.raises(openai.BadRequestError) as sized:  # not passed on: refused, not silently ignored
            client(base).embeddings.create(model="embedding", input=texts, dimensions=4)
        assert sized.value.code == "invalid_dimensions"
    direct = client(fleet.base_url("vectors")).embeddings.create(model="vectors", input=texts)
    assert ours.model == "vectors" and [d.index for d in ours.data] == [0, 1, 2]
    np.testing.assert_allclose([d.embedding for d in ours.data], [d.embedding for d in direct.data], rtol=1e-6)
    np.testing.assert_allclose(floats["data"][0]["embedding"], direct.data[0].embedding, rtol=1e-6)


def test_fallback_through_the_gateway_and_metrics(fleet, sqlite_url, tmp_path):
    app = create_app(config(fleet, sqlite_url, tmp_path, routes={"simple": ["broken", "good"]}))
    with serving(app) as base:
        answer = client(base).chat.completions.create(model="simple", messages=HELLO)
        app.state.router.flush()
        attempts = rows(sqlite_url, "SELECT model, outcome FROM attempts WHERE call_id = :c ORDER BY idx", c=answer.id)
        assert answer.model == "good"
        assert attempts == [{"model": "broken", "outcome": "server_error"}, {"model": "good", "outcome": "ok"}]
        assert metric(base, "zeta_calls_total", task_type="simple", model="good", outcome="ok") == 1
        assert metric(base, "zeta_attempts_total", model="broken", outcome="server_error") == 1
        assert metric(base, "zeta_call_latency_seconds_count", task_type="simple") == 1
        body = httpx.get(base.removesuffix("/v1") + "/metrics").text
        for name in (
            "zeta_breaker_state",
            "zeta_in_flight",
            "zeta_log_queue_depth",
            "zeta_log_rows_journaled",
            "zeta_log_rows_written_total",
        ):
            assert name in body, name
        assert httpx.get(base.removesuffix("/v1") + "/health").json() == {"status": "ok"}
        assert httpx.get(base.removesuffix("/v1") + "/ready").status_code == 200


# -- errors ---------------------------------------------------------------------------------------


def test_every_model_failing_is_502_and_a_deadline_is_504(fleet, sqlite_url, tmp_path):
    app = create_app(config(fleet, sqlite_url, tmp_path, routes={"simple": ["broken"], "code": ["hangs"]}))
    with serving(app) as base:
        with pytest.raises(openai.InternalServerError) as failed:
            client(base).chat.completions.create(model="simple", messages=HELLO)
        with pytest.raises(openai.InternalServerError) as late:
            client(base).chat.completions.create(
                model="code", messages=HELLO, extra_headers={"x-zeta-deadline-s": "0.3"}
            )
        with pytest.raises(openai.BadRequestError):
            client(base).chat.completions.create(
                model="code", messages=HELLO, extra_headers={"x-zeta-deadline-s": "soon"}
            )
        app.state.router.flush()
        logged = rows(sqlite_url, "SELECT call_id, outcome FROM calls")
        assert metric(base, "zeta_calls_total", task_type="code", model="none", outcome="deadline_exceeded") == 1
    assert failed.value.status_code == 502 and failed.value.code == "all_models_failed"
    assert late.value.status_code == 504 and late.value.code == "deadline_exceeded"
    assert sorted(r["call_id"] for r in logged) == sorted(
        [failed.value.response.headers["x-zeta-call-id"], late.value.response.headers["x-zeta-call-id"]]
    )
    assert {r["outcome"] for r in logged} == {"failed"}


def test_auth_limits_and_refusals_are_not_calls(fleet, sqlite_url, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="zeta_adaptive.gateway")
    monkeypatch.setenv(KEYS_ENV, f"team-a={SECRET_A}, {SECRET_B}")
    server = {"api_keys_env": KEYS_ENV, "keys": {"team-a": {"routes": ["simple"], "requests_per_minute": 2}}}
    app = create_app(config(fleet, sqlite_url, tmp_path, server=server))
    with serving(app) as base:
        with pytest.raises(openai.AuthenticationError) as unauthorized:
            client(base, "wrong").chat.completions.create(model="simple", messages=HELLO)
        assert unauthorized.value.status_code == 401 and unauthorized.value.code == "invalid_api_key"
        assert httpx.post(base + "/chat/completions", json={"model": "simple", "messages": HELLO}).status_code == 401
        team_a = client(base, SECRET_A)
        assert [m.id for m in team_a.models.list()] == ["simple", "auto"]
        with pytest.raises(openai.NotFoundError) as not_allowed:
            team_a.chat.completions.create(model="code", messages=HELLO)
        assert not_allowed.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError):
            client(base, SECRET_B).chat.completions.create(model="no-such-route", messages=HELLO)
        malformed = httpx.post(
            base + "/chat/completions", content=b"{not json", headers={"authorization": f"Bearer {SECRET_B}"}
        )
        assert malformed.status_code == 400 and malformed.json()["error"]["type"] == "invalid_request_error"
        with pytest.raises(openai.BadRequestError) as router_option:  # the router's keywords are not the client's
            client(base, SECRET_B).chat.completions.create(model="code", messages=HELLO, extra_body={"deadline_s": 9})
        assert router_option.value.code == "invalid_parameter"
        with pytest.raises(openai.BadRequestError) as several:  # one routed answer per call, not n billed and 1 shown
            client(base, SECRET_B).chat.completions.create(model="code", messages=HELLO, n=2)
        assert several.value.status_code == 400 and "n=2" in several.value.message
        with pytest.raises(openai.BadRequestError) as logprobs:  # asked for, and would be silently dropped
            client(base, SECRET_B).chat.completions.create(model="code", messages=HELLO, logprobs=True)
        assert "logprobs" in logprobs.value.message
        answers = [team_a.chat.completions.create(model="simple", messages=HELLO) for _ in range(2)]
        with pytest.raises(openai.RateLimitError) as limited:
            team_a.chat.completions.create(model="simple", messages=HELLO)
        assert limited.value.code == "rate_limit_exceeded" and float(limited.value.response.headers["retry-after"]) > 0
        other = client(base, SECRET_B).chat.completions.create(
            model="code", messages=HELLO
        )  # bare key: all routes, no limit
        app.state.router.flush()
        logged = sorted(r["call_id"] for r in rows(sqlite_url, "SELECT call_id FROM calls"))
        assert logged == sorted([a.id for a in answers] + [other.id])  # refused requests are not calls
        assert metric(base, "zeta_calls_total", task_type="simple", model="good", outcome="ok") == 2
        assert metric(base, "zeta_refused_requests_total", reason="unauthorized") == 2
        assert metric(base, "zeta_refused_requests_total", reason="model_not_found") == 2
        assert metric(base, "zeta_refused_requests_total", reason="rate_limited") == 1
        assert (
            metric(base, "zeta_refused_requests_total", reason="malformed") == 4
        )  # bad JSON, a router option, n, logprobs
        # feedback: a key rates only calls on its own routes (team-a may use "simple", not "code")
        rate = lambda secret, call_id: httpx.post(  # noqa: E731
            base + "/feedback",
            json={"call_id": call_id, "accuracy": 1.0},
            headers={"authorization": f"Bearer {secret}"},
        )
        forbidden = rate(SECRET_A, other.id)
        assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "route_not_allowed"
        assert rate(SECRET_A, answers[0].id).status_code == 200 and rate(SECRET_B, other.id).status_code == 200
        app.state.router.flush()
        assert sorted(r["call_id"] for r in rows(sqlite_url, "SELECT call_id FROM feedback")) == sorted(
            [answers[0].id, other.id]
        )
        assert metric(base, "zeta_key_calls_total", key_id="team-a", outcome="ok") == 2
        bare_id = "key-" + __import__("hashlib").sha256(SECRET_B.encode()).hexdigest()[:8]
        assert metric(base, "zeta_key_calls_total", key_id=bare_id, outcome="ok") == 1
        scraped = httpx.get(base.removesuffix("/v1") + "/metrics").text
    assert SECRET_A not in scraped and SECRET_B not in scraped
    logged_keys = [r.getMessage() for r in caplog.records if r.name == "zeta_adaptive.gateway"]
    assert {a.id for a in answers} <= {line.split()[1] for line in logged_keys if " key team-a " in line}
    assert not any(SECRET_A in line or SECRET_B in line for line in caplog.messages)  # the key's id, never the key


def test_ready_fails_while_every_model_cools_down(fleet, sqlite_url, tmp_path):
    cfg = config(fleet, sqlite_url, tmp_path, routes={"simple": ["broken"]})
    cfg["models"] = {"broken": cfg["models"]["broken"]}  # the fleet's other models would keep it ready
    app = create_app(cfg)
    with serving(app) as base:
        root = base.removesuffix("/v1")
        assert httpx.get(root + "/ready").status_code == 200
        with pytest.raises(openai.InternalServerError):  # its retries open the breaker
            client(base).chat.completions.create(model="simple", messages=HELLO)
        ready = httpx.get(root + "/ready")
        assert metric(base, "zeta_breaker_state", model="broken") == 2
    assert ready.status_code == 503 and ready.json()["problems"] == ["every model is cooling down"]


def test_spend_per_day_refuses_once_reached(fleet, sqlite_url, tmp_path, monkeypatch):
    monkeypatch.setenv(KEYS_ENV, f"capped={SECRET_A}")
    cfg = config(
        fleet, sqlite_url, tmp_path, server={"api_keys_env": KEYS_ENV, "keys": {"capped": {"spend_per_day": 0.001}}}
    )
    cfg["models"]["good"]["price_out_per_1k"] = 1.0  # 32 tokens out: 0.032 per call, over the cap at once
    with serving(create_app(cfg)) as base:
        client(base, SECRET_A).chat.completions.create(model="simple", messages=HELLO)
        with pytest.raises(openai.RateLimitError) as capped:
            client(base, SECRET_A).chat.completions.create(model="simple", messages=HELLO)
        assert metric(base, "zeta_key_spend_total", key_id="capped") == pytest.approx(0.032)
    assert capped.value.code == "spend_limit_exceeded"


def test_server_config_is_validated_and_keys_parsed():
    base = {"models": {"m": {"base_url": "http://127.0.0.1:9/v1"}}, "routes": {"r": {"models": ["m"]}}}
    with pytest.raises(ConfigError, match=r"server\.keys"):
        Config.from_dict({**base, "server": {"keys": {"a": {}}}})
    with pytest.raises(ConfigError, match=r"server\.keys\.a\.routes"):
        Config.from_dict({**base, "server": {"api_keys_env": "K", "keys": {"a": {"routes": ["nope"]}}}})
    with pytest.raises(ConfigError, match="requests_per_minute"):
        Config.from_dict({**base, "server": {"api_keys_env": "K", "keys": {"a": {"requests_per_minute": 0}}}})
    cfg = Config.from_dict(
        {**base, "server": {"api_keys_env": "K", "keys": {"a": {"routes": ["r"], "spend_per_day": 2}}}}
    )
    assert Config.from_dict(cfg.to_dict()) == cfg
    keys = load_keys(cfg.server, {"K": "a=s3cret==, plain"})
    assert sorted(k.key_id for k in keys.values()) == sorted(
        ["a", "key-" + __import__("hashlib").sha256(b"plain").hexdigest()[:8]]
    )
    assert next(k for k in keys.values() if k.key_id == "a").limits == KeyLimits(routes=("r",), spend_per_day=2.0)
    assert "s3cret" not in repr(keys) and "plain" not in repr(keys)
    with pytest.raises(ConfigError, match="no client key"):
        load_keys(ServerConfig(api_keys_env="K"), {})


# -- feedback -------------------------------------------------------------------------------------


def test_feedback_over_http(fleet, sqlite_url, tmp_path):
    app = create_app(config(fleet, sqlite_url, tmp_path, routes={"simple": ["good"], "code": ["broken"]}))
    with serving(app) as base:
        answer = client(base).chat.completions.create(model="simple", messages=HELLO)
        with pytest.raises(openai.InternalServerError) as failed:
            client(base).chat.completions.create(model="code", messages=HELLO)
        post = lambda body: httpx.post(base + "/feedback", json=body)  # noqa: E731
        assert post({"call_id": answer.id, "accuracy": 1.5}).status_code == 400
        assert post({"call_id": answer.id, "accuracy": "high"}).status_code == 400
        assert post({"call_id": "0" * 32, "accuracy": 0.5}).status_code == 404
        assert post({"call_id": failed.value.response.headers["x-zeta-call-id"], "accuracy": 0.5}).status_code == 400
        first = post({"call_id": answer.id, "accuracy": 0.8})
        again = post({"call_id": answer.id, "accuracy": 0.9})
        app.state.router.flush()
        prefs = httpx.get(base + "/preferences").json()
    assert first.status_code == 200 and again.status_code == 409 and again.json()["error"]["code"] == "already_rated"
    assert rows(sqlite_url, "SELECT call_id, accuracy, model FROM feedback") == [
        {"call_id": answer.id, "accuracy": 0.8, "model": "good"}
    ]
    assert sum(row["n_rated"] for row in prefs["simple"]) == 1


# -- streams that break or are abandoned ----------------------------------------------------------


def test_stream_broken_after_first_token_ends_with_an_error_event(fleet, sqlite_url, tmp_path):
    app = create_app(config(fleet, sqlite_url, tmp_path, routes={"simple": ["breaks", "good"]}))
    with serving(app) as base:
        stream = client(base).chat.completions.create(model="simple", messages=HELLO, stream=True)
        seen = []
        with pytest.raises(openai.APIError) as broken:
            for chunk in stream:
                seen.append(chunk.choices[0].delta.content)
        app.state.router.flush()
        assert metric(base, "zeta_calls_total", task_type="simple", model="none", outcome="stream_broken") == 1
    assert seen and seen[0] and broken.value.code == "stream_broken"
    attempts = rows(sqlite_url, "SELECT model, outcome FROM attempts")
    assert attempts == [{"model": "breaks", "outcome": "stream_broken"}]  # no fallback once text was shown


def test_client_disconnect_mid_stream_cancels_the_call(fleet, sqlite_url, tmp_path):
    app = create_app(config(fleet, sqlite_url, tmp_path, routes={"simple": ["dribbles"]}))
    with serving(app) as base:
        stream = client(base).chat.completions.create(model="simple", messages=HELLO, stream=True)
        first = next(iter(stream))
        stream.close()  # the client goes away after the first chunk

        def cancelled() -> list[dict[str, Any]]:
            app.state.router.flush()
            return rows(sqlite_url, "SELECT outcome FROM attempts WHERE call_id = :c", c=first.id)

        assert wait_for(cancelled) == [{"outcome": "cancelled"}]
        assert rows(sqlite_url, "SELECT outcome, model FROM calls") == [{"outcome": "failed", "model": None}]
        assert (
            wait_for(lambda: metric(base, "zeta_calls_total", task_type="simple", model="none", outcome="cancelled"))
            == 1
        )


@pytest.mark.parametrize("watch_after_s", [None, 1.0], ids=["watched-when-it-leaves", "gone-before-watched"])
def test_client_leaving_before_the_answer_cancels_the_call(fleet, sqlite_url, tmp_path, monkeypatch, watch_after_s):
    """The client is watched once the call has run WATCH_AFTER_S; one that left before that is seen then."""
    if watch_after_s is not None:  # the client leaves at 0.3 s, the watcher starts at 1 s, the model's timeout is 2 s
        monkeypatch.setattr(gateway, "WATCH_AFTER_S", watch_after_s)
    app = create_app(config(fleet, sqlite_url, tmp_path, routes={"simple": ["hangs"]}))
    with serving(app) as base:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up long before the model's 2 s timeout
            httpx.post(base + "/chat/completions", json={"model": "simple", "messages": HELLO}, timeout=0.3)

        def attempts() -> list[dict[str, Any]]:
            app.state.router.flush()
            return rows(sqlite_url, "SELECT outcome FROM attempts")

        assert wait_for(attempts) == [{"outcome": "cancelled"}]  # not "timeout": the call did not wait for it


def test_client_leaving_while_sending_its_request_is_not_a_call(fleet, sqlite_url, tmp_path, caplog):
    """The chat route reads the body from ASGI itself: a client gone half way through it gets
    nothing, is neither a call nor a refusal, and raises nothing in the server."""
    app = create_app(config(fleet, sqlite_url, tmp_path))
    with serving(app) as base:
        port = int(base.rsplit(":", 1)[1].removesuffix("/v1"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            sock.sendall(f"{head}content-length: 1000\r\n\r\n".encode() + b'{"model": "simple", ')
        answer = client(base).chat.completions.create(model="simple", messages=HELLO)  # still serving
        app.state.router.flush()
        assert [r["call_id"] for r in rows(sqlite_url, "SELECT call_id FROM calls")] == [answer.id]
        assert metric(base, "zeta_refused_requests_total", reason="malformed") == 0
        assert metric(base, "zeta_calls_total", task_type="simple", model="good", outcome="ok") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- the command: SIGTERM, several workers --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_command(cfg: dict[str, Any], tmp_path: Path, workers: int = 1) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`zeta-adaptive serve` in a subprocess, ready; yields it and its /v1 base URL; stopped by PID."""
    path = tmp_path / "gateway.toml"
    path.write_text(_toml(cfg))
    port = free_port()
    cmd = [
        sys.executable,
        "-c",
        "from zeta_adaptive.cli import main; main()",
        "serve",
        "--config",
        str(path),
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # its own process group: the workers it forks can be stopped with it, by its PID
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(base + "/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None  # stop waiting if it died

        wait_for(up, 60)
        assert proc.poll() is None, proc.communicate()[0]
        yield proc, base + "/v1"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)


def _toml(cfg: dict[str, Any]) -> str:
    """A config dict as TOML (the subset fleet configs use)."""

    def value(v: Any) -> str:
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    lines = [f"{k} = {value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    for table in ("models", "routes"):
        for name, spec in cfg[table].items():
            lines.append(f"[{table}.{name}]")
            lines += [f"{k} = {value(v)}" for k, v in spec.items()]
    return "\n".join(lines) + "\n"


def test_sigterm_drains_calls_in_flight(tmp_path, sqlite_url):
    with Fleet([ModelSpec("slow", latency_s=1.0, latency_sigma=0.0)], seed=1) as fleet:
        cfg = config(fleet, sqlite_url, tmp_path, routes={"simple": ["slow"]})
        with serve_command(cfg, tmp_path) as (proc, base), ThreadPoolExecutor(4) as pool:
            calls = [
                pool.submit(client(base).chat.completions.create, model="simple", messages=HELLO) for _ in range(4)
            ]
            assert wait_for(lambda: fleet.requests("slow") == 4)
            proc.send_signal(signal.SIGTERM)
            answers = [c.result(timeout=30) for c in calls]
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    logged = rows(sqlite_url, "SELECT call_id, outcome FROM calls")
    assert sorted(r["call_id"] for r in logged) == sorted(a.id for a in answers)
    assert {r["outcome"] for r in logged} == {"ok"}
    assert len(rows(sqlite_url, "SELECT * FROM attempts")) == 4


def test_two_workers_learn_together(tmp_path, store_url):
    with Fleet([ModelSpec("m1", latency_s=0.0), ModelSpec("m2", latency_s=0.0)], seed=2) as fleet:
        cfg = fleet.fleet_config(
            {"simple": ["m1", "m2"]}, store=store_url, refresh_s=0.2, seed=5, journal_dir=str(tmp_path / "journal")
        )
        calls = 30
        with serve_command(cfg, tmp_path, workers=2) as (_proc, base):
            views: dict[str, float] = {}

            def learned(n: int) -> bool:
                """Whether both workers (each reached on a new connection) have learned n attempts."""
                with httpx.Client(base_url=base) as http:
                    reply = http.get("/preferences")
                views[reply.headers["x-zeta-worker"]] = sum(r["n"] for r in reply.json()["simple"])
                return len(views) == 2 and all(v == n for v in views.values())

            # both workers up before any call (a worker's warm start and first sync may count rows
            # logged just before it started twice: a router issue reported separately)
            assert wait_for(lambda: learned(0), 30), views
            for _ in range(calls):  # a new connection each time, so both workers take calls
                with httpx.Client(base_url=base) as http:
                    assert (
                        http.post("/chat/completions", json={"model": "simple", "messages": HELLO}).status_code == 200
                    )
            assert wait_for(lambda: learned(calls), 20), views
            scraped = httpx.get(base.removesuffix("/v1") + "/metrics").text
            counted = sum(
                float(line.rpartition(" ")[2]) for line in scraped.splitlines() if line.startswith("zeta_calls_total{")
            )
            assert counted == calls  # whichever worker answers, the counters are the sum over both
        logged = rows(store_url, "SELECT count(*) AS n, count(DISTINCT router_id) AS routers FROM attempts")
    assert logged == [{"n": calls, "routers": 2}]  # both workers routed, and each learned every attempt


def test_serve_refuses_a_config_whose_key_variable_is_empty(tmp_path, sqlite_url, monkeypatch):
    from click.testing import CliRunner

    from zeta_adaptive.cli import main

    monkeypatch.delenv(KEYS_ENV, raising=False)
    path = tmp_path / "gateway.toml"
    path.write_text(
        _toml(
            {
                "store": sqlite_url,
                "models": {"m": {"base_url": "http://127.0.0.1:9/v1"}},
                "routes": {"r": {"models": ["m"]}},
            }
        )
        + f'[server]\napi_keys_env = "{KEYS_ENV}"\n'
    )
    result = CliRunner().invoke(main, ["serve", "--config", str(path), "--port", str(free_port())])
    assert result.exit_code == 1 and f"${KEYS_ENV} holds no client key" in result.output
