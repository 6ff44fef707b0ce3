"""The ``zeta-adaptive`` command line: demo, database upgrade, what a router has learned, and the gateway."""

from __future__ import annotations

import click

from .config import DEFAULT_STORE, Config
from .exceptions import ZetaError


def _store_url(db: str | None, config: str | None) -> str:
    if db:
        return db
    if config:
        return Config.from_toml(config).store
    return DEFAULT_STORE


@click.group()
@click.version_option(package_name="zeta_adaptive")
def main() -> None:
    """Adaptive routing of LLM calls across a self-hosted fleet."""


@main.command()
@click.option("--calls", default=2000, show_default=True, type=click.IntRange(min=10), help="Number of routed calls.")
@click.option("--db", default=DEFAULT_STORE, show_default=True, help="Store URL for the log.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the fleet, the traffic and the policies.")
@click.option("--concurrency", default=16, show_default=True, type=click.IntRange(min=1), help="Calls in flight at once.")
@click.option("--append", is_flag=True, help="Add to an existing log instead of moving it to <file>.prev first.")
def demo(calls: int, db: str, seed: int, concurrency: int, append: bool) -> None:
    """Route calls across a simulated loopback fleet in which one model degrades halfway, and report."""
    from .demo import run_demo

    try:
        report = run_demo(calls=calls, store=db, seed=seed, concurrency=concurrency, fresh=not append)
    except ZetaError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.render())


@main.group()
def db() -> None:
    """Manage the outcome log's database."""


@db.command()
@click.option("--db", "url", default=None, help=f"Store URL (default: the config's store, else {DEFAULT_STORE}).")
@click.option("--config", default=None, type=click.Path(exists=True, dir_okay=False), help="A router TOML file.")
def upgrade(url: str | None, config: str | None) -> None:
    """Create or upgrade the log's tables to the newest migration."""
    from .store import Store

    try:
        store = Store(_store_url(url, config))
    except ZetaError as exc:
        raise click.ClickException(str(exc)) from None
    store.close()
    click.echo(f"{store.safe_url} is at the newest schema")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """Seconds in a duration such as 30d, 12h, 15m or 90s."""
    try:
        value, unit = float(text[:-1]), _UNITS[text[-1]]
    except (ValueError, KeyError, IndexError):
        raise click.BadParameter(f"{text!r} is not a duration like 30d, 12h, 15m or 90s", param_hint="--older-than") from None
    if value < 0:
        raise click.BadParameter("must not be negative", param_hint="--older-than")
    return value * unit


@db.command()
@click.option("--db", "url", default=None, help=f"Store URL (default: the config's store, else {DEFAULT_STORE}).")
@click.option("--config", default=None, type=click.Path(exists=True, dir_okay=False), help="A router TOML file.")
@click.option("--older-than", "older_than", required=True, help="Delete calls older than this (30d, 12h, 15m, 90s).")
def prune(url: str | None, config: str | None, older_than: str) -> None:
    """Delete old calls with their attempts and feedback, to bound the log's size."""
    import time

    from .store import Store

    cutoff = time.time() - _duration(older_than)
    try:
        store = Store(_store_url(url, config))
    except ZetaError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        deleted = store.prune(cutoff)
    finally:
        store.close()
    click.echo(f"deleted {deleted['calls']} calls, {deleted['attempts']} attempts, {deleted['feedback']} feedback from {store.safe_url}")


@main.command()
@click.option("--config", required=True, type=click.Path(exists=True, dir_okay=False), help="A router TOML file.")
def preferences(config: str) -> None:
    """Print each task type's learned order, rebuilt from the config's log."""
    from .router import Router

    try:
        with Router.from_toml(config) as router:
            for task, rows in router.preferences().items():
                click.echo(f"{task}: " + " > ".join(f"{r['model']} ({r['score']:.3f}, n={r['n']:.0f})" for r in rows))
    except ZetaError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--config", required=True, type=click.Path(exists=True, dir_okay=False), help="A router TOML file (its [server] table too).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; loopback unless told otherwise.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Worker processes; they share learning through the store (set refresh_s).")
def serve(config: str, host: str, port: int, workers: int) -> None:
    """Serve the router as an OpenAI-compatible HTTP gateway until SIGTERM (which drains calls in flight)."""
    try:
        from .gateway import serve as run_gateway
    except ImportError as exc:
        raise click.ClickException(f"the gateway needs the `gateway` extra (pip install 'zeta_adaptive[gateway]'): {exc}") from None
    try:
        run_gateway(config, host=host, port=port, workers=workers)
    except ZetaError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--db", "url", default=DEFAULT_STORE, show_default=True, help="Store URL of the log to report on.")
@click.option("--html", "html_path", default="zeta-report.html", show_default=True, type=click.Path(dir_okay=False), help="Where to write the page.")
@click.option("--demo-truth", is_flag=True, help="The log is one `zeta-adaptive demo` run: add regret against the simulated fleet and mark its degradation.")
def report(url: str, html_path: str, demo_truth: bool) -> None:
    """Render the analysis of a log to one static HTML page, plots embedded, for readers without Jupyter."""
    from .report import write_report

    try:
        out = write_report(url, html_path, demo=demo_truth)
    except ZetaError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out}")


@main.command()
@click.option("--db", "url", default=None, help="Evaluate on the router's own log at this store URL.")
@click.option("--csv", "csv_path", default=None, type=click.Path(exists=True, dir_okay=False), help="Evaluate on any logged bandit data in a CSV file.")
@click.option("--policy", "policies", multiple=True, help="--db: a policy to evaluate (thompson, ucb1, static, always:MODEL, ...); repeatable.")
@click.option("--task-type", default=None, help="--db: only this task type (default: every one, each with its own policy).")
@click.option("--target", "targets", multiple=True, help="--csv: uniform or always:ACTION; repeatable.")
@click.option("--action", default=None, help="--csv: the action column.")
@click.option("--reward", default=None, help="--csv: the reward column. --db: accuracy (default), success or utility.")
@click.option("--propensity", default=None, help="--csv: the logging propensity column.")
@click.option("--position", default=None, help="--csv: a position column (uniform is then per position).")
@click.option("--context", "contexts", multiple=True, help="--csv: context columns for the direct method's reward model; repeatable.")
@click.option("--estimator", "estimators", multiple=True, help="replay, ips, snips, dm, dr; repeatable (default: all that apply).")
@click.option("--on-invalid", type=click.Choice(["raise", "drop"]), default="raise", show_default=True, help="Rows with missing or zero propensities, duplicated ids or unknown models: fail, or exclude and count them.")
@click.option("--n-boot", default=1000, show_default=True, type=click.IntRange(min=10), help="Bootstrap resamples for the intervals.")
@click.option("--learning-boot", default=200, show_default=True, type=click.IntRange(min=2), help="Bootstrap replays of a learning policy.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write rows estimator, policy, value, ci_low, ci_high, ess, n to this CSV.")
def replay(
    url: str | None, csv_path: str | None, policies: tuple[str, ...], task_type: str | None, targets: tuple[str, ...],
    action: str | None, reward: str | None, propensity: str | None, position: str | None, contexts: tuple[str, ...],
    estimators: tuple[str, ...], on_invalid: str, n_boot: int, learning_boot: int, seed: int, out: str | None,
) -> None:
    """Estimate offline what other policies would have earned on logged traffic, with intervals."""
    import pandas as pd

    from .replay import ESTIMATORS, compare, from_frame, load_logged, prepare

    if (url is None) == (csv_path is None):
        raise click.UsageError("give exactly one source: --db URL or --csv PATH")
    try:
        if url is not None:
            if not policies:
                raise click.UsageError("--db needs at least one --policy")
            frame = load_logged(url, task_type, reward or "accuracy", on_invalid=on_invalid)
            chosen = list(policies)
        else:
            missing = [flag for flag, value in (("--action", action), ("--reward", reward), ("--propensity", propensity)) if not value]
            if missing:
                raise click.UsageError(f"--csv needs {', '.join(missing)}")
            if not targets:
                raise click.UsageError("--csv needs at least one --target (uniform or always:ACTION)")
            raw = pd.read_csv(csv_path)
            frame = from_frame(raw, action=action, reward=reward, propensity=propensity, context=list(contexts), position=position, on_invalid=on_invalid)
            chosen = list(targets)
        result = compare(
            prepare(frame, on_invalid=on_invalid), chosen, list(estimators) or list(ESTIMATORS),
            seed=seed, n_boot=n_boot, learning_boot=learning_boot, progress=True,
        )
    except ZetaError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(result.render())
    if out:
        result.table.to_csv(out, index=False)
        click.echo(f"wrote {out}")
