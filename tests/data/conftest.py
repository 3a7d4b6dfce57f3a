"""Fixtures of the data tests: small image trees and CSV files, a small transform."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layerlock.data import Transforms, model_transforms

SMALL = {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def write_image(path: Path, seed: int, mode: str = "RGB", size: int = 12) -> Path:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)
    return path


def write_csv(path: Path, rows: list[tuple[str, str]], header=("path", "label"), sep=",") -> Path:
    path.write_text(sep.join(header) + "\n" + "".join(f"{a}{sep}{b}\n" for a, b in rows))
    return path


@pytest.fixture
def make_image() -> Callable[..., Path]:
    """Write a random image: ``make_image(path, seed, mode="RGB", size=12)``."""
    return write_image


@pytest.fixture
def make_csv() -> Callable[..., Path]:
    """Write a CSV: ``make_csv(path, rows, header=("path", "label"), sep=",")``."""
    return write_csv


@pytest.fixture
def small() -> dict:
    """A timm data config of 16 x 16 RGB images."""
    return dict(SMALL)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/train/{cat,dog} and root/val/{cat,dog}: PNG and JPEG files, RGB and grayscale."""
    root = tmp_path / "data"
    for split, n in (("train", 3), ("val", 2)):
        for c, cls in enumerate(("cat", "dog")):
            for i in range(n):
                ext = "png" if i % 2 == 0 else "jpg"
                mode = "L" if i == 1 else "RGB"
                write_image(root / split / cls / f"{i}.{ext}", seed=100 * c + i, mode=mode)
    return root


@pytest.fixture
def tf() -> Transforms:
    return model_transforms(data_config=SMALL)
