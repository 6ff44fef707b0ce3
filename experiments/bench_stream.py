"""Time to first token of a routed stream vs a direct httpx stream, same loopback backend (issue 10).

The backend is ``zeta_adaptive.simulate.Fleet`` with one model (``latency_s=0``, a few tokens) in its
own process, so it shares no GIL with the client being measured. Four contenders, interleaved
(``common.interleave``: the order rotates every round), each after an untimed warm-up:

* ``direct sync``: ``httpx.Client.stream("POST", ".../chat/completions", json={..., "stream": True})``
  with keep-alive, reading lines until the first ``data:`` event whose first choice has a non-empty
  ``delta.content`` (``json.loads`` of each event, as any client must);
* ``routed sync``: ``router.chat("simple", messages, stream=True)``, then ``next()`` on it: a
  one-model ``static`` route, logging to a SQLite file in a temporary folder;
* ``direct async`` and ``routed async``: the same with ``httpx.AsyncClient`` and
  ``await router.achat(..., stream=True)`` / ``anext``, on one persistent event loop.

Time to first token (TTFT) runs from just before the request is built (``router.chat`` or
``client.stream``) to the moment the first text delta is in the caller's hands, with
``perf_counter_ns``. The rest of each stream is then read, untimed (so connections are reused and
the routed call is logged), and ``router.flush()`` waits for the log writer, untimed, so that no
contender is measured while the writer thread works on an earlier call's rows. "Added" is the
routed median minus the direct median of the same mode; its 95% interval is a bootstrap over the
samples. Median-of-paired-differences (same round) is shown too.

The verdict is "met" when the median added time and its whole 95% interval are under the target,
"MISSED" when the median is not, else "inconclusive". Unless met, a cProfile of the routed path up to the first token
(and of the direct path, for comparison) is written to bench_stream_profile.md and summarised in
the report: where the time goes, by file:function.

Target (issue 10): under 100 µs added at the median.

    .venv/bin/python -m experiments.bench_stream [--rounds N] [--quick] [--out DIR] [--profile]

Outputs: bench_stream.csv (one row per contender), bench_stream_samples.csv (every timed sample),
bench_stream.md, bench_stream.png, and bench_stream_profile.md when profiled.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import json
import pstats
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import FleetProcess

MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
MAX_TOKENS = 8
MODEL = "m"
TARGET_US = 100.0
CONTENDERS = ("direct sync", "routed sync", "direct async", "routed async")
PAIRS = (("sync", "direct sync", "routed sync"), ("async", "direct async", "routed async"))


# == the contenders ================================================================================


def _first_delta(line: str) -> str | None:
    """The text of an event line's first choice delta, if it has any (what a direct client parses)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return None
    choices = json.loads(data).get("choices") or []
    return (choices[0].get("delta") or {}).get("content") or None if choices else None


class Contenders:
    """The four ways to get a first token, each returning (TTFT ns, this thread's CPU ns until then, first delta)."""

    def __init__(self, url: str, db_dir: Path) -> None:
        import httpx

        from zeta_adaptive import Router

        self.url = url
        self.body = {"max_tokens": MAX_TOKENS, "model": MODEL, "messages": MESSAGES, "stream": True}
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=8, keepalive_expiry=30.0)
        headers = {"Content-Type": "application/json"}
        self.client = httpx.Client(base_url=url + "/", headers=headers, limits=limits, timeout=10.0)
        self.aclient = httpx.AsyncClient(base_url=url + "/", headers=headers, limits=limits, timeout=10.0)
        config = {
            "store": f"sqlite:///{db_dir / 'zeta.db'}",
            "journal_dir": str(db_dir / "journal"),
            "models": {MODEL: {"base_url": url, "timeout_s": 10.0, "max_in_flight": 8}},
            "routes": {"simple": {"models": [MODEL], "policy": "static"}},
        }
        self.router = Router(config)
        self.loop = asyncio.new_event_loop()
        self.calls = 0  # routed calls made (for the row check)

    # -- sync --
    def direct_sync(self) -> tuple[int, int, str]:
        clock, cpu = time.perf_counter_ns, time.thread_time_ns
        c0, t0 = cpu(), clock()
        with self.client.stream("POST", "chat/completions", json=self.body) as response:
            lines = response.iter_lines()
            for line in lines:
                delta = _first_delta(line)
                if delta:
                    t1, c1 = clock(), cpu()
                    break
            else:
                raise RuntimeError("the direct stream ended without a content delta")
            for _ in lines:  # the rest, untimed
                pass
        return t1 - t0, c1 - c0, delta

    def routed_sync(self) -> tuple[int, int, str]:
        clock, cpu = time.perf_counter_ns, time.thread_time_ns
        c0, t0 = cpu(), clock()
        stream = self.router.chat("simple", MESSAGES, stream=True, max_tokens=MAX_TOKENS)
        items = iter(stream)
        delta = next(items)
        t1, c1 = clock(), cpu()
        for _ in items:
            pass
        stream.result  # noqa: B018 - raises if the stream did not finish
        self.calls += 1
        return t1 - t0, c1 - c0, delta

    # -- async --
    async def _direct_async(self) -> tuple[int, int, str]:
        clock, cpu = time.perf_counter_ns, time.thread_time_ns
        c0, t0 = cpu(), clock()
        async with self.aclient.stream("POST", "chat/completions", json=self.body) as response:
            lines = response.aiter_lines()
            async for line in lines:
                delta = _first_delta(line)
                if delta:
                    t1, c1 = clock(), cpu()
                    break
            else:
                raise RuntimeError("the direct stream ended without a content delta")
            async for _ in lines:
                pass
        return t1 - t0, c1 - c0, delta

    async def _routed_async(self) -> tuple[int, int, str]:
        clock, cpu = time.perf_counter_ns, time.thread_time_ns
        c0, t0 = cpu(), clock()
        stream = await self.router.achat("simple", MESSAGES, stream=True, max_tokens=MAX_TOKENS)
        items = aiter(stream)
        delta = await anext(items)
        t1, c1 = clock(), cpu()
        async for _ in items:
            pass
        stream.result  # noqa: B018
        self.calls += 1
        return t1 - t0, c1 - c0, delta

    def direct_async(self) -> tuple[int, int, str]:
        return self.loop.run_until_complete(self._direct_async())

    def routed_async(self) -> tuple[int, int, str]:
        return self.loop.run_until_complete(self._routed_async())

    def table(self) -> dict[str, Callable[[], tuple[int, int, str]]]:
        return {
            "direct sync": self.direct_sync,
            "routed sync": self.routed_sync,
            "direct async": self.direct_async,
            "routed async": self.routed_async,
        }

    def settle(self) -> None:
        """Untimed, between samples: the log writer has written every row so far."""
        self.router.flush(30)

    def close(self) -> None:
        self.loop.run_until_complete(self.router.aclose())
        self.loop.run_until_complete(self.aclient.aclose())
        self.loop.close()
        self.client.close()


# == measuring =====================================================================================


def measure(c: Contenders, rounds: int, warmup: int) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Wall-clock TTFT samples and the calling thread's CPU time to the first token, per contender (ns)."""
    from tqdm import tqdm

    from .common import interleave

    table = c.table()
    for fn in table.values():  # untimed warm-up: pools, imports, caches, policy batches
        for _ in range(warmup):
            fn()
            c.settle()
    samples: dict[str, list[int]] = {name: [] for name in table}
    cpu: dict[str, list[int]] = {name: [] for name in table}
    gc.collect()
    with tqdm(total=rounds * len(table), desc="stream TTFT", unit="stream", mininterval=0.5) as bar:
        for _, name in interleave(list(table), rounds):
            ns, cpu_ns, delta = table[name]()
            if not delta:
                raise RuntimeError(f"{name}: empty first delta")
            samples[name].append(ns)
            cpu[name].append(cpu_ns)
            c.settle()
            bar.update(1)
    return samples, cpu


def profile_paths(c: Contenders, n: int) -> dict[str, str]:
    """cProfile of each contender up to its first token only (the profiler is on from the request
    to the first delta, off for the rest of the stream); returns the printed stats per contender."""
    out = {}
    for name in CONTENDERS:
        prof = cProfile.Profile()
        for _ in range(n):
            if name == "routed sync":
                prof.enable()
                stream = c.router.chat("simple", MESSAGES, stream=True, max_tokens=MAX_TOKENS)
                items = iter(stream)
                next(items)
                prof.disable()
                for _ in items:
                    pass
                c.calls += 1
            elif name == "routed async":

                async def routed(prof: cProfile.Profile = prof) -> None:
                    prof.enable()
                    stream = await c.router.achat("simple", MESSAGES, stream=True, max_tokens=MAX_TOKENS)
                    items = aiter(stream)
                    await anext(items)
                    prof.disable()
                    async for _ in items:
                        pass

                c.loop.run_until_complete(routed())
                c.calls += 1
            elif name == "direct sync":
                prof.enable()
                with c.client.stream("POST", "chat/completions", json=c.body) as response:
                    lines = response.iter_lines()
                    for line in lines:
                        if _first_delta(line):
                            break
                    prof.disable()
                    for _ in lines:
                        pass
            else:

                async def direct(prof: cProfile.Profile = prof) -> None:
                    prof.enable()
                    async with c.aclient.stream("POST", "chat/completions", json=c.body) as response:
                        lines = response.aiter_lines()
                        async for line in lines:
                            if _first_delta(line):
                                break
                        prof.disable()
                        async for _ in lines:
                            pass

                c.loop.run_until_complete(direct())
            c.settle()
        for kind, key in (("tottime", "tottime"), ("cumulative", "cumulative")):
            buf = io.StringIO()
            stats = pstats.Stats(prof, stream=buf)
            stats.sort_stats(key).print_stats(30)
            out[f"{name} ({kind})"] = buf.getvalue()
        out[f"{name}::stats"] = prof  # type: ignore[assignment]
    return out


def _zeta_rows(prof: cProfile.Profile, calls: int) -> list[dict[str, Any]]:
    """Per zeta_adaptive function on the profiled path: calls, own and cumulative µs per stream (under cProfile)."""
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "zeta_adaptive" in file:
            short = file[file.index("zeta_adaptive") :]
            rows.append(
                {
                    "function": f"{short}:{line}:{func}",
                    "calls_per_stream": ncalls / calls,
                    "own_us": 1e6 * tottime / calls,
                    "cum_us": 1e6 * cumtime / calls,
                }
            )
    rows.sort(key=lambda r: -r["own_us"])
    return rows


# == statistics and outputs ========================================================================


def _pct(ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(ns, dtype=float) / 1000.0, q))


def _boot_ci(a: list[int], b: list[int], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of median(b) - median(a), in µs."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(a, dtype=float) / 1000.0, np.asarray(b, dtype=float) / 1000.0
    diffs = np.median(rng.choice(y, (reps, len(y))), axis=1) - np.median(rng.choice(x, (reps, len(x))), axis=1)
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def summarise(
    samples: dict[str, list[int]], cpu: dict[str, list[int]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows = []
    for name in CONTENDERS:
        ns = samples[name]
        rows.append(
            {
                "contender": name,
                "samples": len(ns),
                "median_us": _pct(ns, 50),
                "p90_us": _pct(ns, 90),
                "p99_us": _pct(ns, 99),
                "mean_us": float(np.mean(ns)) / 1000.0,
                "min_us": min(ns) / 1000.0,
                "cpu_median_us": _pct(cpu[name], 50),
            }
        )
    by = {r["contender"]: r for r in rows}
    added = []
    for mode, direct, routed in PAIRS:
        lo, hi = _boot_ci(samples[direct], samples[routed])
        k = min(len(samples[direct]), len(samples[routed]))
        paired = (np.asarray(samples[routed][:k], dtype=float) - np.asarray(samples[direct][:k], dtype=float)) / 1000.0
        med_added = by[routed]["median_us"] - by[direct]["median_us"]
        added.append(
            {
                "mode": mode,
                "direct_median_us": by[direct]["median_us"],
                "routed_median_us": by[routed]["median_us"],
                "added_median_us": med_added,
                "added_ci_lo_us": lo,
                "added_ci_hi_us": hi,
                "added_paired_median_us": float(np.median(paired)),
                "direct_p99_us": by[direct]["p99_us"],
                "routed_p99_us": by[routed]["p99_us"],
                "added_p99_us": by[routed]["p99_us"] - by[direct]["p99_us"],
                "ratio_median": by[routed]["median_us"] / by[direct]["median_us"],
                "added_cpu_median_us": by[routed]["cpu_median_us"] - by[direct]["cpu_median_us"],
                "target_us": TARGET_US,
                # met: the median added time and its whole 95% interval are under the target; MISSED: the median is not
                "met": "MISSED" if med_added >= TARGET_US else ("met" if hi < TARGET_US else "inconclusive"),
            }
        )
    return rows, added


def plot(samples: dict[str, list[int]], path: Path) -> None:
    from .common import savefig, setup_matplotlib

    plt = setup_matplotlib()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, (mode, direct, routed) in zip(axes, PAIRS, strict=True):
        for name in (direct, routed):
            us = np.sort(np.asarray(samples[name], dtype=float) / 1000.0)
            ax.plot(us, np.arange(1, len(us) + 1) / len(us), label=f"{name} (median {np.median(us):.0f} µs)")
        hi = max(np.percentile(np.asarray(samples[n], dtype=float) / 1000.0, 99.5) for n in (direct, routed))
        ax.set_xlim(0, hi)
        ax.set_xlabel("time to first token, µs")
        ax.set_ylabel("share of streams")
        ax.set_title(f"{mode}: TTFT distribution (loopback, latency 0)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    savefig(fig, path)


def write_outputs(
    args: Any,
    samples: dict[str, list[int]],
    cpu: dict[str, list[int]],
    rows: list[dict[str, Any]],
    added: list[dict[str, Any]],
    extra: dict[str, Any],
) -> None:
    from .common import fmt, markdown_table, write_csv, write_markdown

    out = args.out
    write_csv(out / "bench_stream.csv", rows + [{"contender": f"added ({a['mode']})", **a} for a in added])
    long = [
        {"contender": name, "i": i, "ttft_us": ns / 1000.0, "cpu_us": cpu[name][i] / 1000.0}
        for name in CONTENDERS
        for i, ns in enumerate(samples[name])
    ]
    write_csv(out / "bench_stream_samples.csv", long)
    plot(samples, out / "bench_stream.png")
    head = []
    for a in added:
        head.append(
            {
                "workload": f"stream TTFT, {a['mode']}, median (added µs, 95% CI {fmt(a['added_ci_lo_us'])}..{fmt(a['added_ci_hi_us'])})",
                "ours": fmt(a["routed_median_us"]),
                "peer": fmt(a["direct_median_us"]),
                "ratio": fmt(a["ratio_median"]),
                "added": fmt(a["added_median_us"]),
                "target": f"< {TARGET_US:g} µs added",
                "met?": a["met"],
            }
        )
        head.append(
            {
                "workload": f"stream TTFT, {a['mode']}, p99",
                "ours": fmt(a["routed_p99_us"]),
                "peer": fmt(a["direct_p99_us"]),
                "ratio": fmt(a["routed_p99_us"] / a["direct_p99_us"]),
                "added": fmt(a["added_p99_us"]),
                "target": "(reference)",
                "met?": "–",
            }
        )
    columns = [
        "workload",
        "ours (routed, µs)",
        "peer (direct httpx, µs)",
        "ratio (ours / peer)",
        "added (µs)",
        "target",
        "met?",
    ]
    table = [[r["workload"], r["ours"], r["peer"], r["ratio"], r["added"], r["target"], r["met?"]] for r in head]
    sections = [
        (
            "Per contender (µs)",
            markdown_table(
                ["contender", "samples", "median_us", "p90_us", "p99_us", "mean_us", "min_us", "cpu_median_us"], rows
            ),
        ),
        (
            "Added time",
            markdown_table(
                [
                    "mode",
                    "added_median_us",
                    "added_ci_lo_us",
                    "added_ci_hi_us",
                    "added_paired_median_us",
                    "added_p99_us",
                    "added_cpu_median_us",
                ],
                added,
            )
            + "\n\n`added_cpu_median_us`: the calling thread's CPU time to the first token (`time.thread_time_ns`), routed minus direct: "
            "the work the router adds, nearly free of the scheduling noise of a shared machine.",
        ),
    ]
    if extra.get("profile_rows"):
        parts = [
            f"cProfile of {extra['profile_n']} streams per contender, the profiler on from the request to the first delta only "
            "(µs per stream under the profiler, which inflates small functions; the full listings are in bench_stream_profile.md).",
            "",
        ]
        for mode, table_rows in extra["profile_rows"].items():
            parts += [
                f"**{mode}**: zeta_adaptive functions on the path to the first token, by own time",
                "",
                markdown_table(["function", "calls_per_stream", "own_us", "cum_us"], table_rows[:12]),
                "",
            ]
        parts += [f"Profiled TTFT totals (µs per stream, under cProfile): {extra['profile_totals']}"]
        sections.append(("Where the time goes", "\n".join(parts)))
    sections.append(("Plot", "![TTFT distributions](bench_stream.png)"))
    notes = [
        "Backend: `simulate.Fleet`, one model, latency_s 0, 4 completion tokens (the first event carries the first delta), "
        "ThreadingHTTPServer on loopback, in its own process.",
        f"Router: one-model `static` route, SQLite log in a temporary folder (rows checked: {extra['rows']['calls']} calls rows "
        f"for {extra['routed_calls']} routed calls), no validators; `max_tokens` {MAX_TOKENS}.",
        f"{args.rounds} interleaved rounds (the order rotating each round) after {args.warmup} untimed warm-up streams per contender; "
        "each sample followed by an untimed `router.flush()` so that no sample shares the GIL with the log writer.",
        "TTFT: `perf_counter_ns` from just before `router.chat`/`achat` or `client.stream` to the first non-empty text delta in hand. "
        "Direct clients parse every event line with `json.loads`, as the router does.",
        "The machine is shared with other jobs (see load_avg below): medians are robust to it; p99s are not.",
    ]
    write_markdown(
        out / "bench_stream.md",
        "Streaming: time to first token, routed vs direct (issue 10)",
        columns,
        table,
        command=args.command,
        notes=notes,
        sections=sections,
        quick=args.quick,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from .common import parse_args

    args = parse_args(
        __doc__,
        argv,
        **{
            "--rounds": {
                "type": int,
                "default": None,
                "help": "timed streams per contender (default 3,000; 100 with --quick)",
            },
            "--warmup": {
                "type": int,
                "default": None,
                "help": "untimed streams per contender first (default 200; 10 with --quick)",
            },
            "--profile": {
                "action": "store_true",
                "help": "profile the paths to the first token even if the target is met",
            },
        },
    )
    args.rounds = args.rounds or (100 if args.quick else 3000)
    args.warmup = args.warmup or (10 if args.quick else 200)
    tmp = Path(tempfile.mkdtemp(prefix="zeta-bench-stream-"))
    extra: dict[str, Any] = {}
    spec = {"name": MODEL, "latency_s": 0.0, "latency_sigma": 0.0, "tokens_out": 4}
    with FleetProcess([spec]) as backend:
        c = Contenders(backend.urls[MODEL], tmp)
        try:
            samples, cpu = measure(c, args.rounds, args.warmup)
            rows, added = summarise(samples, cpu)
            if args.profile or not all(a["met"] == "met" for a in added):
                n = 20 if args.quick else 1000
                prof = profile_paths(c, n)
                parts = [
                    f"# bench_stream: cProfile listings ({n} streams per contender, up to the first token)",
                    "",
                    f"- command: `{args.command}`",
                    "",
                ]
                for k, v in prof.items():
                    if not k.endswith("::stats"):
                        parts += [f"## {k}", "", "```", v.strip(), "```", ""]
                (args.out / "bench_stream_profile.md").write_text("\n".join(parts), encoding="utf-8")
                extra["profile_n"] = n
                extra["profile_rows"] = {m: _zeta_rows(prof[f"routed {m}::stats"], n) for m in ("sync", "async")}
                totals = {}
                for name in CONTENDERS:
                    st = pstats.Stats(prof[f"{name}::stats"])
                    totals[name] = round(1e6 * st.total_tt / n)  # type: ignore[attr-defined]
                extra["profile_totals"] = ", ".join(f"{k} {v}" for k, v in totals.items())
            c.settle()
            extra["routed_calls"] = c.calls
        finally:
            c.close()
    extra["rows"] = {"calls": _count(tmp)}
    shutil.rmtree(tmp, ignore_errors=True)
    write_outputs(args, samples, cpu, rows, added, extra)
    print((args.out / "bench_stream.md").read_text())
    return {"rows": rows, "added": added, "out": args.out}


def _count(folder: Path) -> int:
    import sqlite3

    con = sqlite3.connect(folder / "zeta.db")
    try:
        return int(con.execute("SELECT count(*) FROM calls").fetchone()[0])
    finally:
        con.close()


if __name__ == "__main__":
    main()
