"""The ``zeta-adaptive`` command line: demo, database upgrade, and what a router has learned."""

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
