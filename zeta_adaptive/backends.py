"""Backends: the seam between the router and model endpoints, as transports are in httpx.

* :class:`HttpxBackend` speaks OpenAI-compatible ``/chat/completions`` and ``/embeddings`` over
  httpx, sync and async, with one keep-alive connection pool per model;
* :class:`FakeBackend` answers in-process from a script, for fast unit tests.

A backend never raises for a failed attempt: it returns a :class:`Reply` whose ``outcome`` says
what happened, so the router can log it and fall back.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

import httpx
import numpy as np

from .config import ModelConfig
from .scrub import read_key

__all__ = ["Outcome", "Reply", "Backend", "HttpxBackend", "FakeBackend", "REJECTING_STATUSES"]


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


#: statuses meaning the request itself is bad: the router returns the error instead of falling back.
#: Other 4xx (401, 403, 404, ...) concern one endpoint's setup, so the router tries the next model.
REJECTING_STATUSES = frozenset({400, 413, 422})

Messages = Sequence[Mapping[str, Any]]


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

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def rejects_request(self) -> bool:
        """True when the request itself was refused, so no other model should see it."""
        return self.outcome is Outcome.CLIENT_ERROR and self.status in REJECTING_STATUSES


#: what a streaming attempt yields: text deltas, then one final Reply (its ``text`` is the whole answer)
StreamItem = str | Reply


class Backend(Protocol):
    """Anything that can make one attempt at one model, sync and async."""

    def chat(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float) -> Reply: ...
    async def achat(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float) -> Reply: ...
    def embed(self, model: ModelConfig, texts: Sequence[str], timeout_s: float) -> Reply: ...
    async def aembed(self, model: ModelConfig, texts: Sequence[str], timeout_s: float) -> Reply: ...
    def stream_chat(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float, first_token_s: float) -> Iterator[StreamItem]: ...
    def astream_chat(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float, first_token_s: float) -> AsyncIterator[StreamItem]: ...
    def close(self) -> None: ...
    async def aclose(self) -> None: ...


# -- parsing OpenAI-compatible answers ----------------------------------------------------------


def _usage(body: Mapping[str, Any]) -> tuple[int, int]:
    usage = body.get("usage") or {}
    if not isinstance(usage, Mapping):
        return 0, 0
    tin, tout = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return (tin if isinstance(tin, int) else 0), (tout if isinstance(tout, int) else 0)


def parse_chat(body: Any, latency_s: float, status: int) -> Reply:
    """Turn a chat completion body into a Reply; no choices or an empty answer is malformed."""
    if not isinstance(body, Mapping):
        return Reply(Outcome.MALFORMED, latency_s, status, error="answer is not a JSON object")
    tin, tout = _usage(body)
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return Reply(Outcome.MALFORMED, latency_s, status, tin, tout, error="answer has no choices")
    message = choices[0].get("message") if isinstance(choices[0], Mapping) else None
    if not isinstance(message, Mapping):
        return Reply(Outcome.MALFORMED, latency_s, status, tin, tout, error="first choice has no message")
    text = message.get("content")
    if isinstance(text, str) and text.strip():
        return Reply(Outcome.OK, latency_s, status, tin, tout, text=text)
    if message.get("tool_calls"):
        return Reply(Outcome.OK, latency_s, status, tin, tout, text=json.dumps(message["tool_calls"]))
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


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _classify_response(response: httpx.Response, latency_s: float) -> Reply | None:
    """A Reply for a non-2xx status, or None when the body should be parsed."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    detail = response.text[:200].strip()
    if status == 429:
        return Reply(Outcome.RATE_LIMITED, latency_s, status, error=detail, retry_after_s=_retry_after(response))
    if status == 408:
        return Reply(Outcome.TIMEOUT, latency_s, status, error=detail)
    if 400 <= status < 500:
        return Reply(Outcome.CLIENT_ERROR, latency_s, status, error=detail)
    return Reply(Outcome.SERVER_ERROR, latency_s, status, error=detail)


def _classify_exception(exc: Exception, latency_s: float) -> Reply:
    if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError)):
        return Reply(Outcome.TIMEOUT, latency_s, error=type(exc).__name__)
    if isinstance(exc, httpx.TransportError):
        return Reply(Outcome.CONNECT_ERROR, latency_s, error=f"{type(exc).__name__}: {exc}"[:200])
    raise exc


def _decode(response: httpx.Response, latency_s: float) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return Reply(Outcome.MALFORMED, latency_s, response.status_code, error="answer is not valid JSON")


class _StreamState:
    """Folds OpenAI server-sent events into text deltas and a final Reply."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.parts: list[str] = []
        self.ttft: float | None = None
        self.tokens_in = 0
        self.tokens_out = 0
        self.done = False

    def feed(self, line: str) -> str | Reply | None:
        """One line of the event stream: a text delta, a failure Reply, or None (nothing to show)."""
        if not line.startswith("data:"):
            return None
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return None
        try:
            event = json.loads(data)
            choices = event.get("choices") or []
            delta = (choices[0].get("delta") or {}).get("content") if choices else None
        except (ValueError, AttributeError, IndexError, TypeError):
            return self.failure(Outcome.MALFORMED, "stream event is not valid JSON")
        if isinstance(event.get("usage"), Mapping):
            self.tokens_in, self.tokens_out = _usage(event)
        if isinstance(delta, str) and delta:
            if self.ttft is None:
                self.ttft = time.perf_counter() - self.start
            self.parts.append(delta)
            return delta
        return None

    def failure(self, outcome: Outcome, error: str, status: int | None = 200) -> Reply:
        """A failed attempt: after the first token it is a broken stream, whatever the cause."""
        if self.parts:
            outcome = Outcome.STREAM_BROKEN
        return Reply(outcome, time.perf_counter() - self.start, status, self.tokens_in, self.tokens_out, error=error, ttft_s=self.ttft)

    def finish(self, status: int) -> Reply:
        """The final Reply once the body ended: ok if it said [DONE] and had text."""
        if not self.done:
            return self.failure(Outcome.MALFORMED, "stream ended without [DONE]", status)
        text = "".join(self.parts)
        if not text.strip():
            return self.failure(Outcome.MALFORMED, "answer is empty", status)
        return Reply(Outcome.OK, time.perf_counter() - self.start, status, self.tokens_in, self.tokens_out, text=text, ttft_s=self.ttft)


# -- the real backend ---------------------------------------------------------------------------


class HttpxBackend:
    """OpenAI-compatible HTTP backend: one keep-alive pool per model, sync and async."""

    def __init__(self, models: Mapping[str, ModelConfig]) -> None:
        self._models = dict(models)
        self._clients: dict[str, httpx.Client] = {}
        self._aclients: dict[str, httpx.AsyncClient] = {}
        self._aloop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"HttpxBackend(models={sorted(self._models)})"

    def _options(self, model: ModelConfig) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if model.api_key_env:
            key = read_key(model.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(
            max_connections=model.max_in_flight,
            max_keepalive_connections=model.max_in_flight,
            keepalive_expiry=30.0,
        )
        return {"base_url": model.base_url + "/", "headers": headers, "limits": limits, "timeout": model.timeout_s}

    def _client(self, model: ModelConfig) -> httpx.Client:
        client = self._clients.get(model.name)
        if client is None:
            client = self._clients[model.name] = httpx.Client(**self._options(model))
        return client

    def _aclient(self, model: ModelConfig) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._aloop is not loop:  # async clients belong to one event loop
            self._aclients.clear()
            self._aloop = loop
        client = self._aclients.get(model.name)
        if client is None:
            client = self._aclients[model.name] = httpx.AsyncClient(**self._options(model))
        return client

    @staticmethod
    def _chat_body(model: ModelConfig, messages: Messages, params: Mapping[str, Any]) -> dict[str, Any]:
        return {**params, "model": model.backend_model, "messages": list(messages)}

    @staticmethod
    def _embed_body(model: ModelConfig, texts: Sequence[str]) -> dict[str, Any]:
        return {"model": model.backend_model, "input": list(texts)}

    def _send(self, model: ModelConfig, path: str, body: dict[str, Any], timeout_s: float, parse: Callable[[Any, float, int], Reply]) -> Reply:
        start = time.perf_counter()
        try:
            response = self._client(model).post(path, json=body, timeout=timeout_s)
        except Exception as exc:  # classified, or re-raised when not a transport problem
            return _classify_exception(exc, time.perf_counter() - start)
        return self._finish(response, time.perf_counter() - start, parse)

    async def _asend(self, model: ModelConfig, path: str, body: dict[str, Any], timeout_s: float, parse: Callable[[Any, float, int], Reply]) -> Reply:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):  # a hard bound on the whole attempt
                response = await self._aclient(model).post(path, json=body, timeout=timeout_s)
        except Exception as exc:
            return _classify_exception(exc, time.perf_counter() - start)
        return self._finish(response, time.perf_counter() - start, parse)

    @staticmethod
    def _finish(response: httpx.Response, latency_s: float, parse: Callable[[Any, float, int], Reply]) -> Reply:
        failed = _classify_response(response, latency_s)
        if failed is not None:
            return failed
        body = _decode(response, latency_s)
        return body if isinstance(body, Reply) else parse(body, latency_s, response.status_code)

    def chat(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float) -> Reply:
        return self._send(model, "chat/completions", self._chat_body(model, messages, params), timeout_s, parse_chat)

    async def achat(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float) -> Reply:
        return await self._asend(model, "chat/completions", self._chat_body(model, messages, params), timeout_s, parse_chat)

    def embed(self, model: ModelConfig, texts: Sequence[str], timeout_s: float) -> Reply:
        def parse(body: Any, latency: float, status: int) -> Reply:
            return parse_embeddings(body, latency, status, len(texts), model.dim)

        return self._send(model, "embeddings", self._embed_body(model, texts), timeout_s, parse)

    async def aembed(self, model: ModelConfig, texts: Sequence[str], timeout_s: float) -> Reply:
        def parse(body: Any, latency: float, status: int) -> Reply:
            return parse_embeddings(body, latency, status, len(texts), model.dim)

        return await self._asend(model, "embeddings", self._embed_body(model, texts), timeout_s, parse)

    def stream_chat(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float, first_token_s: float) -> Iterator[StreamItem]:
        """Stream a chat completion: text deltas, then a final Reply.

        The first token must come within ``first_token_s`` (which also bounds each later gap
        between chunks); the whole attempt within ``timeout_s``, checked between chunks.
        """
        body = {**self._chat_body(model, messages, params), "stream": True}
        start = time.perf_counter()
        timeout = httpx.Timeout(timeout_s, read=min(first_token_s, timeout_s))
        state = _StreamState(start)
        try:
            with self._client(model).stream("POST", "chat/completions", json=body, timeout=timeout) as response:
                if response.status_code >= 300:
                    response.read()
                    yield self._finish(response, time.perf_counter() - start, parse_chat)
                    return
                for line in response.iter_lines():
                    item = state.feed(line)
                    if item is not None:
                        yield item
                        if isinstance(item, Reply):
                            return
                    if time.perf_counter() - start > timeout_s:
                        yield state.failure(Outcome.TIMEOUT, "attempt timed out mid-stream")
                        return
                yield state.finish(response.status_code)
        except Exception as exc:  # classified, or re-raised when not a transport problem
            failed = _classify_exception(exc, time.perf_counter() - start)
            yield state.failure(failed.outcome, failed.error, None)

    async def astream_chat(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float, first_token_s: float) -> AsyncIterator[StreamItem]:
        """Async twin of :meth:`stream_chat`; the bounds are hard (``asyncio.timeout`` on each read,
        never across a ``yield``, so the caller's own awaits between deltas are not cut)."""
        body = {**self._chat_body(model, messages, params), "stream": True}
        start = time.perf_counter()
        state = _StreamState(start)

        def left() -> float:
            bound = timeout_s if state.ttft is not None else min(first_token_s, timeout_s)
            return max(bound - (time.perf_counter() - start), 0.0)

        client = self._aclient(model)
        try:
            async with asyncio.timeout(left()):
                response = await client.send(client.build_request("POST", "chat/completions", json=body, timeout=timeout_s), stream=True)
        except Exception as exc:
            yield state.failure(_classify_exception(exc, time.perf_counter() - start).outcome, type(exc).__name__, None)
            return
        try:
            if response.status_code >= 300:
                await response.aread()
                yield self._finish(response, time.perf_counter() - start, parse_chat)
                return
            lines = response.aiter_lines()
            while True:
                try:
                    async with asyncio.timeout(left()):
                        line = await anext(lines)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    failed = _classify_exception(exc, time.perf_counter() - start)
                    yield state.failure(failed.outcome, failed.error, None)
                    return
                item = state.feed(line)
                if item is not None:
                    yield item
                    if isinstance(item, Reply):
                        return
            yield state.finish(response.status_code)
        finally:
            await response.aclose()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    async def aclose(self) -> None:
        for client in self._aclients.values():
            await client.aclose()
        self._aclients.clear()
        self.close()


# -- the in-process fake ------------------------------------------------------------------------

Script = Callable[[ModelConfig, Any], Reply] | Sequence[Reply | str]


class FakeBackend:
    """Answers from a per-model script, without network: a list of Replies or outcome strings
    consumed in order (the last one repeats), or a function ``(model, request) -> Reply``.

    For scripted lists the fake spends the reply's latency (sleeping, or awaiting in async calls),
    and a latency above the attempt's timeout becomes a timeout at that bound, as a real backend
    would behave. A function is the behaviour itself: it spends whatever time it likes, and only a
    latency above the timeout is turned into a timeout. ``calls`` records ``(model, request)``.
    """

    def __init__(self, script: Mapping[str, Script], latency_s: float = 0.001) -> None:
        self.script = dict(script)
        self.latency_s = latency_s
        self.calls: list[tuple[str, Any]] = []
        self._pos: dict[str, int] = {}

    def _next(self, model: ModelConfig, request: Any, timeout_s: float) -> tuple[Reply, float]:
        """The scripted reply and the time it takes."""
        self.calls.append((model.name, request))
        entry = self.script.get(model.name, ["ok"])
        spends = not callable(entry)
        if callable(entry):
            reply = entry(model, request)
        else:
            i = self._pos.get(model.name, 0)
            self._pos[model.name] = i + 1
            item = entry[min(i, len(entry) - 1)]
            reply = item if isinstance(item, Reply) else self._reply(Outcome(item), request)
        if reply.latency_s > timeout_s:
            return Reply(Outcome.TIMEOUT, timeout_s, error="ReadTimeout"), timeout_s if spends else 0.0
        return reply, reply.latency_s if spends else 0.0

    def _reply(self, outcome: Outcome, request: Any) -> Reply:
        status = {
            Outcome.OK: 200, Outcome.RATE_LIMITED: 429, Outcome.SERVER_ERROR: 500,
            Outcome.CLIENT_ERROR: 400, Outcome.MALFORMED: 200,
        }.get(outcome)
        reply = Reply(outcome, self.latency_s, status)
        if outcome is Outcome.OK:
            if isinstance(request, list) and all(isinstance(t, str) for t in request):
                reply = replace(reply, vectors=np.ones((len(request), 4), dtype=np.float32), tokens_in=len(request))
            else:
                reply = replace(reply, text="fake answer", tokens_in=10, tokens_out=5)
        return reply

    def _sync(self, model: ModelConfig, request: Any, timeout_s: float) -> Reply:
        reply, spent = self._next(model, request, timeout_s)
        time.sleep(spent)
        return reply

    async def _async(self, model: ModelConfig, request: Any, timeout_s: float) -> Reply:
        reply, spent = self._next(model, request, timeout_s)
        await asyncio.sleep(spent)
        return reply

    def chat(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float) -> Reply:
        return self._sync(model, {"messages": list(messages), **params}, timeout_s)

    async def achat(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float) -> Reply:
        return await self._async(model, {"messages": list(messages), **params}, timeout_s)

    def embed(self, model: ModelConfig, texts: Sequence[str], timeout_s: float) -> Reply:
        return self._sync(model, list(texts), timeout_s)

    async def aembed(self, model: ModelConfig, texts: Sequence[str], timeout_s: float) -> Reply:
        return await self._async(model, list(texts), timeout_s)

    @staticmethod
    def _pieces(reply: Reply) -> Iterable[StreamItem]:
        if reply.ok and reply.text:
            words = reply.text.split(" ")
            yield from (w if i == 0 else " " + w for i, w in enumerate(words))
            yield replace(reply, ttft_s=0.0)
        else:
            yield reply

    def stream_chat(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float, first_token_s: float) -> Iterator[StreamItem]:
        """The scripted reply, its text streamed word by word."""
        yield from self._pieces(self._sync(model, {"messages": list(messages), **params}, min(timeout_s, first_token_s)))

    async def astream_chat(self, model: ModelConfig, messages: Messages, params: Mapping[str, Any], timeout_s: float, first_token_s: float) -> AsyncIterator[StreamItem]:
        """Async twin of :meth:`stream_chat`."""
        for item in self._pieces(await self._async(model, {"messages": list(messages), **params}, min(timeout_s, first_token_s))):
            yield item

    def close(self) -> None:
        """Nothing to release."""

    async def aclose(self) -> None:
        """Nothing to release."""
