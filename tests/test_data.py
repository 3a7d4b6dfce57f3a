"""Datasets and transforms: ImageFolder trees, CSVs, Hugging Face datasets, bad input."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from layerlock.data import (
    ImageDataset,
    Splits,
    check_classes,
    csv_dataset,
    folder_splits,
    hf_splits,
    image_folder,
    load_splits,
    model_transforms,
)
from layerlock.errors import ConfigError, LayerlockError, MissingDependencyError

SMALL = {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def _image(path: Path, seed: int, mode: str = "RGB", size: int = 12) -> Path:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/train/{cat,dog} and root/val/{cat,dog}: PNG and JPEG files, RGB and grayscale."""
    root = tmp_path / "data"
    for split, n in (("train", 3), ("val", 2)):
        for c, cls in enumerate(("cat", "dog")):
            for i in range(n):
                ext = "png" if i % 2 == 0 else "jpg"
                mode = "L" if i == 1 else "RGB"
                _image(root / split / cls / f"{i}.{ext}", seed=100 * c + i, mode=mode)
    return root


@pytest.fixture
def tf():
    return model_transforms(data_config=SMALL)


def test_folder_splits_labels_shapes_and_class_order(tree, tf):
    splits = folder_splits(tree, train_transform=tf.train, eval_transform=tf.eval)
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
    splits = folder_splits(tree, train_transform=tf.train, eval_transform=tf.eval)
    assert splits.val.classes == ["cat", "dog"]
    assert splits.val.targets == [1, 1]  # "dog" keeps index 1 although val has one class


def test_val_label_missing_from_train_is_named(tree, tf):
    _image(tree / "val" / "cow" / "0.png", seed=7)
    with pytest.raises(
        ConfigError, match=r"labels in .*val that train lacks: 'cow'; train has cat, dog"
    ):
        folder_splits(tree, train_transform=tf.train, eval_transform=tf.eval)


def test_missing_and_empty_folders_are_named(tmp_path, tree):
    with pytest.raises(LayerlockError, match=r"data folder .*nowhere does not exist"):
        folder_splits(tmp_path / "nowhere")
    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    _image(tmp_path / "only_train" / "train" / "a" / "x.png", 0)
    with pytest.raises(LayerlockError, match=r"no val/ folder in .*only_train"):
        folder_splits(tmp_path / "only_train")
    (tree / "train" / "empty_class").mkdir()
    with pytest.raises(LayerlockError, match=r"class folder .*train/empty_class has no images"):
        folder_splits(tree)
    (tmp_path / "noclass").mkdir()
    with pytest.raises(LayerlockError, match=r"has no class folders"):
        image_folder(tmp_path / "noclass")
    with pytest.raises(LayerlockError, match=r"no train/ folder"):
        folder_splits(tmp_path / "noclass")


def test_validation_folder_name_is_accepted(tree):
    (tree / "val").rename(tree / "validation")
    assert len(folder_splits(tree).val) == 4


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_corrupt_images_skipped_and_counted_or_error_naming_file(tree, content):
    bad = tree / "train" / "cat" / "broken.png"
    bad.write_bytes(content)
    splits = folder_splits(tree)
    assert len(splits.train) == 6
    assert [p for p, _ in splits.skipped["train"]] == [str(bad)]
    assert "skipped 1 unreadable file(s), e.g." in splits.summary()
    with pytest.raises(LayerlockError, match=r"cannot read image .*broken\.png"):
        folder_splits(tree, bad_images="error")


def test_truncated_jpeg_is_detected(tree):
    good = tree / "train" / "dog" / "1.jpg"
    data = good.read_bytes()
    (tree / "train" / "dog" / "cut.jpg").write_bytes(data[: len(data) // 2])
    splits = folder_splits(tree)
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


def test_grayscale_and_rgb_conversion_follow_in_chans(tree):
    gray = model_transforms(data_config={"input_size": (1, 16, 16), "mean": (0.5,), "std": (0.5,)})
    assert gray.mode == "L"
    ds = image_folder(tree / "train", transform=gray.eval, mode=gray.mode)
    assert all(ds[i][0].shape == (1, 16, 16) for i in range(len(ds)))
    rgb = model_transforms(data_config=SMALL)
    ds = image_folder(tree / "train", transform=rgb.eval, mode=rgb.mode)
    assert ds[1][0].shape == (3, 16, 16)  # a grayscale file becomes 3 channels
    with pytest.raises(ConfigError, match="4 input channels"):
        model_transforms(data_config={"input_size": (4, 16, 16)})


def test_random_augmentation_only_on_train_and_deterministic_option(tree):
    aug = {"scale": (0.1, 1.0), "hflip": 0.5}
    tf = model_transforms(data_config=SMALL, augmentation=aug)
    img = Image.open(tree / "train" / "cat" / "0.png").convert("RGB")
    torch.manual_seed(0)
    train_outs = [tf.train(img) for _ in range(6)]
    assert any(not torch.equal(train_outs[0], t) for t in train_outs[1:])
    assert all(torch.equal(tf.eval(img), tf.eval(img)) for _ in range(3))
    det = model_transforms(data_config=SMALL, augmentation=aug, deterministic_train=True)
    assert det.train is det.eval and det.deterministic_train
    assert torch.equal(det.train(img), tf.eval(img))


def test_transforms_from_timm_model_config():
    import timm

    model = timm.create_model("test_vit", num_classes=2)
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "mean": (0.1, 0.2, 0.3),
        "input_size": (3, 32, 32),
    }
    tf = model_transforms(model)
    assert tf.data_config["mean"] == (0.1, 0.2, 0.3) and tf.data_config["input_size"] == (3, 32, 32)
    x = tf.eval(Image.new("RGB", (50, 40), (255, 255, 255)))
    assert x.shape == (3, 32, 32)
    assert torch.allclose(
        x[:, 0, 0], (1 - torch.tensor([0.1, 0.2, 0.3])) / torch.tensor(model.pretrained_cfg["std"])
    )


def test_model_recommended_augmentation_is_used_and_unknown_keys_rejected():
    import timm

    model = timm.create_model("test_vit", num_classes=2)
    model.pretrained_cfg = {**model.pretrained_cfg, "train_augmentation": {"hflip": 0.0}}
    names = [type(t).__name__ for t in model_transforms(model).train.transforms]
    assert "RandomHorizontalFlip" not in names
    names = [
        type(t).__name__ for t in model_transforms(timm.create_model("test_vit")).train.transforms
    ]
    assert "RandomHorizontalFlip" in names
    with pytest.raises(
        ConfigError, match=r"unknown augmentation option\(s\): 'hflp'; did you mean 'hflip'"
    ):
        model_transforms(model, augmentation={"hflp": 0.0})


def test_preprocess_callables_are_used_as_given():
    def train(img):
        return "train"

    def evaluation(img):
        return "eval"

    tf = model_transforms(preprocess=(train, evaluation))
    assert (tf.train, tf.eval, tf.mode) == (train, evaluation, "RGB")
    tf = model_transforms(preprocess=(train, evaluation), deterministic_train=True)
    assert tf.train is evaluation


def test_open_clip_model_gets_its_own_preprocessing():
    open_clip = pytest.importorskip("open_clip")
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg={"layers": 1, "width": 32, "patch_size": 8, "image_size": 32, "head_width": 16},
        text_cfg={"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    )
    tf = model_transforms(model)
    assert tf.data_config["input_size"] == (3, 32, 32)
    assert tf.eval(Image.new("L", (40, 60))).shape == (3, 32, 32)


def _csv(path: Path, rows: list[tuple[str, str]], header=("path", "label"), sep=",") -> Path:
    path.write_text(sep.join(header) + "\n" + "".join(f"{a}{sep}{b}\n" for a, b in rows))
    return path


def test_csv_relative_paths_columns_separator_and_numeric_labels(tmp_path, tf):
    imgs = tmp_path / "imgs"
    for i in range(4):
        _image(imgs / f"{i}.png", i)
    rows = [("imgs/0.png", "10"), ("imgs/1.png", "2"), ("imgs/2.png", "2"), ("imgs/3.png", "10")]
    train = _csv(tmp_path / "train.csv", rows, header=("filepath", "class"), sep=";")
    ds = csv_dataset(train, img_key="filepath", label_key="class", sep=";", transform=tf.eval)
    assert ds.classes == ["2", "10"]
    assert ds.targets == [1, 0, 0, 1]
    assert ds[0][0].shape == (3, 16, 16)
    # paths are relative to the CSV's folder, not the working directory
    assert ds.samples[0][0] == str(tmp_path / "imgs" / "0.png")


def test_csv_errors(tmp_path):
    _image(tmp_path / "a.png", 0)
    train = _csv(tmp_path / "train.csv", [("a.png", "x")])
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
    val = _csv(tmp_path / "val.csv", [("a.png", "y")])
    with pytest.raises(ConfigError, match=r"labels in .*val\.csv that train lacks: 'y'"):
        csv_dataset(val, classes=["x"])
    missing = _csv(tmp_path / "m.csv", [("a.png", "x"), ("gone.png", "x")])
    ds = csv_dataset(missing)
    assert len(ds) == 1 and ds.skipped[0][0].endswith("gone.png")
    with pytest.raises(LayerlockError, match=r"cannot read image .*gone\.png"):
        csv_dataset(missing, bad_images="error")


def test_load_splits_csv_and_folder(tmp_path, tree, tf):
    for i in range(3):
        _image(tmp_path / f"{i}.jpg", i)
    _csv(tmp_path / "t.csv", [("0.jpg", "a"), ("1.jpg", "b")])
    _csv(tmp_path / "v.csv", [("2.jpg", "b")])
    splits = load_splits(
        "csv", transforms=tf, train_csv=tmp_path / "t.csv", val_csv=tmp_path / "v.csv"
    )
    assert splits.classes == ["a", "b"] and splits.val.targets == [1]
    splits = load_splits("folder", transforms=tf, path=tree)
    assert isinstance(splits, Splits) and len(splits.train) == 6
    with pytest.raises(ConfigError, match=r"unknown data source 'folders'; did you mean 'folder'"):
        load_splits("folders", transforms=tf)
    with pytest.raises(ConfigError, match="data=csv needs train_csv and val_csv"):
        load_splits("csv", transforms=tf)


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
    splits = hf_splits("toy", train_transform=tf.train, eval_transform=tf.eval)
    assert splits.classes == ["cat", "dog", "cow"]
    assert splits.val.targets == [2, 2]
    assert splits.train[1][0].shape == (3, 16, 16)
    with pytest.raises(ConfigError, match=r"has no column 'img' \(hf_image_key\)"):
        hf_splits("toy", image_key="img")
    with pytest.raises(
        LayerlockError, match=r"cannot load split 'test' of Hugging Face dataset 'toy'"
    ):
        hf_splits("toy", val_split="test")
    # string labels without ClassLabel names: sorted names, val remapped
    data["train"], data["validation"] = _FakeHF(["b", "a"]), _FakeHF(["z"])
    with pytest.raises(ConfigError, match=r"labels in toy\[validation\] that train lacks: 'z'"):
        hf_splits("toy")


def test_hf_without_datasets_says_how_to_install(monkeypatch, tf):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MissingDependencyError, match=r"pip install datasets"):
        load_splits("hf", transforms=tf, path="beans")


def test_image_dataset_is_a_plain_dataset():
    ds = ImageDataset([], ["a"])
    assert len(ds) == 0 and ds.classes == ["a"] and ds.skipped == []
