"""Compatibility with a real OpenAI-compatible server nobody here wrote: a LiteLLM proxy.

The proxy runs on 127.0.0.1 with ``mock_response`` models (no network) behind a master key; the
router sends chat, a stream and embeddings through it and the test checks tokens, cost, fallback
and the log. Run by ``make compat`` (which installs the ``compat`` extra and sets ZETA_COMPAT=1);
skipped otherwise, since the proxy takes up to a minute to start.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from zeta_adaptive import Router, Store

if os.environ.get("ZETA_COMPAT") != "1":
    pytest.skip("compatibility tests run with ZETA_COMPAT=1 (make compat)", allow_module_level=True)
if importlib.util.find_spec("litellm") is None or importlib.util.find_spec("fastapi") is None:
    pytest.skip("the compat extra (litellm[proxy]) is not installed", allow_module_level=True)

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
    litellm = Path(sys.executable).with_name("litellm")
    log = open(folder / "proxy.log", "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen(
        [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
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
