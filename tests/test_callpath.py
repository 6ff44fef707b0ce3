"""The call path under load and against real servers' habits: one probe, the router's own
saturation, retries, context-length errors, configurable rejecting statuses, and caller input.

Concurrency is tested over loopback HTTP against a small threaded server written here, which
logs when each request starts and ends, so the tests see what a backend would see.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from helpers import router_config
from loopback_http import send_json

from zeta_adaptive import AllModelsFailed, RequestRejected, Router, Store, classify
from zeta_adaptive._config import Config
from zeta_adaptive._exceptions import ConfigError, InvalidRequest
from zeta_adaptive._health import CLOSED, OPEN
from zeta_adaptive._router import SCAN_CHARS, sample
from zeta_adaptive.simulate import Fleet, ModelSpec, Step, mock_fleet

MSG = [{"role": "user", "content": "hi"}]

#: what the loopback server does for one request: (HTTP status, seconds to wait first, JSON body)
Behaviour = Callable[[dict], tuple[int, float, dict]]


def answer(delay: float = 0.0) -> Behaviour:
    def behave(body: dict) -> tuple[int, float, dict]:
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        return (
            200,
            delay,
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}], "usage": usage},
        )

    return behave


def fail(status: int = 500, delay: float = 0.0) -> Behaviour:
    return lambda body: (status, delay, {"error": {"message": "boom", "code": status}})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a herd of connections at once is what these tests make


class Loopback:
    """An OpenAI-compatible chat server on 127.0.0.1; ``behaviour[model]`` says how it answers each
    model name, and ``log`` keeps ``(model, start, end)`` of every request (monotonic seconds)."""

    def __init__(self) -> None:
        self.behaviour: dict[str, Behaviour] = {}
        self.log: list[tuple[str, float, float]] = []
        self.lock = threading.Lock()
        self.in_flight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                start = time.monotonic()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                model = body["model"]
                with outer.lock:
                    outer.in_flight[model] += 1
                    outer.peak[model] = max(outer.peak[model], outer.in_flight[model])
                    behave = outer.behaviour.get(model, answer())
                status, delay, payload = behave(body)
                time.sleep(delay)
                send_json(self, status, payload)
                with outer.lock:
                    outer.in_flight[model] -= 1
                    outer.log.append((model, start, time.monotonic()))

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Loopback:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def requests(self, model: str, since: float = 0.0) -> list[tuple[float, float]]:
        with self.lock:
            return sorted((s, e) for m, s, e in self.log if m == model and s >= since)


def before_first_answer(spans: list[tuple[float, float]]) -> int:
    """How many requests the server received before it finished answering the first one."""
    first_end = spans[0][1]
    return sum(1 for start, _ in spans if start < first_end)


def loopback_config(server: Loopback, url: str, models: list[str], **top: Any) -> dict:
    # generous bounds: these tests count requests, and the machine may be loaded
    specs = {m: {"base_url": server.url, "model": m} for m in models}
    return router_config(url, specs, {"simple": models}, timeout_s=10.0, **{"deadline_s": 20.0, **top})


# -- one probe ------------------------------------------------------------------------------------

COOLDOWN_S = 0.5
PROBE_TOP = {"max_attempts": 1, "breaker": {"consecutive_failures": 1, "cooldown_s": COOLDOWN_S, "max_cooldown_s": 5.0}}


def _open_breakers(router: Router, server: Loopback, models: list[str]) -> float:
    """Fail one call on every model (their breakers open for COOLDOWN_S), then let them answer slowly.

    The calls that follow start while every model is still cooling down, so they all wait for the
    same moment to reopen, then find the models half-open at once: the herd."""
    for m in models:
        server.behaviour[m] = fail(500)
    with pytest.raises(AllModelsFailed):
        router.chat("simple", MSG)
    assert all(router.health.snapshot(m)["breaker"] != CLOSED for m in models)
    time.sleep(0.1)
    for m in models:
        server.behaviour[m] = answer(delay=0.3)
    return time.monotonic()


@pytest.mark.parametrize("models", [["a"], ["a", "b"]], ids=["single-model route", "every model cooling"])
@pytest.mark.integration
def test_fifty_async_calls_send_one_probe_to_a_half_open_model(sqlite_url, models):
    with Loopback() as server:

        async def main() -> list:
            async with Router(loopback_config(server, sqlite_url, models, **PROBE_TOP)) as router:
                since = _open_breakers(router, server, models)
                results = await asyncio.gather(*(router.achat("simple", MSG) for _ in range(50)))
                return since, results, [router.health.snapshot(m)["breaker"] for m in models]

        since, results, states = asyncio.run(main())
    assert all(r.text == "hello" for r in results)
    assert states == [CLOSED] * len(models)
    for m in models:
        spans = server.requests(m, since)
        assert before_first_answer(spans) == 1  # the probe was alone until it came back
    assert sum(len(server.requests(m, since)) for m in models) == 50


@pytest.mark.integration
def test_twenty_threads_send_one_probe_to_a_half_open_model(sqlite_url):
    with Loopback() as server, Router(loopback_config(server, sqlite_url, ["a"], **PROBE_TOP)) as router:
        since = _open_breakers(router, server, ["a"])
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda _: router.chat("simple", MSG), range(20)))
        assert router.health.snapshot("a")["breaker"] == CLOSED
    assert len(results) == 20 and all(len(r.attempts) == 1 for r in results)
    spans = server.requests("a", since)
    assert len(spans) == 20 and before_first_answer(spans) == 1


@pytest.mark.integration
def test_calls_that_find_the_probe_out_take_the_next_model(sqlite_url):
    with Loopback() as server:
        cfg = loopback_config(server, sqlite_url, ["a", "b"], **PROBE_TOP)

        async def main() -> list:
            async with Router(cfg) as router:
                server.behaviour["a"] = fail(500)
                result = await router.achat("simple", MSG)  # a fails and opens, b answers
                assert [x.model for x in result.attempts] == ["a", "b"]
                await asyncio.sleep(COOLDOWN_S + 0.05)
                server.behaviour["a"] = answer(delay=0.3)
                return await asyncio.gather(*(router.achat("simple", MSG) for _ in range(10)))

        results = asyncio.run(main())
    assert sorted(r.model for r in results) == ["a"] + ["b"] * 9  # one probe; the others did not wait for it
    assert all(len(r.attempts) == 1 for r in results)


# -- the router's own saturation ---------------------------------------------------------------------


@pytest.mark.integration
def test_calls_beyond_max_in_flight_wait_for_a_slot_and_never_blame_the_model(sqlite_url):
    """40 async calls on one model with max_in_flight=4 answering in 0.25 s: ten rounds, at least
    2.5 s in all, beyond the attempt timeout of 2 s; waiting for a slot is not part of it."""
    with Loopback() as server:
        server.behaviour["a"] = answer(delay=0.25)
        cfg = loopback_config(server, sqlite_url, ["a"], deadline_s=30.0)
        cfg["models"]["a"].update(max_in_flight=4, timeout_s=2.0)

        async def main() -> tuple[list, dict]:
            async with Router(cfg) as router:
                results = await asyncio.gather(
                    *(router.achat("simple", MSG) for _ in range(40)), return_exceptions=True
                )
                return results, router.health.snapshot("a")

        results, state = asyncio.run(main())
    assert [type(r).__name__ for r in results] == ["ChatResult"] * 40
    assert all([(a.model, a.outcome) for a in r.attempts] == [("a", "ok")] for r in results)
    assert len(server.requests("a")) == 40 and server.peak["a"] == 4
    assert state["breaker"] == CLOSED and state["in_flight"] == 0


@pytest.mark.integration
def test_threads_beyond_max_in_flight_wait_for_a_slot(sqlite_url):
    with Loopback() as server:
        server.behaviour["a"] = answer(delay=0.2)
        cfg = loopback_config(server, sqlite_url, ["a"], deadline_s=30.0)
        # six rounds of 0.2 s (at least 1.2 s in all); each attempt's timeout leaves room for a busy machine
        cfg["models"]["a"].update(max_in_flight=2, timeout_s=5.0)
        with Router(cfg) as router, ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda _: router.chat("simple", MSG), range(12)))
            assert router.health.snapshot("a")["breaker"] == CLOSED
    assert all(len(r.attempts) == 1 and r.attempts[0].outcome == "ok" for r in results)
    assert len(server.requests("a")) == 12 and server.peak["a"] == 2


@pytest.mark.integration
def test_a_call_that_cannot_get_a_slot_before_its_deadline_fails_without_an_attempt(sqlite_url):
    with Loopback() as server:
        server.behaviour["a"] = answer(delay=1.5)
        cfg = loopback_config(server, sqlite_url, ["a"])
        cfg["models"]["a"]["max_in_flight"] = 1

        async def main() -> AllModelsFailed:
            async with Router(cfg) as router:
                first = asyncio.ensure_future(router.achat("simple", MSG))
                for _ in range(500):  # until the first call holds the only slot
                    if router.health.snapshot("a")["in_flight"]:
                        break
                    await asyncio.sleep(0.01)
                with pytest.raises(AllModelsFailed) as info:
                    await router.achat("simple", MSG, deadline_s=0.3)
                await first
                return info.value

        err = asyncio.run(main())
    assert err.attempts == [] and "busy" in str(err)
    assert len(server.requests("a")) == 1


# -- retries -------------------------------------------------------------------------------------------


def failure_rate(url: str, max_attempts: int | None, n: int = 1000) -> float:
    """Share of failed calls on a route of two models that each fail half of their requests at random."""
    cfg: dict[str, Any] = {
        "store": url,
        "seed": 3,
        # the breakers stay out of it: this measures retries alone
        "breaker": {"consecutive_failures": 1000, "failure_rate": 1.0, "min_calls": 1000},
        "models": {m: {"base_url": f"http://{m}:8000/v1", "max_in_flight": 1000} for m in ("a", "b")},
        "routes": {"simple": {"models": ["a", "b"], "policy": "static"}},
    }
    if max_attempts is not None:
        cfg["max_attempts"] = max_attempts

    async def main() -> int:
        failed = 0
        flaky = mock_fleet(cfg, seed=1, error_rate=0.5, latency_s=0.0)
        async with Router(cfg, transport=flaky.transports()) as router:
            for _ in range(n // 100):
                results = await asyncio.gather(
                    *(router.achat("simple", MSG) for _ in range(100)), return_exceptions=True
                )
                failed += sum(isinstance(r, AllModelsFailed) for r in results)
        return failed

    return asyncio.run(main()) / n


@pytest.mark.slow
def test_retries_bring_two_half_failing_models_under_eight_percent(tmp_path):
    without = failure_rate(f"sqlite:///{tmp_path / 'once.db'}", max_attempts=1)
    default = failure_rate(f"sqlite:///{tmp_path / 'retry.db'}", max_attempts=None)  # the default budget, 4
    assert 0.20 <= without <= 0.30  # a then b: 0.5 ** 2
    assert default < 0.08  # a, b, a, b: 0.5 ** 4
    store = Store(f"sqlite:///{tmp_path / 'retry.db'}")
    try:
        calls, attempts = store.frame("calls"), store.frame("attempts")
    finally:
        store.close()
    failed = calls[calls["outcome"] == "failed"]
    assert (failed["n_attempts"] == 4).all()
    one = attempts[attempts["call_id"] == failed["call_id"].iloc[0]].sort_values("idx")
    assert one["idx"].tolist() == [0, 1, 2, 3] and one["model"].tolist() == ["a", "b", "a", "b"]


def test_a_single_model_route_retries_after_a_short_pause(sqlite_url):
    cfg = {
        "store": sqlite_url,
        "models": {"a": {"base_url": "http://a:8000/v1"}},
        "routes": {"simple": {"models": ["a"], "policy": "static", "max_attempts": 3}},
    }
    fake = mock_fleet(cfg, ModelSpec("a", script=["error", "disconnect", "ok"]))
    with Router(cfg, transport=fake.transports()) as router:
        result = router.chat("simple", MSG)
    assert [(a.model, a.outcome) for a in result.attempts] == [
        ("a", "server_error"),
        ("a", "connect_error"),
        ("a", "ok"),
    ]
    store = Store(sqlite_url)
    starts = store.frame("attempts").sort_values("idx")["ts"].tolist()
    store.close()
    assert all(later - earlier >= 0.01 for earlier, later in itertools.pairwise(starts))  # the backoff's least pause


def test_the_route_budget_bounds_retries_and_rejections_are_never_retried(sqlite_url):
    cfg = {
        "store": sqlite_url,
        "max_attempts": 6,
        "models": {m: {"base_url": f"http://{m}:8000/v1"} for m in "ab"},
        "routes": {"simple": {"models": ["a", "b"], "policy": "static", "max_attempts": 3}},
    }
    fake = mock_fleet(cfg, ModelSpec("a", script=["error"]), ModelSpec("b", script=["malformed"]), record=True)
    with Router(cfg, transport=fake.transports()) as router:
        with pytest.raises(AllModelsFailed) as info:
            router.chat("simple", MSG)
        assert [a.model for a in info.value.attempts] == ["a", "b", "a"]
        fake.update("a", script=[Step("error", status=422, message="bad request")])
        fake.received.clear()
        with pytest.raises(RequestRejected):
            router.chat("simple", MSG)
    assert [m for m, _ in fake.received] == ["a"]


def test_a_timeout_cut_by_the_deadline_is_not_retried(sqlite_url):
    cfg = {
        "store": sqlite_url,
        "models": {"a": {"base_url": "http://a:8000/v1", "timeout_s": 5.0}},
        "routes": {"simple": {"models": ["a"], "policy": "static"}},
    }
    fake = mock_fleet(cfg, ModelSpec("a", script=[Step(latency_s=2.0)]))
    with Router(cfg, transport=fake.transports()) as router:
        with pytest.raises(AllModelsFailed) as info:
            router.chat("simple", MSG, deadline_s=0.2)
    assert [a.outcome for a in info.value.attempts] == ["timeout"]


# -- context length and statuses ---------------------------------------------------------------------

TOO_LONG = Step(
    "error",
    status=400,
    message="This model's maximum context length is 4096 tokens. However, you requested 9000 tokens",
)


def _context_router(url: str, *specs: ModelSpec, **top: Any) -> tuple[Router, Fleet]:
    """A router over three models (two of them with declared context windows), and its in-process fleet."""
    cfg = {
        "store": url,
        "breaker": {"consecutive_failures": 2},
        "models": {
            "small": {"base_url": "http://small:8000/v1", "context_window": 4096},
            "plain": {"base_url": "http://plain:8000/v1"},
            "big": {"base_url": "http://big:8000/v1", "context_window": 32768},
        },
        "routes": {"simple": {"models": ["small", "plain", "big"], "policy": "static"}},
        **top,
    }
    fleet = mock_fleet(cfg, *specs, record=True, latency_s=0.001)
    return Router(cfg, transport=fleet.transports()), fleet


def _prompt(chars: int) -> list[dict]:
    return [{"role": "user", "content": "x" * chars}]


def test_context_exceeded_falls_back_to_a_larger_window_and_is_learned_by_band(sqlite_url):
    router, _ = _context_router(sqlite_url, ModelSpec("small", script=[TOO_LONG, "ok"]))
    with router:
        long_prompt = _prompt(10_000)  # band 2 (8k-32k chars); ~2,500 tokens fit the declared 4,096
        first = router.chat("simple", long_prompt)
        assert [(a.model, a.outcome) for a in first.attempts] == [("small", "context_exceeded"), ("big", "ok")]
        for _ in range(3):  # the same band again: small is tried last, so plain answers first
            demoted = router.chat("simple", _prompt(12_000))
            assert [a.model for a in demoted.attempts] == ["plain"]
        assert [a.model for a in router.chat("simple", _prompt(500)).attempts] == [
            "small"
        ]  # short prompts still go to small
        assert router.health.snapshot("small")["breaker"] == CLOSED
        policy = router.policies["simple"]
        assert policy.n[policy.index["small"]] == 1  # only the short prompt's answer taught the policy
    store = Store(sqlite_url)
    assert store.find_call(first.call_id)["skipped"] is None
    assert json.loads(store.find_call(demoted.call_id)["skipped"]) == {"small": "prompt_too_long"}
    store.close()
    again, _ = _context_router(sqlite_url)
    with again:  # a warm start does not count it either
        assert again.policies["simple"].n[again.policies["simple"].index["small"]] == 1


def test_a_prompt_clearly_longer_than_a_declared_window_tries_that_model_last(sqlite_url):
    router, fleet = _context_router(sqlite_url, ModelSpec("plain", script=["error"]), max_attempts=1)
    with router:
        result = router.chat("simple", _prompt(40_000))  # ~10,000 tokens: more than small's 4,096
    assert [a.model for a in result.attempts] == ["plain", "big"]
    assert [m for m, _ in fleet.received] == ["plain", "big"]


def test_context_exceeded_everywhere_fails_the_call_without_rejecting_it(sqlite_url):
    router, _ = _context_router(sqlite_url, *(ModelSpec(m, script=[TOO_LONG]) for m in ("small", "plain", "big")))
    with router:
        with pytest.raises(AllModelsFailed) as info:
            router.chat("simple", _prompt(100))
    assert [a.outcome for a in info.value.attempts] == ["context_exceeded"] * 3  # never retried


@pytest.mark.parametrize("status", [401, 403, 404])
def test_misconfigured_endpoints_fall_back_and_open_the_breaker(sqlite_url, status):
    router, _ = _context_router(
        sqlite_url, ModelSpec("small", script=[Step("error", status=status, message="no such model")])
    )
    with router:
        for _ in range(2):
            assert router.chat("simple", MSG).model == "plain"
        assert router.health.snapshot("small")["breaker"] == OPEN


def test_rejecting_statuses_are_configurable(sqlite_url):
    bad = Step("error", status=400, message="bad")
    router, _ = _context_router(sqlite_url, ModelSpec("small", script=[bad]), rejecting_statuses=[422])
    with router:
        assert [a.model for a in router.chat("simple", MSG).attempts] == ["small", "plain"]
    unprocessable = Step("error", status=422, message="unprocessable")
    router, _ = _context_router(sqlite_url, ModelSpec("small", script=[unprocessable]), rejecting_statuses=[422])
    with router:
        with pytest.raises(RequestRejected):
            router.chat("simple", MSG)
        assert router.health.snapshot("small")["breaker"] == CLOSED


@pytest.mark.parametrize(
    "data, field",
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"rejecting_statuses": 400}, "rejecting_statuses"),
        ({"rejecting_statuses": [500]}, "rejecting_statuses"),
        ({"routes": {"simple": {"models": ["a"], "max_attempts": 0}}}, "routes.simple.max_attempts"),
    ],
)
def test_retry_and_status_keys_are_validated(data, field):
    cfg = {"models": {"a": {"base_url": "http://a:8000/v1"}}, "routes": {"simple": {"models": ["a"]}}, **data}
    with pytest.raises(ConfigError) as info:
        Config.from_dict(cfg)
    assert info.value.field == field


def test_new_keys_round_trip():
    cfg = Config.from_dict(
        {
            "max_attempts": 2,
            "rejecting_statuses": [400, 409],
            "models": {"a": {"base_url": "http://a:8000/v1", "context_window": 8192}},
            "routes": {"simple": {"models": ["a"], "max_attempts": 5}},
        }
    )
    assert cfg.max_attempts == 2 and cfg.rejecting_statuses == {400, 409} and cfg.routes["simple"].max_attempts == 5
    assert Config.from_dict(cfg.to_dict()) == cfg


# -- caller input ---------------------------------------------------------------------------------------


def _deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


BAD_CHATS = [
    (("simple", "hi"), {}, "got a str"),
    (("simple", []), {}, "messages is empty"),
    (("simple", [1, 2, 3]), {}, "messages[0] must be a dict"),
    (("simple", {"role": "user", "content": "hi"}), {}, "got dict"),
    (("simple", [{"content": "hi"}]), {}, "messages[0].role"),
    (("simple", [{"role": "wizard", "content": "hi"}]), {}, "messages[0].role"),
    (("simple", [{"role": "user"}]), {}, "messages[0].content is missing"),
    (("simple", [{"role": "user", "content": None}]), {}, "messages[0].content is missing"),
    (("simple", [{"role": "user", "content": 123}]), {}, "messages[0].content must be"),
    (("simple", [{"role": "user", "content": [{"text": "no type"}]}]), {}, "messages[0].content[0]"),
    (("simple", [{"role": "user", "content": []}]), {}, "empty list"),
    (("simple", [{"role": "user", "content": [{"type": "text", "text": None}]}]), {}, "without a 'text' string"),
    (
        ("simple", [{"role": "user", "content": [{"type": "text", "text": "x", "extra": _deep(100_000)}]}]),
        {},
        "nested deeper",
    ),
    (("simple", [{"role": "user", "content": "hi", 1: "x"}]), {}, "non-string key"),
    # beside the checks' shortcut for plain {role, content: ASCII text} messages
    (("simple", [{"role": "user", "content": "hi", "name": {"a"}}]), {}, "set"),
    (("simple", [{"role": "user", "content": "hi"}, {"role": "user", "content": "q \udc00"}]), {}, "not valid Unicode"),
    (("simple", [{"role": "user", "content": "hi"}, {"role": "user", "content": "x", "w": float("nan")}]), {}, "JSON"),
    (("simple", MSG), {"deadline": 0.5}, "did you mean deadline_s"),
    (("simple", MSG), {"timeout_s": 1.0}, "deadline_s"),
    (("simple", MSG), {"task": "code"}, "task_type"),
    (("simple", MSG), {"streaming": True}, "did you mean stream"),
    (("simple", MSG), {"features": ["x"]}, "features must be a mapping"),
    (("simple", MSG), {"model": "gpt-4"}, "chooses the model"),
    (("simple", MSG), {"temperature": float("nan")}, "JSON cannot carry"),
    (("simple", MSG), {"stop": {"a", "b"}}, "set"),
    (("simple", MSG), {"deadline_s": True}, "deadline_s"),
    (("simple", MSG), {"deadline_s": 0}, "deadline_s"),
    (("simple", MSG), {"deadline_s": -1.0}, "deadline_s"),
    (("simple", MSG), {"deadline_s": float("inf")}, "deadline_s"),
    (("simple", MSG), {"deadline_s": float("nan")}, "deadline_s"),
    (("simple", MSG), {"deadline_s": "2"}, "deadline_s"),
    (("simple", MSG), {"stream": "yes"}, "stream"),
    (("simple", MSG), {"n": 3}, "n=3: a routed call returns one answer"),
    (("simple", MSG), {"logprobs": True}, "not log probabilities"),
    (("simple", MSG), {"top_logprobs": 2}, "not log probabilities"),
    ((123, MSG), {}, "task_type"),
    ((["simple"], MSG), {}, "task_type"),
]


def _input_router(url: str) -> tuple[Router, Fleet]:
    """A router whose every request reaches an in-process fleet that records it."""
    cfg = {
        "store": url,
        "log_prompts": True,
        "models": {"a": {"base_url": "http://a:8000/v1"}, "e": {"base_url": "http://e:8000/v1", "kind": "embedding"}},
        "routes": {"simple": {"models": ["a"]}, "embedding": {"models": ["e"]}},
    }
    fleet = mock_fleet(cfg, record=True)
    return Router(cfg, transport=fleet.transports()), fleet


def _nothing_happened(url: str, router: Router, fleet: Fleet) -> None:
    router.flush()
    assert fleet.received == []
    assert all(p.n.sum() == 0 for p in router.policies.values())
    store = Store(url)
    try:
        assert store.count("calls") == 0 and store.count("attempts") == 0
    finally:
        store.close()


@pytest.mark.parametrize("args, kwargs, fragment", BAD_CHATS, ids=[str(i) for i in range(len(BAD_CHATS))])
def test_bad_chat_input_raises_invalid_request_and_leaves_no_trace(sqlite_url, args, kwargs, fragment):
    router, fleet = _input_router(sqlite_url)
    with router:
        with pytest.raises(InvalidRequest) as info:
            router.chat(*args, **kwargs)
        assert fragment in str(info.value)

        async def again() -> None:
            with pytest.raises(InvalidRequest):
                await router.achat(*args, **kwargs)

        asyncio.run(again())
        _nothing_happened(sqlite_url, router, fleet)


def test_bad_input_writes_nothing_on_either_store(store_url):
    router, fleet = _input_router(store_url)
    with router:
        for args, kwargs, _ in BAD_CHATS[:3] + BAD_CHATS[-4:]:
            with pytest.raises(InvalidRequest):
                router.chat(*args, **kwargs)
        with pytest.raises(InvalidRequest):
            router.embed([""])
        _nothing_happened(store_url, router, fleet)


BAD_TEXTS = [
    ([], {}, "texts is empty"),
    ([1], {}, "texts[0] must be a string"),
    (["ok", ""], {}, "texts[1] is an empty string"),
    (b"bytes", {}, "got bytes"),
    ({"a": "b"}, {}, "got dict"),
    (None, {}, "got NoneType"),
    (["ok"], {"deadline_s": True}, "deadline_s"),
    (["ok"], {"task_type": None}, "task_type"),
]


@pytest.mark.parametrize("texts, kwargs, fragment", BAD_TEXTS, ids=[str(i) for i in range(len(BAD_TEXTS))])
def test_bad_embedding_input_raises_invalid_request(sqlite_url, texts, kwargs, fragment):
    router, fleet = _input_router(sqlite_url)
    with router:
        with pytest.raises(InvalidRequest) as info:
            router.embed(texts, **kwargs)
        assert fragment in str(info.value)
        with pytest.raises(InvalidRequest):
            asyncio.run(router.aembed(texts, **kwargs))
        _nothing_happened(sqlite_url, router, fleet)


def test_good_inputs_of_every_shape_pass_through(sqlite_url):
    messages = (
        {"role": "developer", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:,"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "42"},
    )
    schema = {"type": "object", "properties": {"x": {"type": "array", "items": {"type": "number"}}}}
    params = {
        "temperature": 0.2,
        "max_tokens": 16,
        "response_format": {"type": "json_schema", "json_schema": {"schema": schema}},
        "n": 1,  # what the router returns: one answer, no log probabilities
        "logprobs": False,
    }
    router, fleet = _input_router(sqlite_url)
    with router:
        assert router.chat("simple", messages, **params).text.startswith("answer from a: ")
        assert router.embed("one text", deadline_s=2).vectors.shape[0] == 1
    request = fleet.received[0][1]
    assert request["response_format"]["json_schema"]["schema"] == schema and len(request["messages"]) == 4


# -- the default classifier ------------------------------------------------------------------------------


def test_the_classifier_scans_a_bounded_part_of_any_prompt():
    huge = [{"role": "user", "content": "word " * 200_000 + "def main():"}]  # 1 MB, a code marker at the very end
    scanned, length = sample(huge)
    assert length == 1_000_011 and len(scanned) <= 2 * SCAN_CHARS + 1
    assert classify(huge) == "code"  # the end is read
    middle = [{"role": "user", "content": "a " * 100_000 + "import os " + "a " * 100_000}]
    assert classify(middle) == "reasoning"  # the middle is not: only its length counts
    for content in (
        "a" * 80_000,
        "a()" * 27_000,
        "SELECT " * 12_000,
        "first, " * 12_000,
        "\n" * 80_000,
        "1. " * 27_000,
    ):
        scanned, _ = sample([{"role": "user", "content": content}])
        assert len(scanned) <= 2 * SCAN_CHARS + 1
        assert classify([{"role": "user", "content": content}]) in {"code", "reasoning"}


def test_the_classifier_reads_text_content_parts():
    parts = [{"role": "user", "content": [{"type": "text", "text": "```python\nprint(1)\n```"}]}]
    assert classify(parts) == "code"
    assert sample([{"role": "system", "content": "x" * 50}, {"role": "user", "content": "hi"}]) == ("hi", 2)
