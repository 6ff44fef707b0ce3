"""Small helpers shared by the experiments: command line, machine description, result files,
interleaved runs, a private PostgreSQL server and a simulated fleet in its own process. Generic on
purpose (no policy or router code here), so any benchmark (and the tests) can reuse it.

Typical use in a module ``experiments/foo.py``, run as ``python -m experiments.foo``::

    from .common import parse_args, write_csv, write_markdown, machine, interleave
    args = parse_args(__doc__)            # --quick, --out DIR, --seed
    rows = [...]                          # list of dicts
    write_csv(args.out / "foo.csv", rows)
    write_markdown(args.out / "foo.md", "Foo", columns, rows, notes=[...])
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

#: the repository root: experiments run from there as ``python -m experiments.NAME``
ROOT = Path(__file__).resolve().parent.parent
#: where results go by default: experiments/results next to this file
RESULTS = ROOT / "experiments" / "results"


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
    """The command that reproduces this run: ``.venv/bin/python -m experiments.NAME ARGS``."""
    script = Path(sys.argv[0]).resolve()
    try:
        target = ["-m", ".".join(script.relative_to(ROOT).with_suffix("").parts)]
    except ValueError:
        target = [str(script)]
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([".venv/bin/python", *target, *args])


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


def summary_row(
    workload: str, ours: str, peer: str = "–", ratio: str = "–", target: str = "–", met: bool | None = None
) -> dict[str, str]:
    """One row of an experiment's summary table, in ``summary.py``'s columns; ``met`` None: no verdict (a reference)."""
    verdict = "" if met is None else "met" if met else "MISSED"
    return {"workload": workload, "ours": ours, "peer": peer, "ratio": ratio, "target": target, "met?": verdict}


def publish(args: Any, name: str, title: str, table: Sequence[dict[str, Any]], **report: Any) -> str:
    """Write ``NAME.md`` into ``args.out``: the summary table first, then ``report``'s sections and notes; print it."""
    path = write_markdown(
        args.out / f"{name}.md", title, list(table[0]), table, command=args.command, quick=args.quick, **report
    )
    text = path.read_text()
    print(text)
    return text


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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a private PostgreSQL server ----------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server's binaries (``initdb``, ``pg_ctl``) on this machine, if any."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


class PrivatePostgres:
    """A throwaway PostgreSQL server that a run may stop, start and freeze: ``initdb`` + ``pg_ctl`` in a
    temporary folder on a free loopback port, as the postgres user when we are root. ``fsync=False``
    (the default) trades the durability nobody needs here for speed; benchmarks of the log keep it."""

    def __init__(self, bindir: Path | None = None, *, fsync: bool = False) -> None:
        found = bindir or postgres_bindir()
        if found is None:
            raise FileNotFoundError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        self.bindir = found
        self.fsync = fsync
        self.root = Path(tempfile.mkdtemp(prefix="zeta-pg-"))  # short: the socket lives in it
        self.data = self.root / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.running = False

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.as_root:
            cmd = ["su", "postgres", "-c", " ".join(f"'{c}'" for c in cmd)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1" + ("" if self.fsync else " -c fsync=off")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.data / "log"), "-w", "start")
        self.running = True

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.running = False

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the postmaster and every backend: SIGSTOP freezes the server, SIGCONT thaws it."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        for p in [pid, *map(int, children.split())]:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass

    def destroy(self) -> None:
        """Stop the server if it runs and delete its folder."""
        if self.running:
            try:
                self.stop()
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


# -- the simulated fleet in its own process -----------------------------------------------------------


def fleet_worker() -> None:
    """Child process (``python -m experiments.common --fleet-worker``): obey one JSON command per stdin
    line, answer one JSON line each on stdout, until EOF or ``close``.

    Commands: {"op": "build", "specs": [...], "seed": s} (a fresh fleet, new ports; answers its URLs),
    {"op": "update", "changes": [[name, {...}], ...]}, {"op": "requests"}, {"op": "cpu"}, {"op": "close"}.
    Answers: {"ok": ...} or {"error": "..."}.
    """
    from zeta_adaptive.simulate import Fleet, ModelSpec

    out, sys.stdout = sys.stdout, sys.stderr  # nothing else may write on the protocol channel
    fleet: Fleet | None = None
    cpu_at_build = 0.0

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def update(changes: list[tuple[str, dict[str, Any]]]) -> list[list[Any]]:
        assert fleet is not None
        times = []  # per change: [name, perf_counter before, after] (CLOCK_MONOTONIC: the parent's clock too)
        for name, change in changes:
            before = time.perf_counter()
            for attempt in range(20):  # coming back up re-binds the port: retry briefly if busy
                try:
                    fleet.update(name, **change)
                    break
                except OSError:
                    if attempt == 19:
                        raise
                    time.sleep(0.05)
            times.append([name, before, time.perf_counter()])
        return times

    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            try:
                if cmd["op"] == "build":
                    if fleet is not None:
                        fleet.close()
                    fleet = Fleet([ModelSpec(**s) for s in cmd["specs"]], seed=cmd["seed"]).start()
                    cpu_at_build = cpu()
                    answer: dict[str, Any] = {"ok": {n: fleet.base_url(n) for n in fleet.names}}
                elif cmd["op"] == "update":
                    answer = {"ok": update(cmd["changes"])}
                elif cmd["op"] == "cpu":
                    answer = {"ok": cpu() - cpu_at_build}
                elif cmd["op"] == "requests":
                    assert fleet is not None
                    answer = {"ok": {n: fleet.requests(n) for n in fleet.names}}
                elif cmd["op"] == "close":
                    out.write(json.dumps({"ok": True}) + "\n")
                    out.flush()
                    break
                else:
                    answer = {"error": f"unknown op {cmd['op']!r}"}
            except Exception as exc:  # report, keep serving
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(answer) + "\n")
            out.flush()
    finally:
        if fleet is not None:
            fleet.close()


def spawn(module: str, *args: str) -> subprocess.Popen[str]:
    """A child ``python -m MODULE ARGS`` from the repository root, talking JSON lines over its
    stdin and stdout (line-buffered text pipes)."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )


class FleetProcess:
    """A simulated Fleet in a child process, so its servers do not share the measured process's CPU
    and GIL; commands go through a pipe. With ``specs`` the fleet is built at once; without, the child
    starts (and imports) now and :meth:`build` makes the fleet later."""

    def __init__(self, specs: list[dict[str, Any]] | None = None, seed: int = 0) -> None:
        self.proc = spawn("experiments.common", "--fleet-worker")
        self._lock = threading.Lock()
        self.specs: list[dict[str, Any]] = []
        self.urls: dict[str, str] = {}
        if specs is not None:
            self.build(specs, seed)

    def _ask(self, message: dict[str, Any]) -> Any:
        with self._lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fleet process ended (exit code {self.proc.poll()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"fleet: {answer['error']}")
        return answer["ok"]

    def build(self, specs: list[dict[str, Any]], seed: int) -> None:
        """A fresh fleet (new ports, fresh generators) replacing any earlier one: cheaper than a new process."""
        self.specs = specs
        self.urls = self._ask({"op": "build", "specs": specs, "seed": seed})

    def update(self, changes: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, float, float]]:
        """Apply several ``Fleet.update(name, **changes)`` in one round trip; per change, the
        ``time.perf_counter()`` just before and after it (the child's clock is the same on Linux)."""
        return [(name, before, after) for name, before, after in self._ask({"op": "update", "changes": changes})]

    def cpu(self) -> float:
        """CPU seconds the fleet process used since its fleet was built."""
        return float(self._ask({"op": "cpu"}))

    def requests(self) -> dict[str, int]:
        return dict(self._ask({"op": "requests"}))

    def model_config(self, **overrides: Any) -> dict[str, dict[str, Any]]:
        return {name: {"base_url": url, **overrides} for name, url in self.urls.items()}

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._ask({"op": "close"})
            except (RuntimeError, OSError, ValueError):
                pass
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> FleetProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fleet-worker"]:
        fleet_worker()
