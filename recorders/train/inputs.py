"""A run's inputs: the few-shot task, cached frozen features or pixels, and seeded training batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from recorders.data.transforms import EvalTransform, TrainTransform, load_batch, test_transform, train_transform
from recorders.data.types import FewShotTask, Item
from recorders.methods.base import PromptMethod
from recorders.progress import Progress, silent
from recorders.train.config import Config

#: Test pixels of pixel-input methods stay in memory for the run when they take at most this many bytes.
TEST_PIXEL_BYTES = 512 * 2**20


@dataclass
class TaskData:
    """Training and test inputs of one run.

    Feature methods: ``train_features`` ``(n, views, E)`` and ``test_inputs`` by half ``(n_half, E)`` (halves
    ``base``, ``novel`` and ``val``, the validation split). Pixel methods load and augment training items per batch;
    their test pixels ``(n_half, 3, S, S)`` are held in ``test_inputs`` when they fit in :data:`TEST_PIXEL_BYTES`,
    else loaded per evaluation batch.
    """

    task: FewShotTask
    train_labels: torch.Tensor
    train_features: torch.Tensor | None = None
    test_inputs: dict[str, torch.Tensor] = field(default_factory=dict)


def load_task(cfg: Config, cache_dir: Path | None = None) -> FewShotTask:
    """The few-shot base-to-novel task of ``cfg`` (dataset, shots, seed)."""
    from recorders.data.datasets import WORLD_DATASETS, data_root, load_dataset
    from recorders.data.fewshot import base_to_novel

    root = None if cfg.dataset in WORLD_DATASETS else data_root(cfg.data_root or None)
    return base_to_novel(load_dataset(cfg.dataset, root), cfg.shots, cfg.seed, cache_dir)


def prepare_data(
    method: PromptMethod, task: FewShotTask, cfg: Config, cache_dir: Path | None, progress: Progress = silent
) -> TaskData:
    device = method.backbone.device
    labels = torch.tensor([item.label for item in task.train], device=device)
    data = TaskData(task, labels)
    if method.needs_pixels:
        bb = method.backbone
        halves = (("base", task.test_base), ("novel", task.test_novel), ("val", task.val))
        if sum(len(items) for _, items in halves) * 3 * bb.image_size**2 * 4 <= TEST_PIXEL_BYTES:
            for half, items in halves:
                if items:
                    data.test_inputs[half] = load_pixels(method, items, task.dataset.load_image, None, cfg)
        return data
    from recorders.data.feature_cache import cached_features

    features = partial(
        cached_features,
        method.backbone,
        load_image=task.dataset.load_image,
        seed=cfg.seed,
        cache_dir=cache_dir,
        dataset_fingerprint=task.dataset.fingerprint,
        batch_size=cfg.eval_batch_size,
        progress=progress,
    )
    data.train_features = features(task.train, kind="train", views=cfg.views, crop_scale=cfg.crop_scale)
    for half, items in (("base", task.test_base), ("novel", task.test_novel), ("val", task.val)):
        if items:
            data.test_inputs[half] = features(items, kind="test", views=1)
    return data


def load_pixels(
    method: PromptMethod, items: list[Item], load_image: Callable, rngs: list | None, cfg: Config
) -> torch.Tensor:
    bb = method.backbone
    transform: TrainTransform | EvalTransform
    if rngs is not None:
        transform = train_transform(bb.image_size, bb.image_mean, bb.image_std, cfg.crop_scale)
    else:
        transform = test_transform(bb.image_size, bb.image_mean, bb.image_std)
    return load_batch(items, load_image, transform, rngs, workers=cfg.num_workers or None).to(bb.device)


def train_batches(
    data: TaskData, method: PromptMethod, cfg: Config, epoch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``(inputs, labels)`` batches in a seeded order (the last partial batch is dropped when the
    train set holds at least one full batch, as Dassl does)."""
    n = len(data.task.train)
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator)
    views = torch.randint(cfg.views, (n,), generator=generator)
    size = min(cfg.batch_size, n)
    for start in range(0, n - size + 1, size):
        index = order[start : start + size]
        labels = data.train_labels[index.to(data.train_labels.device)]
        if data.train_features is not None:
            feats = data.train_features
            yield feats[index.to(feats.device), views[index].to(feats.device)], labels
        else:
            items = [data.task.train[i] for i in index.tolist()]
            rngs = [np.random.default_rng([cfg.seed, epoch, i]) for i in index.tolist()]
            yield load_pixels(method, items, data.task.dataset.load_image, rngs, cfg), labels


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return n_train // batch_size if n_train >= batch_size else 1
