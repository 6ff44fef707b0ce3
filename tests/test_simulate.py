"""Tests of the simulated fleet, over real loopback HTTP with httpx."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from zeta_adaptive._backends import HttpxBackend, Reply
from zeta_adaptive._config import ModelConfig
from zeta_adaptive._exceptions import ConfigError
from zeta_adaptive.simulate import Fleet, FleetTransport, ModelSpec, Step, example_fleet, example_routes, mock_fleet

MakeFleet = Callable[..., Fleet]
CHAT = [{"role": "user", "content": "What is two plus two? Please answer."}]


@pytest.fixture
def make_fleet() -> Iterator[MakeFleet]:
    """Build and start fleets that are closed at the end of the test."""
    fleets: list[Fleet] = []

    def make(*specs: ModelSpec, seed: int = 0) -> Fleet:
        fleet = Fleet(specs, seed=seed).start()
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.close()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """One keep-alive HTTP client for the module, as a router would use."""
    with httpx.Client(timeout=2.0) as shared:
        yield shared


def chat(client: httpx.Client, fleet: Fleet, name: str, timeout: float = 2.0, **body: Any) -> httpx.Response:
    """Post one chat completion request to a model of the fleet."""
    payload = {"model": name, "messages": CHAT, **body}
    return client.post(f"{fleet.base_url(name)}/chat/completions", json=payload, timeout=timeout)


def embed(client: httpx.Client, fleet: Fleet, name: str, texts: str | list[str]) -> httpx.Response:
    """Post one embeddings request to a model of the fleet."""
    return client.post(f"{fleet.base_url(name)}/embeddings", json={"model": name, "input": texts})


@pytest.mark.integration
def test_chat_success_has_openai_shape_and_usage(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0, tokens_out=12))
    response = chat(client, fleet, "m")
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "m"
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert "m" in choice["message"]["content"]
    prompt = len(CHAT[0]["content"]) // 4 + 4  # four characters per token plus the per-message overhead
    assert body["usage"] == {"prompt_tokens": prompt, "completion_tokens": 12, "total_tokens": prompt + 12}
    capped = chat(client, fleet, "m", max_tokens=5).json()
    assert capped["usage"]["completion_tokens"] == 5
    assert capped["choices"][0]["finish_reason"] == "length"


@pytest.mark.integration
def test_task_header_is_echoed_in_the_answer(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0))
    url = f"{fleet.base_url('m')}/chat/completions"
    body = client.post(url, json={"messages": CHAT}, headers={"X-Sim-Task": "code"}).json()
    assert "[code]" in body["choices"][0]["message"]["content"]


@pytest.mark.integration
def test_embeddings_are_deterministic_unit_vectors(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("e", kind="embedding", dim=16, latency_s=0.0))
    body = embed(client, fleet, "e", ["alpha", "beta"]).json()
    assert body["object"] == "list" and body["model"] == "e"
    assert [item["index"] for item in body["data"]] == [0, 1]
    vectors = [item["embedding"] for item in body["data"]]
    assert all(len(v) == 16 and math.isclose(float(np.linalg.norm(v)), 1.0) for v in vectors)
    assert vectors[0] != vectors[1]
    assert embed(client, fleet, "e", "alpha").json()["data"][0]["embedding"] == vectors[0]
    assert body["usage"]["prompt_tokens"] >= 1


@pytest.mark.integration
def test_invalid_requests_get_4xx(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0), ModelSpec("e", kind="embedding", latency_s=0.0))
    assert embed(client, fleet, "m", "text").status_code == 400
    assert chat(client, fleet, "e").status_code == 400
    url = fleet.base_url("m")
    assert client.post(f"{url}/chat/completions", content=b"{not json").status_code == 400
    assert client.post(f"{url}/chat/completions", json={"messages": "hi"}).status_code == 400
    assert client.post(f"{url}/nowhere", json={}).status_code == 404
    assert client.get(f"{url}/nowhere").status_code == 404


@pytest.mark.integration
def test_models_endpoint_lists_the_model(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m"))
    body = client.get(f"{fleet.base_url('m')}/models").json()
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == ["m"]


@pytest.mark.integration
def test_error_rate_one_gives_500_with_json_error(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", error_rate=1.0))
    response = chat(client, fleet, "m")
    assert response.status_code == 500
    assert "error" in response.json()


@pytest.mark.integration
def test_rate_limit_gives_429_with_retry_after(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", rate_limit_rate=1.0, retry_after_s=2.5))
    response = chat(client, fleet, "m")
    assert response.status_code == 429
    assert float(response.headers["Retry-After"]) == 2.5


@pytest.mark.integration
def test_malformed_answer_is_not_json(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0, malformed_rate=1.0))
    response = chat(client, fleet, "m")
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)


@pytest.mark.integration
def test_empty_answer_has_no_choices(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0, empty_rate=1.0))
    response = chat(client, fleet, "m")
    assert response.status_code == 200
    assert response.json()["choices"] == []


@pytest.mark.integration
def test_hang_times_out_and_close_does_not_wait_for_it(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", hang_rate=1.0, hang_s=5.0))
    with pytest.raises(httpx.ReadTimeout):
        chat(client, fleet, "m", timeout=0.2)
    started = time.perf_counter()
    fleet.close()
    assert time.perf_counter() - started < 1.0
    fleet.close()


@pytest.mark.integration
def test_down_refuses_connections_and_up_serves_on_the_same_url(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0))
    url = fleet.base_url("m")
    assert client.get(f"{url}/models").status_code == 200  # leaves a keep-alive connection open
    fleet.update("m", down=True)
    with pytest.raises(httpx.ConnectError):
        client.get(f"{url}/models")
    fleet.update("m", down=False)
    assert fleet.base_url("m") == url
    assert client.get(f"{url}/models").status_code == 200


@pytest.mark.integration
def test_down_at_start_reserves_a_port(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0, down=True))
    with pytest.raises(httpx.ConnectError):
        chat(client, fleet, "m")
    fleet.update("m", down=False)
    assert chat(client, fleet, "m").status_code == 200


@pytest.mark.integration
def test_update_changes_behaviour_at_run_time(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0))
    assert chat(client, fleet, "m").status_code == 200
    fleet.update("m", error_rate=1.0, latency_s=0.2)
    assert chat(client, fleet, "m").status_code == 500
    assert fleet.spec("m").latency_s == 0.2
    fleet.update("m", error_rate=0.0, latency_s=0.0)
    assert chat(client, fleet, "m").status_code == 200
    with pytest.raises(TypeError):
        fleet.update("m", no_such_field=1)
    with pytest.raises(ValueError):
        fleet.update("m", error_rate=1.5)
    with pytest.raises(ValueError):
        fleet.update("m", name="other")
    with pytest.raises(KeyError):
        fleet.update("missing", error_rate=0.5)


@pytest.mark.integration
def test_spec_returns_a_copy(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(ModelSpec("m", accuracy={"code": 0.9}))
    fleet.spec("m").accuracy["code"] = 0.1
    assert fleet.spec("m").accuracy == {"code": 0.9}


@pytest.mark.integration
def test_requests_are_counted(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("a", latency_s=0.0), ModelSpec("b", latency_s=0.0, error_rate=1.0))
    for _ in range(3):
        chat(client, fleet, "a")
    chat(client, fleet, "b")
    assert fleet.requests("a") == 3
    assert fleet.requests("b") == 1


@pytest.mark.integration
def test_same_seed_gives_same_faults(make_fleet: MakeFleet, client: httpx.Client) -> None:
    def statuses(fleet: Fleet) -> list[int]:
        return [chat(client, fleet, "m").status_code for _ in range(20)]

    spec = ModelSpec("m", latency_s=0.0, error_rate=0.5)
    first = statuses(make_fleet(spec, seed=7))
    assert first == statuses(make_fleet(spec, seed=7))
    assert {200, 500} == set(first)


def stream_lines(client: httpx.Client, fleet: Fleet, name: str, timeout: float = 2.0, **body: Any) -> list[str]:
    """Stream one chat completion and return its non-blank SSE lines."""
    payload = {"model": name, "messages": CHAT, "stream": True, **body}
    url = f"{fleet.base_url(name)}/chat/completions"
    with client.stream("POST", url, json=payload, timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line for line in response.iter_lines() if line]


@pytest.mark.integration
def test_stream_sends_sse_chunks_then_done(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0, chunk_delay_s=0.001))
    lines = stream_lines(client, fleet, "m", stream_options={"include_usage": True})
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    *content, usage = chunks  # as OpenAI and vLLM send it: usage alone in a last chunk, when asked
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in content)
    assert text.startswith("answer from m")
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 32
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in content[:-1])
    assert all("usage" not in chunk for chunk in content)
    unasked = [json.loads(line.removeprefix("data: ")) for line in stream_lines(client, fleet, "m")[:-1]]
    assert unasked and all("usage" not in chunk for chunk in unasked)


@pytest.mark.integration
def test_broken_stream_is_cut_before_done(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0, break_stream_rate=1.0))
    with pytest.raises(httpx.RemoteProtocolError):
        stream_lines(client, fleet, "m")


@pytest.mark.integration
def test_stalled_stream_times_out(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0, stall_first_token_rate=1.0, hang_s=5.0))
    with pytest.raises(httpx.ReadTimeout):
        stream_lines(client, fleet, "m", timeout=0.2)
    started = time.perf_counter()
    fleet.close()
    assert time.perf_counter() - started < 1.0


@pytest.mark.integration
def test_sample_accuracy_matches_the_spec_means() -> None:
    fleet = Fleet([ModelSpec("m", accuracy={"code": 0.85, "simple": 0.3}, default_accuracy=0.6)], seed=3)
    for task, mean in (("code", 0.85), ("simple", 0.3), ("other", 0.6)):
        draws = [fleet.sample_accuracy("m", task) for _ in range(2000)]
        assert all(0.0 <= d <= 1.0 for d in draws)
        assert abs(statistics.fmean(draws) - mean) < 0.03
    seeded = [fleet.sample_accuracy("m", "code", rng=np.random.default_rng(1)) for _ in range(2)]
    assert seeded[0] == seeded[1]


@pytest.mark.integration
def test_fleet_config_has_models_and_default_routes(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(
        ModelSpec("e", kind="embedding", dim=4),
        ModelSpec("a", accuracy={"code": 0.8}),
        ModelSpec("b", accuracy={"simple": 0.7}),
    )
    config = fleet.fleet_config(store="sqlite:///x.db", deadline_s=5.0)
    assert config["store"] == "sqlite:///x.db" and config["deadline_s"] == 5.0
    embedding = {"base_url": fleet.base_url("e"), "kind": "embedding", "timeout_s": 2.0, "dim": 4}
    assert config["models"]["e"] == embedding
    assert config["models"]["a"] == {"base_url": fleet.base_url("a"), "kind": "chat", "timeout_s": 2.0}
    assert config["routes"] == {
        "code": {"models": ["a", "b"]},
        "simple": {"models": ["a", "b"]},
        "embedding": {"models": ["e"]},
    }
    assert "store" not in fleet.fleet_config()
    assert fleet.fleet_config(routes={"code": ["b"]})["routes"] == {"code": {"models": ["b"]}}
    with pytest.raises(KeyError):
        fleet.fleet_config(routes={"code": ["missing"]})


@pytest.mark.integration
def test_example_fleet_serves_its_routes(client: httpx.Client) -> None:
    with example_fleet() as fleet:
        config = fleet.fleet_config(routes=example_routes())
        assert set(config["models"]) == {"embed-4b", "coder-7b", "reasoner-14b", "general-7b"}
        assert config["routes"]["code"]["models"][0] == "coder-7b"
        assert chat(client, fleet, "general-7b").status_code == 200
        assert len(embed(client, fleet, "embed-4b", "x").json()["data"][0]["embedding"]) == 8


@pytest.mark.integration
def test_latency_roughly_matches_the_median(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("slow", latency_s=0.05, latency_sigma=0.0), ModelSpec("fast", latency_s=0.0))

    def timed(name: str) -> float:
        started = time.perf_counter()
        client.post(f"{fleet.base_url(name)}/chat/completions", json={"messages": CHAT}).raise_for_status()
        return time.perf_counter() - started

    slow = statistics.median(timed("slow") for _ in range(5))
    fast = statistics.median(timed("fast") for _ in range(20))
    assert 0.045 <= slow < 0.2
    assert fast < 0.02


@pytest.mark.integration
def test_model_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        ModelSpec("m", kind="vision")
    with pytest.raises(ValueError):
        ModelSpec("m", latency_s=-1.0)
    with pytest.raises(ValueError):
        ModelSpec("m", accuracy={"code": 1.2})
    with pytest.raises(ValueError):
        Fleet([ModelSpec("m"), ModelSpec("m")])


# -- strict like real servers (issue 14) ---------------------------------------------------------------


@pytest.mark.integration
def test_unknown_model_name_gets_openai_404(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0))
    response = chat(client, fleet, "m", model="gpt-9")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found" and "gpt-9" in response.json()["error"]["message"]
    url = f"{fleet.base_url('m')}/chat/completions"
    assert client.post(url, json={"messages": CHAT}).status_code == 200  # no model: the served one, as vLLM does


@pytest.mark.integration
def test_a_configured_key_is_required(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0, api_key="sk-sim"))
    url = f"{fleet.base_url('m')}/chat/completions"
    missing = client.post(url, json={"model": "m", "messages": CHAT})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert (
        client.post(url, json={"model": "m", "messages": CHAT}, headers={"Authorization": "Bearer wrong"}).status_code
        == 401
    )
    assert (
        client.post(url, json={"model": "m", "messages": CHAT}, headers={"Authorization": "Bearer sk-sim"}).status_code
        == 200
    )


@pytest.mark.integration
def test_prompt_beyond_the_context_window_gets_vllm_400(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0, context_window=100))
    long = [{"role": "user", "content": "x" * 400}]  # 100 + 4 tokens
    response = chat(client, fleet, "m", messages=long)
    assert response.status_code == 400
    body = response.json()
    assert body["object"] == "error" and body["message"].startswith(
        "This model's maximum context length is 100 tokens."
    )
    assert "104 in the messages" in body["message"]
    assert chat(client, fleet, "m", messages=[{"role": "user", "content": "x" * 300}], max_tokens=30).status_code == 400
    assert chat(client, fleet, "m", messages=[{"role": "user", "content": "x" * 300}], max_tokens=20).status_code == 200


@pytest.mark.integration
def test_n_and_stop_are_honoured(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0, tokens_out=12))
    body = chat(client, fleet, "m", n=3, stop=["careful"]).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    text = body["choices"][0]["message"]["content"]
    assert "careful" not in text and text.endswith("from a ") and body["choices"][0]["finish_reason"] == "stop"
    assert chat(client, fleet, "m", n=0).status_code == 400
    assert chat(client, fleet, "m", stop=[1]).status_code == 400


@pytest.mark.integration
def test_streams_can_carry_an_error_event(make_fleet: MakeFleet, client: httpx.Client) -> None:
    fleet = make_fleet(ModelSpec("m", latency_s=0.0, stream_error_rate=1.0))
    lines = stream_lines(client, fleet, "m")
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))
    assert error["error"]["message"] == "simulated engine failure"
    assert len(lines) == 2 + 2  # two content chunks, then the error event and [DONE]


@pytest.mark.integration
def test_hostile_faults_drip_and_gzip_bomb_are_bounded_by_the_router(make_fleet: MakeFleet, tmp_path) -> None:
    from zeta_adaptive import Router

    fleet = make_fleet(
        ModelSpec("drip", latency_s=0.0, drip_rate=1.0, hang_s=5.0),
        ModelSpec("bomb", latency_s=0.0, bomb_rate=1.0),
        ModelSpec("ok", latency_s=0.0),
    )
    cfg = fleet.fleet_config({"simple": ["drip", "bomb", "ok"]}, store=f"sqlite:///{tmp_path / 'z.db'}", deadline_s=5.0)
    cfg["routes"]["simple"]["policy"] = "static"
    cfg["models"]["drip"]["timeout_s"] = 0.5
    with Router(cfg) as router:
        result = router.chat("simple", CHAT)
        stream = router.chat("simple", CHAT, stream=True)
        assert "".join(stream).startswith("answer from ok")
    assert result.model == "ok"
    for attempts in (result.attempts, stream.result.attempts):
        assert [(a.model, a.outcome) for a in attempts] == [("drip", "timeout"), ("bomb", "malformed"), ("ok", "ok")]
        assert attempts[0].latency_s < 0.5 + 0.25


@pytest.mark.integration
def test_a_fleet_key_must_be_configured_and_sent(make_fleet: MakeFleet, tmp_path, monkeypatch) -> None:
    from zeta_adaptive import AllModelsFailed, ConfigError, Router
    from zeta_adaptive.simulate import api_key_env

    fleet = make_fleet(ModelSpec("keyed", latency_s=0.0, api_key="sk-sim-1"))
    cfg = fleet.fleet_config({"simple": ["keyed"]}, store=f"sqlite:///{tmp_path / 'z.db'}")
    assert cfg["models"]["keyed"]["api_key_env"] == api_key_env("keyed")
    monkeypatch.delenv(api_key_env("keyed"), raising=False)
    with pytest.raises(ConfigError, match=api_key_env("keyed")):
        Router(cfg)
    monkeypatch.setenv(api_key_env("keyed"), "sk-sim-1")
    with Router(cfg) as router:
        assert router.chat("simple", CHAT).model == "keyed"
    monkeypatch.setenv(api_key_env("keyed"), "sk-wrong")
    with Router(cfg) as router:
        with pytest.raises(AllModelsFailed) as info:
            router.chat("simple", CHAT)
    [attempt] = info.value.attempts
    assert (attempt.outcome, attempt.status) == ("client_error", 401)
    assert "sk-wrong" not in str(info.value)


@pytest.mark.integration
def test_config_fleet_serves_each_model_under_the_name_the_router_sends(tmp_path) -> None:
    import socket

    from zeta_adaptive import AllModelsFailed, Config, Router
    from zeta_adaptive.simulate import config_fleet

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = Config.from_dict(
        {
            "store": f"sqlite:///{tmp_path / 'z.db'}",
            "models": {
                "small": {
                    "base_url": f"http://127.0.0.1:{port}/v1",
                    "model": "qwen2.5-7b-instruct",
                    "context_window": 64,
                }
            },
            "routes": {"simple": {"models": ["small"]}},
        }
    )
    with config_fleet(cfg) as fleet, Router(cfg) as router:
        assert fleet.spec("small").served_name == "qwen2.5-7b-instruct"
        assert router.chat("simple", CHAT).model == "small"
        with pytest.raises(AllModelsFailed) as info:
            router.chat("simple", [{"role": "user", "content": "x" * 400}])
    assert [(a.outcome, a.status) for a in info.value.attempts] == [("context_exceeded", 400)]


# -- the same models in process, as httpx transports ------------------------------------------------------

#: (script step, how a plain call ends, how a streamed one ends)
FATES = [
    ("ok", "ok", "ok"),
    ("error", "server_error", "server_error"),
    (Step("error", status=404, message="no such model"), "client_error", "client_error"),
    ("rate_limit", "rate_limited", "rate_limited"),
    ("malformed", "malformed", "malformed"),
    ("empty", "malformed", "malformed"),
    ("hang", "timeout", "timeout"),
    (Step(latency_s=5.0), "timeout", "timeout"),
    ("stall", "ok", "timeout"),
    ("break", "ok", "stream_broken"),
    ("stream_error", "ok", "stream_broken"),
    ("disconnect", "connect_error", "connect_error"),
    ("bomb", "malformed", "malformed"),
]


def _carried(fleet: Fleet, transports: dict[str, FleetTransport] | None) -> list[Reply]:
    """A plain, an async and a streamed chat to model m, and an embedding from e, through a backend
    on the fleet's transports (None: over loopback HTTP to the started fleet)."""

    def url(name: str) -> str:
        return "http://in-process/v1" if transports else fleet.base_url(name)

    m = ModelConfig("m", url("m"), timeout_s=0.5, first_token_timeout_s=0.3, max_response_bytes=1 << 16)
    e = ModelConfig("e", url("e"), kind="embedding", dim=4)
    backend = HttpxBackend({"m": m, "e": e}, transports)
    try:
        plain = backend.chat(m, CHAT, {}, m.timeout_s)
        later = asyncio.run(backend.achat(m, CHAT, {}, m.timeout_s))
        *_, streamed = backend.stream_chat(m, CHAT, {}, m.timeout_s, 0.3)
        vectors = backend.embed(e, ["x", "y"], 1.0)
    finally:
        backend.close()
    assert isinstance(streamed, Reply)
    return [plain, later, streamed, vectors]


@pytest.mark.parametrize("step, plain, streamed", FATES, ids=[str(f[0]) for f in FATES])
@pytest.mark.integration
def test_a_scripted_answer_ends_alike_over_loopback_and_in_process(step: Any, plain: str, streamed: str) -> None:
    """One spec, its answers carried by the loopback server and by the in-process transport: the
    backend's real parsing sees the same outcome, status and text either way."""
    specs = [ModelSpec("m", latency_s=0.001, hang_s=2.0, script=[step]), ModelSpec("e", kind="embedding", dim=4)]
    with Fleet(specs) as served:
        over_http = _carried(served, None)
    in_process = Fleet(specs)
    replies = _carried(in_process, in_process.transports())
    assert [r.outcome for r in replies] == [plain, plain, streamed, "ok"]
    assert [r.outcome for r in over_http] == [r.outcome for r in replies]
    assert [(r.status, r.text) for r in over_http] == [(r.status, r.text) for r in replies]
    assert in_process.requests("m") == 3 and in_process.requests("e") == 1


def test_a_script_plays_in_order_and_restarts_when_updated() -> None:
    fleet = Fleet([ModelSpec("m", latency_s=0.0, script=["error", Step("error", status=503), "ok"])], record=True)
    with httpx.Client(transport=fleet.transport("m"), base_url="http://m/v1") as client:
        statuses = [client.post("/chat/completions", json={"messages": CHAT}).status_code for _ in range(4)]
        fleet.update("m", script=[Step(text="scripted")])
        body = client.post("/chat/completions", json={"messages": CHAT, "n": 2}).json()
        assert client.get("/models").json()["data"][0]["id"] == "m"
    assert statuses == [500, 503, 200, 200]  # the last step repeats
    assert [c["message"]["content"] for c in body["choices"]] == ["scripted", "scripted"]
    assert [payload.get("n") for _, payload in fleet.received] == [None] * 4 + [2]  # GETs are not recorded


def test_the_transport_is_as_strict_as_the_server() -> None:
    fleet = Fleet([ModelSpec("m", api_key="sk-sim", context_window=50)])
    transport = fleet.transport("m")
    with httpx.Client(transport=transport, base_url="http://m/v1") as client:
        assert client.post("/chat/completions", json={"messages": CHAT}).status_code == 401
        auth = {"Authorization": "Bearer sk-sim"}
        wrong = client.post("/chat/completions", json={"model": "x", "messages": CHAT}, headers=auth)
        assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"
        long = client.post("/chat/completions", json={"messages": CHAT, "max_tokens": 100}, headers=auth)
        assert long.status_code == 400 and "maximum context length is 50 tokens" in long.json()["message"]
        assert client.post("/embeddings", json={"input": ["x"]}, headers=auth).status_code == 400  # a chat model
    fleet.update("m", down=True)
    with pytest.raises(httpx.ConnectError), httpx.Client(transport=transport) as client:
        client.get("http://m/v1/models")
    assert repr(transport) == "FleetTransport('m')"


def test_the_transport_times_out_at_the_read_timeout_sync_and_async() -> None:
    fleet = Fleet([ModelSpec("m", latency_s=0.0, script=[Step(latency_s=3.0)])])
    request = {"messages": CHAT}
    with httpx.Client(transport=fleet.transport("m"), timeout=0.1) as client:
        start = time.perf_counter()
        with pytest.raises(httpx.ReadTimeout):
            client.post("http://m/v1/chat/completions", json=request)
        assert time.perf_counter() - start < 2.0  # the wait stopped at the timeout, not the 3 s answer

    async def main() -> None:
        async with httpx.AsyncClient(transport=fleet.transport("m"), timeout=0.1) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post("http://m/v1/chat/completions", json=request)

    asyncio.run(main())


def test_mock_fleet_simulates_the_config_and_rejects_unknown_specs() -> None:
    config = {
        "models": {
            "a": {"base_url": "http://a/v1", "model": "served-a", "context_window": 64},
            "e": {"base_url": "http://e/v1", "kind": "embedding", "dim": 3},
        },
        "routes": {"simple": {"models": ["a"]}, "embedding": {"models": ["e"]}},
    }
    fleet = mock_fleet(config, ModelSpec("a", tokens_out=3), latency_s=0.0)
    assert (fleet.spec("a").served_name, fleet.spec("a").context_window, fleet.spec("a").tokens_out) == (
        "served-a",
        64,
        3,
    )
    assert (fleet.spec("e").kind, fleet.spec("e").dim, fleet.spec("e").latency_s) == ("embedding", 3, 0.0)
    assert set(fleet.transports()) == {"a", "e"}
    with pytest.raises(ValueError, match="not in the config"):
        mock_fleet(config, ModelSpec("zz"))


@pytest.mark.parametrize(
    "step, message",
    [
        ("nap", "fate must be one of"),
        ({"status": 200}, "HTTP error status"),
        ({"latency_s": -1.0}, "latency_s"),
        ({"text": ""}, "text must not be empty"),
    ],
)
def test_steps_reject_what_no_server_could_play(step: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSpec("m", script=[step if isinstance(step, str) else Step(**step)])


def test_a_transport_must_be_an_httpx_transport_for_a_configured_model() -> None:
    models = {"m": ModelConfig("m", "http://m/v1")}
    with pytest.raises(ConfigError, match="not an httpx transport"):
        HttpxBackend(models, {"m": object()})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="'x', which is not configured"):
        HttpxBackend(models, {"x": httpx.MockTransport(lambda r: httpx.Response(200))})


def test_an_async_only_transport_refuses_sync_calls() -> None:
    class AsyncOnly(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={"choices": [{"message": {"content": "async"}}]})

    model = ModelConfig("m", "http://m/v1")
    backend = HttpxBackend({"m": model}, AsyncOnly())
    try:
        assert asyncio.run(backend.achat(model, CHAT, {}, 1.0)).text == "async"
        with pytest.raises(NotImplementedError):
            backend.chat(model, CHAT, {}, 1.0)
    finally:
        backend.close()
