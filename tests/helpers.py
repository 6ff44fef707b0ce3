"""Helpers shared by the test modules: an experiment run in its quick mode, a router config, a log row, and an app served."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: circuit breakers that never open: for tests that pin down ranking, fallback and logging
NO_BREAKER = {"consecutive_failures": 10_000, "min_calls": 10_000, "window": 10_000}


def start_experiment(name: str, out: Path, *extra: str) -> subprocess.Popen[str]:
    """``python -m experiments.NAME --quick --out OUT EXTRA...`` from the repository root, its
    journals under ``OUT/state``, matplotlib on Agg; stdout and stderr piped."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", "XDG_STATE_HOME": str(out / "state")}
    return subprocess.Popen(
        [sys.executable, "-m", f"experiments.{name}", "--quick", "--out", str(out), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_experiment(proc: subprocess.Popen[str], name: str, timeout: float) -> str:
    """Wait for a started experiment (killed after ``timeout`` s); its stdout, or an assertion
    error with the end of its output when it failed or overran."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{name} ran past {timeout:.0f} s:\n{stdout[-2000:]}\n{stderr[-4000:]}") from None
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{stdout[-2000:]}\n{stderr[-4000:]}"
    return stdout


def run_experiment(name: str, out: Path, *extra: str, timeout: float = 110) -> str:
    """Run ``python -m experiments.NAME --quick`` into ``out``; its stdout (asserts it succeeded)."""
    return finish_experiment(start_experiment(name, out, *extra), name, timeout)


def run_experiments_side_by_side(outs: Mapping[str, Path], timeout: float) -> None:
    """Run several quick experiments at once (``outs``: name -> results folder), all within
    ``timeout`` s; asserts every one succeeded, naming each that did not."""
    procs = {name: start_experiment(name, out) for name, out in outs.items()}
    deadline = time.monotonic() + timeout
    failures = []
    for name, proc in procs.items():
        try:
            finish_experiment(proc, name, timeout=max(1.0, deadline - time.monotonic()))
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n\n".join(failures)


def router_config(
    store: str,
    models: Mapping[str, str | Mapping[str, Any]],
    routes: Mapping[str, Sequence[str]],
    *,
    tmp_path: Path | None = None,
    timeout_s: float = 5.0,
    policy: str = "static",
    **top: Any,
) -> dict[str, Any]:
    """A router config: each model a base URL (or its options), each route its models under
    ``policy``; journals under ``tmp_path`` when given; ``top`` adds or replaces top-level keys."""
    cfg: dict[str, Any] = {
        "store": store,
        "models": {
            name: {"timeout_s": timeout_s, **({"base_url": spec} if isinstance(spec, str) else spec)}
            for name, spec in models.items()
        },
        "routes": {task: {"models": list(names), "policy": policy} for task, names in routes.items()},
    }
    if tmp_path is not None:
        cfg["journal_dir"] = str(tmp_path / "journal")
    return {**cfg, **top}


def call_row(call_id: str, **overrides: Any) -> dict[str, Any]:
    """A ``calls`` row as the router logs it (one attempt, answered by ``m``); ``overrides`` replace columns."""
    return {
        "call_id": call_id,
        "ts": 1.0,
        "task_type": "code",
        "policy": "static",
        "propensity": 1.0,
        "ranking": '["m"]',
        "model": "m",
        "outcome": "ok",
        "latency_s": 0.01,
        "tokens_in": 3,
        "tokens_out": 4,
        "cost": 0.0,
        "n_attempts": 1,
        "prompt": None,
        "answer": None,
        **overrides,
    }


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free loopback port; yields its /v1 base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="gateway-under-test", daemon=True)
    thread.start()
    until = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < until:
        time.sleep(0.01)
    assert server.started, "the gateway did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(30)
