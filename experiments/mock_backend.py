"""A fast OpenAI-compatible mock backend for the benchmarks, run in its own process.

It answers ``POST /v1/chat/completions`` with one fixed, valid ``chat.completion`` body,
``POST /v1/embeddings`` with one fixed 8-dimensional vector per input, and ``GET /v1/models``,
over HTTP/1.1 keep-alive, from a bare :class:`asyncio.Protocol` (no framework, no JSON parsing
of the request: the answer is pre-encoded). Run in a separate process it shares no GIL with the
client being measured, and it costs the client nothing but the HTTP exchange itself, so every
microsecond a contender adds shows.

    .venv/bin/python -m experiments.mock_backend [--port 0]          # prints "PORT <n>" when ready
    .venv/bin/python -m experiments.mock_backend --compare [--calls N]  # this mock vs simulate.Fleet

``--compare`` times a direct keep-alive ``httpx.Client`` POST against this mock and against
``zeta_adaptive.simulate.Fleet`` (``latency_s=0``, also in its own process), interleaved, and
prints the median, p99 and spread of each: the reason the benchmarks use this mock.

From Python: ``with MockServer() as mock: mock.base_url`` (``http://127.0.0.1:<port>/v1``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from types import TracebackType

from .common import ROOT

_CHAT = json.dumps(
    {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "mock",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "the answer follows from a careful look"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
    },
    separators=(",", ":"),
).encode()
_MODELS = json.dumps(
    {"object": "list", "data": [{"id": "mock", "object": "model", "created": 0, "owned_by": "mock"}]}
).encode()
_VECTOR = [0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]


def _response(status: str, body: bytes, close: bool = False) -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    if close:
        head += "connection: close\r\n"
    return head.encode() + b"\r\n" + body


_CHAT_RESPONSE = _response("200 OK", _CHAT)
_MODELS_RESPONSE = _response("200 OK", _MODELS)
_NOT_FOUND = _response(
    "404 Not Found", b'{"error":{"message":"no such route","type":"invalid_request_error","code":404}}'
)
_BAD = _response(
    "411 Length Required",
    b'{"error":{"message":"content-length required","type":"invalid_request_error","code":411}}',
    close=True,
)


def _embeddings(body: bytes) -> bytes:
    try:
        texts = json.loads(body).get("input")
    except (ValueError, AttributeError):
        texts = None
    n = 1 if isinstance(texts, str) else len(texts) if isinstance(texts, list) else 0
    data = [{"object": "embedding", "index": i, "embedding": _VECTOR} for i in range(n)]
    out = {"object": "list", "model": "mock", "data": data, "usage": {"prompt_tokens": n, "total_tokens": n}}
    return _response("200 OK", json.dumps(out, separators=(",", ":")).encode())


class _Http(asyncio.Protocol):
    """Minimal HTTP/1.1: request line, headers, a content-length body; keep-alive unless told to close."""

    __slots__ = ("buf", "transport")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            lower = head.lower()
            length = 0
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17 : stop if stop >= 0 else len(lower)])
            elif b"\r\ntransfer-encoding:" in lower:
                self.transport.write(_BAD)
                self.transport.close()
                return
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = self.buf[end + 4 : total]
            self.buf = self.buf[total:]
            line = head[: head.find(b"\r\n")] if b"\r\n" in head else head
            method, _, rest = line.partition(b" ")
            path = rest.partition(b" ")[0].partition(b"?")[0]
            if method == b"POST" and path.endswith(b"/chat/completions"):
                self.transport.write(_CHAT_RESPONSE)
            elif method == b"POST" and path.endswith(b"/embeddings"):
                self.transport.write(_embeddings(body))
            elif method == b"GET" and path.endswith(b"/models"):
                self.transport.write(_MODELS_RESPONSE)
            else:
                self.transport.write(_NOT_FOUND)
            if b"\r\nconnection: close" in lower:
                self.transport.close()
                return


async def serve(port: int = 0) -> None:
    """Serve on 127.0.0.1:port until SIGTERM/SIGINT; prints ``PORT <n>`` once listening."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Http, "127.0.0.1", port, backlog=1024, reuse_address=True)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


class MockServer:
    """This mock in a child process; ``base_url`` is its OpenAI-compatible ``/v1`` root."""

    def __init__(self, *, fleet: bool = False) -> None:
        self.fleet = fleet
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> MockServer:
        args = [sys.executable, "-m", "experiments.mock_backend"] + (["--fleet"] if self.fleet else [])
        # its own session: where the kernel groups CPU time by session (autogroup), the backend then
        # does not eat into the share of the client being measured
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"mock backend did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _serve_fleet() -> None:
    """simulate.Fleet with one zero-latency chat model, for --compare; prints ``PORT <n>``."""
    from zeta_adaptive.simulate import Fleet, ModelSpec

    with Fleet([ModelSpec("mock", latency_s=0.0)], seed=0) as fleet:
        url = fleet.base_url("mock")
        print(f"PORT {url.rsplit(':', 1)[1].split('/')[0]}", flush=True)
        stop = False

        def _stop(*_: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        while not stop:
            time.sleep(0.05)


def compare(calls: int, rounds: int) -> list[dict[str, float | str]]:
    """Direct keep-alive httpx POSTs against this mock and against Fleet(latency_s=0), interleaved."""
    import httpx
    import numpy as np

    body = {"model": "mock", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
    samples: dict[str, list[float]] = {
        "mock_backend (asyncio, own process)": [],
        "simulate.Fleet latency_s=0 (own process)": [],
    }
    medians: dict[str, list[float]] = {k: [] for k in samples}
    with MockServer() as mock, MockServer(fleet=True) as fleet:
        clients = {name: httpx.Client(base_url=srv.base_url + "/") for name, srv in zip(samples, (mock, fleet))}
        for client in clients.values():
            for _ in range(50):
                client.post("chat/completions", json=body).json()
        for r in range(rounds):
            names = list(samples) if r % 2 == 0 else list(reversed(samples))
            for name in names:
                client = clients[name]
                block = []
                for _ in range(calls // rounds):
                    t0 = time.perf_counter_ns()
                    client.post("chat/completions", json=body).json()
                    block.append((time.perf_counter_ns() - t0) / 1000)
                samples[name] += block
                medians[name].append(float(np.median(block)))
        for client in clients.values():
            client.close()
    rows = []
    for name, values in samples.items():
        v = np.asarray(values)
        rows.append(
            {
                "backend": name,
                "p50_us": float(np.median(v)),
                "p99_us": float(np.percentile(v, 99)),
                "round_median_min_us": min(medians[name]),
                "round_median_max_us": max(medians[name]),
                "iqr_us": float(np.percentile(v, 75) - np.percentile(v, 25)),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--fleet", action="store_true", help="serve simulate.Fleet(latency_s=0) instead (for --compare)"
    )
    parser.add_argument("--compare", action="store_true", help="time this mock against simulate.Fleet and print both")
    parser.add_argument("--calls", type=int, default=4000)
    args = parser.parse_args(argv)
    if args.compare:
        for row in compare(args.calls, rounds=10):
            print("  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{v:42s}" for k, v in row.items()))
    elif args.fleet:
        _serve_fleet()
    else:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
