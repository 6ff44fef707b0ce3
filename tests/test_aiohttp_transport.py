"""The aiohttp transport the gateway routes on: every backend fault ends an attempt with the outcome
httpx's own pool gives it, and answers (plain and streamed) read the same.

Each fault is a raw loopback socket server written here; the router runs once on httpx's pool and
once on :func:`aiohttp_transports`, on a real SQLite log.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

pytest.importorskip("httpx_aiohttp")

from zeta_adaptive import AllModelsFailed, Router, load_config
from zeta_adaptive.aiohttp_transport import aiohttp_transports
from zeta_adaptive.simulate import Fleet, ModelSpec

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "Say hello."}]
FAULTS = {
    "drops the connection": b"",
    "not HTTP": b"NOT HTTP AT ALL\r\n\r\n",
    "bad status line": b"HTTP/1.1 abc OK\r\ncontent-length: 0\r\n\r\n",
    "body cut short": b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{"id":',
    "bad chunk": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nZZZ\r\nabc\r\n",
}


@contextmanager
def faulty(reply: bytes) -> Iterator[int]:
    """A loopback server that reads a request, sends ``reply`` and closes; yields its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                conn.recv(65536)
                conn.sendall(reply)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


def outcomes(cfg: dict[str, Any], aiohttp: bool, stream: bool = False) -> Any:
    """The attempts' outcomes of one call (or its answer), on aiohttp or on httpx's own pool."""

    async def call() -> Any:
        transport = aiohttp_transports(load_config(cfg)) if aiohttp else None
        async with Router(cfg, transport=transport) as router:
            try:
                if stream:
                    answer = await router.achat("r", HELLO, stream=True)
                    text = "".join([delta async for delta in answer])
                    return text, [(a.model, a.outcome) for a in answer.result.attempts]
                result = await router.achat("r", HELLO, max_tokens=4)
                return result.text, [(a.model, a.outcome) for a in result.attempts]
            except AllModelsFailed as exc:
                return [a.outcome for a in exc.attempts]

    return asyncio.run(call())


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_faulty_backend_fails_the_attempt_as_on_httpx(fault, sqlite_url, tmp_path):
    with faulty(FAULTS[fault]) as port:
        cfg = {
            "store": sqlite_url,
            "journal_dir": str(tmp_path / "journal"),
            "max_attempts": 1,
            "models": {"m": {"base_url": f"http://127.0.0.1:{port}/v1", "timeout_s": 2.0}},
            "routes": {"r": {"models": ["m"], "policy": "static"}},
        }
        ours, theirs = outcomes(cfg, aiohttp=True), outcomes(cfg, aiohttp=False)
    assert ours == theirs == ["connect_error"]


def test_refused_and_hanging_backends_fail_as_on_httpx(sqlite_url, tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
    with Fleet([ModelSpec("hangs", hang_rate=1.0, hang_s=3.0)], seed=1) as fleet:
        cfg = fleet.fleet_config(
            {"r": ["hangs"]}, store=sqlite_url, journal_dir=str(tmp_path / "journal"), max_attempts=2
        )
        cfg["models"]["refused"] = {"base_url": f"http://127.0.0.1:{port}/v1", "timeout_s": 2.0}
        cfg["models"]["hangs"]["timeout_s"] = 0.3
        cfg["routes"]["r"] = {"models": ["refused", "hangs"], "policy": "static"}
        assert outcomes(cfg, aiohttp=True) == outcomes(cfg, aiohttp=False) == ["connect_error", "timeout"]


def test_answers_and_streams_read_the_same(sqlite_url, tmp_path):
    with Fleet([ModelSpec("good", latency_s=0.0)], seed=4) as fleet:
        cfg = fleet.fleet_config({"r": ["good"]}, store=sqlite_url, journal_dir=str(tmp_path / "journal"), seed=1)
        for stream in (False, True):
            text, attempts = outcomes(cfg, aiohttp=True, stream=stream)
            assert text and attempts == [("good", "ok")]
            assert outcomes(cfg, aiohttp=False, stream=stream) == (text, attempts)  # the fleet answers alike
