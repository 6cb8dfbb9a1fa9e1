"""Image transforms of the CoOp recipe, without torchvision: numpy + PIL in, a normalised torch tensor out.

Training: random resized crop (scale (0.08, 1), ratio (3/4, 4/3), bicubic; torchvision's sampling rule,
drawn from a ``numpy.random.Generator``) then a horizontal flip with probability 1/2. Testing: resize the
shorter side to ``image_size`` (bicubic) then centre crop. Both end with ``(x / 255 - mean) / std`` per
channel, giving a float32 tensor ``(3, image_size, image_size)``. Transforms are frozen dataclasses: their
fields are the parameters that feature-cache keys hash.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from recorders.data.types import Item

BICUBIC = Image.Resampling.BICUBIC
Box = tuple[int, int, int, int]  # (left, top, width, height) in pixels


@dataclass(frozen=True)
class TrainTransform:
    """Random resized crop + random horizontal flip + normalisation; call as ``t(image, rng)``."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        left, top, w, h = random_resized_crop_box(image.width, image.height, rng, self.scale, self.ratio)
        size = (self.image_size, self.image_size)
        out = image.resize(size, BICUBIC, box=(left, top, left + w, top + h))
        if rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(out, self.mean, self.std)


@dataclass(frozen=True)
class EvalTransform:
    """Resize the shorter side to ``image_size`` (bicubic), centre crop, normalise; call as ``t(image)``."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        s = self.image_size
        w, h = image.size
        if min(w, h) != s:
            size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
            image = image.resize(size, BICUBIC)
            w, h = size
        top, left = int(round((h - s) / 2)), int(round((w - s) / 2))
        return to_tensor(image.crop((left, top, left + s, top + s)), self.mean, self.std)


def train_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], crop_scale: float = 0.08
) -> TrainTransform:
    """The training transform of the CoOp recipe for a backbone's input size and normalisation; ``crop_scale`` is
    the smallest area fraction a random resized crop keeps (CoOp: 0.08)."""
    return TrainTransform(image_size, _triple(mean), _triple(std), scale=(crop_scale, 1.0))


def test_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> EvalTransform:
    """The test transform of the CoOp recipe for a backbone's input size and normalisation."""
    return EvalTransform(image_size, _triple(mean), _triple(std))


test_transform.__test__ = False  # type: ignore[attr-defined]  # pytest must not collect it when imported


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """torchvision's ``RandomResizedCrop.get_params``: up to 10 tries of a crop with area fraction in
    ``scale`` and log-uniform aspect ratio in ``ratio`` that fits the image, else the largest centred crop
    whose aspect ratio is clamped into ``ratio``. Returns ``(left, top, width, height)``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def to_tensor(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """An RGB image ``(H, W)`` as a float32 tensor ``(3, H, W)`` of ``(pixel / 255 - mean) / std``."""
    x = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    normalised = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


def load_batch(
    items: Sequence[Item],
    load_image: Callable[[Item], Image.Image],
    transform: TrainTransform | EvalTransform,
    rngs: Sequence[np.random.Generator] | None = None,
    workers: int | None = None,
) -> torch.Tensor:
    """Decode and transform ``items`` into a float32 batch ``(B, 3, S, S)``, on ``workers`` threads
    (default min(4, CPUs); PIL releases the GIL while decoding and resizing).

    A :class:`TrainTransform` needs one generator per item in ``rngs``; a :class:`EvalTransform` takes none.
    """
    if isinstance(transform, TrainTransform) and (rngs is None or len(rngs) != len(items)):
        raise ValueError("a training transform needs one numpy Generator per item in rngs")

    def work(k: int) -> torch.Tensor:
        image = load_image(items[k])
        if isinstance(transform, TrainTransform):
            assert rngs is not None
            return transform(image, rngs[k])
        return transform(image)

    if not items:
        s = transform.image_size
        return torch.empty(0, 3, s, s)
    n_workers = min(len(items), workers or min(4, os.cpu_count() or 1))
    if n_workers <= 1:
        return torch.stack([work(k) for k in range(len(items))])
    with ThreadPoolExecutor(n_workers) as pool:
        return torch.stack(list(pool.map(work, range(len(items)))))


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    """Three floats (per RGB channel) from any sequence of three numbers."""
    a, b, c = (float(v) for v in values)
    return a, b, c
