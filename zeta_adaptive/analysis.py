"""Analysis of the outcome log with pandas: what happened, per task type and model, and when.

Every function takes DataFrames as :meth:`Store.frame` returns them (or a :class:`Log` of all
three tables from :func:`load_log`), so the same code serves the demo, the notebooks, the HTML
report and the tests. Views over time cut the run into windows, by default of equally many calls
(the call index is the rank of a call's start time in the log); ``by="time"`` cuts it into windows
of equal duration instead. Every over-time frame has the columns ``window``, ``start`` and ``end``
(call index or seconds since the first call; ``end`` is exclusive).

The ``plot_*`` helpers draw those frames with matplotlib and return a
:class:`matplotlib.figure.Figure`. They build figures without pyplot, so they need no display and
no GUI backend (PNG goes through Agg), and matplotlib is imported only when one is called, which
keeps ``import zeta_adaptive`` light.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import pandas as pd

from ._optional import requires
from ._store import Store

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .simulate import ModelSpec

__all__ = [
    "Log",
    "load_log",
    "model_summary",
    "suggest_bins",
    "with_windows",
    "between",
    "traffic_share",
    "call_rates",
    "model_failure_rates",
    "latency_quantiles",
    "latency_distribution",
    "cost_per_call",
    "cost_over_time",
    "feedback_coverage",
    "rank_positions",
    "ordering_over_time",
    "learned_order",
    "truth_from_specs",
    "demo_truth",
    "true_rewards",
    "cumulative_regret",
    "plot_traffic_share",
    "plot_latency",
    "plot_failure_rates",
    "plot_ordering",
    "plot_cost_over_time",
    "plot_regret",
    "plot_policy_estimates",
]

By = Literal["call", "time"]
_WINDOW = ["window", "start", "end"]
_ESTIMATORS = ["ips", "snips", "dm", "dr", "replay"]  # zeta_adaptive.replay's, for stable colours
_FAULT_RATES = ("hang_rate", "error_rate", "rate_limit_rate", "malformed_rate", "empty_rate")


@dataclass(frozen=True)
class Log:
    """The three tables of a log as DataFrames, in time order."""

    calls: pd.DataFrame
    attempts: pd.DataFrame
    feedback: pd.DataFrame


def load_log(store: Store | str) -> Log:
    """Read a whole log from a Store or a store URL."""
    if isinstance(store, str):
        own = Store(store)
        try:
            return load_log(own)
        finally:
            own.close()
    return Log(store.frame("calls"), store.frame("attempts"), store.frame("feedback"))


def model_summary(log: Log) -> pd.DataFrame:
    """Per task type and model: attempts, success rate, mean accuracy fed back, median latency of
    successful attempts, mean cost, and the model's share of the task's answered calls."""
    a = log.attempts
    cols = ["attempts", "success_rate", "accuracy", "p50_latency_s", "mean_cost", "share"]
    if a.empty:
        return pd.DataFrame(columns=["task_type", "model", *cols])
    ok = a.assign(success=a["outcome"] == "ok")
    grouped = ok.groupby(["task_type", "model"])
    out = pd.DataFrame(
        {
            "attempts": grouped.size(),
            "success_rate": grouped["success"].mean(),
            "p50_latency_s": ok[ok["success"]].groupby(["task_type", "model"])["latency_s"].median(),
            "mean_cost": grouped["cost"].mean(),
        }
    )
    answered = log.calls.dropna(subset=["model"])
    share = answered.groupby("task_type")["model"].value_counts(normalize=True)
    out["share"] = share.reindex(out.index).fillna(0.0)
    accuracy = log.feedback.groupby(["task_type", "model"])["accuracy"].mean()
    out["accuracy"] = accuracy.reindex(out.index)
    return out[cols].reset_index()


# -- windows ----------------------------------------------------------------------------------------


def suggest_bins(n_calls: int) -> int:
    """An even number of windows (6 to 20, about 100 calls each on big logs), so a change at half the
    run falls on a window edge and small logs still have a few calls of each task per window."""
    return 2 * int(np.clip(n_calls // 200, 3, 10))


def with_windows(calls: pd.DataFrame, bins: int = 20, by: By = "call") -> pd.DataFrame:
    """The calls in start order with their ``call_index`` and window (``window``, ``start``, ``end``),
    so every view over time cuts the run the same way."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    out = calls.sort_values("ts", kind="stable").reset_index(drop=True)
    n = len(out)
    index = np.arange(n)
    if by == "call":
        window = index * bins // max(n, 1)
        start = np.ceil(window * n / bins)
        end = np.ceil((window + 1) * n / bins)
    elif by == "time":
        t = out["ts"].to_numpy(dtype=float)
        t = t - t[0] if n else t
        width = t[-1] / bins if n and t[-1] > 0 else 1.0
        window = np.minimum(t // width, bins - 1).astype(np.int64)
        start = window * width
        end = start + width
    else:
        raise ValueError(f"by must be 'call' or 'time', got {by!r}")
    return out.assign(call_index=index, window=window, start=start, end=end)


def _attempt_windows(log: Log, bins: int, by: By) -> pd.DataFrame:
    """The attempts with the window of the call they belong to."""
    w = with_windows(log.calls, bins, by)[["call_id", *_WINDOW]]
    return log.attempts.merge(w, on="call_id", how="inner")


def between(log: Log, start: int, stop: int) -> Log:
    """The part of a log whose calls have a call index in [start, stop), with their attempts and
    feedback: for before/after comparisons around a change."""
    w = with_windows(log.calls, 1)
    keep = w.loc[(w["call_index"] >= start) & (w["call_index"] < stop), "call_id"]
    return Log(*(table[table["call_id"].isin(keep)] for table in (log.calls, log.attempts, log.feedback)))


def _shares(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Count rows per ``keys`` and model, and each count's share within ``keys``; every model seen for a
    task type gets a row (zero if absent) in each of the task's groups, so stacked plots line up."""
    counts = cast("pd.Series", rows.groupby([*keys, "model"]).size()).rename("n")
    if counts.empty:
        return pd.DataFrame(columns=[*keys, "model", "n", "share"])
    grid = cast("pd.Series", counts.unstack("model", fill_value=0).stack()).rename("n").reset_index()
    out = grid.merge(rows[["task_type", "model"]].drop_duplicates(), on=["task_type", "model"], how="inner")
    out["share"] = out["n"] / out.groupby(keys)["n"].transform("sum")
    return out.sort_values([*keys, "model"], kind="stable").reset_index(drop=True)


# -- over time --------------------------------------------------------------------------------------


def traffic_share(
    log: Log, bins: int = 20, by: By = "call", of: Literal["attempts", "answers"] = "attempts"
) -> pd.DataFrame:
    """Per task type, window and model: ``n`` and ``share`` of the task's attempts (the load each model
    received, fallbacks included) or, with ``of="answers"``, of its answered calls (who served them)."""
    if of == "attempts":
        rows = _attempt_windows(log, bins, by)
    elif of == "answers":
        rows = with_windows(log.calls, bins, by).dropna(subset=["model"])
    else:
        raise ValueError(f"of must be 'attempts' or 'answers', got {of!r}")
    return _shares(rows, ["task_type", *_WINDOW])


def call_rates(log: Log, bins: int = 20, by: By = "call") -> pd.DataFrame:
    """Per task type and window: ``calls``, ``success_rate`` (answered), ``fallback_rate`` (needed more
    than one attempt) and ``failure_rate`` (no model answered, or the request was rejected)."""
    w = with_windows(log.calls, bins, by)
    w = w.assign(success=w["outcome"] == "ok", fallback=w["n_attempts"] > 1)
    out = (
        w.groupby(["task_type", *_WINDOW])
        .agg(calls=("call_id", "size"), success_rate=("success", "mean"), fallback_rate=("fallback", "mean"))
        .reset_index()
    )
    out["failure_rate"] = 1.0 - out["success_rate"]
    return out


def model_failure_rates(log: Log, bins: int = 20, by: By = "call") -> pd.DataFrame:
    """Per model and window, over all task types: ``attempts`` and ``failure_rate`` (share of attempts
    whose outcome was not ``ok``), where a degrading model shows first."""
    a = _attempt_windows(log, bins, by)
    a = a.assign(failed=a["outcome"] != "ok")
    return (
        a.groupby(["model", *_WINDOW]).agg(attempts=("call_id", "size"), failure_rate=("failed", "mean")).reset_index()
    )


# -- latency, cost, feedback ------------------------------------------------------------------------


def _latencies(log: Log, successful_only: bool) -> pd.DataFrame:
    """The attempts whose latency to study: by default the successful ones, since a timeout's latency is the timeout."""
    a = log.attempts
    return a[a["outcome"] == "ok"] if successful_only else a


def latency_quantiles(
    log: Log, quantiles: Sequence[float] = (0.5, 0.9, 0.99), successful_only: bool = True
) -> pd.DataFrame:
    """Per model: attempts, mean latency and latency quantiles in seconds (columns ``p50``, ``p90``, ...),
    by default of successful attempts only, since a timeout's latency is the timeout."""
    a = _latencies(log, successful_only)
    names = [f"p{100 * q:g}" for q in quantiles]
    if a.empty:
        return pd.DataFrame(columns=["model", "n", "mean", *names])
    grouped = a.groupby("model")["latency_s"]
    q = grouped.quantile(np.asarray(quantiles, dtype=float)).unstack()
    q.columns = names
    out = pd.concat([grouped.size().rename("n"), grouped.mean().rename("mean"), q], axis=1)
    return out.reset_index()


def latency_distribution(
    log: Log, bins: int = 40, successful_only: bool = True, split_at: int | None = None
) -> pd.DataFrame:
    """Per model, phase and latency bin (log-spaced edges shared by all): ``count`` and ``fraction`` of
    the model's attempts in that phase, so models with very different traffic compare on one axis.

    ``phase`` is ``"all"``, or with ``split_at`` (a call index) ``"before"`` and ``"after"`` it, to
    show a slowdown.
    """
    a = _latencies(log, successful_only)
    a = a[a["latency_s"] > 0]
    if a.empty:
        return pd.DataFrame(columns=["model", "phase", "left", "right", "count", "fraction"])
    lat = a["latency_s"].to_numpy(dtype=float)
    lo, hi = lat.min(), lat.max()
    edges = np.geomspace(lo, hi * (1 + 1e-9), bins + 1) if hi > lo else np.array([lo * 0.9, lo * 1.1])
    idx = np.clip(np.searchsorted(edges, lat, side="right") - 1, 0, len(edges) - 2)
    if split_at is None:
        phase = np.full(len(a), "all", dtype=object)
    else:
        w = with_windows(log.calls, 1)[["call_id", "call_index"]]
        index = a[["call_id"]].merge(w, on="call_id", how="left")["call_index"].to_numpy()
        phase = np.where(index < split_at, "before", "after").astype(object)
    counts = pd.crosstab([a["model"].to_numpy(), phase], idx, rownames=["model", "phase"], colnames=["bin"])
    every_bin = counts.reindex(
        columns=pd.RangeIndex(len(edges) - 1, name="bin"), fill_value=0
    )  # of each (model, phase)
    out = cast("pd.Series", every_bin.stack()).rename("count").reset_index()
    out["left"] = edges[out["bin"].to_numpy()]
    out["right"] = edges[out["bin"].to_numpy() + 1]
    out["fraction"] = out["count"] / out.groupby(["model", "phase"])["count"].transform("sum")
    return out[["model", "phase", "left", "right", "count", "fraction"]]


def cost_per_call(log: Log) -> pd.DataFrame:
    """Per task type: calls, total cost, cost per call and per answered call, tokens per call, and
    attempts per call (every attempt is paid, fallbacks included)."""
    c = log.calls.assign(answered=log.calls["outcome"] == "ok")
    out = c.groupby("task_type").agg(
        calls=("call_id", "size"),
        answered=("answered", "sum"),
        cost=("cost", "sum"),
        tokens_in_per_call=("tokens_in", "mean"),
        tokens_out_per_call=("tokens_out", "mean"),
        attempts_per_call=("n_attempts", "mean"),
    )
    out.insert(3, "cost_per_call", out["cost"] / out["calls"])
    out.insert(4, "cost_per_answer", out["cost"] / out["answered"].where(out["answered"] > 0))
    return out.reset_index()


def cost_over_time(log: Log, bins: int = 20, by: By = "call") -> pd.DataFrame:
    """Per task type and window: ``calls``, ``cost_per_call`` (the window's mean cost of a call, every
    attempt paid) and ``running_cost_per_call`` (the mean since the start): what a ``budget_per_call`` holds."""
    w = with_windows(log.calls, bins, by)
    out = w.groupby(["task_type", *_WINDOW]).agg(calls=("call_id", "size"), cost=("cost", "sum")).reset_index()
    out["cost_per_call"] = out["cost"] / out["calls"]
    by_task = out.groupby("task_type")
    out["running_cost_per_call"] = by_task["cost"].cumsum() / by_task["calls"].cumsum()
    return out.drop(columns="cost")


def feedback_coverage(log: Log) -> pd.DataFrame:
    """Per task type and answering model: answered calls, rated calls, ``coverage`` (rated / answered)
    and mean accuracy fed back: how much of what the policy learns rests on feedback."""
    answered = log.calls[log.calls["outcome"] == "ok"].groupby(["task_type", "model"]).size().rename("answered")
    f = log.feedback[log.feedback["call_id"].isin(log.calls["call_id"])]
    rated = f.groupby(["task_type", "model"])["accuracy"].agg(["size", "mean"])
    out = pd.concat([answered, rated.rename(columns={"size": "rated", "mean": "accuracy"})], axis=1)
    out["answered"] = out["answered"].fillna(0).astype(np.int64)
    out["rated"] = out["rated"].fillna(0).astype(np.int64)
    out["coverage"] = out["rated"] / out["answered"].where(out["answered"] > 0)
    return out[["answered", "rated", "coverage", "accuracy"]].rename_axis(["task_type", "model"]).reset_index()


# -- the learned ordering ---------------------------------------------------------------------------


def rank_positions(calls: pd.DataFrame) -> pd.DataFrame:
    """One row per call and model of its fallback order: ``call_id``, ``model``, ``position`` (0 =
    primary), from the logged JSON column ``ranking``; each distinct order is parsed once."""
    codes, uniques = pd.factorize(calls["ranking"])
    orders = pd.Series([json.loads(u) for u in uniques], dtype=object).explode().dropna()
    table = pd.DataFrame(
        {
            "code": orders.index.to_numpy(dtype=np.int64),
            "model": orders.to_numpy(dtype=object),
            "position": orders.groupby(level=0).cumcount().to_numpy(dtype=np.int64),
        }
    )
    per_call = pd.DataFrame({"call_id": calls["call_id"].to_numpy(), "code": codes})
    return per_call.merge(table, on="code", how="inner").drop(columns="code")


def ordering_over_time(log: Log, bins: int = 20, by: By = "call") -> pd.DataFrame:
    """Per task type, window and model: ``primary_share`` (share of the task's calls that put it first),
    ``ranked_share`` (share whose fallback order held it at all: the router leaves out a model that is
    cooling down) and ``mean_position`` (0 = primary; a model left out counts as placed after every
    ranked one): the order the policy learned, as it moved."""
    w = with_windows(log.calls, bins, by)
    r = rank_positions(w)
    models = r.merge(w[["call_id", "task_type"]], on="call_id")[["task_type", "model"]].drop_duplicates()
    grid = w[["call_id", "task_type", *_WINDOW]].merge(models, on="task_type")  # each call x each model of its task
    grid = grid.merge(r, on=["call_id", "model"], how="left")
    grid["ranked"] = grid["position"].notna()
    grid["position"] = grid["position"].fillna(grid["call_id"].map(r.groupby("call_id").size()))
    grid["primary"] = grid["position"] == 0
    return (
        grid.groupby(["task_type", *_WINDOW, "model"])
        .agg(primary_share=("primary", "mean"), ranked_share=("ranked", "mean"), mean_position=("position", "mean"))
        .reset_index()
    )


def learned_order(ordering: pd.DataFrame) -> pd.DataFrame:
    """Per task type and window of :func:`ordering_over_time`: the order by mean position
    (``"a > b > c"``), the most frequent ``primary`` and its ``primary_share``."""
    keys = ["task_type", *_WINDOW]
    s = ordering.sort_values([*keys, "mean_position", "model"], kind="stable")
    order = s.groupby(keys)["model"].agg(" > ".join).rename("order")
    top = s.loc[s.groupby(keys)["primary_share"].idxmax(), [*keys, "model", "primary_share"]]
    return top.rename(columns={"model": "primary"}).merge(order.reset_index(), on=keys)[
        [*keys, "order", "primary", "primary_share"]
    ]


# -- regret against an oracle -----------------------------------------------------------------------


def truth_from_specs(
    specs: Iterable[ModelSpec], routes: Mapping[str, Sequence[str]], from_call: int = 0
) -> pd.DataFrame:
    """The true expected reward of each routed (task type, model) in a simulated fleet, holding from
    call index ``from_call``: ``success`` (1 minus the fault rates), mean ``accuracy``, and
    ``reward = success * accuracy``, the accuracy a call gets from its primary."""
    by_name = {spec.name: spec for spec in specs}
    rows = []
    for task, models in routes.items():
        for model in models:
            spec = by_name[model]
            success = 0.0 if spec.down else 1.0 - min(1.0, sum(getattr(spec, f) for f in _FAULT_RATES))
            rows.append((task, model, success, spec.mean_accuracy(task)))
    out = pd.DataFrame(rows, columns=["task_type", "model", "success", "accuracy"])
    return out.assign(reward=out["success"] * out["accuracy"], from_call=int(from_call))


def demo_truth(calls: int) -> pd.DataFrame:
    """The true rewards behind a log of one ``run_demo(calls=calls)``: the example fleet's specs, and
    from call ``calls // 2`` on the degraded model's."""
    from .simulate import DEGRADATION, DEGRADED_MODEL, example_fleet, example_routes

    fleet = example_fleet()
    specs = [fleet.spec(name) for name in fleet.names]
    degraded = [dataclasses.replace(s, **DEGRADATION) if s.name == DEGRADED_MODEL else s for s in specs]
    routes = example_routes()
    return pd.concat(
        [truth_from_specs(specs, routes), truth_from_specs(degraded, routes, from_call=calls // 2)], ignore_index=True
    )


def _truth_frame(truth: Mapping[tuple[str, str], float] | pd.DataFrame) -> pd.DataFrame:
    """A truth given as ``{(task_type, model): reward}`` or as a frame, as a frame with ``from_call``."""
    if isinstance(truth, pd.DataFrame):
        frame = truth if "from_call" in truth else truth.assign(from_call=0)
        return frame[["task_type", "model", "reward", "from_call"]]
    rows = [(task, model, float(reward)) for (task, model), reward in truth.items()]
    return pd.DataFrame(rows, columns=["task_type", "model", "reward"]).assign(from_call=0)


def true_rewards(log: Log, truth: Mapping[tuple[str, str], float] | pd.DataFrame) -> pd.DataFrame:
    """Per call and model of its task type: the true mean reward of that model at the call's index
    (``call_id``, ``call_index``, ``task_type``, ``model``, ``reward``; NaN before the pair's first
    truth row): what any choice would have earned in expectation, to value policies exactly.

    ``truth`` maps ``(task_type, model)`` to the true mean reward, or is a frame with columns
    ``task_type``, ``model``, ``reward`` and optionally ``from_call`` (each row holds from that call
    index until the same pair's next row: a piecewise-constant truth such as :func:`demo_truth`).
    """
    table = _truth_frame(truth).astype({"task_type": "str", "model": "str", "reward": float, "from_call": np.int64})
    w = with_windows(log.calls, 1)[["call_id", "call_index", "task_type"]].astype(
        {"task_type": "str", "call_index": np.int64}
    )
    grid = w.merge(table[["task_type", "model"]].drop_duplicates(), on="task_type").sort_values(
        "call_index", kind="stable"
    )
    truth_at = table.sort_values("from_call", kind="stable")
    grid = pd.merge_asof(grid, truth_at, left_on="call_index", right_on="from_call", by=["task_type", "model"])
    columns = ["call_id", "call_index", "task_type", "model", "reward"]
    return grid[columns].sort_values(["call_index", "model"]).reset_index(drop=True)


def cumulative_regret(log: Log, truth: Mapping[tuple[str, str], float] | pd.DataFrame) -> pd.DataFrame:
    """Per call, the expected reward lost by the policy's primary choice against an oracle that knew the
    true rewards (see :func:`true_rewards` for ``truth``), accumulated per task type.

    Returns ``call_id``, ``call_index``, ``task_type``, ``task_call`` (the call's number within its
    task type), ``primary``, ``reward``, ``best``, ``regret`` and ``cumulative_regret``. A primary or
    task type without a true reward at the call's index raises ValueError rather than count as zero.
    """
    rewards = true_rewards(log, truth)
    w = with_windows(log.calls, 1)
    r = rank_positions(w)
    c = w[["call_id", "call_index", "task_type"]].merge(
        r.loc[r["position"] == 0, ["call_id", "model"]].rename(columns={"model": "primary"}), on="call_id", how="left"
    )
    primary_reward = rewards[["call_id", "model", "reward"]].rename(columns={"model": "primary"})
    c = c.merge(primary_reward, on=["call_id", "primary"], how="left")
    c["best"] = c["call_id"].map(rewards.groupby("call_id")["reward"].max())
    missing = c[c["reward"].isna() | c["best"].isna()]
    if not missing.empty:
        pairs = sorted(set(zip(missing["task_type"], missing["primary"].fillna("?"))))
        raise ValueError(f"no true reward for (task_type, primary) {pairs[:5]}{' ...' if len(pairs) > 5 else ''}")
    c["regret"] = c["best"] - c["reward"]
    c["task_call"] = c.groupby("task_type").cumcount()
    c["cumulative_regret"] = c.groupby("task_type")["regret"].cumsum()
    cols = ["call_id", "call_index", "task_type", "task_call", "primary", "reward", "best", "regret"]
    return c[[*cols, "cumulative_regret"]].reset_index(drop=True)


# -- plots ------------------------------------------------------------------------------------------


def _figure(n_panels: int, ncols: int = 2, panel: tuple[float, float] = (5.2, 3.2)) -> tuple[Figure, list[Axes]]:
    """A figure with ``n_panels`` axes in a grid, built without pyplot (no display, no global state)."""
    with requires("plots"):
        from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n_panels))
    nrows = -(-n_panels // ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _colors(names: Iterable[str], first: Sequence[str] = ()) -> dict[Any, Any]:
    """A fixed colour per name, ``first`` names then the rest sorted, so one model (or estimator)
    keeps its colour across the figures of a log."""
    with requires("plots"):
        from matplotlib import color_sequences

    palette = color_sequences["tab10"]
    present = set(names)
    ordered = [n for n in first if n in present] + sorted(present - set(first))
    return {name: palette[i % len(palette)] for i, name in enumerate(ordered)}


def _mid(frame: pd.DataFrame) -> pd.Series:
    """Each window's centre, where its value is drawn, so a change on a window edge shows on the edge."""
    return (frame["start"] + frame["end"]) / 2


def _mark(ax: Axes, mark: float | None, label: str) -> None:
    """A dashed vertical line at a known change (a degradation), so a reader sees cause and effect."""
    if mark is not None:
        ax.axvline(mark, color="0.3", linestyle="--", linewidth=1, label=label)


def _legend(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend under the figure for every panel's lines, since a name keeps its colour across panels."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(
        list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 6), fontsize="small"
    )


def plot_traffic_share(
    share: pd.DataFrame, *, mark: float | None = None, mark_label: str = "change", xlabel: str = "call index"
) -> Figure:
    """Stacked share of each task type's traffic per model over time, from :func:`traffic_share`."""
    tasks = sorted(share["task_type"].unique())
    fig, axes = _figure(len(tasks))
    colors = _colors(share["model"])
    for ax, task in zip(axes, tasks):
        wide = (
            share[share["task_type"] == task]
            .assign(x=_mid)
            .pivot_table(index="x", columns="model", values="share", fill_value=0.0)
        )
        ax.stackplot(
            wide.index, wide.to_numpy().T, labels=wide.columns, colors=[colors[m] for m in wide.columns], alpha=0.85
        )
        _mark(ax, mark, mark_label)
        ax.set(
            title=task, xlabel=xlabel, ylabel="share of traffic", ylim=(0, 1), xlim=(wide.index.min(), wide.index.max())
        )
    _legend(fig, axes)
    fig.suptitle("Traffic share per model over time")
    return fig


def plot_latency(distribution: pd.DataFrame, *, title: str = "Latency of successful attempts per model") -> Figure:
    """One latency histogram per model, stacked on a shared log axis with each phase's median marked,
    from :func:`latency_distribution`; with phases, "before" is filled and "after" drawn dashed."""
    models = sorted(distribution["model"].unique())
    phases = [p for p in ("all", "before", "after") if p in set(distribution["phase"])]
    fig, axes = _figure(max(1, len(models)), ncols=1, panel=(8.0, 1.7))
    colors = _colors(models)
    for ax, model in zip(axes, models):
        medians = []
        for phase in phases:
            d = distribution[(distribution["model"] == model) & (distribution["phase"] == phase)]
            if d.empty:
                continue
            edges = np.append(d["left"].to_numpy(), d["right"].to_numpy()[-1])
            if phase != "after":
                ax.stairs(d["fraction"].to_numpy(), edges, fill=True, alpha=0.3, color=colors[model])
            style = "--" if phase == "after" else "-"
            ax.stairs(d["fraction"].to_numpy(), edges, color=colors[model], linewidth=1.5, label=phase, linestyle=style)
            k = np.searchsorted(d["fraction"].cumsum().to_numpy(), 0.5)
            median = float(np.sqrt(d["left"].to_numpy()[k] * d["right"].to_numpy()[k]))
            ax.axvline(median, color=colors[model], linewidth=1.2, linestyle=":")
            medians.append(f"{median * 1000:.0f} ms" + ("" if phase == "all" else f" {phase}"))
        ax.set_xscale("log")
        ax.set_ylabel("share", fontsize="small")
        ax.set_title(f"{model}: median about {', '.join(medians)}", loc="left", fontsize="small")
        if len(phases) > 1:
            ax.legend(fontsize="x-small", loc="upper right")
    for ax in axes[1:]:
        ax.sharex(axes[0])
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    axes[-1].set_xlabel("latency (s, log scale)")
    fig.suptitle(title)
    return fig


def plot_failure_rates(
    model_rates: pd.DataFrame,
    rates: pd.DataFrame,
    *,
    mark: float | None = None,
    mark_label: str = "change",
    xlabel: str = "call index",
) -> Figure:
    """Left: each model's attempt failure rate over time, marker area growing with its attempts
    (:func:`model_failure_rates`); right: each task type's fallback rate (solid) and failed-call rate
    (dashed) over time (:func:`call_rates`)."""
    with requires("plots"):
        from matplotlib.lines import Line2D

    fig, (left, right) = _figure(2, panel=(6.0, 3.8))
    colors = _colors(model_rates["model"])
    size = 120.0 / max(1.0, float(model_rates["attempts"].max()))
    for model, d in model_rates.groupby("model"):
        left.plot(_mid(d), d["failure_rate"], color=colors[model], linewidth=1, alpha=0.7)
        left.scatter(_mid(d), d["failure_rate"], s=8 + size * d["attempts"], color=colors[model], zorder=3)
    _mark(left, mark, mark_label)
    title = "Failed attempts per model (marker area ~ attempts)"
    left.set(title=title, xlabel=xlabel, ylabel="share of attempts failed", ylim=(-0.03, 1.03))
    handles = [Line2D([], [], color=c, marker="o", label=m) for m, c in colors.items()]
    left.legend(handles=handles + left.get_legend_handles_labels()[0], fontsize="small", loc="upper left")
    task_colors = _colors(rates["task_type"])
    for task, d in rates.groupby("task_type"):
        right.plot(_mid(d), d["fallback_rate"], marker="o", markersize=3, color=task_colors[task])
        right.plot(_mid(d), d["failure_rate"], linestyle="--", color=task_colors[task])
    _mark(right, mark, mark_label)
    right.set(
        title="Calls that needed a fallback, or failed", xlabel=xlabel, ylabel="share of calls", ylim=(-0.03, 1.03)
    )
    handles = [Line2D([], [], color=c, label=t) for t, c in task_colors.items()]
    handles += [
        Line2D([], [], color="0.4", marker="o", markersize=3, label="fallback"),
        Line2D([], [], color="0.4", linestyle="--", label="failed"),
    ]
    right.legend(handles=handles + right.get_legend_handles_labels()[0], fontsize="small", loc="upper left", ncols=2)
    fig.suptitle("Failures and fallbacks over time")
    return fig


def plot_ordering(
    ordering: pd.DataFrame, *, mark: float | None = None, mark_label: str = "change", xlabel: str = "call index"
) -> Figure:
    """Each model's mean place in its task's fallback order over time (1 = primary, top), from
    :func:`ordering_over_time`; task types with one model have nothing to order and are left out."""
    sizes = ordering.groupby("task_type")["model"].nunique()
    tasks = sorted(sizes[sizes > 1].index)
    fig, axes = _figure(max(1, len(tasks)))
    colors = _colors(ordering["model"])
    for ax, task in zip(axes, tasks):
        d = ordering[ordering["task_type"] == task]
        for model, m in d.groupby("model"):
            ax.plot(_mid(m), m["mean_position"] + 1, marker="o", markersize=3, color=colors[model], label=model)
        _mark(ax, mark, mark_label)
        ax.set(title=task, xlabel=xlabel, ylabel="mean place in fallback order", ylim=(sizes[task] + 0.1, 0.9))
    _legend(fig, axes)
    fig.suptitle("Learned preference order over time (1 = primary)")
    return fig


def plot_cost_over_time(
    cost: pd.DataFrame,
    *,
    budgets: Mapping[str, float] | None = None,
    mark: float | None = None,
    mark_label: str = "change",
    xlabel: str = "call index",
) -> Figure:
    """Each task type's cost per call over time, from :func:`cost_over_time`: per window and since the
    start, with the route's ``budget_per_call`` (dashed) where ``budgets`` gives one."""
    tasks = sorted(cost["task_type"].unique())
    fig, axes = _figure(len(tasks))
    for ax, task in zip(axes, tasks):
        c = cost[cost["task_type"] == task]
        ax.plot(_mid(c), c["cost_per_call"], marker="o", markersize=3, color="C0", label="per window")
        ax.plot(_mid(c), c["running_cost_per_call"], color="C1", label="since the start")
        if budgets is not None and task in budgets:
            ax.axhline(budgets[task], color="k", linestyle="--", linewidth=1, label="budget_per_call")
        _mark(ax, mark, mark_label)
        ax.set(title=task, xlabel=xlabel, ylabel="cost per call")
        ax.set_ylim(bottom=0)
    _legend(fig, axes)
    fig.suptitle("Spend per call over time")
    return fig


def plot_regret(regret: pd.DataFrame, *, mark: float | None = None, mark_label: str = "change") -> Figure:
    """Cumulative regret of each task type's policy against the oracle, over the run's calls, from
    :func:`cumulative_regret`."""
    fig, (ax,) = _figure(1, panel=(8.0, 4.0))
    colors = _colors(regret["task_type"])
    for task, d in regret.groupby("task_type"):
        ax.plot(d["call_index"], d["cumulative_regret"], color=colors[task], label=task)
    _mark(ax, mark, mark_label)
    ax.set(title="Cumulative regret against an oracle", xlabel="call index", ylabel="expected reward lost (sum)")
    ax.legend(fontsize="small")
    return fig


def plot_policy_estimates(
    estimates: pd.DataFrame, truth: pd.DataFrame | None = None, *, xlabel: str = "estimated mean reward per call"
) -> Figure:
    """Offline estimates of each policy's value with their intervals, one panel per task type and one
    colour per estimator, from a table with ``task_type``, ``policy``, ``estimator``, ``value``,
    ``ci_low`` and ``ci_high`` (such as :func:`zeta_adaptive.replay.compare`'s); ``truth``
    (``task_type``, ``policy``, ``value``) adds the true values as black diamonds."""
    with requires("plots"):
        from matplotlib.lines import Line2D

    tasks = sorted(estimates["task_type"].unique())
    policies = list(dict.fromkeys(estimates["policy"]))
    estimators = list(dict.fromkeys(estimates["estimator"]))
    fig, axes = _figure(len(tasks), ncols=len(tasks), panel=(4.2, 0.45 * len(policies) + 1.4))
    colors = _colors(_ESTIMATORS + estimators, first=_ESTIMATORS)
    offset = {e: (i - (len(estimators) - 1) / 2) * 0.8 / max(len(estimators), 1) for i, e in enumerate(estimators)}
    row = {p: i for i, p in enumerate(policies)}
    for ax, task in zip(axes, tasks):
        d = estimates[estimates["task_type"] == task]
        y = d["policy"].map(row) + d["estimator"].map(offset)
        for estimator, rows in d.assign(y=y).groupby("estimator", sort=False):
            err = np.vstack([rows["value"] - rows["ci_low"], rows["ci_high"] - rows["value"]]).clip(min=0)
            ax.errorbar(rows["value"], rows["y"], xerr=err, fmt="o", markersize=4, capsize=2, color=colors[estimator])
        if truth is not None:
            t = truth[truth["task_type"] == task]
            t = t[t["policy"].isin(policies)]
            ax.scatter(t["value"], t["policy"].map(row), marker="D", color="black", s=28, zorder=3)
        ax.set_yticks(range(len(policies)), policies if ax is axes[0] else [""] * len(policies))
        ax.set(title=task, xlabel=xlabel, ylim=(len(policies) - 0.5, -0.5))
        ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], color=colors[e], marker="o", label=e) for e in estimators]
    if truth is not None:
        handles.append(Line2D([], [], color="black", marker="D", linestyle="", label="truth"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small")
    fig.suptitle("Policies evaluated offline (95% intervals)")
    return fig
