"""The few-shot base-to-novel protocol on tiny fake datasets."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from fake_datasets import make_caltech101, make_eurosat

from recorders.data.datasets import load_dataset
from recorders.data.fewshot import base_to_novel
from recorders.format.errors import DataError


@pytest.fixture
def eurosat(tmp_path: Path):
    make_eurosat(tmp_path, counts=(8, 5, 3))
    return load_dataset("eurosat", tmp_path)


def test_base_novel_membership_and_remapping(eurosat) -> None:
    task = base_to_novel(eurosat, shots=4, seed=1)
    assert task.base_classnames == eurosat.classnames[:5]
    assert task.novel_classnames == eurosat.classnames[5:]
    for items, names in (
        (task.train, task.base_classnames),
        (task.val, task.base_classnames),
        (task.test_base, task.base_classnames),
        (task.test_novel, task.novel_classnames),
    ):
        assert {it.label for it in items} == set(range(5))
        assert all(names[it.label] == it.classname for it in items)
    original = {it.key: it.label for it in eurosat.test}
    assert all(original[it.key] == it.label + 5 for it in task.test_novel)
    assert len(task.test_base) == len(task.test_novel) == 15


def test_odd_class_count_gives_base_the_extra_class(tmp_path: Path) -> None:
    make_caltech101(tmp_path, counts=(2, 1, 1))  # 7 classes
    ds = load_dataset("caltech101", tmp_path)
    task = base_to_novel(ds, shots=1, seed=0)
    assert len(task.base_classnames) == 4 and len(task.novel_classnames) == 3


def test_shot_counts(eurosat) -> None:
    for shots, val_shots in ((1, 1), (4, 4), (8, 4)):
        task = base_to_novel(eurosat, shots=shots, seed=3)
        assert Counter(it.label for it in task.train) == dict.fromkeys(range(5), shots)
        assert Counter(it.label for it in task.val) == dict.fromkeys(range(5), val_shots)
        train_keys = {it.key for it in eurosat.train}
        assert {it.key for it in task.train} <= train_keys
        assert len({it.key for it in task.train}) == len(task.train)


def test_seeds_differ_and_repeat(eurosat) -> None:
    a, b, c = (base_to_novel(eurosat, shots=2, seed=s) for s in (0, 0, 1))
    assert a.train == b.train and a.val == b.val
    assert a.train != c.train


def test_shots_larger_than_a_class_is_a_data_error(eurosat) -> None:
    with pytest.raises(DataError) as err:
        base_to_novel(eurosat, shots=9, seed=0)
    message = str(err.value)
    assert "'Annual Crop Land'" in message and "has 8 training images" in message and "\n" not in message


def test_sample_is_identical_in_another_process(tmp_path: Path, eurosat) -> None:
    code = (
        "import sys, pathlib; from recorders.data.datasets import load_dataset; "
        "from recorders.data.fewshot import base_to_novel; "
        "t = base_to_novel(load_dataset('eurosat', pathlib.Path(sys.argv[1])), shots=3, seed=7); "
        "print(' '.join(it.key for it in t.train + t.val))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    task = base_to_novel(eurosat, shots=3, seed=7)
    assert out.stdout.split() == [it.key for it in task.train + task.val]


def test_sample_is_cached_by_fingerprint_shots_and_seed(tmp_path: Path, eurosat) -> None:
    cache = tmp_path / "cache"
    task = base_to_novel(eurosat, shots=2, seed=5, cache_dir=cache)
    files = list(cache.glob("fewshot-eurosat-*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())
    assert stored["train"] == [it.key for it in task.train]
    # The cached sample is what is used: doctor it (a valid alternative) and read it back.
    other = [it.key for it in eurosat.train if it.key not in set(stored["train"]) and it.label < 5][:10]
    files[0].write_text(json.dumps({"train": other, "val": stored["val"]}))
    assert [it.key for it in base_to_novel(eurosat, shots=2, seed=5, cache_dir=cache).train] == other
    base_to_novel(eurosat, shots=2, seed=6, cache_dir=cache)
    base_to_novel(eurosat, shots=3, seed=5, cache_dir=cache)
    assert len(list(cache.glob("fewshot-eurosat-*.json"))) == 3


def test_a_corrupt_or_stale_cache_is_redrawn(tmp_path: Path, eurosat) -> None:
    cache = tmp_path / "cache"
    task = base_to_novel(eurosat, shots=2, seed=5, cache_dir=cache)
    (path,) = cache.glob("*.json")
    path.write_text("{ truncated")
    assert base_to_novel(eurosat, shots=2, seed=5, cache_dir=cache).train == task.train
    path.write_text(json.dumps({"train": ["2750/nowhere.png"], "val": []}))
    assert base_to_novel(eurosat, shots=2, seed=5, cache_dir=cache).train == task.train
