"""``data=hf`` against the real Hugging Face ``datasets`` package, offline.

A tiny image classification dataset is built in memory (PIL images of several sizes and
modes, a ``ClassLabel`` column whose names are not in sorted order), written with
``save_to_disk`` and read back through layerlock's loader by its local path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from layerlock.data import load_train_val, model_transforms
from layerlock.errors import ConfigError

datasets = pytest.importorskip("datasets")

# Not in sorted order: the class order must come from the ClassLabel feature.
CLASSES = ["zebra", "ant", "moth"]
SIZE = 32  # the test_vit data config below makes every image 3 x 32 x 32


def _split(labels: list[int], seed: int) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images = []
    for i, _ in enumerate(labels):
        h, w = 20 + 3 * i, 28 - i  # sizes vary: the transform resizes
        if i % 3 == 2:  # a grayscale image among RGB ones: the loader converts it
            images.append(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L"))
        else:
            images.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
    features = datasets.Features(
        {"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=CLASSES)}
    )
    return datasets.Dataset.from_dict({"img": images, "fine_label": labels}, features=features)


TRAIN_LABELS = [2, 0, 1, 1, 2, 0, 2]
VAL_LABELS = [1, 0, 2, 1]


@pytest.fixture
def on_disk(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-images"
    datasets.DatasetDict(
        train=_split(TRAIN_LABELS, seed=0), validation=_split(VAL_LABELS, seed=1)
    ).save_to_disk(str(path))
    return path


def _transforms():
    model = timm.create_model("test_vit", num_classes=len(CLASSES))
    return model_transforms(
        model, data_config={"input_size": (3, SIZE, SIZE)}, deterministic_train=True
    )


def _load(path: Path, **kw):
    return load_train_val(
        "hf",
        transforms=_transforms(),
        path=str(path),
        hf_image_key="img",
        hf_label_key="fine_label",
        **kw,
    )


def test_reads_a_dataset_saved_to_disk(on_disk: Path) -> None:
    data = _load(on_disk)
    assert data.classes == CLASSES
    assert len(data.train) == len(TRAIN_LABELS) and len(data.val) == len(VAL_LABELS)
    assert data.summary().startswith("train 7 images, val 4 images, 3 classes")
    assert [data.train[i][1] for i in range(len(data.train))] == TRAIN_LABELS
    assert [data.val[i][1] for i in range(len(data.val))] == VAL_LABELS
    for ds in (data.train, data.val):
        for i in range(len(ds)):
            image, _ = ds[i]
            assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
            assert image.shape == (3, SIZE, SIZE)


def test_images_are_the_stored_ones(on_disk: Path) -> None:
    """The loader serves image i of the split, not another one of the same size."""
    data = _load(on_disk)
    stored = datasets.load_from_disk(str(on_disk))["train"]
    tf = _transforms().eval
    for i in (0, 4):
        expected = tf(stored[i]["img"].convert("RGB"))
        assert torch.equal(data.train[i][0], expected)
    assert not torch.equal(data.train[0][0], data.train[4][0])


def test_val_split_is_chosen_by_name(on_disk: Path) -> None:
    data = _load(on_disk, val_split="train")
    assert len(data.val) == len(TRAIN_LABELS)


def test_unknown_column_names_the_columns(on_disk: Path) -> None:
    with pytest.raises(ConfigError, match=r"no column 'image' .*Columns: img, fine_label"):
        load_train_val("hf", transforms=_transforms(), path=str(on_disk), hf_label_key="fine_label")
