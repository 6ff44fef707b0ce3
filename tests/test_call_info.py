"""``on_call`` of the router's async calls: the call's id, model and attempts while it runs, also
for a call that is cancelled before it returns (what the gateway needs to name and count calls)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from zeta_adaptive import CallInfo, InvalidRequest, Router
from zeta_adaptive.simulate import Fleet, ModelSpec

pytestmark = pytest.mark.integration  # simulated models over loopback

HELLO = [{"role": "user", "content": "Say hello."}]


def test_on_call_names_the_call_while_it_runs(sqlite_url, tmp_path):
    specs = [ModelSpec("good", latency_s=0.0), ModelSpec("hangs", hang_rate=1.0, hang_s=5.0)]
    with Fleet(specs, seed=1) as fleet:
        cfg = fleet.fleet_config(
            {"simple": ["good"], "slow": ["hangs"]}, store=sqlite_url, journal_dir=str(tmp_path / "j")
        )

        async def scenario() -> dict[str, Any]:
            seen: list[CallInfo] = []
            out: dict[str, Any] = {"seen": seen}
            async with Router(cfg) as router:
                out["plain"] = await router.achat("simple", HELLO, on_call=seen.append)
                stream = await router.achat("simple", HELLO, stream=True, on_call=seen.append)
                async for _ in stream:
                    out["streaming"] = (seen[-1].model, seen[-1].attempts)  # the attempt is open
                out["stream"] = stream.result
                pending = asyncio.ensure_future(router.achat("slow", HELLO, on_call=seen.append))
                while len(seen) < 3 or not seen[-1].model:
                    await asyncio.sleep(0.01)
                pending.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await pending
                with pytest.raises(InvalidRequest):  # refused before routing: no call to name
                    await router.achat("simple", [], on_call=seen.append)
            return out

        out = asyncio.run(scenario())
    plain, streamed, cancelled = out["seen"]
    result = out["plain"]
    assert (plain.call_id, plain.task_type, plain.model, plain.attempts) == (
        result.call_id,
        "simple",
        "good",
        result.attempts,
    )
    assert out["streaming"] == ("good", []) and streamed.call_id == out["stream"].call_id
    assert streamed.attempts == out["stream"].attempts and streamed.remaining_s() > 0
    assert cancelled.task_type == "slow" and cancelled.model is None
    assert [(a.model, a.outcome) for a in cancelled.attempts] == [("hangs", "cancelled")]
    assert plain.call_id in repr(plain)
