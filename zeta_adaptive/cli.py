"""The ``zeta-adaptive`` command line: demo, simulated fleet, database upgrade and pruning, reports,
offline replay, what a router has learned, and the OpenAI-compatible gateway."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import click

from ._config import DEFAULT_STORE, Config, sqlite_file
from ._exceptions import ConfigError, ZetaError

DEFAULT_FLEET_CONFIG = "examples/fleet.toml"


def _one_line(text: str) -> str:
    """A message on one line: drivers' multi-line errors (psycopg's hints) joined with spaces."""
    return " ".join(str(text).split())


def _cli_spelling(text: str, command: click.Command) -> str:
    """Python keyword spellings in library messages (``reward='success'``) as this CLI's options (``--reward success``)."""
    options = {}
    for param in _params(command):
        long = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
        if isinstance(param, click.Option) and long and param.name:
            options[param.name] = long[0]
    if not options:
        return text
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, options)) + r")=(?:'([^']*)'|\"([^\"]*)\"|([\w.:-]+))")
    return pattern.sub(lambda m: f"{options[m.group(1)]} {next(g for g in m.groups()[1:] if g is not None)}", text)


def _params(command: click.Command) -> list[click.Parameter]:
    """Every parameter of a command and, for a group, of its subcommands."""
    found = list(command.params)
    for sub in getattr(command, "commands", {}).values():
        found += _params(sub)
    return found


class _Cli(click.Group):
    """The command group; its errors are one line naming the problem, in the CLI's spelling, never a
    traceback (``ZETA_DEBUG=1`` shows the traceback of an unexpected error)."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt):
            raise
        except click.ClickException as exc:
            exc.message = _cli_spelling(_one_line(exc.message), self)  # type: ignore[misc]  # click's Final: reworded in place, keeping the class and exit code
            raise
        except (ZetaError, SQLAlchemyError, OSError) as exc:
            raise click.ClickException(_cli_spelling(_one_line(str(exc)), self)) from None
        except Exception as exc:
            if os.environ.get("ZETA_DEBUG"):
                raise
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {_one_line(str(exc))} (ZETA_DEBUG=1 shows the traceback)"
            ) from None


def _check_store(url: str, label: str, *, must_exist: bool) -> str:
    """The store URL if usable: a database URL this package supports, a SQLite file whose directory
    exists and, for commands that read a log, the file itself (they never create an empty log)."""
    from ._config import _store_url as validate_store_url

    try:
        validate_store_url(url)
    except ConfigError as exc:
        raise click.ClickException(f"{label}: {exc.problem}") from None
    path = sqlite_file(url)
    if path is None:
        return url
    if not path.parent.is_dir():
        raise click.ClickException(f"{label} {url}: directory {path.parent} does not exist")
    if must_exist and not path.is_file():
        raise click.ClickException(f"{label}: no log at {url} (the file {path} does not exist)")
    return url


def _check_output(path: str, label: str) -> None:
    """Refuse an output file in a missing directory before the work, not after it."""
    if not Path(path).resolve().parent.is_dir():
        raise click.ClickException(f"{label} {path}: directory {Path(path).parent} does not exist")


def _store_url(db: str | None, config: str | None, *, must_exist: bool) -> str:
    """The store of ``--db``, else of ``--config``'s file, else the default, checked by :func:`_check_store`."""
    if db:
        return _check_store(db, "--db", must_exist=must_exist)
    if config:
        return _check_store(Config.from_toml(config).store, f"store of {config}", must_exist=must_exist)
    return _check_store(DEFAULT_STORE, "default store", must_exist=must_exist)


@click.group(cls=_Cli)
@click.version_option(package_name="zeta_adaptive")
def main() -> None:
    """Adaptive routing of LLM calls across a self-hosted fleet."""


@main.command()
@click.option("--calls", default=2000, show_default=True, type=click.IntRange(min=10), help="Number of routed calls.")
@click.option("--db", default=DEFAULT_STORE, show_default=True, help="Store URL for the log.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the fleet, the traffic and the policies.")
@click.option(
    "--concurrency", default=16, show_default=True, type=click.IntRange(min=1), help="Calls in flight at once."
)
@click.option("--append", is_flag=True, help="Add to an existing log instead of moving it to <file>.prev first.")
def demo(calls: int, db: str, seed: int, concurrency: int, append: bool) -> None:
    """Route calls across a simulated loopback fleet in which one model degrades halfway, and report."""
    from .demo import run_demo

    store = _check_store(db, "--db", must_exist=False)
    click.echo(run_demo(calls=calls, store=store, seed=seed, concurrency=concurrency, fresh=not append).render())


@main.command()
@click.option(
    "--config",
    default=DEFAULT_FLEET_CONFIG,
    show_default=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A router TOML file: one simulated model per model, on its base_url's port.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the simulated latencies and faults.")
def fleet(config: str, seed: int) -> None:
    """Serve a simulated OpenAI-compatible model on 127.0.0.1 for every model of a config, on the port
    its base_url names, in the foreground until Ctrl-C or SIGTERM, so routers with that config run as written."""
    import signal
    import threading

    from .simulate import config_fleet

    cfg = Config.from_toml(config)
    sim = config_fleet(cfg, seed)
    # SIGTERM stops it like Ctrl-C; SIGINT too even when started in the background, which ignores it
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with sim:
            click.echo(
                f"zeta-adaptive fleet: {len(sim.names)} simulated models for {config} on 127.0.0.1 (seed {seed})"
            )
            for name in sim.names:
                click.echo(f"  {name:<20} {sim.spec(name).kind:<9}  {sim.base_url(name)}")
            click.echo(f"Routers configured by {config} now reach these models (their log: {cfg.store}).")
            click.echo(f"Stop with Ctrl-C (or: kill {os.getpid()}).")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass
            served = sum(sim.requests(name) for name in sim.names)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(f"fleet stopped after {served} requests")


@main.group()
def db() -> None:
    """Manage the outcome log's database."""


@db.command()
@click.option("--db", "url", default=None, help=f"Store URL (default: the config's store, else {DEFAULT_STORE}).")
@click.option("--config", default=None, type=click.Path(exists=True, dir_okay=False), help="A router TOML file.")
def upgrade(url: str | None, config: str | None) -> None:
    """Create or upgrade the log's tables to the newest migration."""
    from ._store import Store

    store = Store(_store_url(url, config, must_exist=False))
    store.close()
    click.echo(f"{store.safe_url} is at the newest schema")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """Seconds in a duration such as 30d, 12h, 15m or 90s."""
    try:
        value, unit = float(text[:-1]), _UNITS[text[-1]]
    except (ValueError, KeyError, IndexError):
        raise click.BadParameter(
            f"{text!r} is not a duration like 30d, 12h, 15m or 90s", param_hint="--older-than"
        ) from None
    if not value >= 0:
        raise click.BadParameter("must not be negative", param_hint="--older-than")
    return value * unit


@db.command()
@click.option("--db", "url", default=None, help=f"Store URL (default: the config's store, else {DEFAULT_STORE}).")
@click.option("--config", default=None, type=click.Path(exists=True, dir_okay=False), help="A router TOML file.")
@click.option("--older-than", "older_than", required=True, help="Delete calls older than this (30d, 12h, 15m, 90s).")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--yes", "-y", is_flag=True, help="Delete without asking for confirmation.")
def prune(url: str | None, config: str | None, older_than: str, dry_run: bool, yes: bool) -> None:
    """Delete old calls with their attempts and feedback, to bound the log's size (asks first unless --yes)."""
    import time

    from ._store import Store

    age = _duration(older_than)
    store = Store(_store_url(url, config, must_exist=True))
    try:
        cutoff = time.time() - age
        found = store.prune(cutoff, dry_run=True)
        counts = f"{found['calls']} calls, {found['attempts']} attempts, {found['feedback']} feedback"
        if dry_run:
            click.echo(f"would delete {counts} from {store.safe_url} (dry run: nothing deleted)")
            return
        if not any(found.values()):
            click.echo(f"nothing older than {older_than} in {store.safe_url}")
            return
        if not yes:
            every = " (every call in the log)" if age == 0 else ""
            click.confirm(f"delete {counts}{every} from {store.safe_url}?", abort=True)
        deleted = store.prune(cutoff)
    finally:
        store.close()
    click.echo(
        f"deleted {deleted['calls']} calls, {deleted['attempts']} attempts, {deleted['feedback']} feedback from {store.safe_url}"
    )


@main.command()
@click.option("--config", required=True, type=click.Path(exists=True, dir_okay=False), help="A router TOML file.")
def preferences(config: str) -> None:
    """Print what each task type's policy believes, rebuilt from the config's log: its learned order,
    then one row per model (``Router.preferences()``)."""
    from ._router import Router

    cfg = Config.from_toml(config)
    _check_store(cfg.store, f"store of {config}", must_exist=True)
    with Router(cfg) as router:
        prefs = router.preferences()
    for task in prefs.index.unique("task_type"):
        rows = prefs.loc[task]
        click.echo(f"{task}: " + " > ".join(rows.index))
        click.echo(rows.reset_index().to_string(index=False, float_format=lambda x: f"{x:.3f}") + "\n")


@main.command()
@click.option(
    "--config",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A router TOML file (its [server] table too).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; loopback unless told otherwise.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes; they share learning through the store (set refresh_s).",
)
def serve(config: str, host: str, port: int, workers: int) -> None:
    """Serve the router as an OpenAI-compatible HTTP gateway until SIGTERM (which drains calls in flight)."""
    from .gateway import serve as run_gateway  # without the `gateway` extra: MissingDependency, one line

    run_gateway(config, host=host, port=port, workers=workers)  # a ZetaError becomes one line (see _Cli)


@main.command()
@click.option("--db", "url", default=DEFAULT_STORE, show_default=True, help="Store URL of the log to report on.")
@click.option(
    "--html",
    "html_path",
    default="zeta-report.html",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where to write the page.",
)
@click.option(
    "--demo-truth",
    is_flag=True,
    help="The log is one `zeta-adaptive demo` run: add regret against the simulated fleet and mark its degradation.",
)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False),
    help="A router TOML file: add what its routes' policies believe, rebuilt from this log.",
)
def report(url: str, html_path: str, demo_truth: bool, config: str | None) -> None:
    """Render the analysis of a log to one static HTML page, plots embedded, for readers without Jupyter."""
    from .report import write_report

    _check_output(html_path, "--html")
    routes = Config.from_toml(config) if config is not None else None
    out = write_report(_check_store(url, "--db", must_exist=True), html_path, demo=demo_truth, config=routes)
    click.echo(f"wrote {out}")


_DB_ONLY = {"--policy": "policies", "--task-type": "task_type"}
_CSV_ONLY = {
    "--target": "targets",
    "--action": "action",
    "--propensity": "propensity",
    "--position": "position",
    "--context": "contexts",
}


@main.command()
@click.option("--db", "url", default=None, help="Evaluate on the router's own log at this store URL.")
@click.option(
    "--csv",
    "csv_path",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Evaluate on any logged bandit data in a CSV file.",
)
@click.option(
    "--policy",
    "policies",
    multiple=True,
    help="--db: a policy to evaluate (thompson, ucb1, kl_ucb, epsilon_greedy, static, random, always:MODEL); repeatable.",
)
@click.option(
    "--task-type", default=None, help="--db: only this task type (default: every one, each with its own policy)."
)
@click.option("--target", "targets", multiple=True, help="--csv: random (alias uniform) or always:ACTION; repeatable.")
@click.option("--action", default=None, help="--csv: the action column.")
@click.option("--reward", default=None, help="--csv: the reward column. --db: accuracy (default), success or utility.")
@click.option("--propensity", default=None, help="--csv: the logging propensity column.")
@click.option("--position", default=None, help="--csv: a position column (random is then per position).")
@click.option(
    "--context",
    "contexts",
    multiple=True,
    help="--csv: context columns for the direct method's reward model; repeatable.",
)
@click.option(
    "--estimator", "estimators", multiple=True, help="replay, ips, snips, dm, dr; repeatable (default: all that apply)."
)
@click.option(
    "--on-invalid",
    type=click.Choice(["drop", "raise"]),
    default="drop",
    show_default=True,
    help="Rows that cannot be scored (no accuracy feedback under --reward accuracy, missing or zero propensities, "
    "duplicated ids, unknown models): leave them out and report their count, or fail.",
)
@click.option(
    "--n-boot",
    default=1000,
    show_default=True,
    type=click.IntRange(min=10),
    help="Bootstrap resamples for the intervals.",
)
@click.option(
    "--learning-boot",
    default=200,
    show_default=True,
    type=click.IntRange(min=2),
    help="Bootstrap replays of a learning policy.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--out",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write rows estimator, policy, value, ci_low, ci_high, ess, n to this CSV.",
)
def replay(
    url: str | None,
    csv_path: str | None,
    policies: tuple[str, ...],
    task_type: str | None,
    targets: tuple[str, ...],
    action: str | None,
    reward: str | None,
    propensity: str | None,
    position: str | None,
    contexts: tuple[str, ...],
    estimators: tuple[str, ...],
    on_invalid: str,
    n_boot: int,
    learning_boot: int,
    seed: int,
    out: str | None,
) -> None:
    """Estimate offline what other policies would have earned on logged traffic, with intervals.

    A policy or estimator that cannot be evaluated on this log is listed as skipped, with the reason.
    """
    import pandas as pd

    from .replay import ESTIMATORS, REWARDS, compare, from_frame, load_logged, parse_target, prepare

    if (url is None) == (csv_path is None):
        raise click.UsageError("give exactly one source: --db URL or --csv PATH")
    if out:
        _check_output(out, "--out")
    given = click.get_current_context().params  # every option's value, by parameter name
    source, misplaced = ("--db", _CSV_ONLY) if url is not None else ("--csv", _DB_ONLY)
    wrong = [flag for flag, name in misplaced.items() if given[name]]
    if wrong:
        raise click.UsageError(f"{', '.join(wrong)} cannot be used with {source}")
    if url is not None:
        if not policies:
            raise click.UsageError("--db needs at least one --policy")
        if reward is not None and reward not in REWARDS:
            raise click.UsageError(f"--reward with --db must be one of {', '.join(REWARDS)}, not {reward!r}")
        frame = load_logged(
            _check_store(url, "--db", must_exist=True), task_type, reward or "accuracy", on_invalid=on_invalid
        )
        chosen = list(policies)
    else:
        needed = (("--action", action), ("--reward", reward), ("--propensity", propensity))
        missing = [flag for flag, value in needed if not value]
        if missing or csv_path is None or action is None or reward is None or propensity is None:
            raise click.UsageError(f"--csv needs {', '.join(missing)}")
        if not targets:
            raise click.UsageError("--csv needs at least one --target (random or always:ACTION)")
        try:
            raw = pd.read_csv(csv_path)
        except (ValueError, UnicodeDecodeError) as exc:  # pandas' parser and empty-data errors are ValueErrors
            raise click.ClickException(f"--csv {csv_path}: not a readable CSV file: {exc}") from None
        frame = from_frame(
            raw,
            action=action,
            reward=reward,
            propensity=propensity,
            context=list(contexts),
            position=position,
            on_invalid=on_invalid,
        )
        chosen = list(targets)
    data, parsed = prepare(frame, on_invalid=on_invalid), [parse_target(spec, seed=seed) for spec in chosen]
    names = list(estimators) or list(ESTIMATORS)
    result = compare(
        data, parsed, names, seed=seed, n_boot=n_boot, learning_boot=learning_boot, progress=True, skip_failing=True
    )
    click.echo(_cli_spelling(result.render(), replay))
    if result.table.empty:
        raise click.ClickException("no policy could be evaluated on this log (see skipped above)")
    if out:
        result.table.to_csv(out, index=False)
        click.echo(f"wrote {out}")
