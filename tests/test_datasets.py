"""CoOp-layout dataset loaders on tiny fake datasets written to tmp_path."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fake_datasets import (
    CALTECH_NAMES,
    EUROSAT_FOLDERS,
    make_caltech101,
    make_eurosat,
    make_imagefolder,
    make_imagenet,
    write_png,
)
from PIL import Image

from recorders.data.datasets import EUROSAT_CLASSNAMES, data_root, load_dataset
from recorders.format.errors import ConfigError, DataError


def test_eurosat_has_ten_classes_renamed_as_coop(tmp_path: Path) -> None:
    make_eurosat(tmp_path, counts=(4, 2, 3))
    ds = load_dataset("eurosat", tmp_path)
    assert ds.classnames[0] == "Annual Crop Land"
    assert ds.classnames == [EUROSAT_CLASSNAMES[f] for f in EUROSAT_FOLDERS]
    assert "Sea or Lake" in ds.classnames and "SeaLake" not in ds.classnames
    assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 20, 30)
    assert Counter(it.label for it in ds.train) == dict.fromkeys(range(10), 4)
    assert all(ds.classnames[it.label] == it.classname for it in ds.train + ds.val + ds.test)
    assert ds.train[0].key.startswith("2750/AnnualCrop/")


def test_eurosat_json_with_rewritten_names_loads_the_same(tmp_path: Path) -> None:
    make_eurosat(tmp_path / "a", raw_names=True)
    make_eurosat(tmp_path / "b", raw_names=False)
    a, b = load_dataset("eurosat", tmp_path / "a"), load_dataset("eurosat", tmp_path / "b")
    assert a.classnames == b.classnames
    assert a.fingerprint == b.fingerprint


def test_caltech_ignores_background_and_faces_easy(tmp_path: Path) -> None:
    make_caltech101(tmp_path, counts=(3, 1, 2), ignored_in_json=True)
    ds = load_dataset("caltech101", tmp_path)
    assert ds.classnames == list(CALTECH_NAMES)
    items = ds.train + ds.val + ds.test
    assert not any("BACKGROUND_Google" in it.key or "Faces_easy" in it.key for it in items)
    assert {it.label for it in items} == set(range(len(CALTECH_NAMES)))
    assert len(ds.test) == 2 * len(CALTECH_NAMES)


def test_image_loader_returns_the_file_as_rgb(tmp_path: Path) -> None:
    base = make_caltech101(tmp_path)
    ds = load_dataset("caltech101", tmp_path / "caltech-101")  # the dataset folder itself works too
    item = ds.test[0]
    image = ds.load_image(item)
    assert image.mode == "RGB"
    expected = np.asarray(Image.open(base / item.key).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(image), expected)


def test_imagenet_val_folder_is_test_and_val_comes_from_train(tmp_path: Path) -> None:
    make_imagenet(tmp_path, train_per_class=60, val_per_class=3)
    ds = load_dataset("imagenet", tmp_path)
    assert ds.classnames == ["tench", "goldfish", "great white shark"]
    assert len(ds.test) == 9 and all(it.key.startswith("images/val/") for it in ds.test)
    assert all(it.key.startswith("images/train/") for it in ds.train + ds.val)
    assert not {it.key for it in ds.train} & {it.key for it in ds.val}
    assert len(ds.train) + len(ds.val) == 180
    assert Counter(it.label for it in ds.val) == dict.fromkeys(range(3), 1)  # 2% of 60, at least one


def test_imagefolder_split_is_deterministic_disjoint_and_stratified(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "pets", per_class=10)
    ds = load_dataset("imagefolder", tmp_path / "pets")
    assert ds.classnames == ["cat", "dog", "golden retriever", "newt"]
    sizes = [Counter(it.label for it in split) for split in (ds.train, ds.val, ds.test)]
    assert sizes == [dict.fromkeys(range(4), n) for n in (5, 2, 3)]
    keys = [it.key for it in ds.train + ds.val + ds.test]
    assert len(set(keys)) == 40
    again = load_dataset("imagefolder", tmp_path / "pets")
    assert again.train == ds.train and again.fingerprint == ds.fingerprint


def test_imagefolder_uses_split_json_when_present(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "pets", classes=("cat", "dog"), per_class=3)
    split = {
        "train": [["cat/000.png", 0, "cat"], ["dog/000.png", 1, "dog"]],
        "val": [],
        "test": [["dog/001.png", 1, "dog"]],
    }
    (root / "split.json").write_text(json.dumps(split))
    ds = load_dataset("imagefolder", root)
    assert [it.key for it in ds.train] == ["cat/000.png", "dog/000.png"]
    assert [(it.key, it.label) for it in ds.test] == [("dog/001.png", 1)]


def test_fingerprint_changes_with_the_item_list(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "pets", per_class=10)
    before = load_dataset("imagefolder", tmp_path / "pets").fingerprint
    write_png(tmp_path / "pets" / "cat" / "extra.png", 0, 99)
    after = load_dataset("imagefolder", tmp_path / "pets").fingerprint
    assert before != after


def test_listing_is_identical_in_another_process(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "pets", per_class=10)
    code = (
        "import sys; from recorders.data.datasets import load_dataset; "
        "print(load_dataset('imagefolder', __import__('pathlib').Path(sys.argv[1])).fingerprint)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "pets")], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == load_dataset("imagefolder", tmp_path / "pets").fingerprint


@pytest.mark.parametrize(
    ("make", "name", "missing", "message"),
    [
        (make_eurosat, "eurosat", "eurosat/split_zhou_EuroSAT.json", "split_zhou_EuroSAT.json"),
        (
            make_caltech101,
            "caltech101",
            "caltech-101/split_zhou_Caltech101.json",
            "split_zhou_Caltech101.json",
        ),
        (make_imagenet, "imagenet", "imagenet/classnames.txt", "classnames.txt"),
    ],
)
def test_missing_metadata_file_names_the_file_and_where_it_goes(
    tmp_path: Path, make, name: str, missing: str, message: str
) -> None:
    make(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(DataError) as err:
        load_dataset(name, tmp_path)
    text = str(err.value)
    assert message in text and str((tmp_path / missing).parent) in text and "\n" not in text


def test_missing_dataset_folder_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="caltech-101"):
        load_dataset("caltech101", tmp_path)
    with pytest.raises(ConfigError, match="imagenet, caltech101, eurosat, imagefolder"):
        load_dataset("cifar10", tmp_path)


def test_data_root_precedence_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_DATA", str(tmp_path))
    assert data_root(None) == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    assert data_root(str(other)) == other
    with pytest.raises(DataError, match="not a directory"):
        data_root(str(tmp_path / "nope"))
    monkeypatch.delenv("WS_DATA")
    with pytest.raises(ConfigError, match="WS_DATA"):
        data_root(None)


def test_unreadable_image_is_a_data_error_naming_its_path(tmp_path: Path) -> None:
    base = make_eurosat(tmp_path)
    ds = load_dataset("eurosat", tmp_path)
    item = ds.train[3]
    (base / item.key).write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        ds.load_image(item)
    assert str(base / item.key) in str(err.value)
    (base / item.key).unlink()
    with pytest.raises(DataError, match=re.escape(str(base / item.key))):
        ds.load_image(item)


def test_a_split_row_with_an_empty_path_is_a_data_error(tmp_path: Path) -> None:
    make_eurosat(tmp_path, counts=(2, 1, 1))
    split = tmp_path / "eurosat" / "split_zhou_EuroSAT.json"
    raw = json.loads(split.read_text())
    raw["train"][0][0] = ""
    split.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="non-empty relative image path"):
        load_dataset("eurosat", tmp_path)


def test_a_non_utf8_classnames_file_is_a_data_error(tmp_path: Path) -> None:
    make_imagenet(tmp_path, train_per_class=2, val_per_class=1)
    names = tmp_path / "imagenet" / "classnames.txt"
    names.write_bytes(names.read_bytes() + b"n0 caf\xe9\n")
    with pytest.raises(DataError, match="is not UTF-8 text"):
        load_dataset("imagenet", tmp_path)
