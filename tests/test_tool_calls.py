"""Tool calls (function calling) through the router and the gateway, against a small server that answers
the way OpenAI's API does: a message whose ``content`` is null and whose ``tool_calls`` name a function,
or, streamed, the tool call in pieces (its arguments split across chunks) and ``finish_reason`` at the end."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import serving
from test_log_integrity import Canned

from zeta_adaptive import Router

pytestmark = pytest.mark.integration  # a loopback server (and the gateway served)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
MSG = [{"role": "user", "content": "weather in Paris?"}]


def tool_answer(body: dict[str, Any]) -> tuple[int, Any]:
    """CALL as OpenAI's API sends it: whole in a message, or streamed in pieces (its arguments split)."""
    if not body.get("stream"):
        message = {"role": "assistant", "content": None, "tool_calls": [CALL]}
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
        return 200, {"choices": [choice], "usage": {"prompt_tokens": 12, "completion_tokens": 7}}
    head = {**CALL, "index": 0, "function": {"name": "get_weather", "arguments": ""}}
    deltas = [
        {"role": "assistant", "content": None, "tool_calls": [head]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
    ]
    events: list[Any] = [
        {"choices": [{"index": 0, "delta": d, "finish_reason": "tool_calls" if i == 2 else None}]}
        for i, d in enumerate(deltas)
    ]
    return 200, [*events, {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7}}]


@pytest.fixture
def tool_server():
    server = Canned(tool_answer)
    yield server
    server.close()


def _config(url: str, store: str, tmp_path) -> dict[str, Any]:
    return {
        "store": store,
        "journal_dir": str(tmp_path / "journal"),
        "models": {"m": {"base_url": url, "timeout_s": 5.0}},
        "routes": {"agent": {"models": ["m"], "policy": "static"}},
    }


def test_the_router_returns_tool_calls_whole_plain_and_streamed(tool_server, sqlite_url, tmp_path):
    with Router(_config(tool_server.url, sqlite_url, tmp_path)) as router:
        plain = router.chat("agent", MSG, tools=TOOLS)
        stream = router.chat("agent", MSG, stream=True, tools=TOOLS)
        deltas = list(stream)
    assert plain.model == "m" and plain.text == "" and plain.tool_calls == [CALL]
    assert plain.finish_reason == "tool_calls" and plain.attempts[0].tokens_out == 7
    assert deltas == [] and stream.result.tool_calls == [CALL] and stream.result.finish_reason == "tool_calls"
    assert stream.result.attempts[0].tokens_out == 7
    assert all(body["tools"] == TOOLS for body in tool_server.bodies)  # the tools reached the server


def test_the_openai_client_gets_tool_calls_through_the_gateway(tool_server, sqlite_url, tmp_path):
    openai = pytest.importorskip("openai")
    from zeta_adaptive.gateway import create_app

    with serving(create_app(_config(tool_server.url, sqlite_url, tmp_path))) as base:
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=20)
        answer = client.chat.completions.create(model="agent", messages=MSG, tools=TOOLS)
        merged: dict[int, dict[str, Any]] = {}  # what a client does with streamed tool-call deltas
        finish = None
        for chunk in client.chat.completions.create(model="agent", messages=MSG, tools=TOOLS, stream=True):
            choice = chunk.choices[0]
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                into = merged.setdefault(call.index, {"id": call.id, "name": "", "arguments": ""})
                into["name"] += call.function.name or ""
                into["arguments"] += call.function.arguments or ""
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "tool_calls" and message.content is None
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("call_1", "get_weather", {"city": "Paris"})
    ]
    assert finish == "tool_calls"
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in merged.values()] == [
        ("call_1", "get_weather", {"city": "Paris"})
    ]
