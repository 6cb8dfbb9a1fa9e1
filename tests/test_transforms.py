"""Transforms against float64 numpy references.

Geometry is checked on linear ramp images: bicubic resampling (any symmetric, normalised kernel) reproduces a
linear function exactly away from the image border, so each output pixel must equal the ramp evaluated at the
source coordinate it maps to, up to PIL's 8-bit rounding (one grey level per pass).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from recorders.data import transforms as T
from recorders.data.types import Item

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def ramp(width: int, height: int) -> Image.Image:
    """R = x, G = y (pixel units, so width, height <= 256), B = 128."""
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], axis=-1).astype(np.uint8))


def pixels(t: torch.Tensor) -> np.ndarray:
    """Undo the normalisation: (3, S, S) tensor -> float64 grey levels (S, S, 3)."""
    x = t.double().numpy().transpose(1, 2, 0)
    return (x * np.array(STD) + np.array(MEAN)) * 255.0


def source_coords(offset: float, length: float, size: int) -> np.ndarray:
    """Source pixel coordinate (pixel-centre convention) of each of ``size`` output pixels."""
    return offset + (np.arange(size) + 0.5) * length / size - 0.5


def assert_ramp(out: np.ndarray, xs: np.ndarray, ys: np.ndarray, size: tuple[int, int], margin: float) -> None:
    """``out`` (S, S, 3) grey levels equal the ramp at source coordinates ``xs`` (columns), ``ys`` (rows),
    within one grey level and without bias (against PIL's round-half-up), wherever the kernel stays
    ``margin`` pixels inside the ``size`` source image."""
    gx, gy = np.meshgrid(xs, ys)
    inside = (gx >= margin) & (gx <= size[0] - 1 - margin) & (gy >= margin) & (gy <= size[1] - 1 - margin)
    assert inside.sum() > 50
    for channel, expected in ((0, gx), (1, gy)):
        error = out[..., channel][inside] - np.floor(expected[inside] + 0.5)
        assert np.abs(error).max() <= 1.01 and abs(error.mean()) < 0.25  # no systematic shift either
    np.testing.assert_allclose(out[..., 2], 128.0, atol=1e-3)


def test_to_tensor_matches_float64_normalisation() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    out = T.to_tensor(Image.fromarray(arr), MEAN, STD)
    assert out.dtype == torch.float32 and out.shape == (3, 7, 5)
    expected = ((arr.astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_eval_transform_crops_the_centre_without_resizing_when_sides_match() -> None:
    image = ramp(32, 50)
    out = T.test_transform(32, MEAN, STD)(image)
    assert out.shape == (3, 32, 32)
    expected = np.asarray(image, dtype=np.float64)[9:41]  # top = round((50 - 32) / 2)
    np.testing.assert_allclose(pixels(out), expected, atol=1e-3)


@pytest.mark.parametrize(("width", "height"), [(64, 96), (150, 60), (20, 24)])
def test_eval_transform_resizes_shorter_side_then_centre_crops(width: int, height: int) -> None:
    s = 32
    out = pixels(T.test_transform(s, MEAN, STD)(ramp(width, height)))
    scale = s / min(width, height)
    new_w, new_h = (s, int(s * height / width)) if width <= height else (int(s * width / height), s)
    top, left = round((new_h - s) / 2), round((new_w - s) / 2)
    xs = source_coords(left * width / new_w, s * width / new_w, s)
    ys = source_coords(top * height / new_h, s * height / new_h, s)
    assert_ramp(out, xs, ys, (width, height), margin=3 * max(1.0, 1 / scale))  # support widens when shrinking


def test_train_transform_samples_the_crop_and_flip_it_is_given() -> None:
    width, height, s = 200, 160, 24
    image = ramp(width, height)
    transform = T.train_transform(s, MEAN, STD)
    flips = []
    for seed in range(12):
        out = pixels(transform(image, np.random.default_rng(seed)))
        replay = np.random.default_rng(seed)  # the same draws, in the documented order
        left, top, w, h = T.random_resized_crop_box(width, height, replay)
        flipped = replay.random() < 0.5
        flips.append(flipped)
        xs, ys = source_coords(left, w, s), source_coords(top, h, s)
        if flipped:
            xs = xs[::-1]
        assert_ramp(out, xs, ys, (width, height), margin=3 * max(1.0, w / s, h / s))
    assert any(flips) and not all(flips)


def test_crop_boxes_follow_torchvision_bounds() -> None:
    rng = np.random.default_rng(0)
    width, height = 200, 160
    boxes = np.array([T.random_resized_crop_box(width, height, rng) for _ in range(3000)])
    left, top, w, h = boxes.T
    assert (left >= 0).all() and (top >= 0).all()
    assert (left + w <= width).all() and (top + h <= height).all()
    area = w * h / (width * height)
    assert area.min() >= 0.07 and area.max() <= 1.0 and area.min() < 0.1 and area.max() > 0.9
    aspect = w / h
    assert aspect.min() >= 0.7 and aspect.max() <= 1.4
    assert abs(np.median(np.log(aspect))) < 0.05  # log-uniform about 1


def test_crop_box_falls_back_to_a_centred_clamped_crop() -> None:
    box = T.random_resized_crop_box(400, 10, np.random.default_rng(0), scale=(0.9, 1.0))
    assert box == ((400 - 13) // 2, 0, 13, 10)  # w = round(10 * 4/3)


def test_load_batch_equals_per_item_transforms_on_threads() -> None:
    images = {f"k{i}": ramp(40 + 7 * i, 30 + 3 * i) for i in range(5)}
    items = [Item(key, 0, "ramp") for key in images]

    def load(item: Item) -> Image.Image:
        return images[item.key]

    train = T.train_transform(16, MEAN, STD)
    batch = T.load_batch(items, load, train, [np.random.default_rng([1, i]) for i in range(5)], workers=3)
    assert batch.shape == (5, 3, 16, 16) and batch.dtype == torch.float32
    single = torch.stack([train(images[it.key], np.random.default_rng([1, i])) for i, it in enumerate(items)])
    torch.testing.assert_close(batch, single, rtol=0, atol=0)
    test = T.test_transform(16, MEAN, STD)
    torch.testing.assert_close(T.load_batch(items, load, test), torch.stack([test(im) for im in images.values()]))
    with pytest.raises(ValueError, match="Generator"):
        T.load_batch(items, load, train)
