"""The frozen-feature cache: image features of a frozen backbone, computed once and reused across runs.

Methods without vision prompts (CoOp, CoCoOp and their gated forms) never change the image encoder's
output, so the features of ``views`` augmented views of every training image, and of every test image, can
be computed once. View ``v`` of item ``i`` is transformed with ``numpy.random.default_rng([seed, i, v])``,
so the views are reproducible. The cache key hashes everything the features depend on (backbone
fingerprint, dataset fingerprint, the item keys in order, kind, views, seed, the transform's parameters), so
a stale entry is never read. Entries are float32 ``.npy`` files under ``cache_dir`` (default
``$WS_CACHE/features`` or ``~/.cache/ws/features``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from recorders.data.transforms import EvalTransform, TrainTransform, load_batch, test_transform, train_transform
from recorders.data.types import Item
from recorders.files import atomic_write
from recorders.format.errors import ConfigError
from recorders.paths import features_dir
from recorders.progress import Progress, silent

KINDS = ("train", "test")
FORMAT_VERSION = 1  # bump when the computation changes in a way the key does not capture


def cached_features(
    backbone: Any,
    items: list[Item],
    load_image: Callable[[Item], Image.Image],
    *,
    kind: str,
    views: int,
    seed: int,
    cache_dir: Path | None,
    dataset_fingerprint: str,
    batch_size: int = 64,
    progress: Progress = silent,
    crop_scale: float = 0.08,
) -> torch.Tensor:
    """Image features of ``items`` from ``backbone`` (a :class:`recorders.clip.backbone.Backbone`), cached on disk.

    ``kind="train"``: ``(len(items), views, embed_dim)``, view ``v`` of item ``i`` under the training
    transform with generator ``default_rng([seed, i, v])``. ``kind="test"``: ``(len(items), embed_dim)``
    under the test transform (``views``, ``seed`` and ``crop_scale`` are ignored). Features are CLIP's projected,
    unnormalised image features, computed batched under ``backbone.autocast()``, returned float32 on
    ``backbone.device``.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown feature kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "train" and views < 1:
        raise ConfigError(f"--views must be at least 1, got {views}")
    if seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {seed}")
    transform: TrainTransform | EvalTransform
    if kind == "train":
        transform = train_transform(backbone.image_size, backbone.image_mean, backbone.image_std, crop_scale)
    else:
        transform = test_transform(backbone.image_size, backbone.image_mean, backbone.image_std)
        views, seed = 1, 0
    key = cache_key(backbone.fingerprint, dataset_fingerprint, items, kind, views, seed, transform)
    path = Path(cache_dir if cache_dir is not None else features_dir()) / f"{kind}-{key}.npy"
    shape = (len(items), views, backbone.embed_dim) if kind == "train" else (len(items), backbone.embed_dim)
    features = _read(path, shape)
    if features is None:
        features = compute_features(backbone, items, load_image, transform, views, seed, batch_size, progress)
        features = features.reshape(shape)
        _write(path, features)
    return torch.from_numpy(features).to(backbone.device)


def cache_key(
    backbone_fingerprint: str,
    dataset_fingerprint: str,
    items: Sequence[Item],
    kind: str,
    views: int,
    seed: int,
    transform: TrainTransform | EvalTransform,
) -> str:
    """SHA-256 (hex, 32 characters) of everything cached features depend on."""
    payload = {
        "version": FORMAT_VERSION,
        "backbone": backbone_fingerprint,
        "dataset": dataset_fingerprint,
        "items": hashlib.sha256("\n".join(it.key for it in items).encode()).hexdigest(),
        "kind": kind,
        "views": views,
        "seed": seed,
        "transform": [type(transform).__name__, dataclasses.asdict(transform)],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def compute_features(
    backbone: Any,
    items: Sequence[Item],
    load_image: Callable[[Item], Image.Image],
    transform: TrainTransform | EvalTransform,
    views: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    progress: Progress = silent,
) -> np.ndarray:
    """Features ``(len(items) * views, embed_dim)`` float32, ordered item-major (row ``i * views + v``)."""
    from recorders.clip.encoders import image_features

    jobs = [(i, v) for i in range(len(items)) for v in range(views)]
    augment = isinstance(transform, TrainTransform)
    load = functools.lru_cache(maxsize=batch_size)(load_image)  # decode each item once for all its views
    out = np.empty((len(jobs), backbone.embed_dim), dtype=np.float32)
    model = backbone.model
    with torch.inference_mode():
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            rngs = [np.random.default_rng([seed, i, v]) for i, v in batch] if augment else None
            pixels = load_batch([items[i] for i, _ in batch], load, transform, rngs)
            with backbone.autocast():
                feats = image_features(model, pixels.to(backbone.device))
            out[start : start + len(batch)] = feats.float().cpu().numpy()
            progress("features", start + len(batch), len(jobs))
    return out


def _read(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array if present, readable and of the expected shape; else None (recompute)."""
    if not path.is_file():
        return None
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if features.shape != shape or features.dtype != np.float32:
        return None
    return features


def _write(path: Path, features: np.ndarray) -> None:
    """Write atomically: a killed run never leaves a truncated entry."""
    atomic_write(path, lambda f: np.save(f, features), binary=True)
