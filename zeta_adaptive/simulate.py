"""Simulated fleet of OpenAI-compatible fake LLM servers on loopback HTTP.

Each model of a :class:`Fleet` is served by its own standard-library HTTP server on
127.0.0.1 with configurable latency and faults (server errors, rate limits, malformed or
empty answers, hangs, stalled or broken streams, error events, refused connections), drawn
from a seeded numpy generator, so that integration tests, demos and benchmarks of the router
run against realistic, reproducible and fully local backends.

The servers are as strict as real ones (OpenAI, vLLM): usage in a stream only when
``stream_options.include_usage`` asks for it; 404 with OpenAI's body for a model name they do
not serve; 401 when the spec has an ``api_key`` and the request does not carry it; 400 with
vLLM's body when the prompt (estimated as :func:`zeta_adaptive.backends.estimate_tokens`) plus
``max_tokens`` exceeds the spec's ``context_window``; ``n``, ``stop`` and ``max_tokens`` honoured.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http
import itertools
import json
import math
import socket
import socketserver
import struct
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

import numpy as np

from .backends import estimate_tokens

if TYPE_CHECKING:
    from .config import Config

__all__ = ["ModelSpec", "Fleet", "example_fleet", "example_routes", "config_fleet", "api_key_env"]

_HOST = "127.0.0.1"
_POLL_S = 0.02  # how often an idle server loop checks for shutdown; bounds close() and down=True
_ACCURACY_CONCENTRATION = 20.0
_CONFIG_TIMEOUT_S = 2.0
_CHAT_PATH = "/v1/chat/completions"
_EMBED_PATH = "/v1/embeddings"
_MODELS_PATH = "/v1/models"
_STREAM_PIECE_CHARS = 16
_CHUNKS_BEFORE_BREAK = 2
DRIP_INTERVAL_S = 0.2
_BOMB_BLOCKS = 1024  # blocks of 1 MiB in a gzip bomb
_BOMB_BLOCK = b" " * (1 << 20)
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # gzip, deflate, no name, no mtime
_MALFORMED_CHAT = b'{"choices": ['
_MALFORMED_EMBEDDING = b'{"object": "list", "data": ['
_WORDS = ("the", "answer", "follows", "from", "a", "careful", "look", "at", "your", "question", "and", "so")
_RATE_FIELDS = (
    "error_rate",
    "rate_limit_rate",
    "malformed_rate",
    "empty_rate",
    "hang_rate",
    "stall_first_token_rate",
    "break_stream_rate",
    "stream_error_rate",
    "drip_rate",
    "bomb_rate",
    "default_accuracy",
)
_NON_NEGATIVE_FIELDS = ("latency_s", "latency_sigma", "retry_after_s", "hang_s", "chunk_delay_s")


@dataclass
class ModelSpec:
    """Behaviour of one simulated model; every rate is a per-request probability."""

    name: str
    kind: str = "chat"
    latency_s: float = 0.01
    latency_sigma: float = 0.3
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    malformed_rate: float = 0.0
    empty_rate: float = 0.0
    hang_rate: float = 0.0
    hang_s: float = 30.0
    down: bool = False
    accuracy: dict[str, float] = field(default_factory=dict)
    default_accuracy: float = 0.7
    dim: int = 8
    tokens_out: int = 32
    stall_first_token_rate: float = 0.0
    break_stream_rate: float = 0.0
    chunk_delay_s: float = 0.0
    stream_error_rate: float = 0.0  # streams: an error event (as vLLM sends) after a few chunks, then [DONE]
    api_key: str | None = None  # requests must carry "Authorization: Bearer <api_key>" (else 401)
    served_name: str = ""  # the model name requests must carry (else 404); "" means `name`
    context_window: int | None = None  # prompt + max_tokens above this gets vLLM's 400 context-length answer
    drip_rate: float = 0.0  # hostile: headers, then one body byte every DRIP_INTERVAL_S for up to hang_s
    bomb_rate: float = 0.0  # hostile: a gzip bomb (1 GiB of JSON whitespace, about 1 MB on the wire)
    slots: int | None = (
        None  # requests served at once, as a GPU server's batch; others queue first come first served (None: no bound)
    )

    def __post_init__(self) -> None:
        """Reject impossible settings at once, since a bad value would silently skew every run."""
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if self.kind not in ("chat", "embedding"):
            raise ValueError(f"kind must be 'chat' or 'embedding', got {self.kind!r}")
        for name in _RATE_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        for name in _NON_NEGATIVE_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value < math.inf:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        for task_type, value in self.accuracy.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"accuracy[{task_type!r}] must be in [0, 1], got {value!r}")
        if self.context_window is not None and self.context_window < 1:
            raise ValueError(f"context_window must be >= 1, got {self.context_window!r}")
        if self.dim < 1 or self.tokens_out < 1:
            raise ValueError(f"dim and tokens_out must be >= 1, got {self.dim!r} and {self.tokens_out!r}")
        if self.slots is not None and self.slots < 1:
            raise ValueError(f"slots must be >= 1 or None, got {self.slots!r}")

    def mean_accuracy(self, task_type: str) -> float:
        """Mean accuracy of this model's answers for a task type, falling back to the default."""
        return self.accuracy.get(task_type, self.default_accuracy)


class _Draw(NamedTuple):
    """The random numbers of one request, always drawn together so a sequential run is reproducible."""

    fault: float
    stall: float
    cut: float
    z: float


class _BadRequest(ValueError):
    """The request is invalid and gets a 400 answer."""


def _outcome(spec: ModelSpec, u: float) -> str:
    """Pick the request's fate from one uniform draw; earlier faults win if the rates sum above 1."""
    edge = 0.0
    for outcome, rate in (
        ("hang", spec.hang_rate),
        ("error", spec.error_rate),
        ("rate_limit", spec.rate_limit_rate),
        ("malformed", spec.malformed_rate),
        ("empty", spec.empty_rate),
        ("drip", spec.drip_rate),
        ("bomb", spec.bomb_rate),
    ):
        edge += rate
        if u < edge:
            return outcome
    return "ok"


def _latency(spec: ModelSpec, z: float) -> float:
    """Lognormal latency with median `latency_s`, from a standard normal draw."""
    return spec.latency_s * math.exp(spec.latency_sigma * z) if spec.latency_s > 0 else 0.0


def _embed(text: str, dim: int) -> list[float]:
    """A unit-norm vector that depends only on the text, so embeddings are stable across runs."""
    raw = np.frombuffer(hashlib.shake_256(text.encode("utf-8")).digest(4 * dim), dtype="<u4")
    vector = raw / 2.0**31 - 1.0
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        return [1.0] + [0.0] * (dim - 1)
    return (vector / norm).tolist()


@functools.cache
def _deflated(data: bytes, final: bool) -> bytes:
    """``data`` as raw deflate blocks that need nothing before them (a full flush, or the last block),
    so pieces compressed once can be concatenated into one stream."""
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return z.compress(data) + z.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)


def _text_tokens(chars: int) -> int:
    """The usual rough token count: one token per four characters, at least one."""
    return max(1, chars // 4)


class _ChatRequest(NamedTuple):
    """What a valid chat request asks for."""

    prompt: int  # prompt tokens, as the server counts them
    completion: int  # completion tokens to generate (before any stop sequence)
    n: int
    stop: tuple[str, ...]
    truncated: bool  # max_tokens cut the answer: finish_reason "length"


class _ContextExceeded(ValueError):
    """The prompt plus the completion asked for do not fit the model's context window."""


def _positive_int(payload: dict[str, Any], key: str, limit: int) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise _BadRequest(f"'{key}' must be an integer in [1, {limit}]")
    return value


def _parse_chat(payload: dict[str, Any], spec: ModelSpec) -> _ChatRequest:
    """Validate a chat request (as vLLM does) and return what it asks for."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _BadRequest("'messages' must be a non-empty list of objects")
    max_tokens = _positive_int(payload, "max_tokens", 1 << 30)
    n = _positive_int(payload, "n", 128) or 1
    stop = payload.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, list) else ()
    if stop is not None and (not stops or len(stops) > 4 or not all(isinstance(x, str) and x for x in stops)):
        raise _BadRequest("'stop' must be a string or a list of up to 4 non-empty strings")
    prompt = estimate_tokens(messages)
    window = spec.context_window
    if window is not None and prompt + (max_tokens or 0) > window:
        raise _ContextExceeded(
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt + (max_tokens or 0)} tokens ({prompt} in the messages, {max_tokens or 0} in the completion). "
            "Please reduce the length of the messages or completion."
        )
    completion = spec.tokens_out if max_tokens is None else min(spec.tokens_out, max_tokens)
    return _ChatRequest(prompt, completion, n, stops, completion < spec.tokens_out)


def _parse_embedding(payload: dict[str, Any]) -> list[str]:
    """Validate an embeddings request and return its input texts."""
    texts = payload.get("input")
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts):
        return texts
    raise _BadRequest("'input' must be a string or a non-empty list of strings")


def _answer_text(spec: ModelSpec, task: str | None, tokens: int) -> str:
    """A non-empty answer naming its model (and task, if the client told it) with `tokens` words."""
    label = f"answer from {spec.name}" + (f" [{task}]" if task else "")
    return label + ": " + " ".join(_WORDS[i % len(_WORDS)] for i in range(tokens))


def _answer(spec: ModelSpec, task: str | None, request: _ChatRequest) -> tuple[str, int, str]:
    """The answer's text, its completion tokens and finish reason, honouring ``stop`` and ``max_tokens``."""
    text = _answer_text(spec, task, request.completion)
    cuts = [text.find(s) for s in request.stop if text.find(s) >= 0]
    if cuts:
        text = text[: min(cuts)]
        return text, max(1, len(text.split(": ", 1)[-1].split())), "stop"
    return text, request.completion, "length" if request.truncated else "stop"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    """An OpenAI usage object of a chat completion."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _error_body(message: str, kind: str, code: int | str) -> dict[str, Any]:
    """An OpenAI-shaped error body."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _vllm_error(message: str) -> dict[str, Any]:
    """vLLM's error body for a bad request (as its OpenAI-compatible server sends it, status 400)."""
    return {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}


def _seconds_header(seconds: float) -> str:
    """Format a duration for Retry-After: an integer when whole, else a short decimal."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


class _SimHTTPServer(ThreadingHTTPServer):
    """One model's HTTP server; it tracks open connections so going down can cut keep-alive ones."""

    request_queue_size = 128

    def __init__(self, port: int, model: _ModelServer) -> None:
        self.model = model
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__((_HOST, port), _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the host, which can be slow in sandboxes."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection with Nagle disabled, so small answers leave at once."""
        connection, address = super().get_request()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._connections_lock:
            self._connections.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        """Close a finished connection under the lock, so drop_connections never touches a closed socket."""
        with self._connections_lock:
            self._connections.discard(request)
            super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Cut every open connection, as a crashed server would; their handlers then see end of input."""
        with self._connections_lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore socket errors (clients leaving, connections cut on purpose); report anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Serves the OpenAI-compatible endpoints of one simulated model."""

    protocol_version = "HTTP/1.1"
    server: _SimHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Stay silent: a simulator serving thousands of requests must not flood the output."""

    def handle_one_request(self) -> None:
        """Serve one request, treating a client that went away as the end of the connection."""
        try:
            super().handle_one_request()
        except ConnectionError:
            self.close_connection = True

    def do_GET(self) -> None:
        """List the model on /v1/models."""
        spec, _, _ = self.server.model.begin()
        path = self.path.partition("?")[0]
        if path == _MODELS_PATH:
            model = {"id": spec.served_name or spec.name, "object": "model", "created": 0, "owned_by": "zeta-sim"}
            self._send_json(200, {"object": "list", "data": [model]})
        elif path in (_CHAT_PATH, _EMBED_PATH):
            self._send_json(405, _error_body(f"use POST on {path}", "invalid_request_error", 405))
        else:
            self._send_json(404, _error_body(f"no route {path}", "invalid_request_error", 404))

    def do_POST(self) -> None:
        """Answer a chat completion or embeddings request, with faults drawn from the model's spec."""
        model = self.server.model
        spec, wake, number = model.begin()
        path = self.path.partition("?")[0]
        try:
            body = self._read_body()
            if path not in (_CHAT_PATH, _EMBED_PATH):
                status = 405 if path == _MODELS_PATH else 404
                self._send_json(status, _error_body(f"no POST route {path}", "invalid_request_error", status))
                return
            try:
                payload = json.loads(body)
            except ValueError:
                raise _BadRequest("the request body is not valid JSON") from None
            if not isinstance(payload, dict):
                raise _BadRequest("the request body must be a JSON object")
            if not self._admitted(spec, payload):
                return
            wanted = "chat" if path == _CHAT_PATH else "embedding"
            if spec.kind != wanted:
                raise _BadRequest(f"{spec.name} is a {spec.kind} model; {path} needs a {wanted} model")
            if wanted == "chat":
                request = _parse_chat(payload, spec)
            else:
                texts = _parse_embedding(payload)
        except _BadRequest as exc:
            self._send_json(400, _error_body(str(exc), "invalid_request_error", 400))
            return
        except _ContextExceeded as exc:
            self._send_json(400, _vllm_error(str(exc)))
            return

        draw = model.draw()
        outcome = _outcome(spec, draw.fault)
        if outcome == "error":
            self._send_json(500, _error_body("simulated internal error", "server_error", 500))
            return
        if outcome == "rate_limit":
            limit = _error_body("simulated rate limit", "rate_limit_error", 429)
            self._send_json(429, limit, extra={"Retry-After": _seconds_header(spec.retry_after_s)})
            return
        if outcome == "hang" and self._sleep(wake, spec.hang_s):
            self._drop()
            return
        if outcome == "drip":
            self._drip(wake, spec.hang_s, stream=wanted == "chat" and payload.get("stream") is True)
            return
        if outcome == "bomb":
            self._bomb(wake)
            return
        model_name = spec.served_name or spec.name
        if wanted == "chat" and payload.get("stream") is True:
            options = payload.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            self._stream(spec, wake, draw, outcome, model_name, number, request, include_usage)
            return
        if model.slots.serve(wake, _latency(spec, draw.z)):
            self._drop()
            return
        if outcome == "malformed":
            self._send(200, _MALFORMED_CHAT if wanted == "chat" else _MALFORMED_EMBEDDING, "application/json")
        elif wanted == "embedding":
            self._send_json(200, self._embedding_body(spec, model_name, texts, outcome == "empty"))
        else:
            self._send_json(200, self._chat_body(spec, model_name, number, request, outcome == "empty"))

    def _admitted(self, spec: ModelSpec, payload: dict[str, Any]) -> bool:
        """Check the key and the model name as OpenAI does (401, then 404); False once refused."""
        if spec.api_key is not None and self.headers.get("Authorization") != f"Bearer {spec.api_key}":
            message = (
                "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
            )
            self._send_json(401, _error_body(message, "invalid_request_error", "invalid_api_key"))
            return False
        served = spec.served_name or spec.name
        name = payload.get("model", served)  # like vLLM, a request without a model gets the served one
        if name != served:
            message = f"The model `{name}` does not exist or you do not have access to it."
            self._send_json(404, _error_body(message, "invalid_request_error", "model_not_found"))
            return False
        return True

    def _chat_body(
        self, spec: ModelSpec, model_name: str, number: int, request: _ChatRequest, empty: bool
    ) -> dict[str, Any]:
        """An OpenAI chat.completion body (with no choices when simulating an empty answer)."""
        content, completion, finish = _answer(spec, self.headers.get("X-Sim-Task"), request)
        message = {"role": "assistant", "content": content}
        choices = [{"index": i, "message": message, "finish_reason": finish} for i in range(request.n)]
        return {
            "id": f"chatcmpl-{spec.name}-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [] if empty else choices,
            "usage": _usage(request.prompt, completion * request.n),
        }

    @staticmethod
    def _embedding_body(spec: ModelSpec, model_name: str, texts: list[str], empty: bool) -> dict[str, Any]:
        """An OpenAI embeddings list body (with no data when simulating an empty answer)."""
        vectors = [] if empty else [_embed(text, spec.dim) for text in texts]
        data = [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)]
        prompt = _text_tokens(sum(len(text) for text in texts))
        return {
            "object": "list",
            "data": data,
            "model": model_name,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }

    def _stream(
        self,
        spec: ModelSpec,
        wake: threading.Event,
        draw: _Draw,
        outcome: str,
        model_name: str,
        number: int,
        request: _ChatRequest,
        include_usage: bool,
    ) -> None:
        """Answer with OpenAI server-sent events in chunked encoding, possibly stalling, cutting the
        stream or sending an error event; usage comes in a last chunk only when asked for."""
        self._send_head(200, "text/event-stream", {"Transfer-Encoding": "chunked", "Cache-Control": "no-cache"})
        stalled = draw.stall < spec.stall_first_token_rate
        if (stalled and self._sleep(wake, spec.hang_s)) or self._sleep(wake, _latency(spec, draw.z)):
            self._drop()
            return
        chunk_id = f"chatcmpl-{spec.name}-{number}"
        created = int(time.time())

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            chunk = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model_name}
            return json.dumps({**chunk, "choices": choices, **extra}).encode()

        cut_at = error_at = -1
        if outcome == "malformed":
            events = [_MALFORMED_CHAT]
        elif outcome == "empty":
            events = [event([])]
        else:
            text, completion, finish = _answer(spec, self.headers.get("X-Sim-Task"), request)
            pieces = [text[i : i + _STREAM_PIECE_CHARS] for i in range(0, len(text), _STREAM_PIECE_CHARS)]
            events = []
            for index in range(request.n):
                events.append(
                    event(
                        [{"index": index, "delta": {"role": "assistant", "content": pieces[0]}, "finish_reason": None}]
                    )
                )
                events += [
                    event([{"index": index, "delta": {"content": piece}, "finish_reason": None}])
                    for piece in pieces[1:]
                ]
                events.append(event([{"index": index, "delta": {}, "finish_reason": finish}]))
            if include_usage:
                events.append(event([], usage=_usage(request.prompt, completion * request.n)))
            if draw.cut < spec.break_stream_rate:
                cut_at = min(_CHUNKS_BEFORE_BREAK, len(pieces))
            elif draw.cut < spec.break_stream_rate + spec.stream_error_rate:
                error_at = min(_CHUNKS_BEFORE_BREAK, len(pieces))
        for i, data in enumerate(events):
            if i == cut_at or (i > 0 and spec.chunk_delay_s > 0 and self._sleep(wake, spec.chunk_delay_s)):
                self._drop()
                return
            if i == error_at:
                failure = {
                    "error": {
                        "object": "error",
                        "message": "simulated engine failure",
                        "type": "InternalServerError",
                        "param": None,
                        "code": 500,
                    }
                }
                self._write_chunk(b"data: " + json.dumps(failure).encode() + b"\n\n")
                break
            self._write_chunk(b"data: " + data + b"\n\n")
        self._write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _drip(self, wake: threading.Event, seconds: float, stream: bool) -> None:
        """Send headers, then one byte of a body that never completes every DRIP_INTERVAL_S."""
        self.close_connection = True
        if stream:
            self._send_head(200, "text/event-stream", {"Transfer-Encoding": "chunked"})
        else:
            self._send_head(200, "application/json", {"Content-Length": str(1 << 20)})
        for _ in range(int(seconds / DRIP_INTERVAL_S)):
            if self._sleep(wake, DRIP_INTERVAL_S):
                break
            self.wfile.write(b"1\r\n:\r\n" if stream else b" ")  # a comment that never ends / JSON whitespace
        self._drop()

    def _bomb(self, wake: threading.Event) -> None:
        """A gzip bomb: 1 GiB of whitespace inside a JSON string, sent as one gzip member whose
        1 MiB blocks are compressed once per process (so a bomb costs the server little)."""
        self.close_connection = True
        self._send_head(200, "application/json", {"Content-Encoding": "gzip"})
        head, tail = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "', b'"}}]}'
        self.wfile.write(_GZIP_HEADER + _deflated(head, final=False))
        crc, size = zlib.crc32(head), len(head)
        for _ in range(_BOMB_BLOCKS):
            if wake.is_set():
                break
            self.wfile.write(_deflated(_BOMB_BLOCK, final=False))
            crc, size = zlib.crc32(_BOMB_BLOCK, crc), size + len(_BOMB_BLOCK)
        else:
            crc, size = zlib.crc32(tail, crc), size + len(tail)
            self.wfile.write(_deflated(tail, final=True) + struct.pack("<II", crc, size & 0xFFFFFFFF))
        self._drop()

    def _read_body(self) -> bytes:
        """Read the request body by Content-Length; without one the body is taken as empty."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise _BadRequest("invalid Content-Length")
        if length == 0 and self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # an unread chunked body would corrupt the next request
        return self.rfile.read(length) if length else b""

    @staticmethod
    def _sleep(wake: threading.Event, seconds: float) -> bool:
        """Wait unless woken by close() or down=True; returns True if the request must be abandoned."""
        return wake.wait(seconds) if seconds > 0 else wake.is_set()

    def _drop(self) -> None:
        """Cut the connection without (or in the middle of) an answer."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _head_bytes(self, status: int, content_type: str, extra: dict[str, str]) -> bytes:
        """The status line and headers of a response, built by hand to keep per-request work small."""
        lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", f"Content-Type: {content_type}"]
        lines += [f"{key}: {value}" for key, value in extra.items()]
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send_head(self, status: int, content_type: str, extra: dict[str, str]) -> None:
        """Send only the status line and headers (for streams)."""
        self.wfile.write(self._head_bytes(status, content_type, extra))

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        """Send a complete response in a single write."""
        headers = {**(extra or {}), "Content-Length": str(len(body))}
        self.wfile.write(self._head_bytes(status, content_type, headers) + body)

    def _send_json(self, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        """Send a JSON response."""
        self._send(status, json.dumps(payload).encode(), "application/json", extra)

    def _write_chunk(self, data: bytes) -> None:
        """Write one chunk of a chunked-encoded body."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


class _ModelServer:
    """One model's live spec, random generator, request count and HTTP server."""

    def __init__(self, spec: ModelSpec, rng: np.random.Generator) -> None:
        self.lock = threading.Lock()  # guards spec, rng, count and wake; held only for a few microseconds
        self.spec = spec
        self.rng = rng
        self.count = 0
        self.wake = threading.Event()
        self.port = 0
        self.httpd: _SimHTTPServer | None = None
        self.slots = _Slots(self)

    def current(self) -> ModelSpec:
        """The spec in force (never mutated in place, so it can be read without copying)."""
        with self.lock:
            return self.spec

    def begin(self) -> tuple[ModelSpec, threading.Event, int]:
        """Count a request and return the spec, wake event and request number it will use."""
        with self.lock:
            self.count += 1
            return self.spec, self.wake, self.count

    def draw(self) -> _Draw:
        """Draw a request's random numbers from the model's own generator."""
        with self.lock:
            fault, stall, cut = self.rng.random(3).tolist()
            return _Draw(fault, stall, cut, float(self.rng.standard_normal()))

    def listen(self) -> None:
        """Start serving, on the port used before if there was one."""
        httpd = _SimHTTPServer(self.port, self)
        self.port = httpd.server_address[1]
        with self.lock:
            self.wake = threading.Event()
        self.httpd = httpd
        name = f"zeta-sim-{self.spec.name}"
        threading.Thread(target=httpd.serve_forever, args=(_POLL_S,), name=name, daemon=True).start()

    def stop(self) -> None:
        """Stop serving: wake sleeping handlers, close the listening socket and cut open connections."""
        with self.lock:
            self.wake.set()
        httpd, self.httpd = self.httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            httpd.drop_connections()


class _Slots:
    """A model's request slots: at most ``spec.slots`` non-streamed requests are served at once, the
    others wait in arrival order, so latency grows with load as on a GPU server. The bound is read
    from the spec in force, so ``Fleet.update(name, slots=n)`` changes the capacity during a run."""

    def __init__(self, model: _ModelServer) -> None:
        self.model = model
        self.changed = threading.Condition()
        self.busy = 0
        self.waiting: deque[int] = deque()
        self.tickets = itertools.count()

    def serve(self, wake: threading.Event, seconds: float) -> bool:
        """Take the first free slot in turn and hold it ``seconds``; True if the request must be abandoned."""
        if self.model.current().slots is None:
            return _Handler._sleep(wake, seconds)
        with self.changed:
            ticket = next(self.tickets)
            self.waiting.append(ticket)
            while not wake.is_set() and not (
                self.waiting[0] == ticket and self.busy < (self.model.current().slots or self.busy + 1)
            ):
                self.changed.wait(_POLL_S)  # a capacity raised by update() is seen within one poll
            self.waiting.remove(ticket)
            self.changed.notify_all()
            if wake.is_set():
                return True
            self.busy += 1
        try:
            return _Handler._sleep(wake, seconds)
        finally:
            with self.changed:
                self.busy -= 1
                self.changed.notify_all()


class Fleet:
    """A set of simulated models, each served on its own loopback port, changeable at run time."""

    def __init__(self, specs: Iterable[ModelSpec], seed: int = 0, ports: Mapping[str, int] | None = None) -> None:
        """``ports`` binds the named models to fixed loopback ports (the others get free ones)."""
        specs = list(specs)
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        unknown = sorted(set(ports or {}) - set(names))
        if unknown:
            raise ValueError(f"ports name models not in the fleet: {unknown}")
        streams = np.random.SeedSequence(seed).spawn(len(specs) + 1)
        self._servers = {
            spec.name: _ModelServer(_copy(spec), np.random.default_rng(stream)) for spec, stream in zip(specs, streams)
        }
        for name, port in (ports or {}).items():
            self._servers[name].port = port
        self._accuracy_rng = np.random.default_rng(streams[-1])
        self._accuracy_lock = threading.Lock()
        self._state_lock = threading.RLock()  # serializes start, close and up/down changes
        self._started = False
        self._closed = False

    @property
    def names(self) -> list[str]:
        """Model names, in the order the specs were given."""
        return list(self._servers)

    def start(self) -> Fleet:
        """Start one server per model on its fixed or a free loopback port; a no-op if already started.

        A fixed port that cannot be bound raises OSError (errno EADDRINUSE when something listens there).
        """
        with self._state_lock:
            if self._closed:
                raise RuntimeError("the fleet is closed and cannot be restarted")
            if self._started:
                return self
            self._started = True
            try:
                for name, server in self._servers.items():
                    try:
                        server.listen()
                    except OSError as exc:
                        raise OSError(
                            exc.errno, f"cannot serve {name} on {_HOST}:{server.port}: {exc.strerror}"
                        ) from None
                    if server.current().down:
                        server.stop()
            except BaseException:
                self.close()
                raise
        return self

    def close(self) -> None:
        """Stop every server at once, even those with requests hanging; safe to call twice."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            for server in self._servers.values():
                server.stop()

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def base_url(self, name: str) -> str:
        """The OpenAI base URL of a model, e.g. http://127.0.0.1:PORT/v1 (stable across down/up)."""
        server = self._server(name)
        if not self._started:
            raise RuntimeError("start the fleet before asking for base URLs")
        return f"http://{_HOST}:{server.port}/v1"

    def update(self, name: str, /, **changes: Any) -> None:
        """Change a model's spec at run time; down=True refuses connections, down=False serves again."""
        server = self._server(name)
        if changes.get("name", name) != name:
            raise ValueError("a model cannot be renamed")
        if "accuracy" in changes:
            changes["accuracy"] = dict(changes["accuracy"])
        with self._state_lock:
            with server.lock:
                new = dataclasses.replace(server.spec, **changes)
                was_down = server.spec.down
            if self._started and not self._closed and new.down != was_down:
                if new.down:
                    server.stop()
                else:
                    server.listen()  # if the port cannot be bound again, the old spec stays in force
            with server.lock:
                server.spec = new

    def spec(self, name: str) -> ModelSpec:
        """A copy of a model's current spec."""
        return _copy(self._server(name).current())

    def requests(self, name: str) -> int:
        """Number of HTTP requests the model has received so far."""
        server = self._server(name)
        with server.lock:
            return server.count

    def sample_accuracy(self, name: str, task_type: str, rng: np.random.Generator | None = None) -> float:
        """Ground-truth accuracy of one answer: a Beta draw around the model's mean accuracy for the task."""
        mean = self._server(name).current().mean_accuracy(task_type)
        if mean <= 0.0 or mean >= 1.0:
            return float(mean)
        a, b = mean * _ACCURACY_CONCENTRATION, (1.0 - mean) * _ACCURACY_CONCENTRATION
        if rng is not None:
            return float(rng.beta(a, b))
        with self._accuracy_lock:
            return float(self._accuracy_rng.beta(a, b))

    def fleet_config(self, routes: dict[str, list[str]] | None = None, **top: Any) -> dict[str, Any]:
        """A router config for this started fleet; by default every task type routes to every chat model."""
        if "models" in top:
            raise TypeError("fleet_config builds 'models' itself")
        specs = [server.current() for server in self._servers.values()]
        models: dict[str, dict[str, Any]] = {}
        for spec in specs:
            entry: dict[str, Any] = {
                "base_url": self.base_url(spec.name),
                "kind": spec.kind,
                "timeout_s": _CONFIG_TIMEOUT_S,
            }
            if spec.kind == "embedding":
                entry["dim"] = spec.dim
            if spec.context_window is not None:
                entry["context_window"] = spec.context_window
            if spec.api_key is not None:
                entry["api_key_env"] = api_key_env(spec.name)
            if spec.served_name:
                entry["model"] = spec.served_name
            models[spec.name] = entry
        if routes is None:
            chat = [spec.name for spec in specs if spec.kind == "chat"]
            embedding = [spec.name for spec in specs if spec.kind == "embedding"]
            routes = {task: chat for spec in specs for task in spec.accuracy}
            if embedding:
                routes["embedding"] = embedding
        unknown = sorted({name for names in routes.values() for name in names} - set(self._servers))
        if unknown:
            raise KeyError(f"routes name models not in the fleet: {unknown}")
        route_config = {task: {"models": list(names)} for task, names in routes.items()}
        return {**top, "models": models, "routes": route_config}

    def _server(self, name: str) -> _ModelServer:
        """The server of a model, with a clear error for unknown names."""
        try:
            return self._servers[name]
        except KeyError:
            raise KeyError(f"no model {name!r} in the fleet; models are {self.names}") from None


def api_key_env(name: str) -> str:
    """The environment variable that :meth:`Fleet.fleet_config` names for a model with an ``api_key``
    (the caller exports the key there, as for a real endpoint)."""
    return "ZETA_SIM_KEY_" + "".join(ch if ch.isalnum() else "_" for ch in name.upper())


def _copy(spec: ModelSpec) -> ModelSpec:
    """A copy of a spec that shares no mutable state with it."""
    return dataclasses.replace(spec, accuracy=dict(spec.accuracy))


def example_routes() -> dict[str, list[str]]:
    """Routes for example_fleet(), each listing the models a task may use, best guess first."""
    return {
        "embedding": ["embed-4b"],
        "simple": ["general-7b", "coder-7b", "reasoner-14b"],
        "code": ["coder-7b", "reasoner-14b", "general-7b"],
        "reasoning": ["reasoner-14b", "coder-7b", "general-7b"],
    }


#: the example fleet's model that the demo degrades halfway through its run, and how
DEGRADED_MODEL = "coder-7b"
DEGRADATION: dict[str, Any] = {"error_rate": 0.5, "latency_s": 0.15}


def _example_specs() -> list[ModelSpec]:
    """One embedding and three chat models with different speed/accuracy trade-offs."""
    return [
        ModelSpec("embed-4b", kind="embedding", dim=8, latency_s=0.005),
        ModelSpec("coder-7b", latency_s=0.02, accuracy={"code": 0.85, "simple": 0.75, "reasoning": 0.55}),
        ModelSpec("reasoner-14b", latency_s=0.06, accuracy={"code": 0.8, "simple": 0.8, "reasoning": 0.85}),
        ModelSpec("general-7b", latency_s=0.015, accuracy={"code": 0.6, "simple": 0.78, "reasoning": 0.6}),
    ]


def example_fleet(seed: int = 0) -> Fleet:
    """An unstarted fleet of one embedding and three chat models with different speed/accuracy trade-offs."""
    return Fleet(_example_specs(), seed=seed)


def config_fleet(config: Config, seed: int = 0) -> Fleet:
    """An unstarted fleet serving every model of a router config on the loopback port its base_url
    names, so routers with that config run as written; models named like example_fleet()'s behave like them.

    Raises ConfigError for a base_url that is not http://127.0.0.1 (or localhost) with path /v1, or a
    port two models share.
    """
    from .exceptions import ConfigError

    known = {spec.name: spec for spec in _example_specs()}
    specs, ports, owner = [], {}, {}
    for name, model in config.models.items():
        where = f"models.{name}.base_url"
        parts = urlsplit(model.base_url)
        if parts.hostname not in ("127.0.0.1", "localhost") or parts.scheme != "http":
            raise ConfigError(
                where, f"{model.base_url} is not on http://127.0.0.1; the simulated fleet serves loopback only"
            )
        if parts.path.rstrip("/") != "/v1":
            raise ConfigError(where, f"{model.base_url}: the simulated fleet serves OpenAI's API under /v1")
        port = parts.port or 80
        if port in owner:
            raise ConfigError(where, f"port {port} is also {owner[port]}'s; each simulated model needs its own port")
        owner[port], ports[name] = name, port
        base = known.get(name, ModelSpec(name))
        specs.append(
            dataclasses.replace(
                base,
                name=name,
                served_name=model.backend_model,
                kind=model.kind,
                dim=model.dim or base.dim,
                context_window=model.context_window,
                accuracy=dict(base.accuracy),
            )
        )
    return Fleet(specs, seed=seed, ports=ports)
