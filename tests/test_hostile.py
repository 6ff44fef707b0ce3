"""Hostile and real-world backends on loopback: every attempt ends by its deadline, is bounded in
size and shape, and is classified as real servers (vLLM, OpenAI, llama.cpp, TGI, LiteLLM) mean it.

Each server here is a few lines of raw-socket code in a thread on 127.0.0.1 (random port), so the
tests see exactly the bytes a misbehaving endpoint would send.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import socket
import socketserver
import sqlite3
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import helpers
import pytest

from zeta_adaptive import AllModelsFailed, Router, StreamBroken
from zeta_adaptive._backends import HttpxBackend, Outcome, Reply
from zeta_adaptive._config import ModelConfig
from zeta_adaptive.simulate import Fleet, ModelSpec

pytestmark = pytest.mark.integration  # hostile servers on loopback

MSG = [{"role": "user", "content": "hi"}]
MARGIN_S = 0.25  # the documented bound on how far past its deadline a call may end
DRIP_S = 0.2


class Request:
    """What the client sent: request line, headers (lower-cased) and the JSON body."""

    def __init__(self, line: str, headers: dict[str, str], body: bytes) -> None:
        self.line, self.headers = line, headers
        self.json: dict[str, Any] = json.loads(body) if body else {}

    @property
    def path(self) -> str:
        return self.line.split(" ")[1]


Handler = Callable[[Request, socket.socket, threading.Event], None]


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def serve(handler: Handler) -> Iterator[str]:
    """Run ``handler`` for every request on a fresh loopback port; yields the /v1 base URL."""
    stop = threading.Event()

    class _Handle(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            rfile = self.request.makefile("rb")
            line = rfile.readline().decode("latin-1").strip()
            if not line:
                return
            headers = {}
            while h := rfile.readline().decode("latin-1").strip():
                k, _, v = h.partition(":")
                headers[k.strip().lower()] = v.strip()
            body = rfile.read(int(headers.get("content-length", 0)))
            try:
                handler(Request(line, headers, body), self.request, stop)
            except OSError:
                pass  # the client went away: that is what a bounded client does

    server = _Server(("127.0.0.1", 0), _Handle)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def head(status: int, content_type: str = "application/json", length: int | None = None, extra: str = "") -> bytes:
    text = f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nConnection: close\r\n{extra}"
    if length is not None:
        text += f"Content-Length: {length}\r\n"
    return (text + "\r\n").encode()


def send_json(sock: socket.socket, status: int, body: Any) -> None:
    data = json.dumps(body).encode() if not isinstance(body, bytes) else body
    sock.sendall(head(status, length=len(data)) + data)


def completion(text: str = "fine answer") -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
    }


def chunk(content: str | None = None, **extra: Any) -> bytes:
    choices = [{"index": 0, "delta": {"content": content}, "finish_reason": None}] if content is not None else []
    return b"data: " + json.dumps({"object": "chat.completion.chunk", "choices": choices, **extra}).encode() + b"\n\n"


def send_stream(sock: socket.socket, events: list[bytes]) -> None:
    sock.sendall(head(200, "text/event-stream") + b"".join(events))


def healthy(req: Request, sock: socket.socket, stop: threading.Event) -> None:
    """A well-behaved OpenAI-compatible endpoint (chat, streams, embeddings)."""
    if req.path.endswith("/embeddings"):
        send_json(sock, 200, {"data": [{"index": i, "embedding": [0.5, 0.5]} for i, _ in enumerate(req.json["input"])]})
    elif req.json.get("stream"):
        usage = (
            [chunk(usage={"prompt_tokens": 7, "completion_tokens": 2})]
            if (req.json.get("stream_options") or {}).get("include_usage")
            else []
        )
        send_stream(sock, [chunk("fine "), chunk("answer"), *usage, b"data: [DONE]\n\n"])
    else:
        send_json(sock, 200, completion())


# -- hostile behaviours -----------------------------------------------------------------------------


def drip(sock: socket.socket, stop: threading.Event, prefix: bytes, byte: bytes = b"a") -> None:
    """Send ``prefix``, then one byte every DRIP_S until the client leaves (or 60 s)."""
    sock.sendall(prefix)
    for _ in range(300):
        if stop.wait(DRIP_S):
            return
        sock.sendall(byte)


def drip_headers(req: Request, sock: socket.socket, stop: threading.Event) -> None:
    drip(sock, stop, b"HTTP/1.1 200 OK\r\nX-Slow: ")


def drip_body(req: Request, sock: socket.socket, stop: threading.Event) -> None:
    if req.json.get("stream"):
        drip(sock, stop, head(200, "text/event-stream"), b" ")  # never a complete event
    else:
        drip(sock, stop, head(200, length=1_000_000) + b'{"choices": ', b" ")


def drip_after_first_token(req: Request, sock: socket.socket, stop: threading.Event) -> None:
    drip(sock, stop, head(200, "text/event-stream") + chunk("partial"), b" ")


def drip_gzip(req: Request, sock: socket.socket, stop: threading.Event) -> None:
    """A valid gzip answer sent one compressed byte every DRIP_S."""
    body = zlib.compress(json.dumps(completion("x" * 10_000)).encode(), wbits=16 + zlib.MAX_WBITS)
    sock.sendall(head(200, length=len(body), extra="Content-Encoding: gzip\r\n"))
    for i in range(len(body)):
        if stop.wait(DRIP_S):
            return
        sock.sendall(body[i : i + 1])


def gzip_bomb(req: Request, sock: socket.socket, stop: threading.Event) -> None:
    """1 GB of spaces inside a JSON string, gzip-compressed on the fly (about 1 MB on the wire)."""
    sock.sendall(head(200, extra="Content-Encoding: gzip\r\n"))
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    sock.sendall(z.compress(b'{"choices": [{"message": {"content": "'))
    block = b" " * (1 << 20)
    for _ in range(1024):
        if stop.is_set():
            return
        sock.sendall(z.compress(block))
    sock.sendall(z.compress(b'"}}]}') + z.flush())


def huge_body(req: Request, sock: socket.socket, stop: threading.Event) -> None:
    """300 MB of JSON whitespace announced and sent (until the client stops reading)."""
    sock.sendall(head(200, length=300 << 20))
    block = b" " * (1 << 20)
    for _ in range(300):
        if stop.is_set():
            return
        sock.sendall(block)


def deep_json(req: Request, sock: socket.socket, stop: threading.Event) -> None:
    send_json(sock, 200, b"[" * 100_000 + b"]" * 100_000)


# -- error bodies as real servers send them (see the sources in zeta_adaptive._backends.CONTEXT_MARKERS) --

VLLM_CONTEXT = (
    400,
    {
        "object": "error",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
        "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
        "(4000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.",
    },
)
OPENAI_CONTEXT = (
    400,
    {
        "error": {
            "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. "
            "Please reduce the length of the messages.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    },
)
LLAMACPP_CONTEXT = (
    400,
    {
        "error": {
            "code": 400,
            "message": "request (4476 tokens) exceeds the available context size (4096 tokens), try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 4476,
            "n_ctx": 4096,
        }
    },
)
TGI_CONTEXT = (
    422,
    {
        "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
        "Given: 4000 `inputs` tokens and 1000 `max_new_tokens`",
        "error_type": "validation",
    },
)
LITELLM_CONTEXT = (
    400,
    {
        "error": {
            "message": "litellm.ContextWindowExceededError: litellm.BadRequestError: OpenAIException - This model's maximum "
            "context length is 4096 tokens.",
            "type": None,
            "param": None,
            "code": "400",
        }
    },
)
OPENAI_UNKNOWN_MODEL = (
    404,
    {
        "error": {
            "message": "The model `gpt-9` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    },
)
LITELLM_UNKNOWN_MODEL = (
    400,
    {
        "error": {
            "message": "/chat/completions: Invalid model name passed in model=gpt-9. Call `/v1/models` to view available models for your key.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "400",
        }
    },
)


def answer_with(status: int, body: Any) -> Handler:
    def handler(req: Request, sock: socket.socket, stop: threading.Event) -> None:
        send_json(sock, status, body)

    return handler


# -- helpers ----------------------------------------------------------------------------------------


def backend_for(url: str, **options: Any) -> tuple[HttpxBackend, ModelConfig]:
    model = ModelConfig("m", url, **options)
    return HttpxBackend({"m": model}), model


@contextmanager
def backend_at(handler: Handler, **options: Any) -> Iterator[tuple[HttpxBackend, ModelConfig]]:
    """A backend for one model served by ``handler``, closed afterwards."""
    with serve(handler) as url:
        backend, model = backend_for(url, **options)
        try:
            yield backend, model
        finally:
            backend.close()


def router_config(
    tmp_path, urls: dict[str, str], deadline_s: float, timeout_s: float, **model_options: Any
) -> dict[str, Any]:
    models = {name: {"base_url": url, **model_options} for name, url in urls.items()}
    store = f"sqlite:///{tmp_path / 'zeta.db'}"
    return helpers.router_config(store, models, {"simple": list(urls)}, timeout_s=timeout_s, deadline_s=deadline_s)


def logged(tmp_path) -> list[tuple[str, str, int | None]]:
    with sqlite3.connect(tmp_path / "zeta.db") as db:
        return db.execute("SELECT model, outcome, status FROM attempts ORDER BY ts, idx").fetchall()


# -- deadlines --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "behaviour", [drip_headers, drip_body, drip_gzip], ids=["drip-headers", "drip-body", "drip-gzip"]
)
def test_sync_attempt_ends_at_its_timeout_whatever_the_server_drips(behaviour):
    with backend_at(behaviour) as (backend, model):
        start = time.perf_counter()
        reply = backend.chat(model, MSG, {}, timeout_s=1.0)
        elapsed = time.perf_counter() - start
        assert reply.outcome is Outcome.TIMEOUT, reply
        assert elapsed < 1.0 + MARGIN_S
        reply = backend.embed(ModelConfig("m", model.base_url, kind="embedding"), ["a"], timeout_s=0.6)
        assert reply.outcome is Outcome.TIMEOUT


@pytest.mark.parametrize(
    "behaviour", [drip_headers, drip_body, drip_after_first_token], ids=["headers", "body", "after-first-token"]
)
def test_deadline_margin_sync_async_and_streams_through_the_router(tmp_path, behaviour):
    """Every kind of call against a dripping backend ends within its deadline plus the margin,
    and the attempt is logged as a timeout (a broken stream once text was shown)."""
    deadline = 1.0
    with serve(behaviour) as url:
        cfg = router_config(tmp_path, {"drip": url}, deadline_s=deadline, timeout_s=5.0)

        def timed(run: Callable[[], Any]) -> tuple[float, BaseException | None]:
            start = time.perf_counter()
            try:
                run()
                error = None
            except (AllModelsFailed, StreamBroken) as exc:
                error = exc
            return time.perf_counter() - start, error

        def sync_stream() -> None:
            for _ in router.chat("simple", MSG, stream=True):
                pass

        async def async_stream() -> None:
            async for _ in await router.achat("simple", MSG, stream=True):
                pass

        with Router(cfg) as router:
            results = [
                timed(lambda: router.chat("simple", MSG)),
                timed(lambda: asyncio.run(router.achat("simple", MSG))),
                timed(sync_stream),
                timed(lambda: asyncio.run(async_stream())),
            ]
            router.flush()
    for elapsed, error in results:
        assert error is not None
        assert elapsed < deadline + MARGIN_S, [round(e, 3) for e, _ in results]
    outcomes = [o for _, o, _ in logged(tmp_path)]
    expected = "stream_broken" if behaviour is drip_after_first_token else "timeout"
    assert outcomes[:2] == ["timeout", "timeout"] and outcomes[2:] == [expected, expected], outcomes


def test_dripping_model_falls_back_to_a_healthy_one_within_the_deadline(tmp_path):
    with serve(drip_body) as slow, serve(healthy) as fine:
        cfg = router_config(tmp_path, {"drip": slow, "fine": fine}, deadline_s=3.0, timeout_s=0.8)
        with Router(cfg) as router:
            result = router.chat("simple", MSG)
            router.flush()
    assert result.model == "fine" and result.text == "fine answer"
    assert logged(tmp_path) == [("drip", "timeout", None), ("fine", "ok", 200)]


# -- size and shape ---------------------------------------------------------------------------------


def test_gzip_bomb_is_refused_early_with_bounded_memory():
    with backend_at(gzip_bomb) as (backend, model):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        reply = backend.chat(model, MSG, {}, timeout_s=10.0)
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert reply.outcome is Outcome.MALFORMED and "max_response_bytes" in reply.error, reply
    assert grown_mib < 200  # the whole bomb is 1 GB; the cap is 8 MiB


def test_huge_body_is_cut_at_max_response_bytes(tmp_path):
    with serve(huge_body) as big, serve(healthy) as fine:
        cfg = router_config(
            tmp_path, {"big": big, "fine": fine}, deadline_s=10.0, timeout_s=5.0, max_response_bytes=1 << 20
        )
        with Router(cfg) as router:
            result = router.chat("simple", MSG)
            router.flush()
        backend, model = backend_for(big, max_response_bytes=65536)
        try:
            reply = asyncio.run(backend.achat(model, MSG, {}, 5.0))
        finally:
            backend.close()
    assert result.model == "fine"
    assert logged(tmp_path)[0][:2] == ("big", "malformed")
    assert reply.outcome is Outcome.MALFORMED and "65536" in reply.error


def test_deeply_nested_json_is_a_malformed_attempt_that_falls_back(tmp_path):
    with serve(deep_json) as deep, serve(healthy) as fine:
        cfg = router_config(tmp_path, {"deep": deep, "fine": fine}, deadline_s=10.0, timeout_s=5.0)
        with Router(cfg) as router:
            results = [router.chat("simple", MSG) for _ in range(3)]
            results.append(asyncio.run(router.achat("simple", MSG)))
            router.flush()
        backend, model = backend_for(deep)
        try:
            reply = backend.chat(model, MSG, {}, 5.0)
        finally:
            backend.close()
    assert all(r.model == "fine" for r in results)
    assert [o for m, o, _ in logged(tmp_path) if m == "deep"] == ["malformed"] * 3  # then its breaker is open
    assert reply.outcome is Outcome.MALFORMED and "deeper" in reply.error


def test_bad_encodings_and_garbage_are_malformed_never_exceptions():
    def garbage(req: Request, sock: socket.socket, stop: threading.Event) -> None:
        kind = req.json["messages"][0]["content"]
        if kind == "br":
            sock.sendall(head(200, length=3, extra="Content-Encoding: br\r\n") + b"abc")
        elif kind == "badgzip":
            sock.sendall(head(200, length=8, extra="Content-Encoding: gzip\r\n") + b"notgzip!")
        else:
            send_json(sock, 200, b"\xff\xfe{not json")

    with backend_at(garbage) as (backend, model):
        replies = [backend.chat(model, [{"role": "user", "content": k}], {}, 5.0) for k in ("br", "badgzip", "bytes")]
    assert [r.outcome for r in replies] == [Outcome.MALFORMED] * 3, replies


# -- status classification --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [VLLM_CONTEXT, OPENAI_CONTEXT, LLAMACPP_CONTEXT, TGI_CONTEXT, LITELLM_CONTEXT],
    ids=["vllm", "openai", "llama.cpp", "tgi", "litellm"],
)
def test_context_length_errors_of_real_servers_are_context_exceeded(answer):
    status, body = answer
    with backend_at(answer_with(status, body)) as (backend, model):
        sync = backend.chat(model, MSG, {}, 5.0)
        streamed = list(backend.stream_chat(model, MSG, {}, 5.0, 5.0))[-1]
        async_ = asyncio.run(backend.achat(model, MSG, {}, 5.0))
    for reply in (sync, streamed, async_):
        assert reply.outcome is Outcome.CONTEXT_EXCEEDED and reply.status == status, reply
        assert 0 < len(reply.error) <= 200


def test_context_exceeded_is_logged_with_its_status(tmp_path):
    with serve(answer_with(*VLLM_CONTEXT)) as small, serve(healthy) as big:
        cfg = router_config(tmp_path, {"small": small, "big": big}, deadline_s=5.0, timeout_s=2.0)
        with Router(cfg) as router:
            try:
                router.chat("simple", MSG)
            except Exception:
                pass
            router.flush()
    assert logged(tmp_path)[0] == ("small", "context_exceeded", 400)


@pytest.mark.parametrize("answer", [OPENAI_UNKNOWN_MODEL, LITELLM_UNKNOWN_MODEL], ids=["openai-404", "litellm-400"])
def test_unknown_model_name_is_a_misconfigured_endpoint(answer):
    status, body = answer
    with backend_at(answer_with(status, body)) as (backend, model):
        reply = backend.chat(model, MSG, {}, 5.0)
    assert reply.outcome is Outcome.CLIENT_ERROR and reply.status == status and reply.misconfigured, reply
    assert "gpt-9" in reply.error and len(reply.error) <= 200


def test_a_plain_bad_request_is_not_misconfiguration():
    with backend_at(
        answer_with(400, {"error": {"message": "temperature must be <= 2", "type": "invalid_request_error"}})
    ) as (backend, model):
        reply = backend.chat(model, MSG, {}, 5.0)
    assert reply.outcome is Outcome.CLIENT_ERROR and reply.status == 400 and not reply.misconfigured
    assert reply.error == "temperature must be <= 2"


def test_a_gateway_that_does_not_know_the_model_name_falls_back(tmp_path):
    """LiteLLM answers an unknown model name with HTTP 400: the endpoint is misconfigured, the request is fine."""
    with serve(answer_with(*LITELLM_UNKNOWN_MODEL)) as unknown, serve(healthy) as good:
        cfg = router_config(tmp_path, {"unknown": unknown, "good": good}, deadline_s=5.0, timeout_s=2.0)
        with Router(cfg) as router:
            result = router.chat("simple", MSG)
    assert result.model == "good" and [a.outcome for a in result.attempts] == ["client_error", "ok"]


# -- streams as real servers send them --------------------------------------------------------------


def test_streams_ask_for_usage_and_use_it_from_the_last_chunk(tmp_path):
    seen: list[Any] = []

    def recording(req: Request, sock: socket.socket, stop: threading.Event) -> None:
        seen.append(req.json.get("stream_options"))
        healthy(req, sock, stop)

    with serve(recording) as url:
        cfg = router_config(tmp_path, {"m": url}, deadline_s=5.0, timeout_s=2.0)
        with Router(cfg) as router:
            stream = router.chat("simple", MSG, stream=True)
            assert "".join(stream) == "fine answer"
            own = router.chat("simple", MSG, stream=True, stream_options={"include_usage": False})
            assert "".join(own) == "fine answer"
            router.flush()
    assert seen == [{"include_usage": True}, {"include_usage": False}]
    assert (stream.result.attempts[0].tokens_in, stream.result.attempts[0].tokens_out) == (7, 2)
    with sqlite3.connect(tmp_path / "zeta.db") as db:
        assert db.execute("SELECT tokens_in, tokens_out FROM attempts ORDER BY ts").fetchall()[0] == (7, 2)


def test_a_stream_without_usage_has_estimated_tokens():
    def no_usage(req: Request, sock: socket.socket, stop: threading.Event) -> None:
        send_stream(sock, [chunk("x" * 40), b"data: [DONE]\n\n"])

    with backend_at(no_usage) as (backend, model):
        final = list(backend.stream_chat(model, [{"role": "user", "content": "y" * 80}], {}, 5.0, 5.0))[-1]
    assert final.ok and final.tokens_estimated
    assert (final.tokens_in, final.tokens_out) == (80 // 4 + 4, 40 // 4)


@pytest.mark.parametrize(
    "error_event",
    [
        b'data: {"error": {"object": "error", "message": "engine dead", "type": "InternalServerError", "code": 500}}\n\n',
        b"event: error\ndata: engine dead\n\n",
    ],
    ids=["vllm-data-error", "event-error"],
)
def test_an_error_event_breaks_the_stream(tmp_path, error_event):
    def after_text(req: Request, sock: socket.socket, stop: threading.Event) -> None:
        send_stream(sock, [chunk("half "), chunk("an answer"), error_event, b"data: [DONE]\n\n"])

    def before_text(req: Request, sock: socket.socket, stop: threading.Event) -> None:
        send_stream(sock, [error_event, b"data: [DONE]\n\n"])

    with serve(after_text) as broken, serve(before_text) as early, serve(healthy) as fine:
        backend, model = backend_for(broken)
        try:
            items = list(backend.stream_chat(model, MSG, {}, 5.0, 5.0))

            async def collect() -> list[Any]:
                return [item async for item in backend.astream_chat(model, MSG, {}, 5.0, 5.0)]

            aitems = asyncio.run(collect())
        finally:
            backend.close()
        cfg = router_config(tmp_path, {"early": early, "fine": fine}, deadline_s=5.0, timeout_s=2.0)
        with Router(cfg) as router:
            assert "".join(router.chat("simple", MSG, stream=True)) == "fine answer"  # before the first token: fallback
            router.flush()
    for got in (items, aitems):
        assert got[:2] == ["half ", "an answer"]
        assert got[-1].outcome is Outcome.STREAM_BROKEN and "engine dead" in got[-1].error
    assert [o for _, o, _ in logged(tmp_path)] == ["stream_broken", "ok"]


def test_sse_multi_line_data_comments_and_event_fields():
    def conforming(req: Request, sock: socket.socket, stop: threading.Event) -> None:
        split = json.dumps({"choices": [{"index": 0, "delta": {"content": "two lines"}}]})
        half = split.index("[")  # a line break between JSON tokens: the joined data is still valid JSON
        events = [
            b": keep-alive comment\n\n",
            b"event: message\nid: 1\nretry: 1000\n" + chunk("one ")[:-2] + b"\n\n",
            b"data: " + split[:half].encode() + b"\ndata: " + split[half:].encode() + b"\n\n",  # joined with a newline
            b"data: [DONE]\r\n\r\n",
        ]
        sock.sendall(head(200, "text/event-stream") + b"".join(events))

    with backend_at(conforming) as (backend, model):
        items = list(backend.stream_chat(model, MSG, {}, 5.0, 5.0))
    assert items[:-1] == ["one ", "two lines"]
    assert items[-1].ok and items[-1].text == "one two lines"


def test_stream_chunks_count_against_the_size_cap():
    def endless(req: Request, sock: socket.socket, stop: threading.Event) -> None:
        sock.sendall(head(200, "text/event-stream"))
        for _ in range(2000):
            if stop.is_set():
                return
            sock.sendall(chunk("z" * 1000))

    with backend_at(endless, max_response_bytes=65536) as (backend, model):
        items = list(backend.stream_chat(model, MSG, {}, 10.0, 10.0))
    final = items[-1]
    assert isinstance(final, Reply) and final.outcome is Outcome.STREAM_BROKEN and "65536" in final.error
    assert sum(len(i) for i in items[:-1]) < 65536


# -- clients ----------------------------------------------------------------------------------------


def _open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # closed meanwhile
            pass
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_asyncio_run_per_call_leaves_no_open_connections(tmp_path):
    """Keep-alive servers (the simulated fleet) and many asyncio.run calls: the async clients of
    each loop are closed when that loop shuts down, so no socket stays open and nothing warns."""
    with Fleet([ModelSpec("m", latency_s=0.0)], seed=1) as fleet:
        cfg = fleet.fleet_config({"simple": ["m"]}, store=f"sqlite:///{tmp_path / 'zeta.db'}")
        with Router(cfg) as router:
            router.chat("simple", MSG)  # the sync pool keeps its one connection
            gc.collect()  # what earlier tests left behind warns now, not below
            baseline = _open_sockets()
            port = cfg["models"]["m"]["base_url"].split(":")[2].split("/")[0]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for _ in range(15):
                    assert asyncio.run(router.achat("simple", MSG)).text
                gc.collect()
            assert _open_sockets() <= baseline
            ours = [
                str(w.message)
                for w in caught
                if issubclass(w.category, ResourceWarning) and f", {port})" in str(w.message)
            ]
            assert not ours, ours


def test_sync_clients_exist_before_the_first_call_and_close_closes_async_ones():
    with serve(healthy) as url:
        backend, model = backend_for(url)
        assert set(backend._pools) == {"m"}
        loop = asyncio.new_event_loop()
        try:
            assert loop.run_until_complete(backend.achat(model, MSG, {}, 5.0)).ok
            (pool,) = backend._apools[loop].values()
            backend.close()  # from sync code, with the loop idle: closed on it
            assert not backend._apools
            assert loop.run_until_complete(backend.achat(model, MSG, {}, 5.0)).ok  # on a new pool
            assert backend._apools[loop]["m"] is not pool
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
