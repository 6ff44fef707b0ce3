"""The OpenAI-compatible gateway behind ``zeta-adaptive serve``: any client, in any language, uses the router.

:func:`create_app` builds a Starlette ASGI application on the router's async API. A request's
``model`` names a route (task type), or is ``"auto"`` for the classifier; the answer is an OpenAI
``chat.completion`` (or SSE chunks, or an embeddings list) whose ``id`` is the router's call id and
whose ``model`` is the configured model that answered. A request refused before routing (malformed,
unauthorised, unknown route, over its key's limits) is not a call: it is neither logged nor counted
in ``zeta_calls_total``, only in ``zeta_refused_requests_total``. :func:`serve` runs the app under
uvicorn with one router per worker process; workers share what they learn through the store.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import text

from ._optional import requires

with requires("gateway"):
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.multiprocess import MultiProcessCollector
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
    from starlette.types import Receive, Scope, Send

from ._config import Config, KeyLimits, ServerConfig, load_config
from ._exceptions import (
    AllModelsFailed,
    ConfigError,
    FeedbackError,
    InvalidRequest,
    RequestRejected,
    StoreError,
    StreamBroken,
    ZetaError,
)
from ._feedback import check_call_id, validate_accuracy
from ._health import HALF_OPEN, OPEN
from ._results import CallInfo, ChatResult, preference_records
from ._router import AsyncChatStream, OnCall, Router
from ._store import Store
from .aiohttp_transport import aiohttp_transports

__all__ = ["create_app", "serve", "load_keys", "ClientKey", "CONFIG_ENV"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: the environment variable through which :func:`serve` hands the config path to each worker
CONFIG_ENV = "ZETA_GATEWAY_CONFIG"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEADLINE_HEADER = "x-zeta-deadline-s"
CALL_HEADER = "x-zeta-call-id"
MODEL_HEADER = "x-zeta-model"
TASK_HEADER = "x-zeta-task-type"
#: the same names as raw ASGI header keys, encoded once
_DEADLINE_KEY, _CALL_KEY, _MODEL_KEY, _TASK_KEY = (
    h.encode() for h in (DEADLINE_HEADER, CALL_HEADER, MODEL_HEADER, TASK_HEADER)
)
AUTO = "auto"
#: idle keep-alive connections are kept this long: more than reverse proxies' usual idle timeout
#: (60 s), so a proxy never reuses a connection the gateway is closing (uvicorn's default is 5 s)
KEEP_ALIVE_S = 75
#: a call's client is watched for a disconnect once the call has run this long (see ``_unless_gone``)
WATCH_AFTER_S = 0.02
#: body keys the gateway reads itself; every other key of a chat request goes to the backend as it is
_OWN_KEYS = frozenset({"model", "messages", "stream", "stream_options"})
#: the router's own keywords (read from ``Router.achat``, so they cannot drift): a request body may not set them (400)
_ROUTER_KEYS = frozenset(inspect.signature(Router.achat).parameters) - {"self", "params"} - _OWN_KEYS
_BREAKER_VALUE = {OPEN: 2.0, HALF_OPEN: 1.0}  # closed is 0
#: FeedbackError.reason -> HTTP status and OpenAI-style error code
_FEEDBACK_REFUSALS = {
    "invalid": (400, "invalid_feedback"),
    "unknown_call": (404, "call_not_found"),
    "no_answer": (400, "call_without_answer"),
    "already_rated": (409, "already_rated"),
    "forbidden": (403, "route_not_allowed"),
}
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_DONE = b"data: [DONE]\n\n"
_JSON_TYPE = (b"content-type", b"application/json")


# -- client keys ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientKey:
    """A gateway client: its key id (what metrics and logs name; never the key) and its limits."""

    key_id: str
    limits: KeyLimits

    def allows(self, task: str) -> bool:
        return self.limits.routes is None or task in self.limits.routes


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def load_keys(server: ServerConfig, environ: Mapping[str, str] = os.environ) -> dict[bytes, ClientKey] | None:
    """The client keys by SHA-256 digest, or None when ``api_keys_env`` is unset (no auth).

    The variable holds comma-separated entries, each ``id=key`` (split at the first ``=``) or a bare
    key without ``=``, whose id is then ``key-`` and 8 hex digits of its SHA-256.
    """
    if server.api_keys_env is None:
        return None
    raw = environ.get(server.api_keys_env, "")
    keys: dict[bytes, ClientKey] = {}
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        key_id, sep, key = entry.partition("=")
        if not sep:
            key, key_id = entry, "key-" + _digest(entry).hex()[:8]
        if not key_id or not key:
            raise ConfigError(
                "server.api_keys_env", f"${server.api_keys_env} has an entry that is not `id=key` or `key`"
            )
        keys[_digest(key)] = ClientKey(key_id, server.keys.get(key_id, KeyLimits()))
    if not keys:
        raise ConfigError("server.api_keys_env", f"${server.api_keys_env} holds no client key")
    return keys


class _Allowance:
    """One key's use in this process: a token bucket of requests per minute and the spend of the UTC day."""

    def __init__(self, limits: KeyLimits) -> None:
        self.limits = limits
        self.tokens = limits.requests_per_minute or 0.0
        self.stamp = time.monotonic()
        self.day = 0
        self.spent = 0.0

    def admit(self) -> None:
        """Take one request, or raise a 429 refusal saying when to come back."""
        limits = self.limits
        if limits.spend_per_day is not None:
            self._roll()
            if self.spent >= limits.spend_per_day:
                message = f"this key's spend for today ({self.spent:.4g}) reached its limit of {limits.spend_per_day:g}"
                raise _Refused(429, message, "rate_limit_error", "spend_limit_exceeded", "spend_limited")
        rpm = limits.requests_per_minute
        if rpm is not None:
            now = time.monotonic()
            self.tokens = min(rpm, self.tokens + (now - self.stamp) * rpm / 60.0)
            self.stamp = now
            if self.tokens < 1.0:
                message, wait = f"this key is limited to {rpm:g} requests per minute", (1.0 - self.tokens) * 60.0 / rpm
                retry = {"retry-after": str(math.ceil(wait))}
                raise _Refused(429, message, "rate_limit_error", "rate_limit_exceeded", "rate_limited", retry)
            self.tokens -= 1.0

    def spend(self, cost: float) -> None:
        self._roll()
        self.spent += cost

    def _roll(self) -> None:
        day = int(time.time() // 86400)
        if day != self.day:
            self.day, self.spent = day, 0.0


# -- errors ---------------------------------------------------------------------------------------


class _Refused(Exception):
    """A request turned away before routing: not a call. ``reason`` labels the refusal metric."""

    def __init__(
        self, status: int, message: str, kind: str, code: str, reason: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.reason = status, message, kind, code, reason
        self.headers = dict(headers or {})


class _ClientGone(Exception):
    """The client disconnected before its answer was ready; the call was cancelled."""


def _message(result: ChatResult) -> dict[str, Any]:
    """A chat answer as OpenAI's ``message``: its text, and its tool calls when it made some (content None without text)."""
    if not result.tool_calls:
        return {"role": "assistant", "content": result.text}
    return {"role": "assistant", "content": result.text or None, "tool_calls": result.tool_calls}


def _finish_reason(result: ChatResult) -> str:
    """Why the model stopped, as its server said; else "tool_calls" for an answer that is tool calls, "stop" otherwise."""
    return result.finish_reason or ("tool_calls" if result.tool_calls else "stop")


def _error(status: int, message: str, kind: str, code: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An error in OpenAI's shape."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status, headers=headers)


def _malformed(message: str, code: str = "invalid_request") -> _Refused:
    return _Refused(400, message, "invalid_request_error", code, "malformed")


# -- the router's calls ---------------------------------------------------------------------------


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone (the body has been read, so only a disconnect can come)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it (the router then logs the call as cancelled) if the client leaves.

    A watcher task cancels this request's own task on a disconnect (measured cheaper than running
    ``work`` as a second task and waiting for the first of the two). It starts only once the call
    has run :data:`WATCH_AFTER_S`: most calls are answered sooner, and a timer costs a tenth of a
    task; a client that left earlier is seen as soon as it starts.
    """
    me = asyncio.current_task()
    assert me is not None
    gone = False
    watch: asyncio.Future[None] | None = None

    def left(watched: asyncio.Future[None]) -> None:
        nonlocal gone
        if not watched.cancelled():
            gone = True
            me.cancel()

    def start() -> None:
        nonlocal watch
        watch = asyncio.ensure_future(_disconnected(receive))
        watch.add_done_callback(left)

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start)
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            raise _ClientGone from None
        raise
    finally:
        timer.cancel()
        if watch is not None:
            watch.remove_done_callback(left)
            watch.cancel()


def _usage(call: CallInfo) -> dict[str, int]:
    """Token usage of the answering attempt, as OpenAI reports it."""
    model = call.model
    answered = [a for a in call.attempts if a.outcome == "ok" and a.model == model]
    tin, tout = (answered[-1].tokens_in, answered[-1].tokens_out) if answered else (0, 0)
    return {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout}


# -- raw ASGI: the chat and embeddings routes skip Starlette's Request and Response objects -------------


def _header(scope: Scope, name: bytes) -> str | None:
    """A request header's value (the first, if repeated), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _read_body(receive: Receive) -> bytes:
    """The whole request body; :class:`_ClientGone` if the client leaves while sending it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _answer_headers(call_id: str, model: str, task: str) -> list[tuple[bytes, bytes]]:
    """The headers naming a call, the model that answered and the route."""
    return [(_CALL_KEY, call_id.encode()), (_MODEL_KEY, model.encode("latin-1")), (_TASK_KEY, task.encode("latin-1"))]


async def _send_json(send: Send, payload: Any, headers: Sequence[tuple[bytes, bytes]]) -> None:
    """A 200 JSON answer, encoded once (as Starlette's JSONResponse encodes it)."""
    body = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    start = [_JSON_TYPE, (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": 200, "headers": start})
    await send({"type": "http.response.body", "body": body})


_Refuse = Callable[[_Refused], Response]


class _Endpoint:
    """A raw ASGI endpoint (a function under Starlette's router would be wrapped in Request and
    Response objects): the handler sends its answer itself, or returns a Response to send (errors,
    streams), or raises :class:`_Refused` (answered by ``refuse``); a client that left while
    sending its request gets nothing."""

    def __init__(self, handle: Callable[[Scope, Receive, Send], Awaitable[Response | None]], refuse: _Refuse) -> None:
        self.handle = handle
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self.handle(scope, receive, send)
        except _ClientGone:
            return
        except _Refused as exc:
            response = self.refuse(exc)
        if response is not None:
            await response(scope, receive, send)


class _App(Starlette):
    """Starlette, with the call endpoints dispatched straight from the request's path: they answer
    and refuse by themselves, so Starlette's two middlewares (each wrapping ``send``) and its route
    matching are skipped on every call. Every other request, or method, goes through Starlette."""

    def __init__(self, calls: Mapping[str, _Endpoint], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls = calls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.calls.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


# -- metrics --------------------------------------------------------------------------------------


class _StateCollector:
    """Gauges read at scrape time: breakers, in-flight attempts and learned limits, the log's queue and journal."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterable[Any]:
        health, gauge, counter = self.router.health, GaugeMetricFamily, CounterMetricFamily
        breaker = gauge(
            "zeta_breaker_state", "Circuit breaker per model: 0 closed, 1 half-open, 2 open", labels=["model"]
        )
        flight = gauge("zeta_in_flight", "Attempts in flight per model", labels=["model"])
        about = "Learned concurrency limit per model (binding on load = adaptive routes)"
        limit = gauge("zeta_concurrency_limit", about, labels=["model"])
        for name in self.router.config.models:
            snap = health.snapshot(name)
            breaker.add_metric([name], _BREAKER_VALUE.get(snap["breaker"], 0.0))
            flight.add_metric([name], snap["in_flight"])
            limit.add_metric([name], snap["limit"])
        yield from (breaker, flight, limit)
        state = self.router.store.describe()
        for family, name, about, field in (
            (gauge, "queue_depth", "Log rows handed to the background writer, not yet written", "queued"),
            (gauge, "rows_journaled", "Log rows waiting in the local journal (or memory) for the database", "pending"),
            (gauge, "available", "1 while the log's database takes rows directly", "available"),
            (counter, "rows_dead", "Log rows the database refused, kept as dead letters", "dead"),
            (counter, "rows_dropped", "Log rows lost (neither database nor journal took them)", "dropped"),
        ):
            yield family(f"zeta_log_{name}", about, value=float(state[field]))
        written = counter("zeta_log_rows_written", "Log rows written to the database", labels=["table"])
        for table, rows in state["written"].items():
            written.add_metric([table], rows)
        yield written


class _Metrics:
    """The gateway's Prometheus registry (one per app, so several apps can live in one process).

    Under several workers (``$PROMETHEUS_MULTIPROC_DIR`` set, as :func:`serve` does) counters and the
    histogram live in files shared by the workers and every scrape sums them; the gauges read at
    scrape time are those of the worker that answers.
    """

    def __init__(self, router: Router) -> None:
        self.registry = CollectorRegistry()
        shared = bool(os.environ.get(MULTIPROC_ENV))
        r = None if shared else self.registry
        self.calls = Counter(
            "zeta_calls",
            "Routed calls by task type, answering model and outcome",
            ["task_type", "model", "outcome"],
            registry=r,
        )
        self.attempts = Counter("zeta_attempts", "Attempts by model and outcome", ["model", "outcome"], registry=r)
        self.latency = Histogram(
            "zeta_call_latency_seconds",
            "Call latency seen by the gateway",
            ["task_type"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.refused = Counter(
            "zeta_refused_requests", "Requests refused before routing (not calls), by reason", ["reason"], registry=r
        )
        self.key_calls = Counter(
            "zeta_key_calls", "Calls by client key id (never the key) and outcome", ["key_id", "outcome"], registry=r
        )
        self.key_spend = Counter("zeta_key_spend", "Cost of the calls of each client key id", ["key_id"], registry=r)
        if shared:
            MultiProcessCollector(self.registry)
        self.registry.register(_StateCollector(router))
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (prometheus-client checks the
        labels and takes a lock on every ``labels()`` call)."""
        found = self._children.get((metric, labels))
        if found is None:
            found = self._children[metric, labels] = metric.labels(*labels)
        return found


# -- the application ------------------------------------------------------------------------------


class _Gateway:
    """The endpoints, around one router."""

    def __init__(self, router: Router, owned: bool) -> None:
        self.router = router
        self.owned = owned
        config = router.config
        self.kinds = {task: config.models[route.models[0]].kind for task, route in config.routes.items()}
        self.keys = load_keys(config.server)
        self.allowances = {key.key_id: _Allowance(key.limits) for key in (self.keys or {}).values()}
        self.metrics = _Metrics(router)

    # -- admission: everything here happens before routing ----------------------------------------
    def authorize(self, authorization: str | None) -> ClientKey | None:
        """The client key an ``Authorization`` header's value names (None without auth), or a 401 refusal."""
        if self.keys is None:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        key = self.keys.get(_digest(token.strip())) if scheme.lower() == "bearer" else None
        if key is None:
            message = "Incorrect or missing API key: send `Authorization: Bearer <key>`"
            raise _Refused(401, message, "invalid_request_error", "invalid_api_key", "unauthorized")
        return key

    @staticmethod
    def body(raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except ValueError:
            raise _malformed("the request body is not valid JSON", "invalid_json") from None
        if not isinstance(body, dict):
            raise _malformed("the request body must be a JSON object", "invalid_json")
        return body

    def routes_of(self, key: ClientKey | None) -> list[str]:
        """The routes a key may use (every route without keys)."""
        return [t for t in self.kinds if key is None or key.allows(t)]

    def route(self, key: ClientKey | None, name: Any, kind: str, messages: Any = None) -> str:
        """The task type a request names (or the classifier picks for ``auto``), if it may use it."""
        if not isinstance(name, str) or not name:
            raise _malformed("`model` must name a route, or be 'auto'", "invalid_model")
        task = self.router.classifier(messages) if name == AUTO and kind == "chat" else name
        if self.kinds.get(task) != kind or (key is not None and not key.allows(task)):
            known = sorted(t for t in self.routes_of(key) if self.kinds[t] == kind)
            chosen = f" (the classifier chose {task!r})" if task != name else ""
            message = f"The model {name!r}{chosen} does not exist or is not a {kind} route; routes: {known}"
            raise _Refused(404, message, "invalid_request_error", "model_not_found", "model_not_found")
        return task

    def admit(self, key: ClientKey | None) -> None:
        if key is not None:
            self.allowances[key.key_id].admit()

    @staticmethod
    def deadline(raw: str | None) -> float | None:
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise _malformed(f"{DEADLINE_HEADER} must be a number of seconds > 0, got {raw!r}", "invalid_deadline")
        return value

    def refuse(self, exc: _Refused) -> Response:
        """The answer to a request refused before routing, counted by reason."""
        self.metrics.refused.labels(exc.reason).inc()
        return _error(exc.status, exc.message, exc.kind, exc.code, exc.headers)

    async def refused(self, request: Request, exc: Exception) -> Response:
        """Starlette's handler of a refusal raised by the other endpoints."""
        assert isinstance(exc, _Refused)
        return self.refuse(exc)

    # -- after routing: every call is counted ------------------------------------------------------
    def finish(self, call: CallInfo, key: ClientKey | None, outcome: str, started: float) -> None:
        """Count a finished call (with its attempts, latency and the key's spend)."""
        m = self.metrics
        attempts = call.attempts
        m.child(m.calls, call.task_type, call.model or "none", outcome).inc()
        for attempt in attempts:
            m.child(m.attempts, attempt.model, attempt.outcome).inc()
        m.child(m.latency, call.task_type).observe(time.perf_counter() - started)
        if key is not None:
            cost = sum(a.cost for a in attempts)
            m.child(m.key_calls, key.key_id, outcome).inc()
            m.child(m.key_spend, key.key_id).inc(cost)
            self.allowances[key.key_id].spend(cost)
            log.info("call %s key %s %s %s", call.call_id, key.key_id, call.task_type, outcome)

    def failed(self, call: CallInfo, key: ClientKey | None, exc: ZetaError, started: float) -> Response:
        """The response (and count) of a call no model answered."""
        headers = {CALL_HEADER: call.call_id, TASK_HEADER: call.task_type}
        if isinstance(exc, RequestRejected):
            self.finish(call, key, "rejected", started)
            return _error(400, str(exc), "invalid_request_error", "request_rejected", headers)
        if call.out_of_time():
            self.finish(call, key, "deadline_exceeded", started)
            return _error(504, str(exc), "api_error", "deadline_exceeded", headers)
        self.finish(call, key, "failed", started)
        return _error(502, str(exc), "api_error", "all_models_failed", headers)

    async def begin(
        self, receive: Receive, key: ClientKey | None, started: float, start: Callable[[OnCall], Awaitable[T]]
    ) -> tuple[T, CallInfo] | Response:
        """Make a router call (``start`` hands ``on_call`` to the router): what it gives and the call,
        or the response of a call no model answered or whose client left."""
        seen: list[CallInfo] = []
        try:
            return await _unless_gone(receive, start(seen.append)), seen[0]
        except InvalidRequest as exc:  # raised before the call began: a refusal
            if seen:
                raise
            raise _malformed(str(exc)) from None
        except (AllModelsFailed, RequestRejected) as exc:
            return self.failed(seen[0], key, exc, started)
        except _ClientGone:  # the router logged it, its open attempt cancelled
            self.finish(seen[0], key, "cancelled", started)
            return Response(status_code=499)

    # -- endpoints ---------------------------------------------------------------------------------
    async def chat(self, scope: Scope, receive: Receive, send: Send) -> Response | None:
        started = time.perf_counter()
        key = self.authorize(_header(scope, b"authorization"))
        body = self.body(await _read_body(receive))
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and "role" in m for m in messages)
        ):
            raise _malformed("`messages` must be a non-empty list of message objects with a `role`", "invalid_messages")
        task = self.route(key, body.get("model"), "chat", messages)
        deadline = self.deadline(_header(scope, _DEADLINE_KEY))
        router_keys = sorted(_ROUTER_KEYS.intersection(body))
        if router_keys:
            raise _malformed(f"{router_keys} are router options, not OpenAI parameters", "invalid_parameter")
        self.admit(key)
        params = {k: v for k, v in body.items() if k not in _OWN_KEYS}
        if body.get("stream") is True:
            options = body.get("stream_options")
            usage = isinstance(options, dict) and options.get("include_usage") is True
            params["stream_options"] = {"include_usage": True}  # the backend's usage prices the call
            return await self.stream(receive, key, task, messages, deadline, params, usage, started)
        run = lambda oc: self.router.achat(task, messages, deadline_s=deadline, on_call=oc, **params)  # noqa: E731
        done = await self.begin(receive, key, started, run)
        if isinstance(done, Response):
            return done
        result, call = done
        self.finish(call, key, "ok", started)
        answer = {
            "id": result.call_id,
            "object": "chat.completion",
            "created": int(call.ts),
            "model": result.model,
            "choices": [{"index": 0, "message": _message(result), "finish_reason": _finish_reason(result)}],
            "usage": _usage(call),
        }
        await _send_json(send, answer, _answer_headers(result.call_id, result.model, task))
        return None

    async def stream(
        self,
        receive: Receive,
        key: ClientKey | None,
        task: str,
        messages: list[Any],
        deadline: float | None,
        params: dict[str, Any],
        usage: bool,
        started: float,
    ) -> Response:
        """Stream a call as OpenAI SSE chunks; a failure before the first token is an HTTP error."""

        async def open_stream(on_call: OnCall) -> tuple[AsyncChatStream, AsyncIterator[str], str]:
            stream = await self.router.achat(
                task, messages, stream=True, deadline_s=deadline, on_call=on_call, **params
            )
            deltas = aiter(stream)
            try:
                first = await anext(deltas, "")
            except BaseException:
                await stream.aclose()
                raise
            return stream, deltas, first

        done = await self.begin(receive, key, started, open_stream)
        if isinstance(done, Response):
            return done
        (stream, deltas, first), call = done
        model = call.model or ""  # the model streaming: its attempt is open
        headers = {CALL_HEADER: call.call_id, MODEL_HEADER: model, TASK_HEADER: task, "cache-control": "no-cache"}
        chunks = self.chunks(call, key, stream, deltas, first, model, usage, started)
        return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)

    async def chunks(
        self,
        call: CallInfo,
        key: ClientKey | None,
        stream: AsyncChatStream,
        deltas: AsyncIterator[str],
        first: str,
        model: str,
        usage: bool,
        started: float,
    ) -> AsyncIterator[bytes]:
        """The SSE body: every chunk's id is the call id; a break after the first token ends in an error event."""
        head = json.dumps(
            {"id": call.call_id, "object": "chat.completion.chunk", "created": int(call.ts), "model": model}
        )[:-1]
        outcome = "cancelled"

        def delta(fields: str, finish: str = "null") -> bytes:
            return f'data: {head}, "choices": [{{"index": 0, "delta": {{{fields}}}, "finish_reason": {finish}}}]}}\n\n'.encode()

        try:
            yield delta(f'"role": "assistant", "content": {json.dumps(first)}')
            async for text in deltas:
                yield delta(f'"content": {json.dumps(text)}')
            result = stream.result
            if result.tool_calls:  # gathered whole from the backend's deltas: sent as one delta, as clients merge them
                calls = [{"index": i, **c} for i, c in enumerate(result.tool_calls)]
                yield delta(f'"tool_calls": {json.dumps(calls)}')
            yield delta("", json.dumps(_finish_reason(result)))
            if usage:
                yield f'data: {head}, "choices": [], "usage": {json.dumps(_usage(call))}}}\n\n'.encode()
            yield _DONE
            outcome = "ok"
        except ZetaError as exc:
            outcome = "stream_broken" if isinstance(exc, StreamBroken) else "failed"
            yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'api_error', 'code': outcome}})}\n\n".encode()
        finally:
            try:
                await stream.aclose()  # a client that left: the router logs the open attempt as cancelled
            finally:
                self.finish(call, key, outcome, started)

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> Response | None:
        started = time.perf_counter()
        key = self.authorize(_header(scope, b"authorization"))
        body = self.body(await _read_body(receive))
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise _malformed("`input` must be a string or a non-empty list of strings", "invalid_input")
        if body.get("dimensions") is not None:  # silently ignored, the client would get vectors of another size
            raise _malformed(
                "`dimensions` is not supported: a route's models answer in their own dimension", "invalid_dimensions"
            )
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise _malformed(
                f"`encoding_format` must be 'float' or 'base64', got {encoding!r}", "invalid_encoding_format"
            )
        task = self.route(key, body.get("model"), "embedding")
        deadline = self.deadline(_header(scope, _DEADLINE_KEY))
        self.admit(key)
        run = lambda oc: self.router.aembed(texts, task_type=task, deadline_s=deadline, on_call=oc)  # noqa: E731
        done = await self.begin(receive, key, started, run)
        if isinstance(done, Response):
            return done
        result, call = done
        self.finish(call, key, "ok", started)
        vectors = result.vectors
        if encoding == "base64":
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            data = vectors.tolist()
        tokens = _usage(call)["prompt_tokens"]
        answer = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
            "model": result.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        await _send_json(send, answer, _answer_headers(result.call_id, result.model, task))
        return None

    async def feedback(self, request: Request) -> Response:
        """Rate a call: 200; unknown call 404; accuracy not in [0, 1] 400; a second rating 409; a call on a
        route the key may not use 403 (nothing written: a team cannot teach another team's routes)."""
        key = self.authorize(request.headers.get("authorization"))
        body = self.body(await request.body())
        call_id = body.get("call_id")
        routes = None if key is None else self.routes_of(key)  # a key rates its routes' calls
        try:
            accuracy = validate_accuracy(body.get("accuracy"))
            await self.router.afeedback(check_call_id(call_id), accuracy, routes=routes)
        except FeedbackError as exc:
            status, code = _FEEDBACK_REFUSALS[exc.reason]
            return _error(status, str(exc), "invalid_request_error", code)
        except StoreError as exc:  # another worker's call, and the log is away: it cannot be checked now
            return _error(503, str(exc), "api_error", "log_unavailable")
        return JSONResponse({"call_id": call_id, "accuracy": accuracy, "status": "recorded"})

    async def models(self, request: Request) -> Response:
        key = self.authorize(request.headers.get("authorization"))
        names = self.routes_of(key)
        if any(self.kinds[t] == "chat" for t in names):
            names.append(AUTO)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "zeta_adaptive"} for name in names]
        return JSONResponse({"object": "list", "data": data})

    async def preferences(self, request: Request) -> Response:
        """What this worker's policies believe, per route the key may use (``x-zeta-worker``: its pid)."""
        key = self.authorize(request.headers.get("authorization"))
        tasks = self.routes_of(key)
        prefs = {t: rows for t, rows in preference_records(self.router.preferences()).items() if t in tasks}
        return JSONResponse(prefs, headers={"x-zeta-worker": str(os.getpid())})

    async def scrape(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        """Ready when the log can be written (the database answers, or the journal takes rows) and a model is not cooling."""
        problems = []
        if not await run_in_threadpool(self._log_writable):
            problems.append("the log's database is unreachable and its journal is not writable")
        if all(self.router.health.snapshot(name)["breaker"] == OPEN for name in self.router.config.models):
            problems.append("every model is cooling down")
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems}, 503)
        return JSONResponse({"status": "ready"})

    def _log_writable(self) -> bool:
        store = self.router.store

        def ping() -> None:
            with store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        try:
            store.call(ping)  # bounded by the store's timeout
            return True
        except StoreError:
            return os.access(store.journal.path, os.W_OK)

    async def close(self) -> None:
        """Flush the log; close the router if the app opened it."""
        if self.owned:
            await self.router.aclose()
        else:
            self.router.flush()


def create_app(source: Router | Config | Mapping[str, Any] | str | Path) -> Starlette:
    """The gateway as an ASGI app, on a router (left open at shutdown, only flushed) or on a config
    (the app opens its router now, its async calls on aiohttp (:mod:`.aiohttp_transport`), and closes it, flushing the log,
    at shutdown).

    Raises :class:`ConfigError` when ``[server] api_keys_env`` names a variable with no key.
    """
    owned = not isinstance(source, Router)
    if isinstance(source, Router):
        router = source
    else:
        config = load_config(source)
        router = Router(config, transport=aiohttp_transports(config))
    try:
        gw = _Gateway(router, owned)
    except BaseException:
        if owned:
            router.close()
        raise

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await gw.close()

    calls = {
        "/v1/chat/completions": _Endpoint(gw.chat, gw.refuse),
        "/v1/embeddings": _Endpoint(gw.embeddings, gw.refuse),
    }
    routes = [Route(path, endpoint, methods=["POST"]) for path, endpoint in calls.items()]
    routes += [
        Route("/v1/feedback", gw.feedback, methods=["POST"]),
        Route("/v1/models", gw.models, methods=["GET"]),
        Route("/v1/preferences", gw.preferences, methods=["GET"]),
        Route("/metrics", gw.scrape, methods=["GET"]),
        Route("/health", gw.health, methods=["GET"]),
        Route("/ready", gw.ready, methods=["GET"]),
    ]
    app = _App(calls, routes=routes, lifespan=lifespan, exception_handlers={_Refused: gw.refused})
    app.state.gateway = gw
    app.state.router = router
    return app


def app_from_env() -> Starlette:
    """The app of a worker started by :func:`serve` (uvicorn's factory): the config path is in ``$ZETA_GATEWAY_CONFIG``."""
    return create_app(os.environ[CONFIG_ENV])


def serve(config_path: str | Path, host: str = "127.0.0.1", port: int = 8080, workers: int = 1) -> None:
    """Run the gateway under uvicorn until SIGTERM/SIGINT, which drains calls in flight and flushes the log.

    The config is checked and the store migrated once here, before workers start and race to do it.
    Several workers share their metrics through a fresh folder in ``$PROMETHEUS_MULTIPROC_DIR``
    (unless it is set already), removed at exit.
    """
    import shutil
    import tempfile

    with requires("gateway"):
        import uvicorn

    config = Config.from_toml(config_path)
    load_keys(config.server)
    Store(config.store, journal_dir=config.journal_dir, pgbouncer=config.pgbouncer).close()
    if workers > 1 and config.refresh_s is None:
        log.warning("%d workers without refresh_s: each learns only from its own calls until restarted", workers)
    os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
    metrics_dir = None
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        metrics_dir = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="zeta-gateway-metrics-")
    try:
        uvicorn.run(
            "zeta_adaptive.gateway:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            timeout_graceful_shutdown=math.ceil(config.deadline_s + 5.0),  # uvicorn takes whole seconds
            access_log=False,
            log_level="info",
            timeout_keep_alive=KEEP_ALIVE_S,
            ws="none",  # no websocket routes: skips importing a websockets implementation at start-up
            proxy_headers=False,  # nothing reads the client's address: no X-Forwarded-* middleware per request
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
