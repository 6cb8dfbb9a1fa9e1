"""`ws batch` throughput: 8 short world runs sequentially vs `--jobs 2`, and Ray's per-run overhead vs local.

Prints the wall times, the sequential / parallel ratio (2 cores: ideally close to 2), and the mean extra seconds a
run costs under the Ray executor (task scheduling, worker start) compared with the local one.

    python benchmarks/batch.py [--runs 8] [--backbone builtin|DIR]

By default it uses a random-init tiny CLIP so the figure is about orchestration, not training.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from workstation.sweep.executors import LocalExecutor, RayExecutor
from workstation.sweep.runner import execute
from workstation.sweep.spec import parse_spec

FAST = {"dataset": "world", "shots": 1, "epochs": 1, "warmup_epochs": 0, "views": 1, "batch_size": 8}


def sweep(root: Path, name: str, backbone: str, runs: int):  # noqa: ANN201 - SweepSpec
    raw = {
        "name": name,
        "out": str(root),
        "base": {**FAST, "backbone": backbone},
        "axes": {"seed": list(range(1, runs + 1))},
    }
    return parse_spec(raw, root / f"{name}.toml")


def timed(spec, executor) -> float:  # noqa: ANN001
    start = time.perf_counter()
    outcome = execute(spec, executor)
    assert outcome.count("complete") == len(spec.runs), [e.error for e in outcome.manifest.runs.values()]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--backbone", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["WS_CACHE"] = str(root / "cache")
        backbone = args.backbone
        if not backbone:
            from recorders.clip.pretrain import random_checkpoint

            backbone = str(random_checkpoint(root / "clip"))
        timed(sweep(root, "warm", backbone, 1), LocalExecutor(1))  # fills the feature cache once
        sequential = timed(sweep(root, "seq", backbone, args.runs), LocalExecutor(1))
        parallel = timed(sweep(root, "par", backbone, args.runs), LocalExecutor(2))
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            ray_time = timed(sweep(root, "ray", backbone, args.runs), RayExecutor(None, cpus=1, gpus=0))
        finally:
            ray.shutdown()
    print(
        f"{args.runs} runs: sequential {sequential:.1f} s, --jobs 2 {parallel:.1f} s, "
        f"ratio {sequential / parallel:.2f}x"
    )
    print(
        f"ray (2 CPUs, 1 per run) {ray_time:.1f} s: overhead vs local --jobs 2 "
        f"{(ray_time - parallel) / args.runs:+.2f} s per run"
    )


if __name__ == "__main__":
    main()
