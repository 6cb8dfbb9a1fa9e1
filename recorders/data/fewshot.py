"""The few-shot base-to-novel protocol (CoOp/CoCoOp): which images a seed trains, validates and tests on.

Torch-free. Labels are sorted; base = the first ceil(n/2), novel = the rest, each remapped to ``0..m-1``.
Each base class contributes K training shots and min(K, 4) validation shots. The sample of a class depends
only on the seed, its label and its sorted item keys (a ``numpy.random.default_rng([seed, label, split])``
stream), so the same seed gives the same sample on every machine and in every process.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from recorders.data.types import DatasetSplits, FewShotTask, Item
from recorders.files import atomic_write
from recorders.format.errors import ConfigError, DataError

VAL_SHOTS_MAX = 4
_STREAM = {"train": 0, "val": 1}


def base_to_novel(splits: DatasetSplits, shots: int, seed: int, cache_dir: Path | None = None) -> FewShotTask:
    """Sample the K-shot base-to-novel task of ``seed``.

    ``train``: K items per base class; ``val``: min(K, 4) per base class (all it has if fewer);
    ``test_base`` / ``test_novel``: every test item of each half. Labels and class names are remapped within
    each half. With ``cache_dir``, the sampled keys are stored there as JSON (keyed by dataset fingerprint, K
    and seed) and reused. Raises :class:`DataError` when a base class has fewer than K training images.
    """
    if shots < 1:
        raise ConfigError(f"--shots must be at least 1, got {shots}")
    if seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {seed}")
    n = len(splits.classnames)
    base = list(range(math.ceil(n / 2)))
    novel = list(range(len(base), n))
    path = _cache_path(splits, shots, seed, cache_dir) if cache_dir is not None else None
    keys = _read_cache(path)
    if keys is None or not _consistent(keys, splits):
        keys = {
            "train": _sample(splits.train, base, shots, seed, "train", splits.name),
            "val": _sample(splits.val, base, min(shots, VAL_SHOTS_MAX), seed, "val", splits.name),
        }
        if path is not None:
            _write_cache(path, keys)
    return FewShotTask(
        dataset=splits,
        shots=shots,
        seed=seed,
        base_classnames=[splits.classnames[y] for y in base],
        novel_classnames=[splits.classnames[y] for y in novel],
        train=_select(splits.train, set(keys["train"]), base),
        val=_select(splits.val, set(keys["val"]), base),
        test_base=_remap([it for it in splits.test if it.label < len(base)], base),
        test_novel=_remap([it for it in splits.test if it.label >= len(base)], novel),
    )


def _sample(items: list[Item], labels: list[int], k: int, seed: int, split: str, dataset: str) -> list[str]:
    """Keys of ``k`` items per label drawn without replacement; strict (K too large is an error) for train."""
    by_label: dict[int, list[str]] = {y: [] for y in labels}
    for item in items:
        if item.label in by_label:
            by_label[item.label].append(item.key)
    chosen: list[str] = []
    for label in labels:
        pool = sorted(by_label[label])
        if len(pool) < k and split == "train":
            classname = next((it.classname for it in items if it.label == label), str(label))
            raise DataError(
                f"{dataset} class {classname!r} has {len(pool)} training images, fewer than --shots {k}: "
                f"use --shots {len(pool)} or fewer"
            )
        rng = np.random.default_rng([seed, label, _STREAM[split]])
        picks = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
        chosen += [pool[i] for i in sorted(picks)]
    return chosen


def _consistent(keys: dict[str, list[str]], splits: DatasetSplits) -> bool:
    """Whether every cached key still names an item of its split (a hand-edited cache is redrawn)."""
    return set(keys["train"]) <= {it.key for it in splits.train} and set(keys["val"]) <= {it.key for it in splits.val}


def _select(items: list[Item], keys: set[str], labels: list[int]) -> list[Item]:
    """The items whose key was sampled, in dataset order, relabelled within ``labels``."""
    return _remap([it for it in items if it.key in keys], labels)


def _remap(items: list[Item], labels: list[int]) -> list[Item]:
    """Relabel items from the dataset's label space to the index of their label in ``labels``."""
    index = {y: i for i, y in enumerate(labels)}
    return [replace(it, label=index[it.label]) for it in items]


def _cache_path(splits: DatasetSplits, shots: int, seed: int, cache_dir: Path) -> Path:
    """``cache_dir/fewshot-<name>-<hash of fingerprint, K, seed>.json``."""
    digest = hashlib.sha256(f"{splits.fingerprint}|{shots}|{seed}".encode()).hexdigest()[:24]
    return Path(cache_dir) / f"fewshot-{splits.name}-{digest}.json"


def _read_cache(path: Path | None) -> dict[str, list[str]] | None:
    """The cached keys, or None when absent or unreadable (then the sample is drawn again)."""
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return {"train": list(data["train"]), "val": list(data["val"])}
    except (ValueError, KeyError, TypeError):
        return None


def _write_cache(path: Path, keys: dict[str, list[str]]) -> None:
    """Write atomically, so concurrent runs never read half a file."""
    atomic_write(path, lambda f: json.dump(keys, f))
