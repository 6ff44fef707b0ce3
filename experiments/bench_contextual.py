"""Cost of per-prompt routing: features of a 2k-character prompt, and a contextual decision plus its update.

    .venv/bin/python -m experiments.bench_contextual

Times are the minimum over repeats of the mean of a batch (the machine is shared), written to
``experiments/results/bench_contextual.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from zeta_adaptive import Featurizer, Objective, make_policy

from .common import RESULTS

TEXT = (
    "A patient suffers a CVA in the area of the left internal capsule conveying motor neurons to the right leg. "
    "The patient's leg will exhibit A. spastic paralysis. B. flaccid paralysis. C. tremor. D. hyporeflexia. Answer: "
    "def f(x): return x ** 2 + 3 * x  # what is f(2)? Explain why, step by step, and show the algebra. "
)


def best_of(fn: Any, n: int, repeats: int = 7) -> float:
    """Minimum over repeats of the mean time of ``n`` calls, in microseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n * 1e6)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    prompt = (TEXT * 20)[:2000]
    featurizer = Featurizer(bits=12)
    messages = [{"role": "user", "content": prompt}]
    rows = [("features, 2,000-character prompt, 2^12 hashed slots", best_of(lambda: featurizer(messages), args.n), "")]
    x = featurizer(messages)
    for name in ("linear_thompson", "lin_ucb", "thompson"):
        policy = make_policy(name, ["weak", "strong"], Objective(w_latency=0.0), seed=0)
        contextual = getattr(policy, "contextual", False)
        rng = np.random.default_rng(0)

        def cycle(policy: Any = policy, contextual: bool = contextual, rng: Any = rng) -> None:
            model = (policy.rank(None, x) if contextual else policy.rank()).primary
            policy.update(model, True, 0.1, 1.0 if model == "strong" else 0.0)
            accuracy = float(rng.random() < 0.7)
            policy.feedback(model, accuracy, x) if contextual else policy.feedback(model, accuracy)

        for _ in range(200):
            cycle()
        rows.append(
            (
                f"{name}: rank + update + feedback (2 models)",
                best_of(cycle, args.n),
                f"{x.nnz} non-zero features" if contextual else "",
            )
        )
    lines = [
        "# Contextual routing cost",
        "",
        "Command: `.venv/bin/python -m experiments.bench_contextual`",
        "",
        "| step | µs | note |",
        "|---|---|---|",
    ]
    lines += [f"| {step} | {us:.1f} | {note} |" for step, us, note in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_contextual.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
