"""Cost of per-prompt routing: features of a 2k-character prompt, and a contextual decision plus its update.

    .venv/bin/python -m experiments.bench_contextual

Times are CPU time (``time.process_time``: the machine is shared, so wall-clock time counts other
processes' turns), the minimum over many short batches (``--n`` calls each) of the batch's mean: a
short batch is often spared the other processes' cache and core contention that a long one always
shares. Written to ``experiments/results/bench_contextual.md`` with the load average at the time.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from functools import partial
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


def best_of(fn: Any, n: int, repeats: int) -> float:
    """Minimum over repeats of the mean CPU time of ``n`` calls, in microseconds."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(n):
            fn()
        times.append((time.process_time() - start) / n * 1e6)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50, help="calls per batch")
    ap.add_argument("--repeats", type=int, default=200, help="batches per step (the minimum is reported)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    prompt = (TEXT * 20)[:2000]
    messages = [{"role": "user", "content": prompt}]
    rows = []
    for bits in (12, 16):  # 4k slots, and the contextual policies' default
        featurizer = Featurizer(bits=bits)
        rows.append(
            (
                f"features, 2,000-character prompt, 2^{bits} hashed slots",
                best_of(partial(featurizer, messages), args.n, args.repeats),
                "",
            )
        )
        x = featurizer(messages)
        for name in ("linear_thompson", "probit_thompson", "lin_ucb", "thompson"):
            if name == "thompson" and bits != 12:
                continue
            options = {"feature_bits": bits} if name != "thompson" else {}
            policy = make_policy(name, ["weak", "strong"], Objective(w_latency=0.0), seed=0, **options)
            contextual = getattr(policy, "contextual", False)
            # the answers' accuracies drawn beforehand: the timed cycle is the policy's work alone
            answers = itertools.cycle((np.random.default_rng(0).random(4096) < 0.7).astype(float).tolist())

            def cycle(policy: Any = policy, contextual: bool = contextual, answers: Any = answers, x: Any = x) -> None:
                model = (policy.rank(None, x) if contextual else policy.rank()).primary
                policy.update(model, True, 0.1, 1.0 if model == "strong" else 0.0)
                accuracy = next(answers)
                policy.feedback(model, accuracy, x) if contextual else policy.feedback(model, accuracy)

            for _ in range(2000):  # past the first updates, when the statistics are read after every one
                cycle()
            rows.append(
                (
                    f"{name}: rank + update + feedback (2 models)" + (f", 2^{bits} slots" if contextual else ""),
                    best_of(cycle, args.n, args.repeats),
                    f"{x.nnz} non-zero features" if contextual else "",
                )
            )
    lines = [
        "# Contextual routing cost",
        "",
        f"Command: `.venv/bin/python -m experiments.bench_contextual --n {args.n} --repeats {args.repeats}`",
        "",
        f"CPU time per step (µs), minimum over {args.repeats} batches of {args.n}; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores while measuring.",
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
