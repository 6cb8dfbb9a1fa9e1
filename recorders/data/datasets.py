"""Datasets in the layout CoOp users already have on disk, any ``root/<class>/*`` tree, and the world.

Torch-free. Every loader returns a :class:`~recorders.data.types.DatasetSplits` whose items are keyed by their
path relative to the dataset's own folder (``$DATA/<folder>``), so keys, few-shot samples and cache entries
are the same on every machine. Layouts (see ``docs/datasets.md``)::

    $DATA/imagenet/images/{train,val}/n*/*       + $DATA/imagenet/classnames.txt   ("n01440764 tench")
    $DATA/caltech-101/101_ObjectCategories/*/*   + $DATA/caltech-101/split_zhou_Caltech101.json
    $DATA/eurosat/2750/*/*                       + $DATA/eurosat/split_zhou_EuroSAT.json
    ROOT/<class>/*                               (+ ROOT/split.json if present; else a deterministic split)

A split JSON maps ``"train" | "val" | "test"`` to ``[[relative_path, label, classname], ...]`` with paths
relative to the image folder, as in CoOp.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from recorders.data.types import DatasetSplits, Item
from recorders.format.errors import ConfigError, DataError

DATASETS: tuple[str, ...] = ("world", "world-mixed", "imagenet", "caltech101", "eurosat", "imagefolder")

WORLD_DATASETS: tuple[str, ...] = ("world", "world-mixed")  # built in: generated from keys, no data root

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "val", "test")

CALTECH_IGNORED = frozenset({"BACKGROUND_Google", "Faces_easy"})
# CoOp's rewrite of EuroSAT folder names into words CLIP knows (datasets/eurosat.py, NEW_CLASSNAMES).
EUROSAT_CLASSNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}
# Fractions (train, val) of each class for a dataset without a split file; the rest is test.
IMAGEFOLDER_SPLIT = (0.5, 0.2)
# Fraction of each ImageNet training class held out as validation (the official val folder is the test set).
IMAGENET_VAL_FRACTION = 0.02


def data_root(cli_value: str | None) -> Path:
    """The data root: ``--data-root`` if given, else ``$WS_DATA``; it must be an existing directory."""
    value = cli_value or os.environ.get("WS_DATA")
    if not value:
        raise ConfigError("no data root: pass --data-root DIR or set WS_DATA=DIR (the folder of your datasets)")
    root = Path(value).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} is not a directory: fix --data-root or WS_DATA")
    return root


def load_dataset(name: str, root: Path | None) -> DatasetSplits:
    """Load dataset ``name`` (one of :data:`DATASETS`) from data root ``root``; the built-in worlds ignore it.

    ``root`` may be the data root (``$DATA``) or the dataset's own folder (``$DATA/eurosat``).
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    if name in WORLD_DATASETS:
        from recorders.data.world import DOWNSTREAM_DOMAIN, MIXED_DOMAINS, load_world

        return load_world(domains=MIXED_DOMAINS if name == "world-mixed" else (DOWNSTREAM_DOMAIN,))
    if root is None:
        raise ConfigError(f"dataset {name!r} needs a data root: pass --data-root DIR or set WS_DATA=DIR")
    loaders: dict[str, Callable[[Path], DatasetSplits]] = {
        "imagenet": load_imagenet,
        "caltech101": load_caltech101,
        "eurosat": load_eurosat,
        "imagefolder": load_imagefolder,
    }
    return loaders[name](Path(root))


def load_imagenet(root: Path) -> DatasetSplits:
    """ImageNet: ``images/train`` gives train (minus a deterministic per-class validation slice),
    ``images/val`` is the test set; names from ``classnames.txt`` lines ``"<wnid> <name>"``; labels follow
    sorted wnids."""
    base = _dataset_dir(root, "imagenet", "images")
    names_file = base / "classnames.txt"
    if not names_file.is_file():
        raise DataError(f"missing {names_file}: put CoOp's classnames.txt (lines 'n01440764 tench') in {base}")
    wnid_names: dict[str, str] = {}
    try:
        names_text = names_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{names_file} is not UTF-8 text (byte {exc.start}); save it as UTF-8 (lines 'n01440764 tench')"
        ) from None
    for line in names_text.splitlines():
        wnid, _, name = line.strip().partition(" ")
        if wnid:
            wnid_names[wnid] = name.strip()
    wnids = sorted(wnid_names)
    for split in ("train", "val"):
        if not (base / "images" / split).is_dir():
            raise DataError(f"missing folder {base / 'images' / split}: put ImageNet's {split} images there")
    train_all = _scan_classes(base, Path("images/train"), wnids, [wnid_names[w] for w in wnids])
    test = _scan_classes(base, Path("images/val"), wnids, [wnid_names[w] for w in wnids])
    train, val, _ = _hash_split(train_all, (1.0 - IMAGENET_VAL_FRACTION, IMAGENET_VAL_FRACTION))
    classnames = [wnid_names[w] for w in wnids]
    return _splits("imagenet", base, classnames, train, val, test)


def load_caltech101(root: Path) -> DatasetSplits:
    """Caltech101 with Zhou's split; ``BACKGROUND_Google`` and ``Faces_easy`` are ignored (100 classes)."""
    base = _dataset_dir(root, "caltech-101", "101_ObjectCategories")
    split_file = base / "split_zhou_Caltech101.json"
    return _from_split_file("caltech101", base, "101_ObjectCategories", split_file, ignored=CALTECH_IGNORED)


def load_eurosat(root: Path) -> DatasetSplits:
    """EuroSAT (RGB, 10 classes) with Zhou's split; class names rewritten as in CoOp ("Annual Crop Land")."""
    base = _dataset_dir(root, "eurosat", "2750")
    split_file = base / "split_zhou_EuroSAT.json"
    return _from_split_file("eurosat", base, "2750", split_file, rename=EUROSAT_CLASSNAMES)


def load_imagefolder(root: Path) -> DatasetSplits:
    """Any ``root/<class>/*`` tree. Labels follow sorted folder names; a class name is its folder name with
    ``_`` as spaces. Uses ``root/split.json`` (CoOp format, paths relative to ``root``) when present, else a
    deterministic per-class 50/20/30 train/val/test split by the hash of each image's path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist: pass a folder holding one sub-folder per class")
    split_file = root / "split.json"
    if split_file.is_file():
        return _from_split_file("imagefolder", root, ".", split_file)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"no class folders in {root}: lay images out as {root}/<class>/<image>")
    items = _scan_classes(root, Path("."), folders, [f.replace("_", " ") for f in folders])
    train, val, test = _hash_split(items, IMAGEFOLDER_SPLIT)
    return _splits("imagefolder", root, [f.replace("_", " ") for f in folders], train, val, test)


def image_loader(base: Path) -> Callable[[Item], Image.Image]:
    """A loader opening ``base / item.key`` as RGB; raises :class:`DataError` naming the path on failure."""

    def load_image(item: Item) -> Image.Image:
        path = base / item.key
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            reason = type(exc).__name__ if isinstance(exc, UnidentifiedImageError) else exc
            raise DataError(f"cannot read image {path} ({reason}): replace or remove the file") from None

    return load_image


def fingerprint(name: str, classnames: list[str], splits: dict[str, list[Item]]) -> str:
    """SHA-256 of the dataset name, class names and every split's (key, label) list (not the image bytes)."""
    payload = {
        "name": name,
        "classnames": classnames,
        "splits": {split: [[item.key, item.label] for item in items] for split, items in splits.items()},
    }
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()


def _dataset_dir(root: Path, folder: str, marker: str) -> Path:
    """``root/folder`` if it exists, or ``root`` itself when it already is that folder (holds ``marker``)."""
    if (root / folder).is_dir():
        return root / folder
    if (root / marker).exists():
        return root
    raise DataError(f"missing dataset folder {root / folder}: lay it out as described in docs/datasets.md")


def _from_split_file(
    name: str,
    base: Path,
    image_dir: str,
    split_file: Path,
    ignored: frozenset[str] = frozenset(),
    rename: dict[str, str] | None = None,
) -> DatasetSplits:
    """Read a CoOp split JSON; drop classes whose folder is ``ignored``; relabel densely; rename classes."""
    if not split_file.is_file():
        raise DataError(f"missing split file {split_file}: download {split_file.name} (CoOp's DATASETS.md) into {base}")
    try:
        raw = json.loads(split_file.read_text(encoding="utf-8"))
        rows = {split: [_split_row(row) for row in raw[split]] for split in SPLITS}
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"split file {split_file} is not CoOp's format ({exc}): it must map train/val/test to "
            "[[path, label, classname], ...]"
        ) from None
    kept = {s: [r for r in rs if Path(r[0]).parts[0] not in ignored] for s, rs in rows.items()}
    label_names: dict[int, str] = {}
    for _, label, classname in (r for rs in kept.values() for r in rs):
        label_names.setdefault(label, (rename or {}).get(classname, classname))
    dense = {old: new for new, old in enumerate(sorted(label_names))}
    classnames = [label_names[old] for old in sorted(label_names)]
    prefix = Path(image_dir)
    splits = {
        s: [Item((prefix / p).as_posix(), dense[y], classnames[dense[y]]) for p, y, _ in rs] for s, rs in kept.items()
    }
    return _splits(name, base, classnames, splits["train"], splits["val"], splits["test"])


def _split_row(row: object) -> tuple[str, int, str]:
    """One ``[relative_path, label, classname]`` row of a split JSON; raises ``ValueError`` naming what is wrong."""
    if not isinstance(row, list | tuple) or len(row) != 3:
        raise ValueError(f"row {row!r} is not [path, label, classname]")
    path, label, classname = row
    if not isinstance(path, str) or not path.strip() or Path(path).is_absolute() or ".." in Path(path).parts:
        raise ValueError(f"row {row!r} needs a non-empty relative image path")
    if isinstance(label, bool) or not isinstance(label, int):
        raise ValueError(f"row {row!r} needs an integer label")
    return path, label, str(classname)


def _scan_classes(base: Path, sub: Path, folders: list[str], classnames: list[str]) -> list[Item]:
    """Items for every image file in ``base/sub/<folder>`` with label = index of ``folder``; sorted keys."""
    items: list[Item] = []
    for label, (folder, classname) in enumerate(zip(folders, classnames, strict=True)):
        directory = base / sub / folder
        if not directory.is_dir():
            raise DataError(f"missing class folder {directory}: every listed class needs a folder of images")
        with os.scandir(directory) as entries:
            names = sorted(e.name for e in entries if Path(e.name).suffix.lower() in IMAGE_SUFFIXES)
        items += [Item((sub / folder / n).as_posix(), label, classname) for n in names]
    return items


def _hash_split(items: Iterable[Item], fractions: tuple[float, float]) -> tuple[list[Item], list[Item], list[Item]]:
    """Split each class deterministically: order by SHA-1 of the key, take ``fractions`` for train and val
    (at least one each when the class has enough images), the rest for test. Outputs are sorted by key."""
    by_class: dict[int, list[Item]] = {}
    for item in items:
        by_class.setdefault(item.label, []).append(item)
    out: tuple[list[Item], list[Item], list[Item]] = ([], [], [])
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda it: hashlib.sha1(it.key.encode()).hexdigest())
        n = len(members)
        n_train = max(1, round(n * fractions[0])) if n else 0
        n_val = min(n - n_train, max(1, round(n * fractions[1]))) if n > 1 else 0
        out[0].extend(members[:n_train])
        out[1].extend(members[n_train : n_train + n_val])
        out[2].extend(members[n_train + n_val :])
    train, val, test = (sorted(part, key=lambda it: it.key) for part in out)
    return train, val, test


def _splits(
    name: str, base: Path, classnames: list[str], train: list[Item], val: list[Item], test: list[Item]
) -> DatasetSplits:
    """Assemble a :class:`DatasetSplits` with its loader and fingerprint."""
    return DatasetSplits(
        name=name,
        classnames=classnames,
        train=train,
        val=val,
        test=test,
        load_image=image_loader(base),
        fingerprint=fingerprint(name, classnames, {"train": train, "val": val, "test": test}),
    )
