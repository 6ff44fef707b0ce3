"""A static HTML report of a log, for people who do not run Jupyter.

:func:`render_report` draws the same views as ``notebooks/analysis.ipynb`` with
:mod:`zeta_adaptive.analysis` (traffic share, failures and fallbacks, latency, the learned order,
and regret when the true rewards are known) and writes one self-contained page: plots embedded as
base64 PNGs, tables as HTML. :func:`write_report` reads a log from a store URL and writes the page;
``zeta-adaptive report`` and ``make report`` call it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import analysis as za
from ._config import sqlite_file
from ._exceptions import ZetaError
from ._store import Store

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ._config import Config

__all__ = ["render_report", "write_report", "figure_png"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
p.meta { color: #666; margin-top: 0; } p.reading { font-style: italic; }
img { max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; }
"""


def figure_png(fig: Figure, dpi: int = 90) -> str:
    """A figure as a base64 PNG string, so a page carries its images inside."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(fig: Figure, alt: str) -> str:
    """An <img> tag carrying the figure inside the page, so the page is one self-contained file."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{figure_png(fig)}">'


def _table(frame: pd.DataFrame) -> str:
    """A DataFrame as an HTML table with three decimals, readable without scrolling through digits."""
    return frame.to_html(index=False, float_format=lambda x: f"{x:.3f}", na_rep="", border=0)


def _section(title: str, reading: str, *parts: str) -> str:
    """A titled section with a one-sentence reading above its plots and tables."""
    return f'<h2>{html.escape(title)}</h2>\n<p class="reading">{html.escape(reading)}</p>\n' + "\n".join(parts)


def render_report(
    log: za.Log,
    *,
    truth: pd.DataFrame | None = None,
    mark: int | None = None,
    mark_label: str = "change",
    title: str = "zeta_adaptive: what the router did",
    source: str = "",
    preferences: pd.DataFrame | None = None,
) -> str:
    """The analysis of a log as one HTML page; ``truth`` (see :func:`analysis.cumulative_regret`) adds
    the regret section, ``mark`` a dashed line at that call index on the plots over time, and
    ``preferences`` (``Router.preferences()`` of every route) what the policies believe now."""
    if log.calls.empty:
        raise ZetaError("the log has no calls to report on")
    regret = za.cumulative_regret(log, truth) if truth is not None else None  # first: a bad truth fails fast
    n = len(log.calls)
    bins = za.suggest_bins(n)
    over_time: dict[str, Any] = {"mark": mark, "mark_label": mark_label}
    first, last = (
        dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        for t in (log.calls["ts"].min(), log.calls["ts"].max())
    )
    ordering = za.ordering_over_time(log, bins)
    order = za.learned_order(ordering)
    windows = order[order["window"].isin([order["window"].min(), order["window"].max()])]
    rates = za.call_rates(log, 1).drop(columns=["window", "start", "end"])
    sections = [
        _section(
            "Per task type and model",
            "Attempts, success rate, accuracy fed back, median latency, mean cost and share of answered calls.",
            _table(za.model_summary(log)),
        ),
        _section(
            "Traffic share over time",
            "How each task type's attempts were spread over its models, window by window: a shift shows the policy moving traffic.",
            _img(za.plot_traffic_share(za.traffic_share(log, bins), **over_time), "traffic share over time"),
        ),
        _section(
            "Failures and fallbacks over time",
            "Which model failed when (left), and how often calls needed a fallback or failed outright (right).",
            _img(
                za.plot_failure_rates(za.model_failure_rates(log, bins), za.call_rates(log, bins), **over_time),
                "failures and fallbacks",
            ),
            _table(rates),
        ),
        _section(
            "Latency per model",
            "Latency of successful attempts per model on a log axis"
            + (", before and after the marked call." if mark is not None else "."),
            _img(za.plot_latency(za.latency_distribution(log, split_at=mark)), "latency per model"),
            _table(za.latency_quantiles(log)),
        ),
        _section(
            "Learned order over time",
            "Each model's mean place in its task type's fallback order (1 = primary); the table gives the order in the first and last window.",
            _img(za.plot_ordering(ordering, **over_time), "learned order over time"),
            _table(windows),
        ),
    ]
    if preferences is not None:
        sections.append(
            _section(
                "What the policies believe now",
                "Per task type and model: rank (1 = primary), probability of being the best, utility with its 90% interval, what it rests on, latency, cost and breaker.",
                _table(preferences.reset_index()),
            )
        )
    spent = log.calls.groupby("task_type")["cost"].sum()
    if (spent > 0).any():  # a log without prices has nothing to show here
        budgets = None
        if preferences is not None and "budget_per_call" in preferences:
            per_route = preferences.groupby(level="task_type")["budget_per_call"].first().dropna()
            budgets = {str(task): float(b) for task, b in per_route.items()}
        paid = log.calls[log.calls["task_type"].isin(spent[spent > 0].index)]
        sections.append(
            _section(
                "Spend per call over time",
                "Mean cost of a call per task type, window by window and since the start; dashed, the route's budget_per_call where one is set.",
                _img(
                    za.plot_cost_over_time(
                        za.cost_over_time(za.Log(paid, log.attempts, log.feedback), bins), budgets=budgets, **over_time
                    ),
                    "spend per call over time",
                ),
            )
        )
    if regret is not None:
        final = regret.groupby("task_type", as_index=False).agg(
            calls=("call_id", "size"), cumulative_regret=("cumulative_regret", "last"), mean_regret=("regret", "mean")
        )
        sections.append(
            _section(
                "Cumulative regret",
                "Expected reward lost by each policy's primary choices against an oracle that knew the true rewards; a flattening curve means the policy found the best model.",
                _img(za.plot_regret(regret, **over_time), "cumulative regret"),
                _table(final),
            )
        )
    sections.append(
        _section(
            "Cost and feedback coverage",
            "What calls cost per task type, and how much of the traffic was rated.",
            _table(za.cost_per_call(log)),
            _table(za.feedback_coverage(log)),
        )
    )
    meta = f"{n} calls from {first} to {last}" + (f" in {html.escape(source)}" if source else "")
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<p class="meta">{meta}</p>\n{body}\n</body>\n</html>\n'
    )


def write_report(url: str, path: str | Path, *, demo: bool = False, config: Config | None = None) -> Path:
    """Render the log at ``url`` to an HTML file; ``demo=True`` (a log of one ``zeta-adaptive demo``
    run) adds regret against the simulated fleet and marks the degradation; ``config`` adds what its
    routes' policies believe, rebuilt from this log (``Router.preferences()``)."""
    path_of_log = sqlite_file(url)
    if path_of_log is not None and not path_of_log.exists():
        raise ZetaError(f"no log at {url} (run `zeta-adaptive demo` to make one)")
    store = Store(url)
    try:
        log = za.load_log(store)
    finally:
        store.close()
    preferences = None
    if config is not None:
        from ._router import Router

        with Router(dataclasses.replace(config, store=url)) as router:
            preferences = router.preferences()
    truth, mark, label = None, None, "change"
    if demo:
        from .demo import DEGRADED_MODEL

        n = len(log.calls)
        truth, mark, label = za.demo_truth(n), n // 2, f"{DEGRADED_MODEL} degraded"
    try:
        page = render_report(
            log, truth=truth, mark=mark, mark_label=label, source=store.safe_url, preferences=preferences
        )
    except ValueError as exc:
        raise ZetaError(f"cannot report on {store.safe_url}: {exc}") from None
    out = Path(path)
    out.write_text(page, encoding="utf-8")
    return out
