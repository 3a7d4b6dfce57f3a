"""Datasets: ImageFolder trees, CSVs, Hugging Face datasets, bad input."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

from layerlock.data import (
    ImageDataset,
    check_classes,
    csv_dataset,
    folder_train_val,
    hf_train_val,
    image_folder,
)
from layerlock.errors import ConfigError, LayerlockError


def test_folder_train_val_labels_shapes_and_class_order(tree, tf):
    splits = folder_train_val(tree, train_transform=tf.train, eval_transform=tf.eval)
    assert splits.classes == ["cat", "dog"]
    assert (len(splits.train), len(splits.val)) == (6, 4)
    assert splits.train.targets == [0, 0, 0, 1, 1, 1]
    x, y = splits.val[3]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 16, 16) and y == 1
    assert splits.skipped == {"train": [], "val": []}


def test_val_uses_train_indices_when_it_lacks_a_class(tree, tf):
    for p in (tree / "val" / "cat").iterdir():
        p.unlink()
    (tree / "val" / "cat").rmdir()
    splits = folder_train_val(tree, train_transform=tf.train, eval_transform=tf.eval)
    assert splits.val.classes == ["cat", "dog"]
    assert splits.val.targets == [1, 1]  # "dog" keeps index 1 although val has one class


def test_val_label_missing_from_train_is_named(tree, tf, make_image):
    make_image(tree / "val" / "cow" / "0.png", seed=7)
    with pytest.raises(
        ConfigError, match=r"labels in .*val that train lacks: 'cow'; train has cat, dog"
    ):
        folder_train_val(tree, train_transform=tf.train, eval_transform=tf.eval)


def test_missing_and_empty_folders_are_named(tmp_path, tree, make_image):
    with pytest.raises(LayerlockError, match=r"data folder .*nowhere does not exist"):
        folder_train_val(tmp_path / "nowhere")
    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    make_image(tmp_path / "only_train" / "train" / "a" / "x.png", 0)
    with pytest.raises(LayerlockError, match=r"no val/ folder in .*only_train"):
        folder_train_val(tmp_path / "only_train")
    (tree / "train" / "empty_class").mkdir()
    with pytest.raises(LayerlockError, match=r"class folder .*train/empty_class has no images"):
        folder_train_val(tree)
    (tmp_path / "noclass").mkdir()
    with pytest.raises(LayerlockError, match=r"has no class folders"):
        image_folder(tmp_path / "noclass")
    with pytest.raises(LayerlockError, match=r"no train/ folder"):
        folder_train_val(tmp_path / "noclass")


def test_validation_folder_name_is_accepted(tree):
    (tree / "val").rename(tree / "validation")
    assert len(folder_train_val(tree).val) == 4


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_corrupt_images_skipped_and_counted_or_error_naming_file(tree, content):
    bad = tree / "train" / "cat" / "broken.png"
    bad.write_bytes(content)
    splits = folder_train_val(tree)
    assert len(splits.train) == 6
    assert [p for p, _ in splits.skipped["train"]] == [str(bad)]
    assert "skipped 1 file(s), e.g." in splits.summary()
    with pytest.raises(LayerlockError, match=r"cannot read image .*broken\.png"):
        folder_train_val(tree, bad_images="error")


def test_truncated_jpeg_is_detected(tree):
    good = tree / "train" / "dog" / "1.jpg"
    data = good.read_bytes()
    (tree / "train" / "dog" / "cut.jpg").write_bytes(data[: len(data) // 2])
    splits = folder_train_val(tree)
    assert any(p.endswith("cut.jpg") for p, _ in splits.skipped["train"])


def test_only_unreadable_images_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"junk")
    with pytest.raises(LayerlockError, match=r"none of its 1 images is readable"):
        image_folder(tmp_path)


def test_file_broken_after_scan_raises_naming_it(tree):
    ds = image_folder(tree / "train")
    path = ds.samples[0][0]
    Path(path).write_bytes(b"junk")
    with pytest.raises(LayerlockError, match=r"cannot read image .*0\.png"):
        ds[0]


def test_bad_policy_is_rejected(tree):
    with pytest.raises(ConfigError, match=r"bad_images must be one of skip, error, got 'ignore'"):
        image_folder(tree / "train", bad_images="ignore")


def test_csv_relative_paths_columns_separator_and_numeric_labels(
    tmp_path, tf, make_image, make_csv
):
    imgs = tmp_path / "imgs"
    for i in range(4):
        make_image(imgs / f"{i}.png", i)
    rows = [("imgs/0.png", "10"), ("imgs/1.png", "2"), ("imgs/2.png", "2"), ("imgs/3.png", "10")]
    train = make_csv(tmp_path / "train.csv", rows, header=("filepath", "class"), sep=";")
    ds = csv_dataset(train, img_key="filepath", label_key="class", sep=";", transform=tf.eval)
    assert ds.classes == ["2", "10"]
    assert ds.targets == [1, 0, 0, 1]
    assert ds[0][0].shape == (3, 16, 16)
    # paths are relative to the CSV's folder, not the working directory
    assert ds.samples[0][0] == str(tmp_path / "imgs" / "0.png")


def test_csv_errors(tmp_path, make_image, make_csv):
    make_image(tmp_path / "a.png", 0)
    train = make_csv(tmp_path / "train.csv", [("a.png", "x")])
    with pytest.raises(
        ConfigError, match=r"has no column 'paht' \(csv_img_key\); did you mean 'path'"
    ):
        csv_dataset(train, img_key="paht")
    with pytest.raises(LayerlockError, match=r"CSV .*nope\.csv does not exist"):
        csv_dataset(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("path,label\n")
    with pytest.raises(LayerlockError, match="has a header but no rows"):
        csv_dataset(empty)
    val = make_csv(tmp_path / "val.csv", [("a.png", "y")])
    with pytest.raises(ConfigError, match=r"labels in .*val\.csv that train lacks: 'y'"):
        csv_dataset(val, classes=["x"])
    missing = make_csv(tmp_path / "m.csv", [("a.png", "x"), ("gone.png", "x")])
    ds = csv_dataset(missing)
    assert len(ds) == 1 and ds.skipped[0][0].endswith("gone.png")
    with pytest.raises(LayerlockError, match=r"cannot read image .*gone\.png"):
        csv_dataset(missing, bad_images="error")


def test_check_classes():
    check_classes(["a", "b"], ["b"], "val")
    with pytest.raises(ConfigError, match=r"labels in val that train lacks: 'c', 'd'"):
        check_classes(["a", "b"], ["a", "c", "d"], "val")


class _FakeHF:
    def __init__(self, labels, names=None):
        self.rows = [
            {"image": Image.new("RGB", (8, 8), (i, 0, 0)), "label": lab}
            for i, lab in enumerate(labels)
        ]
        self.column_names = ["image", "label"]
        self.features = {"label": types.SimpleNamespace(names=names)} if names else {}

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, str):
            return [r[key] for r in self.rows]
        return self.rows[key]


def test_hf_dataset_with_fake_datasets_module(monkeypatch, tf):
    data = {
        "train": _FakeHF([0, 1, 2, 1], names=["cat", "dog", "cow"]),
        "validation": _FakeHF([2, 2], names=["cat", "dog", "cow"]),
    }
    fake = types.SimpleNamespace(load_dataset=lambda name, split: data[split])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    splits = hf_train_val("toy", train_transform=tf.train, eval_transform=tf.eval)
    assert splits.classes == ["cat", "dog", "cow"]
    assert splits.val.targets == [2, 2]
    assert splits.train[1][0].shape == (3, 16, 16)
    with pytest.raises(ConfigError, match=r"has no column 'img' \(hf_image_key\)"):
        hf_train_val("toy", image_key="img")
    with pytest.raises(
        LayerlockError, match=r"cannot load split 'test' of Hugging Face dataset 'toy'"
    ):
        hf_train_val("toy", val_split="test")
    # string labels without ClassLabel names: sorted names, val remapped
    data["train"], data["validation"] = _FakeHF(["b", "a"]), _FakeHF(["z"])
    with pytest.raises(ConfigError, match=r"labels in toy\[validation\] that train lacks: 'z'"):
        hf_train_val("toy")


def test_image_dataset_is_a_plain_dataset():
    ds = ImageDataset([], ["a"])
    assert len(ds) == 0 and ds.classes == ["a"] and ds.skipped == []
