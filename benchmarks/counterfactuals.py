"""What the counterfactual evaluations add to a run's wall time (target: at most 15% on the default run).

Runs the same config twice in this process — as recorded (every evaluation also scores the gates at init / removed,
and at their test-set mean for instance gates) and with the counterfactuals switched off — after a warm-up run
that fills the feature cache, and prints both wall times and their ratio. Alternating order over ``--repeats``
pairs evens out a machine whose load changes.

    python benchmarks/counterfactuals.py                     # the README default run (coop-gating, world, seed 1)
    python benchmarks/counterfactuals.py --set epochs=5 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock


def timed_run(pairs: list[tuple[str, str]], out: Path, counterfactuals: bool) -> float:
    from recorders.train import evaluation, loop
    from recorders.train.config import build_config

    cfg = build_config([*pairs, ("out", str(out))])
    run = loop.build_run(cfg)
    patch = mock.patch.object(loop, "counterfactual_kinds", lambda method: ())
    off = mock.patch.object(evaluation, "counterfactuals", lambda gates, values, initial: {})
    start = time.perf_counter()
    if counterfactuals:
        loop.train(run, progress=False)
    else:
        with patch, off:
            loop.train(run, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="config overrides key=value (as ws record)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    pairs = [tuple(item.split("=", 1)) for item in args.set]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        timed_run(pairs, out / "warm.h5", True)  # feature cache and backbone load
        with_cf, without = [], []
        for i in range(args.repeats):
            order = (True, False) if i % 2 == 0 else (False, True)
            for flag in order:
                seconds = timed_run(pairs, out / f"r{i}-{flag}.h5", flag)
                (with_cf if flag else without).append(seconds)
    a, b = statistics.median(with_cf), statistics.median(without)
    print(f"with counterfactuals:    {a:7.2f} s  (runs: {', '.join(f'{x:.2f}' for x in with_cf)})")
    print(f"without counterfactuals: {b:7.2f} s  (runs: {', '.join(f'{x:.2f}' for x in without)})")
    print(f"added wall time: {a / b - 1:+.1%}  (target <= +15%)")


if __name__ == "__main__":
    main()
