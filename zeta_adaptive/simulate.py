"""Simulated fleet of OpenAI-compatible fake LLM servers, on loopback HTTP or in process.

Each model of a :class:`Fleet` has configurable latency and faults (server errors, rate limits,
malformed or empty answers, hangs, stalled or broken streams, error events, refused connections),
drawn from a seeded numpy generator or scripted (``ModelSpec.script``), so that integration tests,
unit tests, demos and benchmarks of the router run against realistic, reproducible and fully local
backends. One handler decides each answer; two carriers play it: a standard-library HTTP server
per model on 127.0.0.1 (:meth:`Fleet.start`), or an httpx transport with no socket
(:meth:`Fleet.transports`, :func:`mock_fleet`), so the router's real HTTP parsing runs either way.

The servers are as strict as real ones (OpenAI, vLLM): usage in a stream only when
``stream_options.include_usage`` asks for it; 404 with OpenAI's body for a model name they do
not serve; 401 when the spec has an ``api_key`` and the request does not carry it; 400 with
vLLM's body when the prompt (estimated as :func:`zeta_adaptive._backends.estimate_tokens`) plus
``max_tokens`` exceeds the spec's ``context_window``; ``n``, ``stop`` and ``max_tokens`` honoured.
"""

from __future__ import annotations

import asyncio
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
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx
import numpy as np

from ._backends import CHARS_PER_TOKEN, estimate_tokens
from ._config import Config, ModelConfig, load_config
from ._exceptions import ConfigError

__all__ = [
    "ModelSpec",
    "Step",
    "Fleet",
    "FleetTransport",
    "mock_fleet",
    "example_fleet",
    "example_routes",
    "config_fleet",
    "api_key_env",
]

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
_NON_NEGATIVE_FIELDS = ("latency_s", "latency_sigma", "retry_after_s", "hang_s", "chunk_delay_s")
_FATES = (
    *("ok", "error", "rate_limit", "malformed", "empty", "hang", "drip", "bomb"),  # ok, and the rates' faults
    *("stall", "break", "stream_error", "disconnect"),  # a stream's faults, and a connection closed unanswered
)
#: the fates a spec's ``*_rate`` fields draw from one uniform number, in the order they are tried
_DRAWN_FATES = ("hang", "error", "rate_limit", "malformed", "empty", "drip", "bomb")


@dataclass(frozen=True)
class Step:
    """One scripted answer of a model (see ``ModelSpec.script``), used instead of a random draw.

    ``fate`` is ``ok``; ``error`` (HTTP ``status``, 500 by default, with an OpenAI error body
    saying ``message``); ``rate_limit`` (429 with ``Retry-After: retry_after_s``, else the spec's);
    ``malformed``, ``empty``, ``hang`` (the spec's ``hang_s`` first), ``drip`` or ``bomb`` as the
    spec's rates would draw them; ``stall``, ``break`` or ``stream_error`` for streams (a plain
    request gets ``ok``); or ``disconnect`` (the connection closes without an answer).
    ``latency_s`` replaces the drawn latency (errors included) and ``text`` the answer's text.
    """

    fate: str = "ok"
    status: int | None = None
    message: str | None = None
    latency_s: float | None = None
    retry_after_s: float | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        """Reject a step that no server could play."""
        if self.fate not in _FATES:
            raise ValueError(f"fate must be one of {', '.join(_FATES)}; got {self.fate!r}")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {self.status!r}")
        _check_within(((name, getattr(self, name)) for name in ("latency_s", "retry_after_s")), math.inf)
        if self.text == "":
            raise ValueError("text must not be empty (the fate 'empty' answers without text)")


def _check_within(values: Iterable[tuple[str, float | None]], high: float) -> None:
    """Reject a named value outside [0, 1] (``high`` 1) or not finite and >= 0 (``high`` inf); None passes."""
    for name, value in values:
        if value is not None and not (0.0 <= value <= 1.0 if high == 1.0 else 0.0 <= value < math.inf):
            raise ValueError(f"{name} must be {'in [0, 1]' if high == 1.0 else 'finite and >= 0'}, got {value!r}")


def _as_step(step: Step | str) -> Step:
    """A script entry as a Step (a string names its fate)."""
    return step if isinstance(step, Step) else Step(step)


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
    slots: int | None = None  # requests served at once, as a GPU server's batch; others queue in turn (None: no bound)
    script: Sequence[Step | str] = ()  # the answers to the next requests in order (the last repeats), instead of draws

    def __post_init__(self) -> None:
        """Reject impossible settings at once, since a bad value would silently skew every run."""
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if self.kind not in ("chat", "embedding"):
            raise ValueError(f"kind must be 'chat' or 'embedding', got {self.kind!r}")
        probabilities = [f.name for f in dataclasses.fields(self) if f.name.endswith("_rate")] + ["default_accuracy"]
        _check_within(((name, getattr(self, name)) for name in probabilities), 1.0)
        _check_within(((name, getattr(self, name)) for name in _NON_NEGATIVE_FIELDS), math.inf)
        _check_within(((f"accuracy[{task!r}]", value) for task, value in self.accuracy.items()), 1.0)
        if self.context_window is not None and self.context_window < 1:
            raise ValueError(f"context_window must be >= 1, got {self.context_window!r}")
        if self.dim < 1 or self.tokens_out < 1:
            raise ValueError(f"dim and tokens_out must be >= 1, got {self.dim!r} and {self.tokens_out!r}")
        if self.slots is not None and self.slots < 1:
            raise ValueError(f"slots must be >= 1 or None, got {self.slots!r}")
        for step in self.script:
            _as_step(step)

    def mean_accuracy(self, task_type: str) -> float:
        """Mean accuracy of this model's answers for a task type, falling back to the default."""
        return self.accuracy.get(task_type, self.default_accuracy)


class _Draw(NamedTuple):
    """The random numbers of one request, always drawn together so a sequential run is reproducible."""

    fault: float
    stall: float
    cut: float
    z: float
    step: Step | None  # the scripted answer, when the spec has a script


class _BadRequest(ValueError):
    """The request is invalid and gets a 400 answer."""


def _fate(spec: ModelSpec, draw: _Draw) -> str:
    """The request's fate: the scripted one, else picked from one uniform draw (earlier faults win
    if the rates sum above 1)."""
    if draw.step is not None:
        return draw.step.fate
    edge = 0.0
    for fate in _DRAWN_FATES:
        edge += getattr(spec, f"{fate}_rate")
        if draw.fault < edge:
            return fate
    return "ok"


def _stream_faults(spec: ModelSpec, draw: _Draw, fate: str) -> tuple[bool, str]:
    """Whether a stream stalls before its first token, and how a good one ends early: "break",
    "stream_error" or "" (it does not)."""
    if draw.step is not None:
        return fate == "stall", fate if fate in ("break", "stream_error") else ""
    ending = ""
    if draw.cut < spec.break_stream_rate:
        ending = "break"
    elif draw.cut < spec.break_stream_rate + spec.stream_error_rate:
        ending = "stream_error"
    return draw.stall < spec.stall_first_token_rate, ending


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
    """The usual rough token count (``CHARS_PER_TOKEN`` characters a token), at least one."""
    return max(1, chars // CHARS_PER_TOKEN)


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


def _answer(spec: ModelSpec, task: str | None, request: _ChatRequest, text: str | None) -> tuple[str, int, str]:
    """The answer's text (``text`` if given), its completion tokens and finish reason, honouring
    ``stop`` and ``max_tokens``."""
    if text is not None:
        return text, _text_tokens(len(text)), "stop"
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


def _refusal(
    spec: ModelSpec, header: Callable[[str], str | None], payload: dict[str, Any]
) -> tuple[int, dict[str, Any]] | None:
    """The status and body refusing a request as OpenAI does (401 for the key, then 404 for the
    model name), or None when it is admitted."""
    if spec.api_key is not None and header("Authorization") != f"Bearer {spec.api_key}":
        message = (
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
        )
        return 401, _error_body(message, "invalid_request_error", "invalid_api_key")
    served = spec.served_name or spec.name
    name = payload.get("model", served)  # like vLLM, a request without a model gets the served one
    if name != served:
        message = f"The model `{name}` does not exist or you do not have access to it."
        return 404, _error_body(message, "invalid_request_error", "model_not_found")
    return None


_Parts = Iterator[tuple[float, bytes]]


@dataclass
class _Answer:
    """What a model does with one request, whoever carries it: its loopback server or a transport."""

    wake: threading.Event  # set when the model goes down or the fleet closes: the answer is cut there
    status: int = 0  # 0: the connection closes without an answer
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""  # a whole body, sent with the head
    parts: _Parts | None = None  # or a body sent piece by piece after the head, each piece after a wait
    wait_s: float = 0.0  # before the head
    busy_s: float | None = None  # then, the latency served holding one of the model's slots (None: no slot)
    complete: bool = True  # False: the connection is cut after the parts
    close: bool = False  # the head announces that the connection closes after this answer


def _json(
    wake: threading.Event, status: int, payload: Any, headers: Mapping[str, str] | None = None, **more: Any
) -> _Answer:
    """A JSON answer."""
    head = {"Content-Type": "application/json", **(headers or {})}
    return _Answer(wake, status, head, json.dumps(payload).encode(), **more)


def _chat_body(
    spec: ModelSpec, number: int, request: _ChatRequest, empty: bool, task: str | None, text: str | None
) -> dict[str, Any]:
    """An OpenAI chat.completion body (with no choices when simulating an empty answer)."""
    content, completion, finish = _answer(spec, task, request, text)
    message = {"role": "assistant", "content": content}
    choices = [{"index": i, "message": message, "finish_reason": finish} for i in range(request.n)]
    return {
        "id": f"chatcmpl-{spec.name}-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": spec.served_name or spec.name,
        "choices": [] if empty else choices,
        "usage": _usage(request.prompt, completion * request.n),
    }


def _embedding_body(spec: ModelSpec, texts: list[str], empty: bool) -> dict[str, Any]:
    """An OpenAI embeddings list body (with no data when simulating an empty answer)."""
    vectors = [] if empty else [_embed(text, spec.dim) for text in texts]
    data = [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)]
    prompt = _text_tokens(sum(len(text) for text in texts))
    return {
        "object": "list",
        "data": data,
        "model": spec.served_name or spec.name,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


def _stream(
    spec: ModelSpec,
    number: int,
    request: _ChatRequest,
    payload: dict[str, Any],
    task: str | None,
    fate: str,
    draw: _Draw,
    first_s: float,
) -> tuple[_Parts, bool]:
    """OpenAI server-sent events, the first after ``first_s`` (possibly after a stall too), possibly
    cut or ending in an error event; usage comes in a last chunk only when asked for. Returns the
    pieces and whether the stream completes."""
    stalled, ending = _stream_faults(spec, draw, fate)
    chunk_id, created, model_name = f"chatcmpl-{spec.name}-{number}", int(time.time()), spec.served_name or spec.name

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model_name}
        return json.dumps({**chunk, "choices": choices, **extra}).encode()

    if fate in ("malformed", "empty"):
        events = [_MALFORMED_CHAT if fate == "malformed" else event([])]
    else:
        text, completion, finish = _answer(spec, task, request, draw.step.text if draw.step else None)
        pieces = [text[i : i + _STREAM_PIECE_CHARS] for i in range(0, len(text), _STREAM_PIECE_CHARS)]
        events = []
        for index in range(request.n):
            first = {"index": index, "delta": {"role": "assistant", "content": pieces[0]}, "finish_reason": None}
            events.append(event([first]))
            events += [event([{"index": index, "delta": {"content": p}, "finish_reason": None}]) for p in pieces[1:]]
            events.append(event([{"index": index, "delta": {}, "finish_reason": finish}]))
        options = payload.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            events.append(event([], usage=_usage(request.prompt, completion * request.n)))
        if ending:
            events = events[: min(_CHUNKS_BEFORE_BREAK, len(pieces))]
        if ending == "stream_error":
            failure = {"object": "error", "message": "simulated engine failure", "type": "InternalServerError"}
            events.append(json.dumps({"error": {**failure, "param": None, "code": 500}}).encode())
    waits = [first_s + (spec.hang_s if stalled else 0.0)] + [spec.chunk_delay_s] * (len(events) - 1)
    parts = [(wait, b"data: " + data + b"\n\n") for wait, data in zip(waits, events)]
    if ending == "break":
        return iter(parts), False
    return iter([*parts, (0.0, b"data: [DONE]\n\n")]), True


def _drip(seconds: float, stream: bool) -> tuple[dict[str, str], _Parts]:
    """Headers, then one byte of a body that never completes every DRIP_INTERVAL_S for ``seconds``."""
    if stream:  # a comment that never ends, in chunked encoding
        headers, piece = {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"}, b":"
    else:  # JSON whitespace, of a body announced as 1 MiB
        headers, piece = {"Content-Type": "application/json", "Content-Length": str(1 << 20)}, b" "
    return headers, ((DRIP_INTERVAL_S, piece) for _ in range(int(seconds / DRIP_INTERVAL_S)))


def _bomb() -> _Parts:
    """A gzip bomb: 1 GiB of whitespace inside a JSON string, sent as one gzip member whose 1 MiB
    blocks are compressed once per process (so a bomb costs the server little)."""
    head, tail = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "', b'"}}]}'
    yield 0.0, _GZIP_HEADER + _deflated(head, final=False)
    crc, size = zlib.crc32(head), len(head)
    for _ in range(_BOMB_BLOCKS):
        yield 0.0, _deflated(_BOMB_BLOCK, final=False)
        crc, size = zlib.crc32(_BOMB_BLOCK, crc), size + len(_BOMB_BLOCK)
    crc, size = zlib.crc32(tail, crc), size + len(tail)
    yield 0.0, _deflated(tail, final=True) + struct.pack("<II", crc, size & 0xFFFFFFFF)


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
        host, self.server_port = self.server_address[:2]
        self.server_name = str(host)

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
    """Carries one simulated model's answers over HTTP/1.1."""

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
        self._play(self.server.model.answer("GET", self.path, self.headers.get, bytes))

    def do_POST(self) -> None:
        """Answer a chat completion or embeddings request, with faults drawn from the model's spec."""
        self._play(self.server.model.answer("POST", self.path, self.headers.get, self._read_body))

    def _play(self, answer: _Answer) -> None:
        """Send an answer, spending its waits; the connection is cut where the model goes down."""
        wake = answer.wake
        if (
            _sleep(wake, answer.wait_s)
            or (answer.busy_s is not None and self.server.model.slots.serve(wake, answer.busy_s))
            or not answer.status
        ):
            self._drop()
            return
        self.close_connection = self.close_connection or answer.close
        if answer.parts is None:
            headers = {**answer.headers, "Content-Length": str(len(answer.body))}
            self.wfile.write(self._head_bytes(answer.status, headers) + answer.body)  # one write: small answers
            return
        chunked = answer.headers.get("Transfer-Encoding") == "chunked"
        self.wfile.write(self._head_bytes(answer.status, answer.headers))
        for wait, data in answer.parts:
            if _sleep(wake, wait):
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        else:
            if answer.complete:
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
                return
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

    def _drop(self) -> None:
        """Cut the connection without (or in the middle of) an answer."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _head_bytes(self, status: int, headers: dict[str, str]) -> bytes:
        """The status line and headers of a response, built by hand to keep per-request work small."""
        lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
        lines += [f"{key}: {value}" for key, value in headers.items()]
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _sleep(wake: threading.Event, seconds: float) -> bool:
    """Wait unless woken by close() or down=True; returns True if the request must be abandoned."""
    return wake.wait(seconds) if seconds > 0 else wake.is_set()


class FleetTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """One simulated model as an in-process httpx transport, sync and async (as ``httpx.MockTransport``
    is): the same request handling as its loopback server, with no socket and no thread.

    Waits are spent for real (``time.sleep``, ``asyncio.sleep``) up to the request's read timeout,
    where the transport raises ``httpx.ReadTimeout`` as httpx would; a model that is down raises
    ``httpx.ConnectError``, an answer cut short ``httpx.RemoteProtocolError``. ``slots`` queue only
    on the loopback servers.
    """

    def __init__(self, model: _ModelServer) -> None:
        self._model = model

    def __repr__(self) -> str:
        return f"FleetTransport({self._model.current().name!r})"

    def _answer(self, request: httpx.Request, body: bytes) -> _Answer:
        if self._model.current().down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return self._model.answer(request.method, request.url.path, request.headers.get, lambda: body)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self._answer(request, request.read())
        _Wait(answer, request).sleep(answer.wait_s + (answer.busy_s or 0.0))
        return _response(answer, request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        answer = self._answer(request, await request.aread())
        await _Wait(answer, request).asleep(answer.wait_s + (answer.busy_s or 0.0))
        return _response(answer, request)


class _Wait:
    """Spends an answer's waits for a transport: up to the request's read timeout, then
    ``httpx.ReadTimeout``; ``httpx.RemoteProtocolError`` once the model went down meanwhile."""

    def __init__(self, answer: _Answer, request: httpx.Request) -> None:
        self.answer = answer
        self.request = request
        timeout = request.extensions.get("timeout", {}).get("read")
        self.timeout = math.inf if timeout is None else timeout

    def sleep(self, seconds: float) -> None:
        self._check(seconds, _sleep(self.answer.wake, min(seconds, self.timeout)))

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(min(seconds, self.timeout))
        self._check(seconds, self.answer.wake.is_set())

    def _check(self, seconds: float, woken: bool) -> None:
        if woken:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=self.request)
        if seconds > self.timeout:
            raise httpx.ReadTimeout("timed out", request=self.request)


class _PartStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """The pieces of a body sent piece by piece, as a transport's response stream (sync and async)."""

    def __init__(self, answer: _Answer, parts: _Parts, request: httpx.Request) -> None:
        self._wait = _Wait(answer, request)
        self._parts = parts

    def __iter__(self) -> Iterator[bytes]:
        for wait, data in self._parts:
            self._wait.sleep(wait)
            yield data
        self._end()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for wait, data in self._parts:
            await self._wait.asleep(wait)
            yield data
        self._end()

    def _end(self) -> None:
        if not self._wait.answer.complete:
            message = "peer closed connection without sending complete message body"
            raise httpx.RemoteProtocolError(message, request=self._wait.request)


def _response(answer: _Answer, request: httpx.Request) -> httpx.Response:
    """The httpx response of an answer whose waits before the head are over."""
    if not answer.status:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
    if answer.parts is None:
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body, request=request)
    return httpx.Response(
        answer.status, headers=answer.headers, stream=_PartStream(answer, answer.parts, request), request=request
    )


class _ModelServer:
    """One model's live spec, random generator, request count and HTTP server."""

    def __init__(
        self, spec: ModelSpec, rng: np.random.Generator, received: list[tuple[str, dict[str, Any]]] | None
    ) -> None:
        self.lock = threading.Lock()  # guards spec, rng, count, scripted and wake; held only for a few microseconds
        self.spec = spec
        self.rng = rng
        self.count = 0
        self.scripted = 0  # requests that took their answer from the spec's script
        self.received = received
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
        """Draw a request's random numbers from the model's own generator, and its scripted step."""
        with self.lock:
            fault, stall, cut = self.rng.random(3).tolist()
            z = float(self.rng.standard_normal())
            script = self.spec.script
            step = _as_step(script[min(self.scripted, len(script) - 1)]) if script else None
            self.scripted += bool(script)
            return _Draw(fault, stall, cut, z, step)

    def answer(
        self, method: str, target: str, header: Callable[[str], str | None], read_body: Callable[[], bytes]
    ) -> _Answer:
        """What this model does with one request (counted): its checks, as strict as a real server's,
        then the fate drawn (or scripted) for it."""
        spec, wake, number = self.begin()
        path = target.partition("?")[0]
        if method != "POST":
            if path == _MODELS_PATH:
                model = {"id": spec.served_name or spec.name, "object": "model", "created": 0, "owned_by": "zeta-sim"}
                return _json(wake, 200, {"object": "list", "data": [model]})
            status = 405 if path in (_CHAT_PATH, _EMBED_PATH) else 404
            message = f"use POST on {path}" if status == 405 else f"no route {path}"
            return _json(wake, status, _error_body(message, "invalid_request_error", status))
        try:
            body = read_body()
            if path not in (_CHAT_PATH, _EMBED_PATH):
                status = 405 if path == _MODELS_PATH else 404
                return _json(wake, status, _error_body(f"no POST route {path}", "invalid_request_error", status))
            try:
                payload = json.loads(body)
            except ValueError:
                raise _BadRequest("the request body is not valid JSON") from None
            if not isinstance(payload, dict):
                raise _BadRequest("the request body must be a JSON object")
            if self.received is not None:
                self.received.append((spec.name, payload))
            refused = _refusal(spec, header, payload)
            if refused is not None:
                return _json(wake, *refused)
            wanted = "chat" if path == _CHAT_PATH else "embedding"
            if spec.kind != wanted:
                raise _BadRequest(f"{spec.name} is a {spec.kind} model; {path} needs a {wanted} model")
            request = _parse_chat(payload, spec) if wanted == "chat" else _parse_embedding(payload)
        except _BadRequest as exc:
            return _json(wake, 400, _error_body(str(exc), "invalid_request_error", 400))
        except _ContextExceeded as exc:  # vLLM's error body for a bad request
            vllm = {"object": "error", "message": str(exc), "type": "BadRequestError", "param": None, "code": 400}
            return _json(wake, 400, vllm)
        return self._fated(spec, wake, number, header("X-Sim-Task"), payload, request)

    def _fated(
        self,
        spec: ModelSpec,
        wake: threading.Event,
        number: int,
        task: str | None,
        payload: dict[str, Any],
        request: _ChatRequest | list[str],
    ) -> _Answer:
        """The answer to a valid request, as its fate says."""
        draw = self.draw()
        fate = _fate(spec, draw)
        step = draw.step or Step()
        if fate == "disconnect":
            return _Answer(wake, wait_s=step.latency_s or 0.0)
        if fate == "error":
            status = step.status or 500
            kind = "server_error" if status >= 500 else "invalid_request_error"
            message = step.message or "simulated internal error"
            return _json(wake, status, _error_body(message, kind, status), wait_s=step.latency_s or 0.0)
        if fate == "rate_limit":
            after = spec.retry_after_s if step.retry_after_s is None else step.retry_after_s
            retry = {"Retry-After": str(int(after)) if float(after).is_integer() else f"{after:g}"}  # whole: an integer
            limit = _error_body(step.message or "simulated rate limit", "rate_limit_error", 429)
            return _json(wake, 429, limit, retry, wait_s=step.latency_s or 0.0)
        wait = spec.hang_s if fate == "hang" else 0.0
        stream = isinstance(request, _ChatRequest) and payload.get("stream") is True
        if fate == "drip":
            headers, parts = _drip(spec.hang_s, stream)
            return _Answer(wake, 200, headers, parts=parts, complete=False, close=True)
        if fate == "bomb":
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            return _Answer(wake, 200, headers, parts=_bomb(), complete=False, close=True)
        latency = _latency(spec, draw.z) if step.latency_s is None else step.latency_s
        if isinstance(request, _ChatRequest) and stream:
            parts, complete = _stream(spec, number, request, payload, task, fate, draw, latency)
            headers = {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked", "Cache-Control": "no-cache"}
            return _Answer(wake, 200, headers, parts=parts, wait_s=wait, complete=complete)
        if fate == "malformed":
            body = _MALFORMED_CHAT if isinstance(request, _ChatRequest) else _MALFORMED_EMBEDDING
            return _Answer(wake, 200, {"Content-Type": "application/json"}, body, wait_s=wait, busy_s=latency)
        if isinstance(request, _ChatRequest):
            answer = _chat_body(spec, number, request, fate == "empty", task, step.text)
        else:
            answer = _embedding_body(spec, request, fate == "empty")
        return _json(wake, 200, answer, wait_s=wait, busy_s=latency)

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
            return _sleep(wake, seconds)
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
            return _sleep(wake, seconds)
        finally:
            with self.changed:
                self.busy -= 1
                self.changed.notify_all()


class Fleet:
    """A set of simulated models, each served on its own loopback port, changeable at run time."""

    def __init__(
        self, specs: Iterable[ModelSpec], seed: int = 0, ports: Mapping[str, int] | None = None, record: bool = False
    ) -> None:
        """``ports`` binds the named models to fixed loopback ports (the others get free ones);
        ``record`` keeps every request's model and JSON body, in arrival order, in :attr:`received`."""
        specs = list(specs)
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        unknown = sorted(set(ports or {}) - set(names))
        if unknown:
            raise ValueError(f"ports name models not in the fleet: {unknown}")
        streams = np.random.SeedSequence(seed).spawn(len(specs) + 1)
        self.received: list[tuple[str, dict[str, Any]]] = []
        journal = self.received if record else None
        self._servers = {
            spec.name: _ModelServer(_copy(spec), np.random.default_rng(stream), journal)
            for spec, stream in zip(specs, streams)
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

    def transport(self, name: str) -> FleetTransport:
        """A model as an in-process httpx transport (sync and async), served without starting the fleet."""
        return FleetTransport(self._server(name))

    def transports(self) -> dict[str, FleetTransport]:
        """Every model's transport, by name: ``Router(config, transport=fleet.transports())``."""
        return {name: FleetTransport(server) for name, server in self._servers.items()}

    def update(self, name: str, /, **changes: Any) -> None:
        """Change a model's spec at run time; down=True refuses connections, down=False serves again.
        A new ``script`` starts from its first step."""
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
                if "script" in changes:
                    server.scripted = 0

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
            entry: dict[str, Any] = dict(base_url=self.base_url(spec.name), kind=spec.kind, timeout_s=_CONFIG_TIMEOUT_S)
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
    known = {spec.name: spec for spec in _example_specs()}
    specs: list[ModelSpec] = []
    ports: dict[str, int] = {}
    owner: dict[int, str] = {}
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
        specs.append(_as_configured(known.get(name, ModelSpec(name)), model))
    return Fleet(specs, seed=seed, ports=ports)


def mock_fleet(
    config: Config | Mapping[str, Any] | str | Path,
    *specs: ModelSpec,
    seed: int = 0,
    record: bool = False,
    **defaults: Any,
) -> Fleet:
    """An unstarted fleet simulating every model of a router config, for its in-process transports:
    ``Router(config, transport=mock_fleet(config).transports())`` runs with no server at all.

    A model behaves as the spec of its name among ``specs``, else as ``ModelSpec(name, **defaults)``;
    either way with the config's model name, kind, dimension and context window. ``record``: see
    :class:`Fleet`. Raises ValueError for a spec that names no model of the config.
    """
    config = load_config(config)
    given = {spec.name: spec for spec in specs}
    unknown = sorted(set(given) - set(config.models))
    if unknown:
        raise ValueError(f"specs name models not in the config: {unknown}")
    return Fleet(
        [_as_configured(given.get(name) or ModelSpec(name, **defaults), m) for name, m in config.models.items()],
        seed=seed,
        record=record,
    )


def _as_configured(spec: ModelSpec, model: ModelConfig) -> ModelSpec:
    """A spec that serves a configured model: its name, served name, kind, dimension and window."""
    return dataclasses.replace(
        spec,
        name=model.name,
        served_name=model.backend_model,
        kind=model.kind,
        dim=model.dim or spec.dim,
        context_window=model.context_window,
        accuracy=dict(spec.accuracy),
    )
