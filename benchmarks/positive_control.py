"""Is ``world-mixed`` a positive control? A prompt chosen per input must beat the best single prompt, learned or not.

On the built-in checkpoint and the ``world-mixed`` base-to-novel task (test images from four domains, 18 base and 18
novel classes), prints HM (base, novel) of:

- ``oracle``: zero-shot with the domain-matched hand prompt per input ("a {domain phrase} of a {class}." for the
  input's own domain): what a perfectly input-dependent prompt choice gets without any training;
- ``single[<phrase>]``: zero-shot with one hand prompt for every input, each domain phrase in turn, and the best;
- ``coop``: CoOp's learned single context (the world preset: 20 epochs, 16 shots), one run per seed.

The task is a positive control when the oracle beats CoOp's mean HM by at least ``--margin`` points (default 5):
then a learned single context cannot stand in for a per-input choice, and a method whose prompts adapt to the input
has something to gain. Exit code 1 when it is not.

    python benchmarks/positive_control.py [--seeds 1 2 3] [--dataset world-mixed] [--margin 5]

Zero-shot figures do not depend on the seed (the test set is fixed); CoOp's do (few-shot sample, order, views).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from recorders.clip.backbone import Backbone, load_backbone
from recorders.clip.encoders import text_features, token_embeddings
from recorders.data.datasets import load_dataset
from recorders.data.feature_cache import cached_features
from recorders.data.fewshot import base_to_novel
from recorders.data.types import FewShotTask, Item
from recorders.data.world import DOMAINS, domain_of
from recorders.format import harmonic_mean
from recorders.train.config import build_config
from recorders.train.loop import build_run, train


@torch.no_grad()
def encode_prompts(backbone: Backbone, texts: list[str]) -> torch.Tensor:
    """Normalised text features ``(len(texts), embed_dim)`` of plain hand prompts."""
    ids = backbone.tokenize(texts)
    feats = text_features(backbone.model, token_embeddings(backbone.model, ids), ids)
    return torch.nn.functional.normalize(feats.float(), dim=-1)


def zero_shot_accuracy(
    backbone: Backbone, task: FewShotTask, half: str, phrase_of: dict[str, str], cache: Path
) -> float:
    """Top-1 accuracy on the test items of ``half`` when each item is classified with the prompts of
    ``phrase_of[its domain]``."""
    items: list[Item] = task.test_base if half == "base" else task.test_novel
    classnames = task.base_classnames if half == "base" else task.novel_classnames
    feats = cached_features(
        backbone,
        items,
        task.dataset.load_image,
        kind="test",
        views=1,
        seed=0,
        cache_dir=cache,
        dataset_fingerprint=task.dataset.fingerprint,
        progress=False,
    )
    feats = torch.nn.functional.normalize(feats.float(), dim=-1)
    labels = np.array([item.label for item in items])
    domains = np.array([domain_of(item.key) for item in items])
    predictions = np.empty(len(items), np.int64)
    for phrase in set(phrase_of.values()):
        text = encode_prompts(backbone, [f"a {phrase} of a {c}." for c in classnames])
        rows = np.flatnonzero([phrase_of[d] == phrase for d in domains])
        predictions[rows] = (feats[rows] @ text.T).argmax(dim=1).cpu().numpy()
    return float(np.mean(predictions == labels))


def hm_of(backbone: Backbone, task: FewShotTask, phrase_of: dict[str, str], cache: Path) -> tuple[float, float, float]:
    base = zero_shot_accuracy(backbone, task, "base", phrase_of, cache)
    novel = zero_shot_accuracy(backbone, task, "novel", phrase_of, cache)
    return base, novel, harmonic_mean(base, novel)


def coop_run(dataset: str, seed: int, out: Path) -> tuple[float, float, float]:
    cfg = build_config([("method", "coop"), ("dataset", dataset), ("seed", seed), ("out", str(out))])
    result = train(build_run(cfg), progress=False)
    return result.after.base, result.after.novel, result.after.hm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--dataset", default="world-mixed")
    parser.add_argument("--margin", type=float, default=5.0, help="HM points the oracle must beat CoOp by")
    args = parser.parse_args()

    backbone = load_backbone("builtin", "cpu")
    task = base_to_novel(load_dataset(args.dataset, None), shots=16, seed=1)
    present = sorted({domain_of(item.key) for item in task.test_base + task.test_novel})
    line = lambda name, b, n, h: print(f"{name:<28} base {b:6.2%}  novel {n:6.2%}  HM {h:6.2%}")  # noqa: E731
    print(
        f"{args.dataset}: test domains {', '.join(present)}; {len(task.test_base)} base + "
        f"{len(task.test_novel)} novel test images"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        oracle = hm_of(backbone, task, {d: DOMAINS[d] for d in present}, cache)
        line("oracle (matched per input)", *oracle)
        singles = {}
        for phrase in DOMAINS.values():
            singles[phrase] = hm_of(backbone, task, {d: phrase for d in present}, cache)
            line(f"single[{phrase}]", *singles[phrase])
        best_phrase = max(singles, key=lambda p: singles[p][2])
        line(f"best single [{best_phrase}]", *singles[best_phrase])
        coop = []
        for seed in args.seeds:
            start = time.perf_counter()
            coop.append(coop_run(args.dataset, seed, cache / f"coop-s{seed}.h5"))
            line(f"coop seed {seed} ({time.perf_counter() - start:.0f} s)", *coop[-1])
    hms = np.array([c[2] for c in coop])
    mean, std = float(hms.mean()), float(hms.std(ddof=1)) if len(hms) > 1 else float("nan")
    gap_coop = 100 * (oracle[2] - mean)
    gap_single = 100 * (oracle[2] - singles[best_phrase][2])
    print(f"coop HM over {len(hms)} seeds: {mean:.2%} ± {std:.2%} (std)")
    print(f"oracle − best single hand prompt: {gap_single:+.1f} HM points")
    print(f"oracle − coop (mean): {gap_coop:+.1f} HM points (needs ≥ {args.margin:g})")
    ok = gap_coop >= args.margin
    print("positive control: " + ("yes" if ok else "NO: a learned single context closes the gap"))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
