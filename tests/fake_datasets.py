"""Tiny datasets in the CoOp on-disk layout, written by tests into a temporary folder.

Images are small generated PNGs (a class colour plus noise, deterministic), so loaders, the few-shot protocol
and the feature cache can be tested without real data. Other engineers' tests may import these helpers::

    root = tmp_path
    make_eurosat(root)                   # root/eurosat/2750/... + split_zhou_EuroSAT.json
    make_caltech101(root)                # root/caltech-101/101_ObjectCategories/... + split JSON
    make_imagenet(root)                  # root/imagenet/images/{train,val}/n*/ + classnames.txt
    make_imagefolder(root / "pets")      # root/pets/<class>/*.png
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

EUROSAT_FOLDERS = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)
CALTECH_FOLDERS = ("accordion", "airplanes", "anchor", "ant", "barrel", "bass", "beaver")
CALTECH_NAMES = ("accordion", "airplane", "anchor", "ant", "barrel", "bass", "beaver")
IMAGENET_CLASSES = (("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"))


def write_png(path: Path, label: int, index: int, size: tuple[int, int] = (20, 16)) -> Path:
    """A ``size`` (width, height) RGB PNG: colour set by ``label``, noise seeded by ``(label, index)``."""
    rng = np.random.default_rng([label, index])
    base = np.array([(37 * label) % 256, (91 * label + 40) % 256, (53 * label + 90) % 256], dtype=np.int16)
    noise = rng.integers(-30, 31, size=(size[1], size[0], 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_split_dataset(
    base: Path,
    image_dir: str,
    split_name: str,
    classes: list[tuple[str, str]],
    counts: tuple[int, int, int] = (6, 2, 3),
    listed_extra: list[tuple[str, str]] | None = None,
) -> Path:
    """Write ``base/image_dir/<folder>/<folder>_<k>.png`` for each ``(folder, classname)`` with ``counts``
    (train, val, test) images, and ``base/split_name`` in CoOp's format (paths relative to ``image_dir``).

    ``listed_extra`` classes get images and JSON rows too (labels after the others), to test filtering.
    """
    rows: dict[str, list[list[object]]] = {"train": [], "val": [], "test": []}
    for label, (folder, classname) in enumerate(classes + (listed_extra or [])):
        k = 0
        for split, count in zip(("train", "val", "test"), counts, strict=True):
            for _ in range(count):
                rel = f"{folder}/{folder}_{k:04d}.png"
                write_png(base / image_dir / rel, label, k)
                rows[split].append([rel, label, classname])
                k += 1
    (base / split_name).write_text(json.dumps(rows))
    return base


def make_eurosat(root: Path, counts: tuple[int, int, int] = (6, 2, 3), raw_names: bool = True) -> Path:
    """``root/eurosat`` with all 10 classes; ``raw_names`` puts folder names ("AnnualCrop") in the JSON."""
    from recorders.data.datasets import EUROSAT_CLASSNAMES

    classes = [(f, f if raw_names else EUROSAT_CLASSNAMES[f]) for f in EUROSAT_FOLDERS]
    return write_split_dataset(root / "eurosat", "2750", "split_zhou_EuroSAT.json", classes, counts)


def make_caltech101(root: Path, counts: tuple[int, int, int] = (6, 2, 3), ignored_in_json: bool = False) -> Path:
    """``root/caltech-101`` with 7 classes plus the ignored ``BACKGROUND_Google`` and ``Faces_easy`` folders
    (in the split JSON too when ``ignored_in_json``; on disk always)."""
    base = root / "caltech-101"
    classes = list(zip(CALTECH_FOLDERS, CALTECH_NAMES, strict=True))
    ignored = [("BACKGROUND_Google", "background google"), ("Faces_easy", "faces easy")]
    write_split_dataset(
        base,
        "101_ObjectCategories",
        "split_zhou_Caltech101.json",
        classes,
        counts,
        listed_extra=ignored if ignored_in_json else None,
    )
    for label, (folder, _) in enumerate(ignored, start=100):
        write_png(base / "101_ObjectCategories" / folder / "image_0001.png", label, 0)
    return base


def make_imagenet(root: Path, train_per_class: int = 60, val_per_class: int = 3) -> Path:
    """``root/imagenet`` with 3 classes: ``images/train/<wnid>/``, ``images/val/<wnid>/``, classnames.txt."""
    base = root / "imagenet"
    for label, (wnid, _) in enumerate(IMAGENET_CLASSES):
        for k in range(train_per_class):
            write_png(base / "images" / "train" / wnid / f"{wnid}_{k}.png", label, k)
        for k in range(val_per_class):
            write_png(base / "images" / "val" / wnid / f"val_{wnid}_{k}.png", label, 1000 + k)
    lines = [f"{wnid} {name}" for wnid, name in IMAGENET_CLASSES]
    (base / "classnames.txt").write_text("\n".join(lines) + "\n")
    return base


def make_imagefolder(
    base: Path, classes: tuple[str, ...] = ("cat", "dog", "golden_retriever", "newt"), per_class: int = 10
) -> Path:
    """``base/<class>/<k>.png`` with ``per_class`` images per class, no split file."""
    for label, name in enumerate(classes):
        for k in range(per_class):
            write_png(base / name / f"{k:03d}.png", label, k)
    return base
