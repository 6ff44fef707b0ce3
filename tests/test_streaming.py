"""Streamed chat calls over loopback, and answer validators."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from in_process import fake_router

from zeta_adaptive import AllModelsFailed, Router, Store, StreamBroken
from zeta_adaptive._exceptions import ConfigError
from zeta_adaptive.simulate import Fleet, ModelSpec, Step

MSG = [{"role": "user", "content": "tell me something"}]


def _cfg(fleet: Fleet, url: str, order: list[str], **route) -> dict:
    cfg = fleet.fleet_config({"simple": order}, store=url, deadline_s=5.0)
    cfg["routes"]["simple"].update(policy="static", **route)
    for name in order:
        cfg["models"][name].update(timeout_s=2.0, first_token_timeout_s=0.3)
    return cfg


def _attempts(url: str, call_id: str):
    store = Store(url)
    try:
        frame = store.frame("attempts")
        return frame[frame["call_id"] == call_id]
    finally:
        store.close()


@pytest.mark.integration
def test_stream_deltas_concatenate_to_the_answer(sqlite_url):
    with Fleet([ModelSpec("a", latency_s=0.005, tokens_out=12)]) as fleet:
        with Router(_cfg(fleet, sqlite_url, ["a"])) as router:
            stream = router.chat("simple", MSG, stream=True)
            deltas = list(stream)
            result = stream.result
    assert len(deltas) > 1
    assert "".join(deltas) == result.text and result.text
    assert result.model == "a"
    assert result.attempts[0].ttft_s is not None and 0 < result.attempts[0].ttft_s <= result.attempts[0].latency_s
    logged = _attempts(sqlite_url, result.call_id)
    assert logged["ttft_s"].notna().all()


@pytest.mark.integration
def test_a_stream_that_stalls_before_the_first_token_falls_back(sqlite_url):
    specs = [ModelSpec("stalls", stall_first_token_rate=1.0, hang_s=5.0), ModelSpec("b", latency_s=0.005)]
    with Fleet(specs) as fleet:
        with Router(_cfg(fleet, sqlite_url, ["stalls", "b"])) as router:
            start = time.perf_counter()
            stream = router.chat("simple", MSG, stream=True)
            text = "".join(stream)
            elapsed = time.perf_counter() - start
    assert stream.result.model == "b" and text == stream.result.text
    assert [a.outcome for a in stream.result.attempts] == ["timeout", "ok"]
    assert 0.25 <= stream.result.attempts[0].latency_s <= 0.3 + 0.25
    assert elapsed < 0.3 + 1.0


@pytest.mark.integration
def test_a_stream_that_breaks_mid_way_raises_and_is_logged(sqlite_url):
    specs = [ModelSpec("breaks", break_stream_rate=1.0, tokens_out=40), ModelSpec("b")]
    with Fleet(specs) as fleet:
        with Router(_cfg(fleet, sqlite_url, ["breaks", "b"])) as router:
            seen: list[str] = []
            with pytest.raises(StreamBroken) as info:
                for delta in router.chat("simple", MSG, stream=True):
                    seen.append(delta)
    assert seen  # text had reached the caller, so there was no fallback
    assert [a.model for a in info.value.attempts] == ["breaks"]
    assert info.value.attempts[0].outcome == "stream_broken"
    logged = _attempts(sqlite_url, info.value.call_id)
    assert logged["outcome"].tolist() == ["stream_broken"]


@pytest.mark.integration
def test_async_streams(sqlite_url):
    specs = [ModelSpec("stalls", stall_first_token_rate=1.0, hang_s=5.0), ModelSpec("b", latency_s=0.005)]
    with Fleet(specs) as fleet:
        cfg = _cfg(fleet, sqlite_url, ["stalls", "b"])

        async def main():
            async with Router(cfg) as router:
                stream = await router.achat("simple", MSG, stream=True)
                deltas = [d async for d in stream]
                return deltas, stream.result

        deltas, result = asyncio.run(main())
    assert "".join(deltas) == result.text and result.model == "b"
    assert [a.outcome for a in result.attempts] == ["timeout", "ok"]


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_stopping_a_stream_early_logs_the_call_with_the_tokens_it_showed(sqlite_url, mode):
    """The model generated at least the text the caller read: the cancelled attempt is logged with
    those tokens and the prompt's, estimated at four characters a token, and their cost."""
    with Fleet([ModelSpec("a", tokens_out=60, chunk_delay_s=0.001)]) as fleet:
        cfg = _cfg(fleet, sqlite_url, ["a"])
        cfg["models"]["a"].update(price_in_per_1k=1.0, price_out_per_1k=2.0)
        with Router(cfg) as router:
            if mode == "sync":
                stream = router.chat("simple", MSG, stream=True)
                shown = [delta for _, delta in zip(range(5), stream, strict=False)]
                stream.close()
            else:

                async def read_five() -> list[str]:
                    stream = await router.achat("simple", MSG, stream=True)
                    seen = []
                    async for delta in stream:
                        seen.append(delta)
                        if len(seen) == 5:
                            break
                    await stream.aclose()
                    return seen

                shown = asyncio.run(read_five())
            assert router.health.in_flight["a"] == 0
    store = Store(sqlite_url)
    attempts = store.frame("attempts")
    assert store.count("calls") == 1 and attempts["outcome"].tolist() == ["cancelled"]
    store.close()
    prompt_chars = sum(len(m["content"]) for m in MSG)
    tokens_out = len("".join(shown)) // 4
    assert len(shown) == 5 and tokens_out > 0
    assert attempts[["tokens_in", "tokens_out"]].values.tolist() == [[prompt_chars // 4, tokens_out]]
    assert attempts["cost"].tolist() == [pytest.approx(prompt_chars // 4 / 1000 * 1.0 + tokens_out / 1000 * 2.0)]


def test_validator_failure_falls_back_for_plain_calls(sqlite_url):
    script = {"a": [Step(text="not json")], "b": [Step(text='{"ok": true}')]}
    cfg = {
        "store": sqlite_url,
        "models": {n: {"base_url": f"http://127.0.0.1:{9100 + i}/v1"} for i, n in enumerate(script)},
        "routes": {"simple": {"models": ["a", "b"], "policy": "static", "validators": ["non_empty", "json"]}},
    }
    with fake_router(cfg, *(ModelSpec(name, script=steps) for name, steps in script.items())) as router:
        result = router.chat("simple", MSG)
        n_failed_a = router.policies["simple"].n[0] - router.policies["simple"].succ[0]
    assert result.model == "b"
    assert [(a.model, a.outcome) for a in result.attempts] == [("a", "invalid"), ("b", "ok")]
    assert "not valid JSON" in result.attempts[0].error
    assert n_failed_a == 1  # the policy counted the invalid answer as a failure


def test_json_schema_regex_and_caller_validators(sqlite_url):
    schema = {"type": "object", "required": ["answer"]}
    script = {"a": [Step(text='{"other": 1}')], "b": [Step(text='{"answer": 42}')]}
    specs = [ModelSpec(name, script=steps) for name, steps in script.items()]
    cfg = {
        "store": sqlite_url,
        "models": {n: {"base_url": f"http://127.0.0.1:{9100 + i}/v1"} for i, n in enumerate(script)},
        "routes": {
            "simple": {
                "models": ["a", "b"],
                "policy": "static",
                "validators": [{"json_schema": schema}, {"regex": "answer"}],
            }
        },
    }
    with fake_router(cfg, *specs) as router:
        result = router.chat("simple", MSG)
    assert result.model == "b" and "schema" in result.attempts[0].error

    def no_42(text: str) -> str | None:
        return "42 is not allowed" if "42" in text else None

    with fake_router(cfg, *specs, validators={"simple": [no_42]}) as router:
        with pytest.raises(AllModelsFailed) as info:
            router.chat("simple", MSG)
    assert [a.outcome for a in info.value.attempts] == ["invalid", "invalid"]
    assert "42 is not allowed" in info.value.attempts[1].error


@pytest.mark.parametrize(
    "validators",
    [["nonsense"], [{"regex": "("}], [{"json_schema": {"type": 12}}], "json"],
)
def test_bad_validators_are_config_errors(validators, sqlite_url):
    cfg = {
        "store": sqlite_url,
        "models": {"a": {"base_url": "http://127.0.0.1:9100/v1"}},
        "routes": {"simple": {"models": ["a"], "validators": validators}},
    }
    with pytest.raises(ConfigError) as info:
        fake_router(cfg)
    assert info.value.field == "routes.simple.validators"


@pytest.mark.integration
def test_ttft_can_be_the_policys_latency(sqlite_url):
    with Fleet([ModelSpec("a", latency_s=0.005, tokens_out=20, chunk_delay_s=0.01)]) as fleet:
        with Router(_cfg(fleet, sqlite_url, ["a"], latency_measure="ttft")) as router:
            stream = router.chat("simple", MSG, stream=True)
            list(stream)
            attempt = stream.result.attempts[0]
            learned = router.policies["simple"].lat_sum[0]
    assert learned == pytest.approx(attempt.ttft_s)
    assert attempt.latency_s > attempt.ttft_s + 0.05


# -- against a fleet as strict as real servers (issue 14) ----------------------------------------------


@pytest.mark.integration
def test_streamed_calls_log_the_usage_the_server_sends_when_asked(sqlite_url):
    with Fleet([ModelSpec("a", latency_s=0.0, tokens_out=12)]) as fleet:
        with Router(_cfg(fleet, sqlite_url, ["a"])) as router:
            stream = router.chat("simple", MSG, stream=True)
            "".join(stream)

            async def run():
                astream = await router.achat("simple", MSG, stream=True)
                return [d async for d in astream], astream.result

            _, aresult = asyncio.run(run())
    prompt = len(MSG[0]["content"]) // 4 + 4
    for result in (stream.result, aresult):
        attempt = result.attempts[0]
        assert (attempt.tokens_in, attempt.tokens_out) == (prompt, 12)  # the fleet's usage chunk, sent only when asked
    logged = _attempts(sqlite_url, stream.result.call_id)
    assert logged["tokens_out"].tolist() == [12]


@pytest.mark.integration
def test_a_fleet_stream_error_event_after_text_breaks_the_stream(sqlite_url):
    specs = [ModelSpec("err", latency_s=0.0, stream_error_rate=1.0), ModelSpec("b", latency_s=0.0)]
    with Fleet(specs) as fleet:
        with Router(_cfg(fleet, sqlite_url, ["err", "b"])) as router:
            stream = router.chat("simple", MSG, stream=True)
            with pytest.raises(StreamBroken, match="simulated engine failure") as info:
                for _ in stream:
                    pass
    assert _attempts(sqlite_url, info.value.call_id)["outcome"].tolist() == ["stream_broken"]


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_closing_the_router_lets_calls_under_way_end_and_ends_held_streams(sqlite_url, mode):
    """A call still running when the router closes gets its answer and its log rows (it used to get
    StoreError, its rows lost); a half-read stream still held is ended, logged as cancelled, at once."""
    specs = [ModelSpec("slow", latency_s=0.6, latency_sigma=0.0), ModelSpec("a", tokens_out=60, chunk_delay_s=0.001)]
    with Fleet(specs) as fleet:
        cfg = fleet.fleet_config({"slow": ["slow"], "simple": ["a"]}, store=sqlite_url, deadline_s=5.0)
        for route in cfg["routes"].values():
            route["policy"] = "static"
        router = Router(cfg)
        if mode == "sync":
            answers: list[str] = []
            worker = threading.Thread(target=lambda: answers.append(router.chat("slow", MSG).text))
            worker.start()
            held = router.chat("simple", MSG, stream=True)
            first = next(iter(held))
            time.sleep(0.1)  # the slow call is under way
            start = time.perf_counter()
            router.close()
            closed_after = time.perf_counter() - start
            worker.join(10)
        else:

            async def scenario() -> tuple[list[str], str, float]:
                slow = asyncio.ensure_future(router.achat("slow", MSG))
                stream = await router.achat("simple", MSG, stream=True)
                shown = await anext(aiter(stream))
                await asyncio.sleep(0.1)
                start = time.perf_counter()
                await router.aclose()
                return [(await slow).text], shown, time.perf_counter() - start

            answers, first, closed_after = asyncio.run(scenario())
    assert len(answers) == 1 and answers[0] and first
    assert 0.2 < closed_after < 3.0  # it waited for the slow call (0.6 s from its start), not the deadline (5 s)
    store = Store(sqlite_url)
    calls = store.frame("calls").set_index("task_type")
    attempts = store.frame("attempts").set_index("model")
    store.close()
    assert calls.loc["slow", "outcome"] == "ok" and attempts.loc["slow", "outcome"] == "ok"
    assert attempts.loc["a", "outcome"] == "cancelled" and attempts.loc["a", "tokens_out"] >= 0
