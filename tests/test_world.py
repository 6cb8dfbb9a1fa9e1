"""The built-in world: deterministic images from keys, captions, held-out compositions, the downstream splits."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from recorders.clip.tokenizer import build_tokenizer, learn_merges
from recorders.data.world import (
    CLASSES,
    DOMAINS,
    DOWNSTREAM_DOMAIN,
    HELD_OUT,
    IMAGE_SIZE,
    SEEN,
    WORDS,
    caption,
    load_world,
    render_key,
    sample_scene,
)
from recorders.format.errors import DataError

KEYS = [
    f"world:{name}:{domain}:{index}"
    for name in ("red circle", "green triangle")
    for domain in DOMAINS
    for index in (0, 7)
]
_DIGEST = (
    "import hashlib, sys; from recorders.data.world import render_key; "
    "print(hashlib.sha256(b''.join(render_key(k).tobytes() for k in sys.argv[1:])).hexdigest())"
)


def test_images_are_identical_across_processes() -> None:
    """Two fresh interpreters (different hash seeds) render the same bytes for the same keys."""
    digests = {
        subprocess.run(
            [sys.executable, "-c", _DIGEST, *KEYS],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
            timeout=120,
        ).stdout.strip()
        for seed in (1, 2)
    }
    here = hashlib.sha256(b"".join(render_key(k).tobytes() for k in KEYS)).hexdigest()
    assert digests == {here}


def test_keys_differ_and_images_show_their_colour() -> None:
    images = {key: np.asarray(render_key(key), dtype=np.float32) for key in KEYS}
    assert all(image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) for image in images.values())
    assert len({image.tobytes() for image in images.values()}) == len(KEYS)
    # A red photo has more red than green or blue in its most saturated pixels; a green one the reverse.
    for colour, channel in (("red", 0), ("green", 1)):
        name = "red circle" if colour == "red" else "green triangle"
        image = images[f"world:{name}:photo:0"].reshape(-1, 3)
        saturated = image[np.argsort(image.max(1) - image.min(1))[-50:]]
        assert saturated.mean(0).argmax() == channel


def test_held_out_compositions_cover_each_colour_and_shape_once() -> None:
    colours = [name.split()[0] for name in HELD_OUT]
    shapes = [name.split()[1] for name in HELD_OUT]
    assert sorted(colours) == sorted({c.split()[0] for c in CLASSES})
    assert sorted(shapes) == sorted({c.split()[1] for c in CLASSES})
    assert set(SEEN) | set(HELD_OUT) == set(CLASSES) and not set(SEEN) & set(HELD_OUT)


def test_captions_name_domain_and_class_with_one_token_per_word() -> None:
    rng = np.random.default_rng(0)
    tokenizer = build_tokenizer(WORDS, 24)
    for domain, phrase in DOMAINS.items():
        scene = sample_scene("blue star", domain, rng)
        text = caption(scene, rng)
        assert phrase in text and "blue star" in text
        ids = tokenizer(text)["input_ids"]
        assert len(ids) == len(text.replace(".", " .").split()) + 2  # BOS + one per word + "." + EOT
        assert ids[-1] == tokenizer.eos_token_id == len(tokenizer) - 1


def test_learned_merges_make_each_word_one_symbol() -> None:
    merges = learn_merges(["red", "green", "greenish"])
    tokenizer = build_tokenizer(["red", "green", "greenish"], 8)
    assert len(merges) == len(set(merges))
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("green greenish red")["input_ids"])
    assert tokens[1:-1] == ["green</w>", "greenish</w>", "red</w>"]


def test_load_world_splits() -> None:
    world = load_world()
    n = len(CLASSES)
    assert world.classnames == sorted(CLASSES)
    assert (len(world.train), len(world.val), len(world.test)) == (32 * n, 8 * n, 25 * n)
    keys = [item.key for split in (world.train, world.val, world.test) for item in split]
    assert len(set(keys)) == len(keys)
    assert all(item.key.split(":")[2] == DOWNSTREAM_DOMAIN for item in world.test)
    assert all(world.classnames[item.label] == item.classname == item.key.split(":")[1] for item in world.train)
    base = set(world.classnames[: (n + 1) // 2])
    assert set(HELD_OUT) & base and set(HELD_OUT) - base  # held-out compositions in both halves
    image = world.load_image(world.test[0])
    assert image.size == (IMAGE_SIZE, IMAGE_SIZE) and image.mode == "RGB"
    assert load_world().fingerprint == world.fingerprint != ""


def test_world_mixed_spreads_every_split_over_its_domains() -> None:
    from collections import Counter

    from recorders.data.datasets import load_dataset
    from recorders.data.world import MIXED_DOMAINS, domain_of

    mixed, world = load_dataset("world-mixed", None), load_world()
    assert mixed.name == "world-mixed" and mixed.fingerprint != world.fingerprint
    assert len(MIXED_DOMAINS) >= 2
    for split in ("train", "val", "test"):
        items = getattr(mixed, split)
        assert len(items) == len(getattr(world, split))
        per_class = Counter((item.label, domain_of(item.key)) for item in items)
        counts = [per_class[(label, d)] for label in range(len(CLASSES)) for d in MIXED_DOMAINS]
        assert max(counts) - min(counts) <= 1 and min(counts) >= 1  # every class in every domain, evenly
    item = mixed.test[1]
    assert np.array_equal(np.asarray(mixed.load_image(item)), np.asarray(render_key(item.key)))  # a pure key


@pytest.mark.parametrize(
    "key",
    ["world:red circle:photo", "world:pink circle:photo:1", "world:red circle:x:1", "imagenet:red circle:photo:1"],
)
def test_bad_keys_are_data_errors(key: str) -> None:
    with pytest.raises(DataError, match="world:<class>:<domain>:<index>"):
        render_key(key)
