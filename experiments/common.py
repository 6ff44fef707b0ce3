"""Small helpers shared by the experiment scripts: command line, machine description, result files,
interleaved runs. Generic on purpose (no policy or router code here), so any benchmark can reuse it.

Typical use in a script ``experiments/foo.py``::

    from common import parse_args, write_csv, write_markdown, machine, interleave
    args = parse_args(__doc__)            # --quick, --out DIR, --seed
    rows = [...]                          # list of dicts
    write_csv(args.out / "foo.csv", rows)
    write_markdown(args.out / "foo.md", "Foo", columns, rows, notes=[...])
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

#: where results go by default: experiments/results next to this file
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(
    description: str | None, argv: Sequence[str] | None = None, **extra: dict[str, Any]
) -> argparse.Namespace:
    """Common options: ``--quick`` (a seconds-long smoke version), ``--out DIR``, ``--seed``.

    A quick run never overwrites the measured results: without ``--out`` it writes into a fresh
    temporary directory (printed). ``extra`` maps further option names to ``add_argument`` kwargs.
    """
    parser = argparse.ArgumentParser(description=(description or "").strip().splitlines()[0] if description else None)
    parser.add_argument("--quick", action="store_true", help="small smoke-test version (a few seconds)")
    parser.add_argument("--out", type=Path, default=None, help=f"results directory (default {RESULTS})")
    parser.add_argument("--seed", type=int, default=0, help="base seed")
    for name, kwargs in extra.items():
        parser.add_argument(name, **kwargs)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="zeta-quick-")) if args.quick else RESULTS
    args.out.mkdir(parents=True, exist_ok=True)
    args.command = command_line(argv)
    return args


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run, relative to the repository root when possible."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_txt = str(script.relative_to(Path(__file__).resolve().parent.parent))
    except ValueError:
        script_txt = str(script)
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([".venv/bin/python", script_txt, *args])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, str]:
    """What the numbers were measured on: CPU model, cores, Python, numpy, load at the start."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    info = {
        "cpu": _cpu_model(),
        "cores": f"{usable} usable of {os.cpu_count()}",
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    try:
        info["load_avg"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    blas = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "MKL_"))}
    if blas:
        info["threads_env"] = " ".join(f"{k}={v}" for k, v in sorted(blas.items()))
    return info


def machine_line() -> str:
    m = machine()
    return "; ".join(f"{k} {v}" for k, v in m.items())


def now() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows (columns default: keys of the first row, then any new keys in order)."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _plain(row.get(k, "")) for k in columns})
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def fmt(value: Any, digits: int = 3) -> str:
    """Compact cell text: floats to ``digits`` significant figures, None as a dash."""
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if abs(value) >= 10**digits:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Sequence[dict[str, Any]] | Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; rows are dicts (keyed by column) or sequences."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = [row.get(c, "") for c in columns] if isinstance(row, dict) else list(row)
        lines.append("| " + " | ".join(fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def write_markdown(
    path: Path,
    title: str,
    columns: Sequence[str],
    rows: Sequence[dict[str, Any]] | Sequence[Sequence[Any]],
    *,
    command: str,
    notes: Sequence[str] = (),
    sections: Sequence[tuple[str, str]] = (),
    quick: bool = False,
) -> Path:
    """A small report: title, the table, optional extra (heading, text) sections, notes, and the
    date, machine and command that produced it."""
    parts = [f"# {title}", ""]
    if quick:
        parts += ["**Quick smoke run: not a measurement.**", ""]
    parts += [markdown_table(columns, rows), ""]
    for heading, text in sections:
        parts += [f"## {heading}", "", text.rstrip(), ""]
    if notes:
        parts += [*(f"- {n}" for n in notes), ""]
    parts += [f"- date: {now()}", f"- machine: {machine_line()}", f"- command: `{command}`", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def interleave(names: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
    """``(round, name)`` for ``rounds`` rounds, each round visiting every name once, the start
    rotating each round, so slow drift in machine load hits every contender alike."""
    k = len(names)
    for r in range(rounds):
        for j in range(k):
            yield r, names[(r + j) % k]


def run_interleaved(tasks: dict[str, Callable[[int], Any]], rounds: int, progress: Any = None) -> dict[str, list[Any]]:
    """Call ``tasks[name](round)`` in :func:`interleave` order; collect each name's results by round.
    ``progress`` (for example a tqdm bar) is ``update(1)``-ed after each call."""
    out: dict[str, list[Any]] = {name: [] for name in tasks}
    for r, name in interleave(list(tasks), rounds):
        out[name].append(tasks[name](r))
        if progress is not None:
            progress.update(1)
    return out


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], jobs: int = 1, progress: Any = None) -> list[Any]:
    """``[fn(x) for x in items]``, in worker processes when ``jobs`` > 1 (results keep the input
    order). For simulations only: never for timing runs, where workers would disturb each other.
    ``fn`` must be a module-level function. ``progress`` is ``update(1)``-ed per finished item."""
    if jobs <= 1 or len(items) <= 1:
        out = []
        for x in items:
            out.append(fn(x))
            if progress is not None:
                progress.update(1)
        return out
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list[Any] = [None] * len(items)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(fn, x): i for i, x in enumerate(items)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if progress is not None:
                progress.update(1)
    return results


JOBS_OPTION = {"--jobs": {"type": int, "default": 1, "help": "worker processes for the simulations (default 1)"}}


def percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def savefig(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def setup_matplotlib() -> Any:
    """pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
