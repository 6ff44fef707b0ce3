"""Call overhead: a routed chat call vs a direct httpx call vs LiteLLM's Router, same loopback backend.

Every contender sends the same chat request (``max_tokens=16``) to the same fast mock
OpenAI-compatible backend (``experiments/mock_backend.py``, its own process, so it shares no GIL
with the client) and parses the answer:

* ``direct httpx``: ``httpx.Client`` / ``AsyncClient`` POST with keep-alive, ``response.json()``
  and the first choice's text: the floor any client pays;
* ``ours static (1 model)``: ``router.chat`` / ``await router.achat`` on a ``static`` route with one
  model; ``ours thompson (3 models)``: on a ``thompson`` route over three models (all three on the
  mock); logging on, into a SQLite file in a temporary folder (rows counted at the end);
* diagnostic (not a target; ``--no-diagnose`` skips it): the static route with its log rows
  dropped before the queue (what logging costs the caller);
* ``LiteLLM Router``: ``Router.completion`` / ``acompletion``, model ``openai/mock`` with
  ``api_base`` = the mock's ``/v1``, a dummy key, one deployment (for ``static``) or a group of three
  (for ``thompson``); ``LITELLM_LOCAL_MODEL_COST_MAP=True``, telemetry, callbacks and message
  logging off. A process-wide audit hook refuses and counts any connection that is not loopback.

Contenders run in interleaved blocks (the order rotating each round) after an untimed warm-up;
each call is timed with ``perf_counter_ns``. "Added" is a contender's median minus direct httpx's
median; its spread is the range of the same difference per round.

Targets (issue 9): our median at most 1.10x direct's, or under 100 µs added; at least 20x less
added latency than LiteLLM's Router.

    .venv/bin/python -m experiments.bench_overhead [--quick] [--out DIR] [--no-diagnose] [--no-litellm]
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .common import interleave, parse_args, savefig, setup_matplotlib, write_csv, write_markdown
from .mock_backend import MockServer

MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
MAX_TOKENS = 16
TARGET_RATIO = 1.10
TARGET_ADDED_US = 100.0
TARGET_VS_LITELLM = 20.0
ROUTES = ("static", "thompson")
ROUTE_LABEL = {"static": "static, 1 model", "thompson": "thompson, 3 models"}
NOLOG = "ours static, log rows dropped (diagnostic)"


_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}
FOREIGN: list[str] = []  # non-loopback connections (or lookups) that were refused
_guard_on = False


def _is_loopback(host: Any) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host)
    return host in _LOOPBACK_NAMES or host.startswith("127.") or host == "" or host.startswith("::ffff:127.")


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect":
        sock, address = args
        if getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            FOREIGN.append(f"connect {address[0]}:{address[1]}")
            raise ConnectionRefusedError(f"benchmark guard: no network outside loopback ({address[0]})")
    elif event == "socket.getaddrinfo" and not _is_loopback(args[0]):
        FOREIGN.append(f"getaddrinfo {args[0]}")
        raise socket.gaierror(f"benchmark guard: no name lookup outside loopback ({args[0]})")


def guard_loopback() -> None:
    """Refuse (and count in FOREIGN) every connection or name lookup outside loopback, process-wide."""
    global _guard_on
    if not _guard_on:
        sys.addaudithook(_audit)
        _guard_on = True


# -- contenders ----------------------------------------------------------------------------------


def router_config(base_url: str, folder: Path) -> dict[str, Any]:
    """Two routes on the mock: ``static`` (one model) and ``thompson`` (three models), logging to SQLite."""
    # generous bounds: on a loaded machine a loopback call can stall for seconds, and a benchmark
    # must measure that, not fail on it
    models = {f"m{i}": {"base_url": base_url, "model": "mock", "timeout_s": 60.0} for i in range(3)}
    return {
        "deadline_s": 120.0,
        "store": f"sqlite:///{folder / 'bench.db'}",
        "journal_dir": str(folder / "journal"),
        "seed": 7,
        "models": models,
        "routes": {
            "static": {"models": ["m0"], "policy": "static"},
            "thompson": {"models": ["m0", "m1", "m2"], "policy": "thompson"},
        },
    }


def load_litellm() -> Any | None:
    """Import litellm with every network-touching extra off, or None when it is not installed."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import litellm
    except ImportError:
        return None
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.turn_off_message_logging = True
    litellm.disable_hf_tokenizer_download = True
    litellm.disable_end_user_cost_tracking = True
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm.callbacks = []
    litellm.set_verbose = False
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return litellm


def litellm_router(litellm: Any, base_url: str) -> Any:
    """LiteLLM Router with a one-deployment group ``static`` and a three-deployment group ``thompson``."""
    from litellm import Router

    def deployment(group: str, i: int) -> dict[str, Any]:
        return {
            "model_name": group,
            "litellm_params": {"model": "openai/mock", "api_base": base_url, "api_key": "sk-bench-dummy"},
            "model_info": {"id": f"{group}-{i}"},
        }

    model_list = [deployment("static", 0)] + [deployment("thompson", i) for i in range(3)]
    return Router(model_list=model_list)


def _text(body: dict[str, Any]) -> str:
    return body["choices"][0]["message"]["content"]


class Contenders:
    """Every contender's one-call function, sync and async, built on one mock backend."""

    def __init__(self, base_url: str, folder: Path, with_litellm: bool = True, diagnose: bool = False) -> None:
        import httpx

        from zeta_adaptive import Router

        self.base_url = base_url
        self.body = {"max_tokens": MAX_TOKENS, "model": "mock", "messages": MESSAGES}
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=30.0)
        self.client = httpx.Client(base_url=base_url + "/", limits=limits, timeout=60.0)
        self._limits = limits
        self.aclient: Any = None
        self.router = Router(router_config(base_url, folder))
        self.litellm = load_litellm() if with_litellm else None
        self.lrouter = litellm_router(self.litellm, base_url) if self.litellm is not None else None
        self.calls = 0  # routed calls made (to check the log afterwards)
        # diagnostic: the same router with its log rows dropped before the queue
        (folder / "nolog").mkdir(parents=True, exist_ok=True)
        self.nolog = None
        if diagnose:
            self.nolog = Router(router_config(base_url, folder / "nolog"))
            self.nolog.store.put_many = lambda items: None  # type: ignore[method-assign]
        self.routers = [r for r in (self.router, self.nolog) if r is not None]
        self.diagnostics = {NOLOG: self.nolog} if self.nolog is not None else {}

    # sync
    def direct(self) -> str:
        return _text(self.client.post("chat/completions", json=self.body).json())

    def ours(self, route: str, router: Any = None) -> Callable[[], str]:
        router = router or self.router
        messages, counted = MESSAGES, router is self.router

        def call() -> str:
            self.calls += counted
            return router.chat(route, messages, max_tokens=MAX_TOKENS).text

        return call

    def peer(self, route: str) -> Callable[[], str]:
        lrouter, messages = self.lrouter, MESSAGES

        def call() -> str:
            return lrouter.completion(model=route, messages=messages, max_tokens=MAX_TOKENS).choices[0].message.content

        return call

    # async (call inside a running loop)
    async def adirect(self) -> str:
        if self.aclient is None:
            import httpx

            self.aclient = httpx.AsyncClient(base_url=self.base_url + "/", limits=self._limits, timeout=60.0)
        return _text((await self.aclient.post("chat/completions", json=self.body)).json())

    def aours(self, route: str, router: Any = None) -> Callable[[], Awaitable[str]]:
        router = router or self.router
        messages, counted = MESSAGES, router is self.router

        async def call() -> str:
            self.calls += counted
            return (await router.achat(route, messages, max_tokens=MAX_TOKENS)).text

        return call

    def apeer(self, route: str) -> Callable[[], Awaitable[str]]:
        lrouter, messages = self.lrouter, MESSAGES

        async def call() -> str:
            return (
                (await lrouter.acompletion(model=route, messages=messages, max_tokens=MAX_TOKENS))
                .choices[0]
                .message.content
            )

        return call

    def sync_table(self) -> dict[str, Callable[[], str]]:
        table: dict[str, Callable[[], str]] = {"direct httpx": self.direct}
        for route in ROUTES:
            table[f"ours {route}"] = self.ours(route)
        for name, router in self.diagnostics.items():
            table[name] = self.ours("static", router)
        if self.lrouter is not None:
            for route in ROUTES:
                table[f"LiteLLM {route}"] = self.peer(route)
        return table

    def async_table(self) -> dict[str, Callable[[], Awaitable[str]]]:
        table: dict[str, Callable[[], Awaitable[str]]] = {"direct httpx": self.adirect}
        for route in ROUTES:
            table[f"ours {route}"] = self.aours(route)
        for name, router in self.diagnostics.items():
            table[name] = self.aours("static", router)
        if self.lrouter is not None:
            for route in ROUTES:
                table[f"LiteLLM {route}"] = self.apeer(route)
        return table

    async def aclose(self) -> None:
        if self.aclient is not None:
            await self.aclient.aclose()
            self.aclient = None
        for router in self.routers:
            await router.backend.aclose()

    def flush(self) -> None:
        for router in self.routers:
            router.flush()

    def close(self) -> int:
        """Close everything; returns the number of calls rows in the log (it must equal self.calls)."""
        self.client.close()
        for router in self.routers:
            router.close()
        from zeta_adaptive import Store

        store = Store(self.router.config.store, journal_dir=self.router.config.journal_dir)
        try:
            return store.count("calls")
        finally:
            store.close()


# -- timing ----------------------------------------------------------------------------------------


def _block(name: str, block: int) -> int:
    """Calls per block: LiteLLM, ten times slower, gets a quarter (its p50 and p99 still rest on hundreds of calls)."""
    return max(5, block // 4) if name.startswith("LiteLLM") else block


def time_sync(
    table: dict[str, Callable[[], str]],
    rounds: int,
    block: int,
    warmup: int,
    desc: str,
    cpu: dict[str, list[float]],
    settle: Callable[[], Any],
) -> dict[str, list[np.ndarray]]:
    """Per-call wall times (ns) per block; ``cpu`` gets each block's process CPU µs per call, counted
    until ``settle()`` (the log flush) returns, so background writing is charged to the block that queued it."""
    for name, fn in table.items():
        for _ in range(_block(name, warmup)):
            assert fn(), "empty answer"
    settle()
    out: dict[str, list[np.ndarray]] = {name: [] for name in table}
    clock = time.perf_counter_ns
    for _, name in tqdm(list(interleave(list(table), rounds)), desc=desc, unit="block"):
        fn = table[name]
        n = _block(name, block)
        ns = np.empty(n, dtype=np.int64)
        c0 = time.process_time_ns()
        for i in range(n):
            t0 = clock()
            fn()
            ns[i] = clock() - t0
        settle()
        cpu.setdefault(name, []).append((time.process_time_ns() - c0) / 1000.0 / n)
        out[name].append(ns)
    return out


async def time_async(
    table: dict[str, Callable[[], Awaitable[str]]],
    rounds: int,
    block: int,
    warmup: int,
    desc: str,
    cpu: dict[str, list[float]],
    settle: Callable[[], Any],
) -> dict[str, list[np.ndarray]]:
    for name, fn in table.items():
        for _ in range(_block(name, warmup)):
            assert await fn(), "empty answer"
    settle()
    out: dict[str, list[np.ndarray]] = {name: [] for name in table}
    clock = time.perf_counter_ns
    for _, name in tqdm(list(interleave(list(table), rounds)), desc=desc, unit="block"):
        fn = table[name]
        n = _block(name, block)
        ns = np.empty(n, dtype=np.int64)
        c0 = time.process_time_ns()
        for i in range(n):
            t0 = clock()
            await fn()
            ns[i] = clock() - t0
        settle()
        cpu.setdefault(name, []).append((time.process_time_ns() - c0) / 1000.0 / n)
        out[name].append(ns)
    return out


def summarise(mode: str, samples: dict[str, list[np.ndarray]], cpu: dict[str, list[float]]) -> list[dict[str, Any]]:
    """One row per contender: p50, p99, mean, per-round spread, added vs direct, client CPU per call (all µs)."""
    base_cpu = float(np.median(cpu["direct httpx"]))
    base = samples["direct httpx"]
    base_all = np.concatenate(base) / 1000.0
    base_p50 = float(np.median(base_all))
    base_rounds = np.array([np.median(b) / 1000.0 for b in base])
    rows = []
    for name, blocks in samples.items():
        us = np.concatenate(blocks) / 1000.0
        rounds = np.array([np.median(b) / 1000.0 for b in blocks])
        added_rounds = rounds - base_rounds
        p50 = float(np.median(us))
        rows.append(
            {
                "mode": mode,
                "contender": name,
                "calls": len(us),
                "p50_us": p50,
                "p99_us": float(np.percentile(us, 99)),
                "mean_us": float(us.mean()),
                "round_p50_min_us": float(rounds.min()),
                "round_p50_max_us": float(rounds.max()),
                "added_p50_us": p50 - base_p50,
                "added_round_min_us": float(added_rounds.min()),
                "added_round_max_us": float(added_rounds.max()),
                "ratio_to_direct": p50 / base_p50,
                "cpu_us": float(np.median(cpu[name])),
                "added_cpu_us": float(np.median(cpu[name])) - base_cpu,
            }
        )
    return rows


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summary rows: per mode and route, ours vs direct, and ours vs LiteLLM (added latency)."""
    by = {(r["mode"], r["contender"]): r for r in rows}
    out = []
    for mode in ("sync", "async"):
        d = by[(mode, "direct httpx")]
        for route in ROUTES:
            o = by[(mode, f"ours {route}")]
            met = o["ratio_to_direct"] <= TARGET_RATIO or o["added_p50_us"] < TARGET_ADDED_US
            out.append(
                {
                    "workload": f"call overhead, {mode}, {ROUTE_LABEL[route]}: p50 vs direct httpx",
                    "ours": f"{o['p50_us']:.0f} µs (p99 {o['p99_us']:.0f}; {o['added_p50_us']:+.0f} µs added, rounds {o['added_round_min_us']:.0f}..{o['added_round_max_us']:.0f})",
                    "peer": f"direct httpx {d['p50_us']:.0f} µs (p99 {d['p99_us']:.0f})",
                    "ratio": f"{o['ratio_to_direct']:.2f}x direct",
                    "target": f"<= {TARGET_RATIO:.2f}x or < {TARGET_ADDED_US:.0f} µs added",
                    "met?": "met" if met else "MISSED",
                }
            )
            p = by.get((mode, f"LiteLLM {route}"))
            if p is None:
                out.append(
                    {
                        "workload": f"added latency, {mode}, {ROUTE_LABEL[route]}: ours vs LiteLLM Router",
                        "ours": f"{o['added_p50_us']:+.0f} µs",
                        "peer": "LiteLLM not installed",
                        "ratio": "–",
                        "target": f">= {TARGET_VS_LITELLM:.0f}x less added",
                        "met?": "not run",
                    }
                )
                continue
            added = o["added_p50_us"]
            times = p["added_p50_us"] / max(added, 1.0)  # below 1 µs added is noise; keeps the ratio finite
            out.append(
                {
                    "workload": f"added latency, {mode}, {ROUTE_LABEL[route]}: ours vs LiteLLM Router",
                    "ours": f"{added:+.0f} µs",
                    "peer": f"LiteLLM +{p['added_p50_us']:.0f} µs (p50 {p['p50_us']:.0f}, p99 {p['p99_us']:.0f})",
                    "ratio": f"{times:.1f}x less" if added >= 1.0 else "ours adds nothing: faster than direct httpx",
                    "target": f">= {TARGET_VS_LITELLM:.0f}x less added",
                    "met?": "met" if times >= TARGET_VS_LITELLM else "MISSED",
                }
            )
    return out


def plot(samples: dict[str, dict[str, list[np.ndarray]]], path: Path) -> None:
    plt = setup_matplotlib()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (mode, by_name) in zip(axes, samples.items()):
        names = list(by_name)
        data = [np.concatenate(by_name[n]) / 1000.0 for n in names]
        parts = ax.boxplot(data, vert=False, whis=(1, 99), showfliers=False, patch_artist=True)
        for patch, name in zip(parts["boxes"], names):
            color = (
                "tab:orange" if name.startswith("LiteLLM") else "tab:gray" if name.startswith("direct") else "tab:blue"
            )
            patch.set_facecolor("white" if "(diagnostic)" in name or "(sketch)" in name else color)
            patch.set_alpha(0.6)
        for i, d in enumerate(data, start=1):
            ax.text(float(np.percentile(d, 99)), i, f"  p50 {np.median(d):.0f}", va="center", fontsize=7)
        ax.set_yticks(range(1, len(names) + 1), names, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("µs per call (box: quartiles, whiskers: p1..p99; log scale)")
        ax.set_title(f"{mode}: one chat call to a loopback mock", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    savefig(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(
        __doc__,
        argv,
        **{
            "--no-litellm": {"action": "store_true", "help": "skip the LiteLLM contender"},
            "--no-diagnose": {"action": "store_true", "help": "skip the two diagnostic contenders"},
        },
    )
    rounds, block, warmup = (2, 10, 5) if args.quick else (20, 100, 200)
    guard_loopback()
    folder = Path(tempfile.mkdtemp(prefix="zeta-bench-overhead-"))
    samples: dict[str, dict[str, list[np.ndarray]]] = {}
    with MockServer() as mock:
        c = Contenders(mock.base_url, folder, with_litellm=not args.no_litellm, diagnose=not args.no_diagnose)
        gc.collect()
        cpu: dict[str, dict[str, list[float]]] = {"sync": {}, "async": {}}
        samples["sync"] = time_sync(c.sync_table(), rounds, block, warmup, "overhead sync", cpu["sync"], c.flush)

        async def run_async() -> dict[str, list[np.ndarray]]:
            try:
                return await time_async(c.async_table(), rounds, block, warmup, "overhead async", cpu["async"], c.flush)
            finally:
                await c.aclose()

        samples["async"] = asyncio.run(run_async())
        logged = c.close()
    rows = summarise("sync", samples["sync"], cpu["sync"]) + summarise("async", samples["async"], cpu["async"])
    write_csv(args.out / "bench_overhead.csv", rows)
    table = verdicts(rows)
    write_csv(args.out / "bench_overhead_summary.csv", table)
    litellm_version = getattr(c.litellm, "__version__", None) or _version("litellm")
    notes = [
        f"Each contender: {rounds} rounds x {block} timed calls (LiteLLM: {_block('LiteLLM', block)}) after {warmup} untimed warm-up calls; "
        "contenders interleaved block by block, the order rotating each round.",
        "Backend: experiments/mock_backend.py in its own process (asyncio, pre-encoded answer, HTTP/1.1 keep-alive) on 127.0.0.1.",
        f"Ours log every call to a SQLite file (WAL) through the background writer: {logged} calls rows found for {c.calls} routed calls.",
        f"LiteLLM {litellm_version or 'not installed'}: Router, model openai/mock, api_base = the mock, LITELLM_LOCAL_MODEL_COST_MAP=True, telemetry/callbacks/message logging off. "
        f"Connections or name lookups outside loopback refused during the run: {len(FOREIGN)}{' (' + ', '.join(sorted(set(FOREIGN))[:5]) + ')' if FOREIGN else ''}.",
        "Added = contender p50 minus direct httpx p50 over all calls; 'rounds a..b' is the range of the same difference per round.",
        f"Diagnostic (not a target): '{NOLOG}' is the same router with its log rows dropped before the queue, so 'ours static' minus it is what logging costs the caller.",
        "cpu_us = client-process CPU time per call (all threads, the log writer included; the backend's process excluded), median over blocks: "
        "less sensitive than wall time to other load on the machine.",
    ]
    detail_cols = [
        "mode",
        "contender",
        "calls",
        "p50_us",
        "p99_us",
        "mean_us",
        "round_p50_min_us",
        "round_p50_max_us",
        "added_p50_us",
        "ratio_to_direct",
        "cpu_us",
        "added_cpu_us",
    ]
    from .common import markdown_table

    write_markdown(
        args.out / "bench_overhead.md",
        "Call overhead: routed call vs direct httpx vs LiteLLM Router",
        list(table[0]),
        table,
        command=args.command,
        sections=[("Every contender (µs)", markdown_table(detail_cols, rows))],
        notes=notes,
        quick=args.quick,
    )
    plot(samples, args.out / "bench_overhead.png")
    if logged != c.calls:
        print(f"WARNING: {c.calls} routed calls but {logged} rows in the log", file=sys.stderr)
    print((args.out / "bench_overhead.md").read_text())
    return {"rows": rows, "summary": table, "out": args.out, "foreign": list(FOREIGN)}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
