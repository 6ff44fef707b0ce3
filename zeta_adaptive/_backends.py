"""Backends: the seam between the router and model endpoints, as transports are in httpx.

:class:`HttpxBackend` speaks OpenAI-compatible ``/chat/completions`` and ``/embeddings`` over
httpx, sync and async, with one keep-alive connection pool per model. Tests and simulations swap
the network for an httpx transport (``transport=``, e.g. ``httpx.MockTransport`` or
:meth:`zeta_adaptive.simulate.Fleet.transports`), so the real parsing runs on every answer.

A backend never raises for a failed attempt: it returns a :class:`Reply` whose ``outcome`` says
what happened, so the router can log it and fall back. Every attempt is bounded hard, whatever the
endpoint sends: in time (sync reads are cut to the time left by a deadline-aware network layer,
async ones by ``asyncio.timeout``), in size (``max_response_bytes``, counted on the compressed and
on the decompressed body while it is read) and in shape (JSON nesting depth).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
import ssl
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Any, Literal, Protocol

import httpcore
import httpx
import numpy as np
from httpx_sse import ServerSentEvent
from httpx_sse._decoders import SSEDecoder, SSELineDecoder  # the conforming incremental parser httpx-sse uses itself

from ._config import ModelConfig
from ._exceptions import ConfigError
from ._scrub import read_key

__all__ = ["Outcome", "Reply", "Backend", "HttpxBackend", "Transport", "estimate_tokens", "classify_error"]


class Outcome(StrEnum):
    """How one attempt ended; stored as its string value."""

    OK = "ok"
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"
    MALFORMED = "malformed"
    CANCELLED = "cancelled"  # a hedged attempt that lost the race, or a call its caller abandoned
    STREAM_BROKEN = "stream_broken"  # a stream that failed after its first token reached the caller
    INVALID = "invalid"  # an answer that failed the route's validators
    CONTEXT_EXCEEDED = "context_exceeded"  # the prompt is longer than this model's context window


Messages = Sequence[Mapping[str, Any]]

#: error text kept per attempt (``Reply.error``, the log's ``attempts.error``)
ERROR_CHARS = 200


@dataclass(slots=True)
class Reply:
    """What one attempt at one model produced."""

    outcome: Outcome
    latency_s: float
    status: int | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    text: str | None = None
    vectors: np.ndarray | None = None
    error: str = ""
    retry_after_s: float | None = None
    ttft_s: float | None = None  # time to first token, for streamed answers
    tokens_estimated: bool = False  # the server reported no usage: tokens are estimated (see estimate_tokens)
    misconfigured: bool = False  # the endpoint's setup is wrong (bad key, unknown model name), not the request
    tool_calls: list[dict[str, Any]] | None = None  # the answer's tool calls, as OpenAI's API writes them
    finish_reason: str | None = None  # why the model stopped, as the server said ("stop", "length", "tool_calls")

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


#: what a streaming attempt yields: text deltas, then one final Reply (its ``text`` is the whole answer)
StreamItem = str | Reply

#: what carries a model's requests instead of the network: sync, async, or both (as ``httpx.MockTransport``)
Transport = httpx.BaseTransport | httpx.AsyncBaseTransport


class Backend(Protocol):
    """Anything that can make one attempt at one model, sync and async."""

    def chat(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float) -> Reply: ...
    async def achat(
        self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float
    ) -> Reply: ...
    def embed(self, model: ModelConfig, texts: Sequence[str], timeout_s: float) -> Reply: ...
    async def aembed(self, model: ModelConfig, texts: Sequence[str], timeout_s: float) -> Reply: ...
    def stream_chat(
        self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float, first_token_s: float
    ) -> Iterator[StreamItem]: ...
    def astream_chat(
        self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float, first_token_s: float
    ) -> AsyncIterator[StreamItem]: ...
    def close(self) -> None: ...
    async def aclose(self) -> None: ...


# -- token estimates ----------------------------------------------------------------------------

#: characters per token: the one rule for every estimate of tokens from text (the usual rough figure)
CHARS_PER_TOKEN = 4
#: tokens an OpenAI-style chat template adds per message (role markers, separators)
MESSAGE_OVERHEAD_TOKENS = 4


def _content_chars(content: Any) -> int:
    """Characters of a message content: a string, or a list of OpenAI content parts."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p["text"]) for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return 0


def estimate_tokens(messages: Messages) -> int:
    """A server-free estimate of a prompt's tokens: ``CHARS_PER_TOKEN`` characters per token plus
    ``MESSAGE_OVERHEAD_TOKENS`` per message. Used when a stream reports no usage, and by the
    simulated fleet to decide when a prompt exceeds a context window."""
    return sum(
        _content_chars(m.get("content")) // CHARS_PER_TOKEN + MESSAGE_OVERHEAD_TOKENS
        for m in messages
        if isinstance(m, Mapping)
    )


# -- bounded bodies -----------------------------------------------------------------------------

#: deepest JSON nesting accepted in an answer (OpenAI bodies nest about 6 deep)
MAX_JSON_DEPTH = 128
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_ACCEPT_ENCODING = "gzip, deflate"
_USER_AGENT = f"python-httpx/{httpx.__version__}"
_PATHS = ("chat/completions", "embeddings")  # what the backend asks of a model, under its base URL
_TIMEOUTS = ("connect", "read", "write", "pool")  # httpx's timeout extension, one bound for all four
#: request bodies as httpx encodes JSON (compact, UTF-8, no NaN), with one encoder for every request
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class _BadBody(Exception):
    """A body that must not be used: too large, badly encoded, not JSON or nested too deep."""


class _Body:
    """Decodes a body chunk by chunk against a byte cap, on the wire and after decompression.

    Decompression is done here with ``zlib`` and a bounded output per chunk, so a gzip bomb is
    refused once it has produced ``cap`` bytes, with memory bounded by the cap.
    """

    def __init__(self, encoding: str | None, cap: int) -> None:
        enc = (encoding or "identity").strip().lower()
        if enc in ("identity", ""):
            self._zlib = None
        elif enc in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS)
        else:
            raise _BadBody(f"unsupported content-encoding {enc[:40]!r}")
        self.cap = cap
        self.wire = 0
        self.size = 0

    def decode(self, chunk: bytes) -> bytes:
        self.wire += len(chunk)
        if self.wire > self.cap:
            raise _BadBody(f"answer larger than max_response_bytes={self.cap}")
        if self._zlib is not None:
            try:
                chunk = self._zlib.decompress(chunk, self.cap - self.size + 1)
            except zlib.error:
                raise _BadBody("answer is not valid gzip/deflate data") from None
            if self._zlib.unconsumed_tail:
                raise _BadBody(f"answer decompresses to more than max_response_bytes={self.cap}")
        self.size += len(chunk)
        if self.size > self.cap:
            raise _BadBody(f"answer larger than max_response_bytes={self.cap}")
        return chunk


def _json_depth(data: bytes) -> int:
    """The deepest bracket nesting of a JSON text, strings excluded (linear time, no recursion)."""
    bare = np.frombuffer(_JSON_STRING.sub(b"", data), dtype=np.uint8)
    steps = np.isin(bare, (0x5B, 0x7B)).astype(np.int32) - np.isin(bare, (0x5D, 0x7D)).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def loads(data: bytes | str) -> Any:
    """Parse JSON with a depth guard: raises ``ValueError`` for invalid or too deeply nested text."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _json_depth(raw) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH}")
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _parse_json(data: bytes) -> Any:
    try:
        return loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadBody(f"answer is not valid JSON ({exc})"[:ERROR_CHARS]) from None


# -- hard deadlines for sync I/O ----------------------------------------------------------------

#: the perf_counter() instant at which the current sync attempt's I/O must stop (None: no bound)
_DEADLINE: ContextVar[float | None] = ContextVar("zeta_adaptive_deadline", default=None)


class _hard_deadline:
    """Bound every socket operation of this thread's httpx calls inside the block by ``at`` (a
    class, not a generator: it runs on every attempt)."""

    __slots__ = ("at", "token")

    def __init__(self, at: float) -> None:
        self.at = at

    def __enter__(self) -> None:
        self.token = _DEADLINE.set(self.at)

    def __exit__(self, *exc: object) -> None:
        _DEADLINE.reset(self.token)


def _cut(timeout: float | None, expired: type[Exception]) -> float | None:
    """A socket timeout cut to what is left of the deadline; ``expired`` once it has passed."""
    at = _DEADLINE.get()
    if at is None:
        return timeout
    left = at - time.perf_counter()
    if left <= 0:
        raise expired("the attempt's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read, write and TLS step ends by the attempt's deadline, so a
    server dripping headers or body one byte at a time cannot hold a sync call past it."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _cut(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _cut(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, _cut(timeout, httpcore.ConnectTimeout))
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineNetwork(httpcore.NetworkBackend):
    """httpcore's sync network backend, with connects and streams bounded by the attempt's deadline."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._inner.connect_tcp(host, port, _cut(timeout, httpcore.ConnectTimeout), local_address, socket_options)
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._inner.connect_unix_socket(path, _cut(timeout, httpcore.ConnectTimeout), socket_options)
        )

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


@cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every client: building one loads the CA bundle (tens of milliseconds)."""
    return httpx.create_ssl_context()


def pool_verify(model: ModelConfig) -> ssl.SSLContext | Literal[False]:
    """What a model's connection pool verifies TLS with: the one shared context, or nothing over plain HTTP."""
    return _ssl_context() if model.base_url.lower().startswith("https:") else False


def pool_limits(model: ModelConfig) -> httpx.Limits:
    """A model's connection pool: ``max_in_flight`` connections, all kept alive for 30 s."""
    return httpx.Limits(
        max_connections=model.max_in_flight, max_keepalive_connections=model.max_in_flight, keepalive_expiry=30.0
    )


def _deadline_transport(model: ModelConfig) -> httpx.HTTPTransport:
    """httpx's transport for a model over a connection pool that uses :class:`_DeadlineNetwork`.

    httpx has no option for httpcore's ``network_backend``, so the pool is replaced after
    construction; everything else (request mapping, exception mapping) stays httpx's own.
    """
    verify, limits = pool_verify(model), pool_limits(model)
    transport = httpx.HTTPTransport(verify=verify, limits=limits)
    transport._pool.close()
    transport._pool = httpcore.ConnectionPool(
        ssl_context=verify or None,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_DeadlineNetwork(),
    )
    return transport


# -- classifying answers ------------------------------------------------------------------------

#: how context-length errors read, lower-cased, from the servers the router meets (status 400/413/422)
CONTEXT_MARKERS = (
    "context_length_exceeded",  # OpenAI error code (400)
    "maximum context length",  # vLLM and OpenAI: "This model's maximum context length is N tokens. ..."
    "input exceeds the context window",  # OpenAI, newer models: "Your input exceeds the context window of this model"
    "exceed_context_size_error",  # llama.cpp server error type (400)
    "exceeds the available context size",  # llama.cpp server: "the request exceeds the available context size"
    "`inputs` tokens + `max_new_tokens` must be <=",  # TGI validation error (422)
    "`inputs` must have less than",  # TGI: "`inputs` must have less than N tokens. Given: M"
    "contextwindowexceedederror",  # LiteLLM proxy: "litellm.ContextWindowExceededError: ..." (400)
)
#: how an unknown model name reads: a misconfigured endpoint, not a bad request
UNKNOWN_MODEL_MARKERS = (
    "model_not_found",  # OpenAI error code (404)
    "invalid model name passed in model=",  # LiteLLM proxy (400)
)
_SCANNED_CHARS = 8192  # classification reads this much of an error body: linear time on any answer


def _error_message(text: str) -> str:
    """The human message of an OpenAI/vLLM/TGI/llama.cpp/LiteLLM error body, else the text itself."""
    try:
        body = loads(text)
    except ValueError:
        return text
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping):
            message = error.get("message", "")
            code = error.get("code")
            if isinstance(message, str) and message:
                return f"{code}: {message}" if isinstance(code, str) and code and code not in message else message
        if isinstance(error, str):
            return error
        message = body.get("message") or body.get("detail")
        if isinstance(message, str):
            return message
    return text


def classify_error(status: int, text: str, latency_s: float, retry_after_s: float | None = None) -> Reply:
    """The Reply for a non-2xx answer, from its status and error body."""
    text = text[:_SCANNED_CHARS]
    lowered = text.lower()
    detail = " ".join(_error_message(text).split())[:ERROR_CHARS]
    if status == 429:
        return Reply(Outcome.RATE_LIMITED, latency_s, status, error=detail, retry_after_s=retry_after_s)
    if status == 408:
        return Reply(Outcome.TIMEOUT, latency_s, status, error=detail)
    if status in (400, 413, 422) and any(marker in lowered for marker in CONTEXT_MARKERS):
        return Reply(Outcome.CONTEXT_EXCEEDED, latency_s, status, error=detail)
    if 400 <= status < 500:
        misconfigured = status in (401, 403, 404) or any(marker in lowered for marker in UNKNOWN_MODEL_MARKERS)
        return Reply(Outcome.CLIENT_ERROR, latency_s, status, error=detail, misconfigured=misconfigured)
    return Reply(Outcome.SERVER_ERROR, latency_s, status, error=detail)


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


#: what ends an attempt as a failed attempt; anything else an attempt raises is a bug, and propagates
_ATTEMPT_FAILURES = (httpx.TransportError, TimeoutError, _BadBody)


def _classify_exception(exc: BaseException, latency_s: float) -> Reply:
    """The Reply for one of the ``_ATTEMPT_FAILURES``."""
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return Reply(Outcome.TIMEOUT, latency_s, error=type(exc).__name__)
    if isinstance(exc, _BadBody):
        return Reply(Outcome.MALFORMED, latency_s, error=str(exc)[:ERROR_CHARS])
    return Reply(Outcome.CONNECT_ERROR, latency_s, error=f"{type(exc).__name__}: {exc}"[:ERROR_CHARS])


def _usage(body: Mapping[str, Any]) -> tuple[int, int]:
    usage = body.get("usage") or {}
    if not isinstance(usage, Mapping):
        return 0, 0
    tin, tout = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return (tin if isinstance(tin, int) else 0), (tout if isinstance(tout, int) else 0)


def parse_chat(body: Any, latency_s: float, status: int) -> Reply:
    """Turn a chat completion body into a Reply; no choices, or neither text nor tool calls, is malformed."""
    if not isinstance(body, Mapping):
        return Reply(Outcome.MALFORMED, latency_s, status, error="answer is not a JSON object")
    tin, tout = _usage(body)
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return Reply(Outcome.MALFORMED, latency_s, status, tin, tout, error="answer has no choices")
    message = choices[0].get("message") if isinstance(choices[0], Mapping) else None
    if not isinstance(message, Mapping):
        return Reply(Outcome.MALFORMED, latency_s, status, tin, tout, error="first choice has no message")
    content, calls, finish = message.get("content"), message.get("tool_calls"), choices[0].get("finish_reason")
    text = content if isinstance(content, str) else ""
    tool_calls = calls if isinstance(calls, list) and calls and all(isinstance(c, Mapping) for c in calls) else None
    if text.strip() or tool_calls:
        reason = finish if isinstance(finish, str) else None
        return Reply(Outcome.OK, latency_s, status, tin, tout, text=text, tool_calls=tool_calls, finish_reason=reason)
    return Reply(Outcome.MALFORMED, latency_s, status, tin, tout, error="answer is empty")


def parse_embeddings(body: Any, latency_s: float, status: int, count: int, dim: int | None) -> Reply:
    """Turn an embeddings body into a Reply with an (count, dim) array, checking count and dimension."""
    if not isinstance(body, Mapping) or not isinstance(body.get("data"), list):
        return Reply(Outcome.MALFORMED, latency_s, status, error="answer has no data list")
    tin, _ = _usage(body)
    data = body["data"]
    if len(data) != count:
        return Reply(Outcome.MALFORMED, latency_s, status, tin, error=f"expected {count} vectors, got {len(data)}")
    try:
        ordered = sorted(data, key=lambda d: d.get("index", 0))
        vectors = np.array([d["embedding"] for d in ordered], dtype=np.float32)
    except (TypeError, ValueError, KeyError, AttributeError):
        return Reply(Outcome.MALFORMED, latency_s, status, tin, error="embedding is not a list of numbers")
    if vectors.ndim != 2 or vectors.shape[1] == 0 or (dim is not None and vectors.shape[1] != dim):
        got = vectors.shape[1] if vectors.ndim == 2 else "ragged"
        return Reply(Outcome.MALFORMED, latency_s, status, tin, error=f"expected dimension {dim}, got {got}")
    return Reply(Outcome.OK, latency_s, status, tin, 0, vectors=vectors)


Parse = Callable[[Any, float, int], Reply]
#: one attempt's model, path, request body, response cap and parser
_Job = tuple[ModelConfig, str, dict[str, Any], int, Parse]


def _finish(
    status: int, headers: httpx.Headers, data: bytes | None, problem: str, latency_s: float, parse: Parse
) -> Reply:
    """The Reply for a whole (or refused) body: status first, then size and shape, then content."""
    if not 200 <= status < 300:
        return classify_error(status, (data or b"").decode("utf-8", "replace"), latency_s, _retry_after(headers))
    if data is None:
        return Reply(Outcome.MALFORMED, latency_s, status, error=problem[:ERROR_CHARS])
    try:
        return parse(_parse_json(data), latency_s, status)
    except _BadBody as exc:
        return Reply(Outcome.MALFORMED, latency_s, status, error=str(exc)[:ERROR_CHARS])


class _StreamState:
    """Folds an OpenAI server-sent event stream into text deltas and a final Reply.

    Bytes go through the size cap and decompression (:class:`_Body`), then the conforming SSE
    parser of httpx-sse (multi-line ``data:``, comments, ``event:`` fields). An error event
    (``event: error``, or ``data: {"error": ...}`` as vLLM sends on an engine failure) ends the
    attempt as ``stream_broken``. The read bounds are hard: the first token must come within
    ``first_token_s`` of the start, each later chunk within ``first_token_s`` of the previous one,
    and everything within ``timeout_s``.
    """

    def __init__(self, model: ModelConfig, messages: Messages, timeout_s: float, first_token_s: float) -> None:
        self.start = self.last_chunk = time.perf_counter()
        self.end = self.start + timeout_s
        self.gap_s = min(first_token_s, timeout_s)
        self.cap = model.response_cap()
        self.prompt_tokens = estimate_tokens(messages)
        self.parts: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}  # tool calls by index, their deltas merged
        self.finish_reason: str | None = None
        self.ttft: float | None = None
        self.tokens_in = 0
        self.tokens_out = 0
        self.usage_seen = False
        self.done = False
        self._body: _Body | None = None
        self._text = codecs.getincrementaldecoder("utf-8")("replace")
        self._lines = SSELineDecoder()
        self._events = SSEDecoder()

    def timeouts(self) -> httpx.Timeout:
        """httpx's timeouts for the request: each read within the gap allowed between chunks (the
        network layer cuts them further to :meth:`read_deadline`; a transport sees them as they are)."""
        return httpx.Timeout(self.end - self.start, read=self.gap_s)

    def read_deadline(self) -> float:
        """The perf_counter() instant by which the next read must complete."""
        return min(self.end, self.last_chunk + self.gap_s)

    def open(self, response: httpx.Response, error_body: bytes | None, problem: str) -> Reply | None:
        """The answer's headers arrived: the Reply for a refusal (its body read), else None and the
        body is decoded from now on with the answer's content-encoding."""
        if response.status_code >= 300:
            latency = time.perf_counter() - self.start
            return _finish(response.status_code, response.headers, error_body, problem, latency, parse_chat)
        try:
            self._body = _Body(_wire_encoding(response), self.cap)
        except _BadBody as exc:
            return self.failure(Outcome.MALFORMED, str(exc))
        return None

    def feed(self, chunk: bytes) -> list[StreamItem]:
        """One chunk of the body: the text deltas it completes, ending with a failure Reply if any."""
        assert self._body is not None
        if self.ttft is not None:
            self.last_chunk = time.perf_counter()
        try:
            text = self._text.decode(self._body.decode(chunk))
        except _BadBody as exc:
            return [self.failure(Outcome.MALFORMED, str(exc))]
        out: list[StreamItem] = []
        for line in self._lines.decode(text) if text else ():
            sse = self._events.decode(line)
            item = self.event(sse) if sse is not None else None
            if item is not None:
                out.append(item)
                if isinstance(item, Reply):
                    break
        return out

    def event(self, sse: ServerSentEvent) -> str | Reply | None:
        """One dispatched event: a text delta, a failure Reply, or None (nothing to show)."""
        if sse.event == "error":
            return self.failure(Outcome.STREAM_BROKEN, "error event: " + _error_message(sse.data))
        data = sse.data.strip()
        if data == "[DONE]":
            self.done = True
            return None
        if not data or self.done:
            return None
        try:
            event = loads(data)
        except ValueError:
            return self.failure(Outcome.MALFORMED, "stream event is not valid JSON")
        if not isinstance(event, Mapping):
            return self.failure(Outcome.MALFORMED, "stream event is not a JSON object")
        if event.get("error"):
            return self.failure(Outcome.STREAM_BROKEN, "error event: " + _error_message(data))
        if isinstance(event.get("usage"), Mapping):
            self.tokens_in, self.tokens_out = _usage(event)
            self.usage_seen = True
        choices = event.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        delta = first.get("delta") if isinstance(first, Mapping) else None
        if isinstance(first, Mapping) and isinstance(first.get("finish_reason"), str):
            self.finish_reason = first["finish_reason"]
        if isinstance(delta, Mapping) and isinstance(delta.get("tool_calls"), list):
            self._merge_calls(delta["tool_calls"])
        content = delta.get("content") if isinstance(delta, Mapping) else None
        if isinstance(content, str) and content:
            if self.ttft is None:
                self.ttft = time.perf_counter() - self.start
                self.last_chunk = time.perf_counter()
            self.parts.append(content)
            return content
        return None

    def _merge_calls(self, deltas: list[Any]) -> None:
        """Fold streamed tool-call deltas into whole calls: by ``index``, ``id``, ``type`` and the function's
        ``name`` as first given, its ``arguments`` concatenated (OpenAI's stream format)."""
        for d in deltas:
            if not isinstance(d, Mapping):
                continue
            index = d.get("index")
            call = self.calls.setdefault(index if isinstance(index, int) else len(self.calls), {"function": {}})
            for key in ("id", "type"):
                if isinstance(d.get(key), str):
                    call.setdefault(key, d[key])
            function = d.get("function")
            if isinstance(function, Mapping):
                if isinstance(function.get("name"), str):
                    call["function"].setdefault("name", function["name"])
                if isinstance(function.get("arguments"), str):
                    call["function"]["arguments"] = call["function"].get("arguments", "") + function["arguments"]

    def _reply(self, outcome: Outcome, status: int | None, answer: str, **more: Any) -> Reply:
        """The attempt's Reply, with usage as the server reported it, else estimated (four characters per token)."""
        if self.usage_seen:
            tin, tout, estimated = self.tokens_in, self.tokens_out, False
        else:
            tin, tout, estimated = self.prompt_tokens, len(answer) // CHARS_PER_TOKEN, True
        latency = time.perf_counter() - self.start
        return Reply(outcome, latency, status, tin, tout, ttft_s=self.ttft, tokens_estimated=estimated, **more)

    def failure(self, outcome: Outcome, error: str, status: int | None = 200) -> Reply:
        """A failed attempt: after the first token it is a broken stream, whatever the cause."""
        outcome = Outcome.STREAM_BROKEN if self.parts else outcome
        return self._reply(outcome, status, "".join(self.parts), error=" ".join(error.split())[:ERROR_CHARS])

    def finish(self, status: int) -> Reply:
        """The final Reply once the body ended: ok if it said [DONE] and had text."""
        for line in self._lines.flush():
            sse = self._events.decode(line)
            item = self.event(sse) if sse is not None else None
            if isinstance(item, Reply):
                return item
            if item is not None:
                return self.failure(Outcome.MALFORMED, "stream ended inside an event")
        if not self.done:
            return self.failure(Outcome.MALFORMED, "stream ended without [DONE]", status)
        text = "".join(self.parts)
        calls = [self.calls[i] for i in sorted(self.calls)] or None
        if not text.strip() and not calls:
            return self.failure(Outcome.MALFORMED, "answer is empty", status)
        return self._reply(Outcome.OK, status, text, text=text, tool_calls=calls, finish_reason=self.finish_reason)


def _wire_encoding(response: httpx.Response) -> str | None:
    """The content-encoding of the body still to read: none once the body was read (and decoded)
    as the response was made, as a transport's in-memory ``httpx.Response(content=...)`` is."""
    return None if response.is_stream_consumed else response.headers.get("content-encoding")


def _raw(response: httpx.Response) -> Iterator[bytes]:
    """The body's bytes as they arrive (or as they were read, see :func:`_wire_encoding`)."""
    return iter([response.content]) if response.is_stream_consumed else response.iter_raw()


async def _araw(response: httpx.Response) -> AsyncIterator[bytes]:
    """Async twin of :func:`_raw`."""
    if response.is_stream_consumed:
        yield response.content
        return
    async for chunk in response.aiter_raw():
        yield chunk


def _read(response: httpx.Response, cap: int) -> tuple[bytes | None, str]:
    """The whole body of a sync response within the cap: (bytes, "") or (None, why it was refused)."""
    try:
        body = _Body(_wire_encoding(response), cap)
        return b"".join(body.decode(chunk) for chunk in _raw(response)), ""
    except _BadBody as exc:
        return None, str(exc)


async def _aread(response: httpx.Response, cap: int) -> tuple[bytes | None, str]:
    """Async twin of :func:`_read`."""
    try:
        body = _Body(_wire_encoding(response), cap)
        return b"".join([body.decode(chunk) async for chunk in _araw(response)]), ""
    except _BadBody as exc:
        return None, str(exc)


# -- the real backend ---------------------------------------------------------------------------


class HttpxBackend:
    """OpenAI-compatible HTTP backend: one keep-alive pool per model, sync and async.

    Each attempt's request is built here and handed to the model's httpx transport, as httpx's
    client would after merging its defaults (which this does once per model): the router talks
    to each ``base_url`` directly, so proxy environment variables are not read. Sync pools are
    made with the backend (no setup cost on the first call); async ones on first use in each
    event loop, and closed when that loop shuts down (``asyncio.run`` does that), by
    :meth:`aclose`, or by :meth:`close` where the loop still allows it.

    ``transport`` (one for every model, or a mapping model name -> transport for some) replaces
    the network, and everything else (request bodies, headers, timeouts, response parsing) runs
    as over the network. A sync-only transport fails async calls with ``NotImplementedError``, and
    the other way round. Without one, sync I/O goes through the deadline-cutting connection pool
    and async I/O through httpx's own.
    """

    def __init__(
        self, models: Mapping[str, ModelConfig], transport: Transport | Mapping[str, Transport] | None = None
    ) -> None:
        self._models = dict(models)
        self._transports = self._given(transport)
        self._pools = {name: self._sync(m) for name, m in self._models.items()}
        self._headers = {name: self._default_headers(m) for name, m in self._models.items()}
        self._urls = {
            (name, path): httpx.URL(f"{m.base_url}/{path}") for name, m in self._models.items() for path in _PATHS
        }
        self._apools: dict[asyncio.AbstractEventLoop, dict[str, httpx.AsyncBaseTransport]] = {}
        self._keepers: dict[asyncio.AbstractEventLoop, AsyncIterator[None]] = {}
        self._closing: set[asyncio.Future[Any]] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HttpxBackend(models={sorted(self._models)})"

    def _given(self, transport: Transport | Mapping[str, Transport] | None) -> dict[str, Transport]:
        """The transport given for each model, checked (models missing use the network)."""
        if transport is None:
            return {}
        given = dict(transport) if isinstance(transport, Mapping) else dict.fromkeys(self._models, transport)
        for name, value in given.items():
            if name not in self._models:
                raise ConfigError("transport", f"names model {name!r}, which is not configured")
            if not isinstance(value, (httpx.BaseTransport, httpx.AsyncBaseTransport)):
                raise ConfigError("transport", f"{type(value).__name__} for {name!r} is not an httpx transport")
        return given

    def _sync(self, model: ModelConfig) -> httpx.BaseTransport:
        """The transport of a model's sync client: the one given, else the deadline-cutting pool."""
        given = self._transports.get(model.name)
        if given is None:
            return _deadline_transport(model)
        return given if isinstance(given, httpx.BaseTransport) else httpx.BaseTransport()

    def _async(self, model: ModelConfig) -> httpx.AsyncBaseTransport:
        """A model's async transport in one event loop: the one given, else a new httpx pool."""
        given = self._transports.get(model.name)
        if given is None:
            return httpx.AsyncHTTPTransport(verify=pool_verify(model), limits=pool_limits(model))
        return given if isinstance(given, httpx.AsyncBaseTransport) else httpx.AsyncBaseTransport()

    @staticmethod
    def _default_headers(model: ModelConfig) -> httpx.Headers:
        """The headers of every request to a model (httpx's client defaults, JSON, the key if any)."""
        headers = httpx.Headers(
            {
                "Host": httpx.URL(model.base_url).netloc.decode("ascii"),
                "Accept": "*/*",
                "Accept-Encoding": _ACCEPT_ENCODING,
                "Connection": "keep-alive",
                "User-Agent": _USER_AGENT,
                "Content-Type": "application/json",
            }
        )
        key = read_key(model.api_key_env) if model.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(
        self, model: ModelConfig, path: str, body: dict[str, Any], timeout: float | httpx.Timeout
    ) -> httpx.Request:
        """The POST of one attempt, built directly: URL and headers are made once per model, and
        the request goes straight to the model's transport, skipping the client's per-request merging
        of URLs, headers and cookies (which cost as much as the router's own work on a call)."""
        content = _JSON.encode(body).encode()
        bounds = timeout.as_dict() if isinstance(timeout, httpx.Timeout) else dict.fromkeys(_TIMEOUTS, timeout)
        request = httpx.Request(
            "POST",
            self._urls[model.name, path],
            headers=self._headers[model.name],
            stream=httpx.ByteStream(content),
            extensions={"timeout": bounds},
        )
        request.headers["Content-Length"] = str(len(content))
        return request

    async def _apool(self, model: ModelConfig) -> httpx.AsyncBaseTransport:
        """This event loop's transport for a model, made on first use."""
        loop = asyncio.get_running_loop()
        pools = self._apools.get(loop)
        if pools is not None and (pool := pools.get(model.name)) is not None:
            return pool
        with self._lock:
            for dead in [other for other in self._apools if other.is_closed()]:
                self._apools.pop(dead, None)
                self._keepers.pop(dead, None)
            pools = self._apools.setdefault(loop, {})
            keeper = None
            if loop not in self._keepers:  # one per loop: after close(), the next pools reuse it
                keeper = self._keepers[loop] = self._keeper(loop)
            pool = pools.get(model.name)
            if pool is None:
                pool = pools[model.name] = self._async(model)
        if keeper is not None:
            await anext(keeper)  # registers it with the loop, which closes it at shutdown_asyncgens()
        return pool

    async def _keeper(self, loop: asyncio.AbstractEventLoop) -> AsyncIterator[None]:
        """Lives as long as its loop: when the loop shuts down its async generators, the loop's
        pools are closed with it (so ``asyncio.run`` per call leaves no connection open)."""
        try:
            yield
        finally:
            with self._lock:
                pools = self._apools.pop(loop, {})
                self._keepers.pop(loop, None)
            await self._close_all(pools)

    @staticmethod
    async def _close_all(pools: dict[str, httpx.AsyncBaseTransport]) -> None:
        pending = list(pools.values())
        pools.clear()
        for pool in pending:
            await pool.aclose()

    @staticmethod
    def _chat_body(model: ModelConfig, messages: Messages, params: Mapping[str, Any]) -> dict[str, Any]:
        return {**params, "model": model.backend_model, "messages": list(messages)}

    def _stream_body(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any]) -> dict[str, Any]:
        """A streaming request that asks for usage in the last chunk unless the caller chose stream_options."""
        body = {**self._chat_body(model, messages, params), "stream": True}
        body.setdefault("stream_options", {"include_usage": True})
        return body

    def _chat_job(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any]) -> _Job:
        """What a chat attempt sends and how its answer is read (for :meth:`_send` and :meth:`_asend`)."""
        return model, "chat/completions", self._chat_body(model, messages, params), model.response_cap(), parse_chat

    @staticmethod
    def _embed_job(model: ModelConfig, texts: Sequence[str]) -> _Job:
        """What an embeddings attempt sends and how its answer is read."""

        def parse(body: Any, latency: float, status: int) -> Reply:
            return parse_embeddings(body, latency, status, len(texts), model.dim)

        body = {"model": model.backend_model, "input": list(texts)}
        return model, "embeddings", body, model.response_cap(len(texts)), parse

    def _send(
        self, timeout_s: float, model: ModelConfig, path: str, body: dict[str, Any], cap: int, parse: Parse
    ) -> Reply:
        start = time.perf_counter()
        request = self._request(model, path, body, timeout_s)
        try:
            with _hard_deadline(start + timeout_s):
                response = self._pools[model.name].handle_request(request)
                try:
                    data, problem = _read(response, cap)
                finally:
                    response.close()
        except _ATTEMPT_FAILURES as exc:
            return _classify_exception(exc, time.perf_counter() - start)
        return _finish(response.status_code, response.headers, data, problem, time.perf_counter() - start, parse)

    async def _asend(
        self, timeout_s: float, model: ModelConfig, path: str, body: dict[str, Any], cap: int, parse: Parse
    ) -> Reply:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):  # a hard bound on the whole attempt
                pool = await self._apool(model)
                response = await pool.handle_async_request(self._request(model, path, body, timeout_s))
                try:
                    data, problem = await _aread(response, cap)
                finally:
                    await response.aclose()
        except _ATTEMPT_FAILURES as exc:
            return _classify_exception(exc, time.perf_counter() - start)
        return _finish(response.status_code, response.headers, data, problem, time.perf_counter() - start, parse)

    def chat(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float) -> Reply:
        return self._send(timeout_s, *self._chat_job(model, messages, params))

    async def achat(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float) -> Reply:
        return await self._asend(timeout_s, *self._chat_job(model, messages, params))

    def embed(self, model: ModelConfig, texts: Sequence[str], timeout_s: float) -> Reply:
        return self._send(timeout_s, *self._embed_job(model, texts))

    async def aembed(self, model: ModelConfig, texts: Sequence[str], timeout_s: float) -> Reply:
        return await self._asend(timeout_s, *self._embed_job(model, texts))

    def stream_chat(
        self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float, first_token_s: float
    ) -> Iterator[StreamItem]:
        """Stream a chat completion: text deltas, then a final Reply (bounds: see :class:`_StreamState`)."""
        body = self._stream_body(model, messages, params)
        state = _StreamState(model, messages, timeout_s, first_token_s)
        request = self._request(model, "chat/completions", body, state.timeouts())
        response: httpx.Response | None = None
        data, problem = None, ""
        try:
            with _hard_deadline(state.read_deadline()):  # never held across a yield: it bounds this thread's I/O
                response = self._pools[model.name].handle_request(request)
                if response.status_code >= 300:
                    data, problem = _read(response, model.response_cap())
            if (refused := state.open(response, data, problem)) is not None:
                yield refused
                return
            chunks = _raw(response)
            while True:
                with _hard_deadline(state.read_deadline()):
                    chunk = next(chunks, None)
                if chunk is None:
                    break
                for item in state.feed(chunk):
                    yield item
                    if isinstance(item, Reply):
                        return
            yield state.finish(response.status_code)
        except _ATTEMPT_FAILURES as exc:
            failed = _classify_exception(exc, time.perf_counter() - state.start)
            yield state.failure(failed.outcome, failed.error, None)
        finally:
            if response is not None:
                response.close()

    async def astream_chat(
        self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float, first_token_s: float
    ) -> AsyncIterator[StreamItem]:
        """Async twin of :meth:`stream_chat`; each read is bounded by ``asyncio.timeout``, never
        across a ``yield``, so the caller's own awaits between deltas are not cut."""
        body = self._stream_body(model, messages, params)
        state = _StreamState(model, messages, timeout_s, first_token_s)

        def left() -> float:
            return max(state.read_deadline() - time.perf_counter(), 0.0)

        response: httpx.Response | None = None
        data, problem = None, ""
        try:
            async with asyncio.timeout(left()):
                pool = await self._apool(model)
                response = await pool.handle_async_request(
                    self._request(model, "chat/completions", body, state.timeouts())
                )
                if response.status_code >= 300:
                    data, problem = await _aread(response, model.response_cap())
            if (refused := state.open(response, data, problem)) is not None:
                yield refused
                return
            chunks = _araw(response)
            while True:
                async with asyncio.timeout(left()):
                    chunk = await anext(chunks, None)
                if chunk is None:
                    break
                for item in state.feed(chunk):
                    yield item
                    if isinstance(item, Reply):
                        return
            yield state.finish(response.status_code)
        except _ATTEMPT_FAILURES as exc:
            failed = _classify_exception(exc, time.perf_counter() - state.start)
            yield state.failure(failed.outcome, failed.error, None)
        finally:
            if response is not None:
                await response.aclose()

    def close(self) -> None:
        """Close the sync pools, and every async pool whose loop still allows it."""
        for pool in self._pools.values():
            pool.close()
        with self._lock:  # the keepers stay: each ends (doing nothing more) when its loop shuts down
            pools = list(self._apools.items())
            self._apools.clear()
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, held in pools:
            if loop.is_closed():
                continue
            if loop is current:  # close() called from async code: finish the job on this loop
                task = loop.create_task(self._close_all(held))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(self._close_all(held), loop)
            elif current is None:
                loop.run_until_complete(self._close_all(held))

    async def aclose(self) -> None:
        """Close this loop's async pools (awaited), then everything :meth:`close` closes."""
        loop = asyncio.get_running_loop()
        with self._lock:
            held = self._apools.pop(loop, None)
        if held is not None:
            await self._close_all(held)
        self.close()
