"""What the counterfactual evaluations add to a run's wall time (target: at most 15% on the default run).

Runs the same config twice in this process — as recorded (every evaluation also scores the gates at init / removed,
and at their test-set mean for instance gates) and with the counterfactuals switched off — after a warm-up run
that fills the feature cache, and prints both times and their ratio: of the training call alone (the strict
basis: everything the counterfactuals cost happens in it) and of the whole run in this process (building it, then
training; a `ws record` adds its imports and the verdict on top). The figure is the median over ``--repeats``
back-to-back pairs of the with/without ratio (alternating which runs first), with a 95% bootstrap interval: a
shared VM's speed drifts by tens of percent between pairs, which a ratio of the two sides' medians does not
cancel.

    python benchmarks/counterfactuals.py       # the README default run (coop-gating, world, seed 1), 12 pairs
    python benchmarks/counterfactuals.py --set epochs=5 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock


def timed_run(pairs: list[tuple[str, str]], out: Path, counterfactuals: bool) -> tuple[float, float, float]:
    """(wall seconds, this process's CPU seconds) of one training call, and the wall seconds of the whole run in
    this process (building it: backbone, task, cached features; then training)."""
    from recorders.train import evaluation, loop
    from recorders.train.config import build_config

    built = time.perf_counter()
    cfg = build_config([*pairs, ("out", str(out))])
    run = loop.build_run(cfg)
    patch = mock.patch.object(loop, "counterfactual_kinds", lambda method: ())
    off = mock.patch.object(evaluation, "counterfactuals", lambda gates, values, initial: {})
    start, cpu = time.perf_counter(), time.process_time()
    if counterfactuals:
        loop.train(run)
    else:
        with patch, off:
            loop.train(run)
    end = time.perf_counter()
    return end - start, time.process_time() - cpu, end - built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="config overrides key=value (as ws record)")
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()
    pairs = [tuple(item.split("=", 1)) for item in args.set]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        timed_run(pairs, out / "warm.h5", True)  # feature cache and backbone load
        times: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
        for i in range(args.repeats):
            order = (True, False) if i % 2 == 0 else (False, True)
            for flag in order:
                times[flag].append(timed_run(pairs, out / f"r{i}-{flag}.h5", flag))
    for k, what in ((0, "train wall"), (1, "train CPU"), (2, "run wall")):
        a, b = (statistics.median(t[k] for t in times[flag]) for flag in (True, False))
        runs = {flag: ", ".join(f"{t[k]:.2f}" for t in times[flag]) for flag in (True, False)}
        print(f"{what}: with counterfactuals {a:.2f} s ({runs[True]}), without {b:.2f} s ({runs[False]})")
        ratio, low, high = paired_ratio([t[k] for t in times[True]], [t[k] for t in times[False]])
        print(
            f"{what}: added {ratio - 1:+.1%} [95% bootstrap {low - 1:+.1%}, {high - 1:+.1%}], median over "
            f"{len(times[True])} back-to-back pairs  (target <= +15%)"
        )


def paired_ratio(with_: list[float], without: list[float], draws: int = 10_000) -> tuple[float, float, float]:
    """Median over pairs of ``with_[i] / without[i]`` (each pair ran back to back, so a machine whose speed drifts
    between pairs cancels out) and a 95% percentile bootstrap interval of that median."""
    import numpy as np

    ratios = np.asarray(with_) / np.asarray(without)
    resampled = np.median(ratios[np.random.default_rng(0).integers(len(ratios), size=(draws, len(ratios)))], axis=1)
    low, high = np.quantile(resampled, [0.025, 0.975])
    return float(np.median(ratios)), float(low), float(high)


if __name__ == "__main__":
    main()
