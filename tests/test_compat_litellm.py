"""Compatibility with a real OpenAI-compatible server nobody here wrote: a LiteLLM proxy.

The proxy runs on 127.0.0.1 with ``mock_response`` models (no network) behind a master key; the
router sends chat, a stream and embeddings through it and the test checks tokens, cost, fallback
and the log, and how the router reads LiteLLM's own errors (a context window exceeded, a rate
limit, an unknown model name, a stream that breaks). The proxy comes from a venv of its own
(``.venv-litellm``, made by ``make test`` and ``make compat``, which name its command in
``ZETA_LITELLM``); without the variable the file looks for ``litellm`` beside this Python and is
skipped if there is none, so a bare ``pytest`` still runs.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import serving

from zeta_adaptive import Router, Store

#: the proxy's command: ZETA_LITELLM (which must then exist), else ``litellm`` beside this Python
LITELLM = Path(os.environ.get("ZETA_LITELLM") or Path(sys.executable).with_name("litellm"))
if "ZETA_LITELLM" not in os.environ and not LITELLM.exists():
    pytest.skip("no LiteLLM proxy: `make test` or `make compat` installs one in .venv-litellm", allow_module_level=True)

pytestmark = [
    pytest.mark.compat,
    pytest.mark.timeout(400),
    pytest.mark.slow,
    pytest.mark.integration,
]  # a LiteLLM proxy process

MSG = [{"role": "user", "content": "hi there"}]
#: the most the proxy may take to start on a loaded machine
START_S = 300.0

PROXY_CONFIG = """
model_list:
  - model_name: small
    litellm_params: {model: openai/small, api_key: unused, mock_response: "hello from small"}
  - model_name: big
    litellm_params: {model: openai/big, api_key: unused, mock_response: "hello from big"}
  - model_name: broken
    litellm_params: {model: openai/broken, api_key: unused, api_base: "http://127.0.0.1:%(dead)d/v1"}
  - model_name: emb
    litellm_params: {model: openai/text-embedding-3-small, api_key: unused, mock_response: [0.1, 0.2, 0.3]}
  - model_name: tight
    litellm_params: {model: openai/tight, api_key: unused, mock_response: "litellm.ContextWindowExceededError"}
  - model_name: limited
    litellm_params: {model: openai/limited, api_key: unused, mock_response: "litellm.RateLimitError"}
  - model_name: flaky
    litellm_params: {model: openai/flaky, api_key: unused, mock_response: "Exception: mock_streaming_error"}
litellm_settings: {num_retries: 0, request_timeout: 5}
router_settings: {num_retries: 0}
general_settings: {master_key: os.environ/ZETA_COMPAT_MASTER_KEY}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """A LiteLLM proxy on 127.0.0.1: yields its /v1 base URL and the key's variable name."""
    folder = tmp_path_factory.mktemp("litellm")
    config = folder / "config.yaml"
    config.write_text(PROXY_CONFIG % {"dead": _free_port()})
    port = _free_port()
    key = "sk-" + secrets.token_hex(24)
    env = {**os.environ, "ZETA_COMPAT_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    if not LITELLM.exists():
        pytest.fail(f"ZETA_LITELLM names {LITELLM}, which does not exist")
    log = open(folder / "proxy.log", "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen(
        [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"the LiteLLM proxy exited with {process.returncode}: {(folder / 'proxy.log').read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{base}/health/liveliness", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the LiteLLM proxy did not start within {START_S} s")
            time.sleep(0.5)
        os.environ["ZETA_COMPAT_KEY"] = key  # the router's models name this variable in api_key_env
        yield f"{base}/v1"
    finally:
        os.environ.pop("ZETA_COMPAT_KEY", None)
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _config(base: str, url: str) -> dict:
    def model(name: str, **extra) -> dict:
        return {"base_url": base, "model": name, "api_key_env": "ZETA_COMPAT_KEY", "timeout_s": 20.0, **extra}

    return {
        "store": url,
        "deadline_s": 60.0,
        "models": {
            "small": model("small", price_in_per_1k=1.0, price_out_per_1k=2.0),
            "big": model("big"),
            "broken": model("broken"),
            "emb": model("emb", kind="embedding", dim=3),
        },
        "routes": {
            "simple": {"models": ["small"], "policy": "static"},
            "fallback": {"models": ["broken", "big"], "policy": "static"},
            "embedding": {"models": ["emb"], "policy": "static"},
        },
    }


def test_chat_stream_embeddings_and_fallback_through_litellm(proxy, sqlite_url):
    with Router(_config(proxy, sqlite_url)) as router:
        chat = router.chat("simple", MSG, max_tokens=16)
        stream = router.chat("simple", MSG, stream=True, stream_options={"include_usage": True})
        deltas = list(stream)
        fell_back = router.chat("fallback", MSG)
        vectors = router.embed(["one text"])  # LiteLLM's mock answers one vector whatever the input count
    assert chat.text == "hello from small" and chat.model == "small"
    assert chat.tokens_in > 0 and chat.tokens_out > 0
    assert chat.cost == pytest.approx(chat.tokens_in / 1000 * 1.0 + chat.tokens_out / 1000 * 2.0) and chat.cost > 0
    assert "".join(deltas) == stream.result.text == "hello from small" and len(deltas) > 1
    assert stream.result.tokens_in > 0 and stream.result.tokens_out > 0 and stream.result.cost > 0
    assert [(a.model, a.outcome, a.status) for a in fell_back.attempts] == [
        ("broken", "server_error", 500),
        ("big", "ok", 200),
    ]
    assert fell_back.text == "hello from big"
    assert vectors.vectors.shape == (1, 3) and vectors.tokens_in > 0
    store = Store(sqlite_url)
    try:
        calls, attempts = store.frame("calls"), store.frame("attempts")
    finally:
        store.close()
    assert len(calls) == 4 and (calls["outcome"] == "ok").all()
    logged = attempts.set_index("call_id")
    assert logged.loc[chat.call_id, "tokens_out"] == chat.tokens_out and logged.loc[
        chat.call_id, "cost"
    ] == pytest.approx(chat.cost)
    assert sorted(attempts[attempts["call_id"] == fell_back.call_id]["outcome"]) == ["ok", "server_error"]


def test_litellm_errors_read_as_what_they_are_and_the_key_stays_out_of_the_log(proxy, sqlite_url):
    """LiteLLM's own refusals (its mock errors: a context window exceeded, a rate limit, a stream
    that fails before its first chunk) and its answer to an unknown model name each get their
    outcome, and the call moves on to the next model; the proxy's key is nowhere in the log file."""
    config = _config(proxy, sqlite_url)
    for name in ("tight", "limited", "flaky", "nosuch"):
        config["models"][name] = {**config["models"]["big"], "model": name}
    for route, first in (("long", "tight"), ("busy", "limited"), ("streamed", "flaky"), ("typo", "nosuch")):
        config["routes"][route] = {"models": [first, "big"], "policy": "static"}
    with Router(config) as router:
        long, busy, typo = (router.chat(route, MSG) for route in ("long", "busy", "typo"))
        stream = router.chat("streamed", MSG, stream=True)
        text = "".join(stream)

    def tried(result):
        return [(a.model, a.outcome, a.status) for a in result.attempts]

    assert tried(long) == [("tight", "context_exceeded", 400), ("big", "ok", 200)]
    assert tried(busy) == [("limited", "rate_limited", 429), ("big", "ok", 200)]
    assert tried(typo) == [("nosuch", "client_error", 400), ("big", "ok", 200)]
    assert "Invalid model name" in typo.attempts[0].error  # a misconfigured endpoint: the call moved on
    assert tried(stream.result)[0][:2] == ("flaky", "server_error") and tried(stream.result)[1] == ("big", "ok", 200)
    assert text == stream.result.text == "hello from big"
    assert all(r.text == "hello from big" for r in (long, busy, typo))
    key = os.environ.get("ZETA_COMPAT_KEY") or ""
    assert key.startswith("sk-")
    database = Path(sqlite_url.removeprefix("sqlite:///"))
    written = [p for p in database.parent.iterdir() if p.name.startswith(database.name)]
    assert written and not any(key.encode() in p.read_bytes() for p in written)


def test_the_openai_client_through_the_gateway_to_litellm(proxy, sqlite_url, tmp_path):
    """The whole path with parts nobody here wrote at both ends: the official ``openai`` client, the
    gateway, the router, a LiteLLM proxy; an answer, a stream with its usage, embeddings, a fallback
    past LiteLLM's rate limit, each one logged call with the tokens the proxy counted."""
    openai = pytest.importorskip("openai")
    from zeta_adaptive.gateway import create_app

    config = _config(proxy, sqlite_url)
    config["models"]["limited"] = {**config["models"]["big"], "model": "limited"}
    config["routes"]["busy"] = {"models": ["limited", "big"], "policy": "static"}
    config["journal_dir"] = str(tmp_path / "journal")
    app = create_app(config)
    with serving(app) as base:
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=30)
        answer = client.chat.completions.create(model="simple", messages=MSG, max_tokens=16)
        chunks = list(
            client.chat.completions.create(
                model="simple", messages=MSG, stream=True, stream_options={"include_usage": True}
            )
        )
        busy = client.chat.completions.with_raw_response.create(model="busy", messages=MSG)
        vectors = client.embeddings.create(model="embedding", input=["one text"])
        app.state.router.flush()
        store = Store(sqlite_url)
        try:
            calls, attempts = store.frame("calls"), store.frame("attempts")
        finally:
            store.close()
    assert answer.choices[0].message.content == "hello from small" and answer.usage.completion_tokens > 0
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert text == "hello from small" and len(usage) == 1 and usage[0].completion_tokens > 0
    assert busy.headers["x-zeta-model"] == "big" and busy.parse().choices[0].message.content == "hello from big"
    assert len(vectors.data) == 1 and len(vectors.data[0].embedding) == 3
    assert sorted(calls["task_type"]) == ["busy", "embedding", "simple", "simple"]
    logged = attempts.set_index("call_id")
    assert logged.loc[answer.id, "tokens_out"] == answer.usage.completion_tokens
    assert sorted(attempts[attempts["call_id"] == busy.parse().id]["outcome"]) == ["ok", "rate_limited"]
