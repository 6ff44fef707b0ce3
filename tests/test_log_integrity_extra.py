"""Faults found by experiments/log_faults.py: a lone surrogate in a message (json.loads and broken
clients make them) is refused as InvalidRequest before anything is sent or logged."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import create_engine, text
from test_log_integrity import Canned, ok

from zeta_adaptive import InvalidRequest, Router

LONE_SURROGATE = [{"role": "user", "content": "q \udc00 tail"}]


@pytest.fixture
def backend():
    """A loopback OpenAI-like server that answers every request well (it records each request's Authorization)."""
    server = Canned(lambda body: (200, ok()))
    yield server
    server.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.integration
def test_a_lone_surrogate_in_a_message_is_refused_as_invalid_and_logs_nothing(mode, tmp_path, backend):
    store = f"sqlite:///{tmp_path / 'log.db'}"
    cfg = {
        "store": store,
        "journal_dir": str(tmp_path / "journal"),
        "models": {"m": {"base_url": backend.url, "timeout_s": 5.0}},
        "routes": {"simple": {"models": ["m"], "policy": "static"}},
    }
    with Router(cfg) as router:
        with pytest.raises(InvalidRequest):
            if mode == "sync":
                router.chat("simple", LONE_SURROGATE)
            else:
                asyncio.run(router.achat("simple", LONE_SURROGATE))
        assert router.flush(10)
    engine = create_engine(store)
    with engine.connect() as conn:
        logged = conn.execute(text("SELECT count(*) FROM calls")).scalar_one()
    engine.dispose()
    assert logged == 0 and not backend.auth  # nothing sent
