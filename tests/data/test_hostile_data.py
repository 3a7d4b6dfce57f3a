"""Hostile data trees and CSV files: links, FIFOs, encodings, NUL labels, repeated columns."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layerlock.data import csv_dataset, image_folder
from layerlock.errors import ConfigError, LayerlockError


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``cat`` and ``dog`` with 4 images each, ``dog`` one of them in a sub-folder."""
    root = tmp_path / "train"
    for i in range(4):
        _png(root / "cat" / f"{i}.png", 10 * i)
    for i in range(3):
        _png(root / "dog" / f"{i}.png", 100 + 10 * i)
    _png(root / "dog" / "more" / "3.png", 200)
    return root


def test_order_matches_torchvision_image_folder(tree: Path) -> None:
    from torchvision.datasets import ImageFolder

    _png(tree / "cat" / "a" / "b" / "x.png", 1)
    _png(tree / "cat" / "a b" / "y.png", 2)
    ours = image_folder(tree)
    theirs = ImageFolder(str(tree))
    assert ours.samples == theirs.samples and ours.skipped == []


def test_link_loops_duplicates_and_cross_class_links_are_skipped(tree: Path) -> None:
    (tree / "cat" / "loop").symlink_to(".")
    (tree / "cat" / "up").symlink_to("..")
    (tree / "cat" / "todog").symlink_to("../dog")
    (tree / "cat" / "dog0.png").symlink_to("../dog/0.png")
    (tree / "cat" / "again.png").symlink_to("0.png")
    ds = image_folder(tree)
    # 8 images, each once, with its own label
    assert len(ds) == 8 and ds.targets == [0] * 4 + [1] * 4
    assert all(Path(p).parent.name in ("cat", "dog", "more") for p, _ in ds.samples)
    reasons = {Path(p).name: why for p, why in ds.skipped}
    assert reasons["loop"].startswith("link to a folder already read")
    assert "link into class folder 'dog'" in reasons["todog"]
    assert "link into class folder 'dog'" in reasons["dog0.png"]
    assert (
        reasons["again.png"].startswith("same file as") and "counted once" in reasons["again.png"]
    )
    # cat/up is the split folder: read, but its class folders are not read again as cat
    skipped = dict(ds.skipped)
    assert skipped[str(tree / "cat" / "up" / "cat")].startswith("link to a folder already read")
    assert "class folder 'dog'" in skipped[str(tree / "cat" / "up" / "dog")]


def test_links_to_files_outside_the_tree_are_followed(tree: Path, tmp_path: Path) -> None:
    _png(tmp_path / "elsewhere" / "e.png", 50)
    (tree / "cat" / "e.png").symlink_to(tmp_path / "elsewhere" / "e.png")
    (tree / "dog" / "shared").symlink_to(tmp_path / "elsewhere")
    ds = image_folder(tree)
    assert len(ds) == 9  # e.png once, under cat (first), its second path skipped
    assert ds.skipped[0][1].startswith("same file as") and ds.skipped[0][0].endswith("e.png")


def test_fifo_and_broken_link_named_like_images_do_not_hang(tree: Path) -> None:
    os.mkfifo(tree / "cat" / "fifo.png")
    (tree / "dog" / "gone.png").symlink_to(tree / "nowhere.png")
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(image_folder(tree)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "reading a FIFO named like an image blocked"
    ds = result[0]
    assert len(ds) == 8  # type: ignore[arg-type]
    reasons = dict(ds.skipped)  # type: ignore[attr-defined]
    assert reasons[str(tree / "cat" / "fifo.png")] == "not a regular file (a FIFO)"
    assert reasons[str(tree / "dog" / "gone.png")].startswith("broken link")
    with pytest.raises(LayerlockError, match=r"fifo\.png: not a regular file \(a FIFO\)"):
        image_folder(tree, bad_images="error")


def _csv(tmp_path: Path, text: str | bytes, name: str = "t.csv") -> Path:
    _png(tmp_path / "a.png", 1)
    _png(tmp_path / "b.png", 2)
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_csv_fifo_row_is_skipped(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "f.png")
    ds = csv_dataset(_csv(tmp_path, "path,label\na.png,x\nf.png,y\nb.png,y\n"))
    assert len(ds) == 2 and ds.skipped[0][1] == "not a regular file (a FIFO)"


@pytest.mark.parametrize(
    ("text", "kwargs", "error", "message"),
    [
        (b"path,label\na.png,caf\xe9\n", {}, ConfigError, r"t\.csv is not utf-8 text \(byte 0xe9"),
        (b"\x00\x01\x02binary", {}, ConfigError, r"t\.csv is a binary file"),
        ("path,label\na.png,x\x00y\n", {}, LayerlockError, r"t\.csv line 2: a NUL character"),
        ("path,label,label\na.png,x,y\n", {}, ConfigError, r"column\(s\) 'label' more than once"),
    ],
)
def test_bad_csv_files_are_one_line_errors(
    tmp_path: Path, text: str | bytes, kwargs: dict, error: type, message: str
) -> None:
    with pytest.raises(error, match=message) as info:
        csv_dataset(_csv(tmp_path, text), **kwargs)
    assert "\n" not in str(info.value)


def test_csv_encoding_option_reads_latin1(tmp_path: Path) -> None:
    path = _csv(tmp_path, "path,label\na.png,caf\xe9\nb.png,th\xe9\n".encode("latin-1"))
    ds = csv_dataset(path, encoding="latin-1")
    assert ds.classes == ["café", "thé"]


def test_csv_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(LayerlockError, match=r"CSV file .* is a folder, not a file"):
        csv_dataset(tmp_path)


def test_hf_single_dataset_saved_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    from layerlock.data import hf_train_val

    images = [Image.fromarray(np.full((8, 8, 3), i, np.uint8)) for i in range(4)]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
    )
    single = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]}, features=features)
    single.save_to_disk(str(tmp_path / "one"))
    data = hf_train_val(str(tmp_path / "one"), train_split="train", val_split="train")
    assert data.classes == ["a", "b"] and len(data.train) == 4
    with pytest.raises(ConfigError, match=r"has no split 'validation'.* Splits: train"):
        hf_train_val(str(tmp_path / "one"))
    datasets.DatasetDict(train=single, test=single).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(ConfigError, match=r"no split 'validation'.* Splits: train, test"):
        hf_train_val(str(tmp_path / "two"))
    assert len(hf_train_val(str(tmp_path / "two"), val_split="test").val) == 4
