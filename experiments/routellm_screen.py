"""Fast screen of per-prompt routers on RouteLLM's MMLU file: numpy over precomputed features, the online protocol of routellm_mmlu.

Every budget of the sweep runs its own learner (one-sided feedback: only the chosen model's
correctness), the budgets side by side in one vectorised loop, with the same budget pacer
(``lam += rate * (cost - budget)``, a strong call costing 1) and the same APGR (trapezoid over the
strong-call share, ends included) as ``experiments.routellm_mmlu``. The learners are re-implemented
here in numpy, not the package's classes, so one stream order of one setting costs seconds:

* ``diag``: the package's diagonal Gaussian linear model (shared row + one row per model, online IDF, Kalman step),
  Thompson draws scaled by ``explore``;
* ``probit``: the same rows as a probit (logistic-like) model, updated by assumed-density filtering;
* ``--clusters K``: an online mini-batch spherical k-means over the IDF-weighted vectors, its one-hot added as a feature;
* ``--pacer quantile``: send to strong the prompts whose gap estimate is above the running (1 - budget) quantile
  of recent estimates (a window), the Lagrange multiplier only correcting the share.

    .venv/bin/python -m experiments.routellm_screen --orders 10
    .venv/bin/python -m experiments.routellm_screen --orders 2 --subjects-half 0 --model probit
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import ndtr

from zeta_adaptive import Featurizer

from .routellm_mmlu import load, metrics

BUDGETS = (0.1, 0.3, 0.5, 0.7, 0.9)
CACHE = Path("/tmp/routellm_screen_features_b16.npz")


def features(frame: pd.DataFrame, bits: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """CSR (indptr, indices, values) of every prompt's features and the number of hashed slots (cached)."""
    cache = CACHE.with_name(f"routellm_screen_features_b{bits}_{len(frame)}.npz")
    if cache.exists():
        z = np.load(cache)
        return z["indptr"], z["indices"], z["values"], int(z["hashed"])
    f = Featurizer(bits)
    xs = [f.from_text(t) for t in frame["prompt"]]
    indptr = np.r_[0, np.cumsum([x.nnz for x in xs])]
    indices = np.concatenate([x.indices for x in xs])
    values = np.concatenate([x.values for x in xs])
    np.savez(cache, indptr=indptr, indices=indices, values=values, hashed=f.hashed)
    return indptr, indices, values, f.hashed


def learn(
    mean: np.ndarray,
    var: np.ndarray,
    pick: np.ndarray,
    j: np.ndarray,
    v: np.ndarray,
    y: np.ndarray,
    model: str,
    noise_var: float,
) -> None:
    """One step of every budget's learner: the picked model's row and the shared row toward outcome y at x."""
    ar = np.arange(len(pick))
    m = mean[:, :, j]
    s2 = var[:, :, j]
    mu = m @ v
    sg = s2 @ (v * v)
    mi = m[ar, pick]  # (nb, nnz)
    ms = m[:, 2]
    vi = s2[ar, pick]
    vs = s2[:, 2]
    mu_i = mu[ar, pick] + mu[:, 2]
    var_i = sg[ar, pick] + sg[:, 2]
    gi = vi * v
    gs = vs * v
    if model == "diag":
        sc = 1.0 / (noise_var + var_i)
        r = (y - mu_i) * sc
        mi = mi + gi * r[:, None]
        ms = ms + gs * r[:, None]
        vi = vi - gi * gi * sc[:, None]
        vs = vs - gs * gs * sc[:, None]
    else:  # probit ADF
        sgn = 2.0 * y - 1.0
        den = np.sqrt(1.0 + var_i)
        zz = sgn * mu_i / den
        pdf = np.exp(-0.5 * zz * zz) / math.sqrt(2 * math.pi)
        ratio = pdf / np.maximum(ndtr(zz), 1e-12)
        w = ratio * (ratio + zz)
        step = (sgn * ratio / den)[:, None]
        mi = mi + gi * step
        ms = ms + gs * step
        shrink = (w / (1.0 + var_i))[:, None]
        vi = vi - gi * gi * shrink
        vs = vs - gs * gs * shrink
    mean[ar[:, None], pick[:, None], j[None, :]] = mi
    mean[:, 2, j] = ms
    var[ar[:, None], pick[:, None], j[None, :]] = vi
    var[:, 2, j] = vs


def run(
    frame: pd.DataFrame,
    csr: tuple[np.ndarray, np.ndarray, np.ndarray, int],
    order_seed: int,
    *,
    model: str = "diag",
    explore: float = 0.05,
    prior_var: float = 0.1,
    gap_var: float = 0.05,
    noise_var: float = 0.25,
    rate: float = 0.02,
    clusters: int = 0,
    cluster_var: float = 0.05,
    pacer: str = "lagrange",
    window: int = 500,
    budgets: tuple[float, ...] = BUDGETS,
    full: int = 0,
) -> dict[str, float]:
    """One stream order through one learner per budget; APGR, CPTs and each budget's (share, accuracy)."""
    indptr, indices, values, hashed = csr
    n = len(frame)
    order = np.random.default_rng(order_seed).permutation(n)
    weak, strong = frame["weak"].to_numpy(), frame["strong"].to_numpy()
    nb = len(budgets)
    bud = np.array(budgets)
    extra = clusters
    size = int(indices.max()) + 1 + extra
    bias = hashed
    # table: (budget, 3 rows [weak, strong, shared], slots), means and variances
    mean = np.zeros((nb, 3, size))
    var = np.empty((nb, 3, size))
    var[:, :2] = gap_var
    var[:, 2] = prior_var
    var[:, :, size - extra :] = [[gap_var], [gap_var], [cluster_var]] if extra else 0
    mean[:, 2, bias] = 0.5 if model == "diag" else 0.0
    df = np.zeros(hashed)
    lam = np.zeros(nb)
    scale = bud.copy()
    rng = np.random.default_rng(order_seed * 1000 + 7)
    chosen = np.zeros((nb, n), dtype=np.int8)
    right = np.zeros((nb, n), dtype=np.int8)
    centroids = None
    counts = None
    if clusters:
        centroids = np.zeros((clusters, hashed))
        counts = np.zeros(clusters)
    history = np.zeros((nb, window))
    for t, q in enumerate(order):
        j = indices[indptr[q] : indptr[q + 1]]
        v = values[indptr[q] : indptr[q + 1]].copy()
        h = int(np.searchsorted(j, hashed))
        dfj = df[j[:h]]
        hv = v[:h] * (1.0 + math.log(t + 1.0) - np.log1p(dfj))  # t prompts learned so far
        hv /= math.sqrt(hv @ hv) if h else 1.0
        v[:h] = hv
        if clusters:
            c = t if t < clusters else int(np.argmax(centroids[:, j[:h]] @ hv))
            counts[c] += 1
            centroids[c, j[:h]] += (hv - centroids[c, j[:h]]) / counts[c]  # sparse step toward x (no renorm)
            j = np.r_[j, size - extra + c]
            v = np.r_[v, 1.0]
        df[j[:h]] += 1
        m = mean[:, :, j]  # (nb, 3, nnz)
        s2 = var[:, :, j]
        mu = m @ v  # (nb, 3)
        sg = s2 @ (v * v)
        z = rng.standard_normal((nb, 3))
        f = mu + explore * np.sqrt(sg) * z
        if model == "diag":
            acc = f[:, :2] + f[:, 2:3]
        else:
            tot = f[:, :2] + f[:, 2:3]
            acc = ndtr(tot / np.sqrt(1.0 + sg[:, :2] + sg[:, 2:3]))
        gap = acc[:, 1] - acc[:, 0]
        if pacer == "lagrange":
            pick = (gap > lam).astype(np.int64)
        else:  # quantile of the recent gaps, shifted by the multiplier
            k = min(t, window)
            if k < 20:
                pick = (rng.random(nb) < bud).astype(np.int64)
            else:
                thr = np.array([np.quantile(history[b, :k], 1 - budgets[b]) for b in range(nb)])
                pick = (gap > thr + lam).astype(np.int64)
            history[:, t % window] = gap
        y = np.where(pick == 1, strong[q], weak[q])
        chosen[:, t] = pick
        right[:, t] = y
        learn(mean, var, pick, j, v, y, model, noise_var)
        if full:  # diagnostic: the other model's outcome too (full information)
            learn(mean, var, 1 - pick, j, v, np.where(pick == 1, weak[q], strong[q]), model, noise_var)
        scale = np.where(pick == 1, np.maximum(scale, 1.0), scale)
        lam += rate * (pick - bud) / scale
    acc_weak, acc_strong = weak.mean(), strong.mean()
    points = list(zip(chosen.mean(axis=1).tolist(), right.mean(axis=1).tolist(), strict=True))
    return {"order": order_seed, **metrics(points, acc_weak, acc_strong), "points": points}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orders", type=int, default=3)
    ap.add_argument("--subjects-half", type=int, default=None)
    ap.add_argument("--model", default="diag", choices=("diag", "probit"))
    ap.add_argument("--pacer", default="lagrange", choices=("lagrange", "quantile"))
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE")
    args = ap.parse_args(argv)
    frame = load()
    csr = features(frame)
    if args.subjects_half is not None:
        subjects = sorted(set(frame["subject"]))
        half = np.random.default_rng(100 + args.subjects_half).permutation(subjects)[: len(subjects) // 2]
        keep = np.flatnonzero(frame["subject"].isin(half).to_numpy())
        indptr, indices, values, hashed = csr
        lens = np.diff(indptr)[keep]
        take = np.concatenate([np.arange(indptr[q], indptr[q + 1]) for q in keep])
        csr = (np.r_[0, np.cumsum(lens)], indices[take], values[take], hashed)
        frame = frame.iloc[keep].reset_index(drop=True)
    opts = {k: float(v) if "." in v or "e" in v else int(v) for k, v in (s.split("=", 1) for s in args.set)}
    out = [run(frame, csr, o, model=args.model, pacer=args.pacer, **opts) for o in range(args.orders)]  # type: ignore[arg-type]
    apgr = np.array([r["apgr"] for r in out])
    ci = 1.96 * apgr.std(ddof=1) / math.sqrt(len(apgr)) if len(apgr) > 1 else 0.0
    print(
        f"half={args.subjects_half} model={args.model} pacer={args.pacer} {opts}: APGR {apgr.mean():.4f} ± {ci:.4f} "
        f"[{' '.join(f'{a:.3f}' for a in apgr)}] shares {[round(p[0], 3) for p in out[0]['points']]}"
    )


if __name__ == "__main__":
    main()
