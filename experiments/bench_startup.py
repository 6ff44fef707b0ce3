"""Import and start-up: ``import zeta_adaptive``, and opening a Router on a 1M-attempt SQLite log.

* Import: each sample is a fresh interpreter (``python -c``) timing ``import zeta_adaptive`` (the
  public names load on first use) and, separately, ``from zeta_adaptive import Router`` (what a
  router needs: numpy, httpx, SQLAlchemy; not pandas), with ``perf_counter`` around the statement
  alone; ``import litellm`` (with ``LITELLM_LOCAL_MODEL_COST_MAP=True``) is timed the same way in
  the same run, interleaved, as the reference. ``--baseline-src DIR`` also times both statements
  with ``PYTHONPATH=DIR`` (a checkout of an earlier revision), interleaved. ``-X importtime`` of one
  more fresh ``from zeta_adaptive import Router`` names the heaviest modules. Target (issue 16):
  ``import zeta_adaptive`` under 0.2 s.
* Warm start: a SQLite log of 1,000,000 attempts (about 800,000 calls, 30% of them with feedback,
  3 task types x 3 models) is built once with SQLAlchemy Core ``executemany`` (then its rollups
  are rebuilt, as the store's writer would have kept them) and cached in the
  temporary folder (``zeta-bench-cache/``, keyed by size, seed and schema revision). Each sample is
  a fresh interpreter that imports the package, then times ``Router(config)`` on that log:
  ``warm_start=True`` (the default: it rebuilds every policy from the log) and, for reference,
  ``warm_start=False`` (open the store and nothing else). Interleaved; median and range. Target
  (issue 16): ``Router()`` with its warm start under 2 s.

LiteLLM's import is the reference.

    .venv/bin/python -m experiments.bench_startup [--quick] [--out DIR] [--baseline-src DIR]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .common import ROOT, interleave, markdown_table, parse_args, savefig, setup_matplotlib, write_csv, write_markdown

TASKS = ("code", "simple", "reasoning")
MODELS = ("coder-7b", "general-7b", "reasoner-14b")
CACHE = Path(tempfile.gettempdir()) / "zeta-bench-cache"

IMPORT_SNIPPET = "import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
IMPORTS = {
    "import zeta_adaptive": "import zeta_adaptive",
    "from zeta_adaptive import Router": "from zeta_adaptive import Router",
}
BASELINE = " (baseline)"
TARGET_IMPORT_S = 0.2
CPU = ", CPU seconds of the process"
TARGET_WARM_S = 2.0  # issue 16: Router() with its warm start on the 1M-attempt log
OPEN_SNIPPET = """
import json, sys, time, tempfile
import zeta_adaptive
cfg = json.loads(sys.argv[1])
cfg["journal_dir"] = tempfile.mkdtemp(prefix="zeta-bench-journal-")
warm = sys.argv[2] == "1"
t, c = time.perf_counter(), time.process_time()
router = zeta_adaptive.Router(cfg, warm_start=warm)
elapsed, cpu = time.perf_counter() - t, time.process_time() - c
n = sum(p.stats[0].sum() for p in router.policies.values())
router.close()
print(json.dumps({"seconds": elapsed, "cpu_seconds": cpu, "learned_attempts": float(n)}))
"""


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(extra or {})
    return env


def time_import(statement: str, pythonpath: Path = ROOT) -> float:
    """Seconds for ``statement`` in a fresh interpreter, start-up excluded. The package comes from
    ``pythonpath`` (this checkout by default), run from the temporary folder so the working
    directory cannot shadow it."""
    given = os.environ.get("PYTHONPATH")  # e.g. where a peer is installed: kept, after the package's own path
    extra = {"PYTHONPATH": os.pathsep.join([str(pythonpath), *([given] if given else [])])}
    if "litellm" in statement:
        extra.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"})
    snippet = IMPORT_SNIPPET.format(statement=statement)
    out = subprocess.run(
        [sys.executable, "-c", snippet],
        capture_output=True,
        text=True,
        env=_env(extra),
        cwd=tempfile.gettempdir(),
        timeout=300,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def import_profile(statement: str, top: int = 8) -> list[dict[str, Any]]:
    """The top-level packages with the largest cumulative import time in one fresh ``-X importtime`` run
    (a package's figure includes what it imported first, so nested figures overlap)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=True,
    )
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line[len("import time:") :].split("|")
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        rows.append(
            {
                "module": name.strip(),
                "depth": depth,
                "self_ms": int(self_us) / 1000,
                "cumulative_ms": int(cum_us) / 1000,
            }
        )
    packages = sorted(
        (r for r in rows if "." not in r["module"]), key=lambda r: -r["cumulative_ms"]
    )  # first import of each package
    return packages[:top]


def build_log(path: Path, attempts: int, seed: int) -> dict[str, int]:
    """A realistic log with ``attempts`` attempts rows, bulk-inserted with Core executemany (rows as
    tuples through ``exec_driver_sql``, 50,000 calls per transaction), its rollups rebuilt, then cached."""
    from zeta_adaptive import TABLES, Store

    tmp = path.with_suffix(".building")
    for p in (tmp, Path(str(tmp) + "-wal"), Path(str(tmp) + "-shm")):
        p.unlink(missing_ok=True)
    store = Store(f"sqlite:///{tmp}", journal_dir=tempfile.mkdtemp(prefix="zeta-bench-journal-"))  # creates the schema
    engine = store.engine
    cols = {
        "calls": [
            "call_id",
            "ts",
            "task_type",
            "policy",
            "propensity",
            "ranking",
            "model",
            "outcome",
            "latency_s",
            "tokens_in",
            "tokens_out",
            "cost",
            "n_attempts",
        ],
        "attempts": [
            "call_id",
            "idx",
            "ts",
            "task_type",
            "model",
            "outcome",
            "status",
            "latency_s",
            "tokens_in",
            "tokens_out",
            "cost",
            "error",
        ],
        "feedback": ["call_id", "ts", "task_type", "model", "accuracy"],
    }
    # columns of newer schema revisions: a router id where the table has one; the rest stay NULL
    extra = {name: ("router_id" in TABLES[name].columns) for name in cols}
    sql = {
        name: f"INSERT INTO {name} ({', '.join(c + (['router_id'] if extra[name] else []))}) VALUES ({', '.join('?' for _ in c + (['router_id'] if extra[name] else []))})"
        for name, c in cols.items()
    }
    rid = ("0123456789abcdef",)
    rng = np.random.default_rng(seed)
    counts = {"calls": 0, "attempts": 0, "feedback": 0}
    ts0 = time.time() - attempts * 0.5
    orders = [[MODELS[(f + j) % 3] for j in range(3)] for f in range(3)]
    rankings = [json.dumps(o) for o in orders]
    rc, ra, rf = (rid if extra[name] else () for name in ("calls", "attempts", "feedback"))
    with tqdm(
        total=attempts, desc=f"building {attempts:,}-attempt log (cached)", unit="attempt", unit_scale=True
    ) as bar:
        while counts["attempts"] < attempts:
            n = 50_000
            k = rng.choice([1, 2, 3], size=n, p=[0.80, 0.15, 0.05])
            task = rng.integers(0, 3, size=n).tolist()
            first = rng.integers(0, 3, size=n).tolist()
            lat = rng.lognormal(np.log(0.4), 0.5, size=(n, 3)).tolist()
            rated = (rng.random(n) < 0.3).tolist()
            acc = rng.beta(8, 3, size=n).tolist()
            c_rows, a_rows, f_rows = [], [], []
            left = attempts - counts["attempts"]
            for i in range(n):
                if len(a_rows) >= left:
                    break
                call_id = f"{seed:08x}{counts['calls'] + i:024x}"  # unique, in time order: appends to the key's B-tree
                kk = min(int(k[i]), left - len(a_rows))
                order = orders[first[i]]
                t = ts0 + (counts["calls"] + i) * 0.5
                tt = TASKS[task[i]]
                li = lat[i]
                for j in range(kk - 1):
                    a_rows.append(
                        (
                            call_id,
                            j,
                            t + 0.3 * j,
                            tt,
                            order[j],
                            "server_error",
                            500,
                            li[j],
                            120,
                            0,
                            0.0,
                            "simulated internal error",
                            *ra,
                        )
                    )
                a_rows.append(
                    (
                        call_id,
                        kk - 1,
                        t + 0.3 * (kk - 1),
                        tt,
                        order[kk - 1],
                        "ok",
                        200,
                        li[kk - 1],
                        120,
                        48,
                        0.00021,
                        None,
                        *ra,
                    )
                )
                c_rows.append(
                    (
                        call_id,
                        t,
                        tt,
                        "thompson",
                        0.6,
                        rankings[first[i]],
                        order[kk - 1],
                        "ok",
                        sum(li[:kk]),
                        120 * kk,
                        48,
                        0.00021,
                        kk,
                        *rc,
                    )
                )
                if rated[i]:
                    f_rows.append((call_id, t + 5.0, tt, order[kk - 1], acc[i], *rf))
            with engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA synchronous=OFF")  # a cache we can rebuild: no need to sync
                conn.exec_driver_sql(sql["calls"], c_rows)
                conn.exec_driver_sql(sql["attempts"], a_rows)
                if f_rows:
                    conn.exec_driver_sql(sql["feedback"], f_rows)
            counts["calls"] += len(c_rows)
            counts["attempts"] += len(a_rows)
            counts["feedback"] += len(f_rows)
            bar.update(len(a_rows))
    t_rollups = time.perf_counter()
    store.rebuild_rollups()  # the rows went around the writer, which keeps the rollups the warm start reads
    counts["rollup_ms"] = round((time.perf_counter() - t_rollups) * 1000)
    store.close()
    with engine.connect() as conn:  # fold the WAL into the file before it is cached
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    tmp.rename(path)
    for suffix in ("-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    path.with_suffix(".json").write_text(json.dumps(counts))
    return counts


def cached_log(attempts: int, seed: int) -> tuple[Path, dict[str, int], bool]:
    """The cached log for this size, seed and schema revision, built when missing; (path, counts, built now)."""
    from zeta_adaptive import head_revision

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"log-{attempts}-s{seed}-{head_revision() or 'none'}.db"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return path, json.loads(meta.read_text()), False
    return path, build_log(path, attempts, seed), True


def router_config(path: Path) -> dict[str, Any]:
    models = {m: {"base_url": "http://127.0.0.1:9/v1", "timeout_s": 5.0} for m in MODELS}
    routes = {t: {"models": list(MODELS), "policy": "thompson"} for t in TASKS}
    return {"store": f"sqlite:///{path}", "models": models, "routes": routes, "seed": 1}


def time_open(cfg: dict[str, Any], warm: bool) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", OPEN_SNIPPET, json.dumps(cfg), "1" if warm else "0"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ms(row: dict[str, float]) -> str:
    return f"{row['median_s'] * 1000:.0f} ms ({row['min_s'] * 1000:.0f}..{row['max_s'] * 1000:.0f})"


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "median_s": float(np.median(values)),
        "min_s": float(min(values)),
        "max_s": float(max(values)),
        "samples": len(values),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(
        __doc__,
        argv,
        **{
            "--baseline-src": {
                "type": Path,
                "default": None,
                "help": "an earlier checkout whose imports to time alongside",
            }
        },
    )
    import_rounds, open_rounds, size = (2, 1, 20_000) if args.quick else (9, 5, 1_000_000)
    have_litellm = _has("litellm")

    t_build = time.perf_counter()
    log_path, counts, built = cached_log(size, args.seed)
    build_s = time.perf_counter() - t_build
    cfg = router_config(log_path)

    statements = {name: (statement, ROOT) for name, statement in IMPORTS.items()}
    if args.baseline_src:
        statements.update(
            {name + BASELINE: (statement, args.baseline_src.resolve()) for name, statement in IMPORTS.items()}
        )
    if have_litellm:
        statements["import litellm"] = ("import litellm", ROOT)
    imports: dict[str, list[float]] = {}
    for _, name in tqdm(
        list(interleave(list(statements), import_rounds)), desc="import (fresh interpreters)", unit="run"
    ):
        imports.setdefault(name, []).append(time_import(*statements[name]))
    opens: dict[str, list[float]] = {}
    learned = 0.0
    variants = {"warm start (default)": True, "no warm start (reference)": False}
    for _, name in tqdm(
        list(interleave(list(variants), open_rounds)), desc=f"Router() on a {size:,}-attempt log", unit="run"
    ):
        res = time_open(cfg, variants[name])
        opens.setdefault(name, []).append(res["seconds"])
        opens.setdefault(name + CPU, []).append(res["cpu_seconds"])  # all threads: less noisy under load
        if variants[name]:
            learned = res["learned_attempts"]
    profile = import_profile(IMPORTS["from zeta_adaptive import Router"])

    rows = []
    for name, vals in imports.items():
        rows.append({"measure": name, **_stats(vals)})
    for name, vals in opens.items():
        rows.append({"measure": f"Router() on {counts['attempts']:,}-attempt SQLite log, {name}", **_stats(vals)})
    write_csv(args.out / "bench_startup.csv", rows)
    by = {r["measure"]: r for r in rows}
    peer = by.get("import litellm")
    summary = []
    for name in IMPORTS:
        ours, before = by[name], by.get(name + BASELINE)
        met = ours["median_s"] < TARGET_IMPORT_S
        summary.append(
            {
                "workload": f"{name} (fresh interpreter)",
                "ours": f"{_ms(ours)}" + (f"; baseline {_ms(before)}" if before else ""),
                "peer": f"import litellm {_ms(peer)}" if peer else "LiteLLM not installed",
                "ratio": f"{peer['median_s'] / ours['median_s']:.1f}x faster" if peer else "–",
                "target": f"< {TARGET_IMPORT_S * 1000:.0f} ms"
                if name == "import zeta_adaptive"
                else "reference (no target)",
                "met?": ("met" if met else "MISSED") if name == "import zeta_adaptive" else "–",
            }
        )
    warm_key = f"Router() on {counts['attempts']:,}-attempt SQLite log, warm start (default)"
    cold_key = f"Router() on {counts['attempts']:,}-attempt SQLite log, no warm start (reference)"
    warm, cold = by[warm_key], by[cold_key]
    summary.append(
        {
            "workload": f"open a Router on a {counts['attempts']:,}-attempt SQLite log (warm start)",
            "ours": f"{warm['median_s']:.2f} s ({warm['min_s']:.2f}..{warm['max_s']:.2f}); CPU {by[warm_key + CPU]['median_s']:.2f} s",
            "peer": f"same Router without warm start {cold['median_s']:.2f} s; CPU {by[cold_key + CPU]['median_s']:.2f} s",
            "ratio": f"{warm['median_s'] - cold['median_s']:+.2f} s to rebuild",
            "target": f"< {TARGET_WARM_S:g} s",
            "met?": "met" if warm["median_s"] < TARGET_WARM_S else "MISSED",
        }
    )
    write_csv(args.out / "bench_startup_summary.csv", summary)
    notes = [
        f"Import: {import_rounds} fresh interpreters per statement, interleaved; perf_counter around the import statement only (interpreter start excluded). "
        "LiteLLM with LITELLM_LOCAL_MODEL_COST_MAP=True (no download of the price map).",
        f"Log: {counts['calls']:,} calls, {counts['attempts']:,} attempts, {counts['feedback']:,} feedback rows; 3 task types x 3 models, thompson routes. "
        f"{'Built in this run' if built else 'Taken from the cache'} ({build_s:.1f} s): {log_path}; "
        f"its hourly rollups of attempts and ratings (which the warm start reads, scanning only the rows after the last whole hour) "
        f"were rebuilt from the rows in {counts.get('rollup_ms', 0) / 1000:.1f} s after the bulk load (from the cache: the time when it was built).",
        f"Open: {open_rounds} fresh interpreters per variant, interleaved; the package is imported before the clock starts. "
        f"The warm-started policies hold {learned:,.0f} attempts between them (it must equal the log's attempts).",
    ]
    write_markdown(
        args.out / "bench_startup.md",
        "Import and start-up",
        list(summary[0]),
        summary,
        command=args.command,
        sections=[
            ("Every measure (seconds)", markdown_table(list(rows[0]), rows)),
            (
                "Heaviest packages in from zeta_adaptive import Router (one -X importtime run, cumulative ms, nested)",
                markdown_table(["module", "self_ms", "cumulative_ms"], profile),
            ),
        ],
        notes=notes,
        quick=args.quick,
    )
    _plot(rows, args.out / "bench_startup.png")
    print((args.out / "bench_startup.md").read_text())
    return {"rows": rows, "summary": summary, "out": args.out}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    plt = setup_matplotlib()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.4 * len(rows)))
    y = np.arange(len(rows))
    med = np.array([r["median_s"] for r in rows])
    err = [med - np.array([r["min_s"] for r in rows]), np.array([r["max_s"] for r in rows]) - med]
    colors = [
        "tab:orange" if "litellm" in r["measure"] else "tab:gray" if BASELINE in r["measure"] else "tab:blue"
        for r in rows
    ]
    ax.barh(y, med, xerr=err, color=colors, capsize=3)
    for yi, m in zip(y, med):
        ax.text(m, yi, f"  {m:.2f} s", va="center", fontsize=8)
    ax.set_yticks(y, [r["measure"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (median, range)")
    ax.set_title("Import and start-up (blue: zeta_adaptive, grey: baseline, orange: LiteLLM)", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    savefig(fig, path)


if __name__ == "__main__":
    main()
