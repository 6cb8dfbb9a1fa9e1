"""Plain data contracts shared by datasets, the built-in world, few-shot sampling and the feature cache.

Torch-free: an :class:`Item` names one image by a stable key; a :class:`DatasetSplits` lists a dataset's items
with labels in the dataset's own label space and knows how to load an item's image as an RGB ``PIL.Image``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image


@dataclass(frozen=True)
class Item:
    """One image. ``key`` is stable across machines (a path relative to the dataset root, or a generator spec
    such as ``"world:<class>:<domain>:<index>"``); ``label`` indexes ``DatasetSplits.classnames``."""

    key: str
    label: int
    classname: str


@dataclass
class DatasetSplits:
    """A dataset's train/val/test items, its class names by label, and its image loader.

    ``fingerprint`` changes whenever the items or images would change (used in cache keys).
    """

    name: str
    classnames: list[str]
    train: list[Item]
    val: list[Item]
    test: list[Item]
    load_image: Callable[[Item], Image.Image] = field(repr=False)
    fingerprint: str = ""


@dataclass
class FewShotTask:
    """The base-to-novel few-shot task for one seed.

    Base classes are the first ceil(n/2) sorted labels, novel the rest; labels are remapped to ``0..m-1`` within
    each half. ``train``/``val`` hold base items only (K shots and min(K, 4) shots per class); ``test_base`` and
    ``test_novel`` hold every test item of each half, with remapped labels.
    """

    dataset: DatasetSplits
    shots: int
    seed: int
    base_classnames: list[str]
    novel_classnames: list[str]
    train: list[Item]
    val: list[Item]
    test_base: list[Item]
    test_novel: list[Item]
