"""The frozen-feature cache: cached == recomputed through transformers, and any change of key recomputes."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_datasets import make_imagefolder

from recorders.clip.backbone import Backbone, load_backbone
from recorders.clip.pretrain import random_checkpoint
from recorders.data import feature_cache as fc
from recorders.data import transforms as T
from recorders.data.datasets import load_dataset
from recorders.format.errors import ConfigError


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    """A random-init tiny CLIP saved and loaded like any checkpoint (CPU)."""
    return load_backbone(str(random_checkpoint(tmp_path_factory.mktemp("clip"))), device="cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    root = make_imagefolder(tmp_path_factory.mktemp("data") / "pets", classes=("cat", "dog"), per_class=5)
    return load_dataset("imagefolder", root)


@pytest.fixture(scope="module")
def primed(backbone, dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A cache directory holding the default train entry, and those features."""
    cache = tmp_path_factory.mktemp("primed")
    return cache, features(backbone, dataset, cache)


def reference(backbone: Backbone, images: list, transform, rngs=None) -> torch.Tensor:
    """Features through transformers' own ``get_image_features``, one image at a time."""
    rows = []
    with torch.no_grad():
        for k, image in enumerate(images):
            x = transform(image, rngs[k]) if rngs else transform(image)
            out = backbone.model.get_image_features(pixel_values=x[None])
            rows.append(out if isinstance(out, torch.Tensor) else out.pooler_output)
    return torch.cat(rows)


def features(backbone, dataset, cache: Path, **overrides) -> torch.Tensor:
    args = dict(kind="train", views=3, seed=4, cache_dir=cache, dataset_fingerprint=dataset.fingerprint)
    args |= overrides
    items = args.pop("items", dataset.train)
    return fc.cached_features(backbone, items, dataset.load_image, batch_size=4, **args)


def test_train_features_equal_transformers_on_the_seeded_views(backbone, dataset, tmp_path: Path) -> None:
    got = features(backbone, dataset, tmp_path)
    n = len(dataset.train)
    assert got.shape == (n, 3, backbone.embed_dim) and got.dtype == torch.float32
    transform = T.train_transform(backbone.image_size, backbone.image_mean, backbone.image_std)
    for i in (0, n - 1):
        image = dataset.load_image(dataset.train[i])
        rngs = [np.random.default_rng([4, i, v]) for v in range(3)]
        torch.testing.assert_close(got[i], reference(backbone, [image] * 3, transform, rngs), atol=1e-5, rtol=0)
    assert not torch.allclose(got[0, 0], got[0, 1])  # views really differ


def test_test_features_use_the_test_transform(backbone, dataset, tmp_path: Path) -> None:
    got = features(backbone, dataset, tmp_path, kind="test", items=dataset.test)
    assert got.shape == (len(dataset.test), backbone.embed_dim)
    transform = T.test_transform(backbone.image_size, backbone.image_mean, backbone.image_std)
    images = [dataset.load_image(it) for it in dataset.test]
    torch.testing.assert_close(got, reference(backbone, images, transform), atol=1e-5, rtol=0)


def test_second_call_reads_the_cache(backbone, dataset, primed, monkeypatch) -> None:
    cache, first = primed
    assert len(list(cache.glob("train-*.npy"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(fc, "compute_features", fail)
    torch.testing.assert_close(features(backbone, dataset, cache), first, atol=0, rtol=0)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 5},
        {"views": 2},
        {"dataset_fingerprint": "another"},
        {"items": "reversed"},
        {"backbone": "fingerprint"},
        {"backbone": "image_mean"},
    ],
)
def test_any_change_of_key_recomputes(backbone, dataset, primed, tmp_path: Path, monkeypatch, change) -> None:
    shutil.copytree(primed[0], tmp_path, dirs_exist_ok=True)
    calls = []
    compute = fc.compute_features
    monkeypatch.setattr(fc, "compute_features", lambda *a, **k: calls.append(1) or compute(*a, **k))
    if change.get("items") == "reversed":
        change = {"items": dataset.train[::-1]}
    elif change.get("backbone") == "fingerprint":
        backbone, change = replace(backbone, fingerprint="other-weights"), {}
    elif change.get("backbone") == "image_mean":
        backbone, change = replace(backbone, image_mean=(0.5, 0.5, 0.5)), {}
    features(backbone, dataset, tmp_path, **change)
    assert calls == [1]
    assert len(list(tmp_path.glob("train-*.npy"))) == 2


def test_a_corrupt_entry_is_recomputed(backbone, dataset, primed, tmp_path: Path) -> None:
    shutil.copytree(primed[0], tmp_path, dirs_exist_ok=True)
    first = primed[1]
    (entry,) = tmp_path.glob("train-*.npy")
    entry.write_bytes(b"\x93NUMPY garbage")
    torch.testing.assert_close(features(backbone, dataset, tmp_path), first, atol=0, rtol=0)
    np.save(entry, np.zeros((2, 2), np.float32))  # wrong shape: never trusted
    torch.testing.assert_close(features(backbone, dataset, tmp_path), first, atol=0, rtol=0)


def test_unknown_kind_is_a_config_error(backbone, dataset, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train, test"):
        features(backbone, dataset, tmp_path, kind="val")
