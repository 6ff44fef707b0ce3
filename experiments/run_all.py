"""Run every benchmark of the project in one go, then write ``experiments/results/SUMMARY.md``.

Each benchmark runs as its own subprocess, ``python -m experiments.NAME`` (a fresh interpreter, so no benchmark inherits another's
imports, threads or heap), with ``--out`` pointing at one results folder (and ``--quick`` passed
on). Scripts that do not exist (yet) are skipped with a note; a script that fails or runs past
its time limit is reported and the others still run. ``run_all.json`` records how each ran;
``summary.py`` turns every result file into the one summary table.

    .venv/bin/python -m experiments.run_all [--quick] [--out DIR] [--only NAME ...] [--timeout S]

Without ``--out``, full runs write to experiments/results and ``--quick`` runs to a fresh
temporary folder (a smoke run never overwrites measurements).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import RESULTS, ROOT
from .summary import write_summary

#: every benchmark, in the order they run: ours first, then the other engineers' experiments
SCRIPTS = (
    "bench_overhead",
    "bench_throughput",
    "bench_store",
    "bench_stream",
    "bench_startup",
    "bench_gateway",
    "policy_cost",
    "policy_regret",
    "policy_drift",
    "replay_speed",
    "replay_validation",
    "log_faults",
    "multiprocess",
    "load",
    "load_sim",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-run every script (not a measurement)")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"results folder (default {RESULTS}; a temporary one with --quick)"
    )
    parser.add_argument("--only", nargs="*", default=None, help="run only these scripts (names with or without .py)")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds allowed per script (default 2400; 300 with --quick)"
    )
    args = parser.parse_args(argv)
    out = args.out or (Path(tempfile.mkdtemp(prefix="zeta-bench-quick-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    # replay_validation alone takes about 1,200 s on a quiet 2-core machine
    limit = args.timeout or (300.0 if args.quick else 2400.0)
    wanted = {n.removesuffix(".py") for n in args.only} if args.only else None

    runs = []
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in SCRIPTS:
        if wanted is not None and name not in wanted:
            continue
        if not (ROOT / "experiments" / f"{name}.py").exists():
            print(f"== {name}: not found, skipped", flush=True)
            runs.append({"script": name, "status": "missing: skipped", "seconds": None})
            continue
        cmd = [sys.executable, "-m", f"experiments.{name}", "--out", str(out)] + (["--quick"] if args.quick else [])
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        try:
            code = subprocess.run(cmd, env=env, timeout=limit, cwd=ROOT).returncode
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            status = f"stopped after {limit:.0f} s (time limit)"
        seconds = time.perf_counter() - t0
        print(f"== {name}: {status} in {seconds:.0f} s", flush=True)
        runs.append({"script": name, "status": status, "seconds": round(seconds, 1)})
    total = time.perf_counter() - start
    (out / "run_all.json").write_text(json.dumps({"runs": runs, "total_seconds": total, "quick": args.quick}, indent=2))
    command = (
        "make bench"
        if not args.quick and args.out is None and args.only is None
        else " ".join([".venv/bin/python", "-m", "experiments.run_all", *(argv if argv is not None else sys.argv[1:])])
    )
    path = write_summary(out, command)
    print(path.read_text(encoding="utf-8"))
    print(f"== results in {out} ({total:.0f} s)")
    failed = [r for r in runs if not (r["status"] == "ok" or r["status"].startswith("missing"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
