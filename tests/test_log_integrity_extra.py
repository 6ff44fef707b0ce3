"""Faults found by experiments and by trying: a lone surrogate in a message (json.loads and broken
clients make them) is refused as InvalidRequest before anything is sent or logged; a forked child
that uses its parent's router (a pre-fork server, a process pool) is refused before anything is
sent, where its rows used to queue for a writer thread the fork did not copy, and vanish."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from helpers import router_config
from sqlalchemy import create_engine, text
from test_log_integrity import Canned, ok

from zeta_adaptive import InvalidRequest, Router, StoreError

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
    cfg = router_config(store, {"m": backend.url}, {"simple": ["m"]}, tmp_path=tmp_path)
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


def _in_child(router: Router, call_id: str) -> str:
    """What a forked child meets when it uses its parent's router: each use's outcome, one line each."""
    seen = []
    for name, use in (
        ("chat", lambda: router.chat("simple", [{"role": "user", "content": "from the child"}])),
        ("feedback", lambda: router.feedback(call_id, 1.0)),
        ("flush", lambda: router.flush(5)),
    ):
        try:
            use()
            seen.append(f"{name}: no error")
        except StoreError as exc:
            seen.append(f"{name}: StoreError {exc}")
    router.close()  # the parent's writer, journal and connections: left alone, no wait
    seen.append("closed")
    return "\n".join(seen)


@pytest.mark.integration
def test_a_forked_child_cannot_use_its_parents_router_and_the_parent_loses_nothing(tmp_path, backend):
    store = f"sqlite:///{tmp_path / 'log.db'}"
    cfg = router_config(store, {"m": backend.url}, {"simple": ["m"]}, tmp_path=tmp_path)
    with Router(cfg) as router:
        first = router.chat("simple", [{"role": "user", "content": "before the fork"}])
        sent = len(backend.auth)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without running the parent's exit handlers
            try:
                os.write(write, _in_child(router, first.call_id).encode())
            finally:
                os._exit(0)
        os.close(write)
        deadline = time.monotonic() + 30
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the forked child did not finish within 30 s")
            time.sleep(0.05)
        report = os.read(read, 1 << 16).decode().splitlines()
        os.close(read)
        assert len(backend.auth) == sent  # the child sent nothing
        second = router.chat("simple", [{"role": "user", "content": "after the fork"}])  # the parent goes on
        router.feedback(second.call_id, 0.5)
    assert [line.split(":")[0] for line in report] == ["chat", "feedback", "flush", "closed"]
    assert all("StoreError" in line and f"forked child {pid}" in line for line in report[:3])
    engine = create_engine(store)
    with engine.connect() as conn:
        calls = conn.execute(text("SELECT call_id FROM calls ORDER BY ts")).scalars().all()
        rated = conn.execute(text("SELECT call_id FROM feedback")).scalars().all()
    engine.dispose()
    assert calls == [first.call_id, second.call_id] and rated == [second.call_id]
    assert not any((tmp_path / "journal").glob("*.jsonl")) or all(
        p.stat().st_size == 0 for p in (tmp_path / "journal").glob("*.jsonl")
    )
