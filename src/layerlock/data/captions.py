"""Image-caption data for contrastive fine-tuning (``task=clip``).

Two ways to get ``(image, caption)`` pairs:

- open_clip_train's CSV format: one row per pair, an image path column
  (``csv_img_key``, default ``filepath``) and a caption column (``csv_caption_key``,
  default ``title``), tab-separated by default (:func:`caption_csv`);
- a class-labelled set (ImageFolder, CSV of labels, the demo digits) whose labels become
  captions through prompt templates, as FLYP fine-tunes (:func:`prompt_captions`).

A :class:`CaptionDataset` yields ``(image tensor, token ids)``: captions are tokenized once,
with the model's own tokenizer, when the task knows the model (:meth:`CaptionDataset.tokenize`).

Example:
    >>> import numpy as np
    >>> ds = CaptionDataset(np.zeros((2, 4, 4), np.uint8), ["a cat", "a dog"])
    >>> ds.tokenize(lambda texts: __import__("torch").tensor([[len(t)] for t in texts]))
    >>> ds[1][1].tolist()
    [5]
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError, LayerlockError, suggest
from .transforms import Transform

__all__ = [
    "BUILTIN_TEMPLATES",
    "CaptionDataset",
    "Template",
    "caption_csv",
    "load_templates",
    "prompt_captions",
]

Template = Callable[[str], str]
Tokenizer = Callable[[list[str]], torch.Tensor]

#: Prompt templates the digit demo pretrains and evaluates with (``{}``: the digit's name).
DIGIT_TEMPLATES = (
    "a photo of the digit {}.",
    "a handwritten {}.",
    "the number {}.",
    "a drawing of the digit {}.",
    "a {} written by hand.",
)


def _format(text: str) -> Template:
    return text.format


def load_templates(spec: str | Sequence[str] | None) -> list[Template]:
    """Prompt templates by name (``openai``, ``simple``, ``digits``), file, or list of strings.

    A file holds one template per line with ``{}`` for the class name.

    Raises:
        ConfigError: An unknown name or a template without ``{}``.

    Example:
        >>> [t("cat") for t in load_templates(["a {}.", "the {}"])]
        ['a cat.', 'the cat']
        >>> len(load_templates("openai"))
        80
    """
    if spec is None or spec == "":
        spec = "simple"
    if isinstance(spec, str):
        if spec in ("openai", "simple"):
            from open_clip.zero_shot_metadata import (
                OPENAI_IMAGENET_TEMPLATES,
                SIMPLE_IMAGENET_TEMPLATES,
            )

            chosen = OPENAI_IMAGENET_TEMPLATES if spec == "openai" else SIMPLE_IMAGENET_TEMPLATES
            return list(chosen)
        if spec == "digits":
            return [_format(t) for t in DIGIT_TEMPLATES]
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(
                f"templates {spec!r} is neither a built-in set ({', '.join(BUILTIN_TEMPLATES)}) "
                "nor a file of one template per line" + suggest(spec, BUILTIN_TEMPLATES)
            )
        spec = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    bad = [t for t in spec if "{}" not in t]
    if bad or not spec:
        raise ConfigError(
            f"every template needs '{{}}' for the class name, got {bad[0]!r}"
            if bad
            else "no templates given"
        )
    return [_format(t) for t in spec]


BUILTIN_TEMPLATES = ("openai", "simple", "digits")


class CaptionDataset(Dataset):
    """Images (file paths or a uint8 array) paired with captions; items are tensors.

    Attributes:
        samples: ``(path, caption)`` pairs for files (``None`` for an array).
        images: The uint8 array (``None`` for files).
        captions: Caption of each item.
        labels: Class index of each item when the captions come from class prompts.
        transform: Applied to each PIL image (set by the recipe).
        mode: PIL mode images are converted to.
        skipped: Unreadable or missing files left out, ``(path, reason)``.
    """

    def __init__(
        self,
        images: np.ndarray | Sequence[str | Path],
        captions: Sequence[str],
        *,
        labels: Sequence[int] | None = None,
        transform: Transform | None = None,
        mode: str = "RGB",
        skipped: Sequence[tuple[str, str]] = (),
    ) -> None:
        if len(images) != len(captions):
            raise LayerlockError(f"{len(images)} images but {len(captions)} captions")
        self.captions = [str(c) for c in captions]
        if isinstance(images, np.ndarray):
            self.images: np.ndarray | None = np.ascontiguousarray(images, dtype=np.uint8)
            self.samples: list[tuple[str, str]] | None = None
        else:
            self.images = None
            self.samples = [(str(p), c) for p, c in zip(images, self.captions)]
        self.labels = None if labels is None else [int(v) for v in labels]
        # the run's data digest covers the captions
        self.targets = list(self.captions)
        self.transform = transform
        self.mode = mode
        self.skipped = list(skipped)
        self.tokens: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.captions)

    def tokenize(self, tokenizer: Tokenizer) -> None:
        """Tokenize every caption once (the model's tokenizer); items then carry token ids."""
        self.tokens = tokenizer(self.captions) if self.captions else torch.zeros(0, 1).long()

    def image(self, index: int) -> Image.Image:
        """The PIL image of item ``index`` (in :attr:`mode`)."""
        if self.images is not None:
            img = Image.fromarray(self.images[index])
        else:
            assert self.samples is not None
            with Image.open(self.samples[index][0]) as f:
                img = f.copy()
        return img.convert(self.mode) if self.mode and img.mode != self.mode else img

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img = self.image(index)
        x = self.transform(img) if self.transform else img
        if self.tokens is None:
            return x, self.captions[index]
        return x, self.tokens[index]


def caption_csv(
    path: str | Path,
    *,
    img_key: str = "filepath",
    caption_key: str = "title",
    sep: str = "\t",
    bad_images: str = "skip",
) -> CaptionDataset:
    """An open_clip_train CSV of image paths and captions (``--dataset-type csv``).

    Paths are read as written (relative to the working directory, as open_clip_train does);
    a relative path missing there is looked up next to the CSV file.

    Args:
        path: The CSV file (a header row names the columns).
        img_key: Image path column (open_clip_train's ``--csv-img-key``).
        caption_key: Caption column (``--csv-caption-key``).
        sep: Column separator (``--csv-separator``; tab by default, as there).
        bad_images: ``"skip"`` (missing files are left out, listed in ``skipped``) or
            ``"error"``.

    Raises:
        LayerlockError: A missing file, no rows, or (``bad_images="error"``) a missing image.
        ConfigError: Column names the header lacks, with the columns it has.

    Example:
        >>> caption_csv("train.csv").captions[:1]  # doctest: +SKIP
        ['a photo of a cat']
    """
    path = Path(path)
    if not path.is_file():
        raise LayerlockError(f"caption CSV {path} does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=sep))
        header = list(rows[0]) if rows else []
    if not rows:
        raise LayerlockError(f"caption CSV {path} has no rows")
    missing = [k for k in (img_key, caption_key) if k not in header]
    if missing:
        hint = (
            " (is the separator right? open_clip_train's default is a tab)"
            if len(header) == 1
            else ""
        )
        raise ConfigError(
            f"caption CSV {path} has no column {missing[0]!r}{suggest(missing[0], header)}; "
            f"its columns: {', '.join(header)}{hint}"
        )
    files: list[str] = []
    captions: list[str] = []
    skipped: list[tuple[str, str]] = []
    for n, row in enumerate(rows, start=2):
        raw = (row.get(img_key) or "").strip()
        p = Path(raw)
        if raw and not p.is_absolute() and not p.exists() and (path.parent / p).exists():
            p = path.parent / p
        if not raw or not p.is_file():
            if bad_images == "error":
                raise LayerlockError(f"{path} line {n}: image {raw!r} does not exist")
            skipped.append((raw, "missing file"))
            continue
        files.append(str(p))
        captions.append(str(row.get(caption_key) or ""))
    if not files:
        raise LayerlockError(f"caption CSV {path}: none of its {len(rows)} images exists")
    return CaptionDataset(files, captions, skipped=skipped)


def prompt_captions(
    images: np.ndarray | Sequence[str | Path],
    labels: Sequence[int],
    classes: Sequence[str],
    templates: Sequence[Template],
    *,
    skipped: Sequence[tuple[str, str]] = (),
) -> CaptionDataset:
    """Class-labelled images as caption pairs: item ``i`` reads ``templates[i % T](class)``.

    This is FLYP's data: contrastive fine-tuning on class prompts. The template of an item
    is fixed (a function of its index), so the data, and a resumed run, are deterministic.

    Example:
        >>> import numpy as np
        >>> ds = prompt_captions(np.zeros((2, 4, 4), np.uint8), [0, 1], ["cat", "dog"],
        ...                      load_templates(["a {}.", "the {}"]))
        >>> ds.captions, ds.labels
        (['a cat.', 'the dog'], [0, 1])
    """
    if not templates:
        raise ConfigError("no prompt templates to turn class labels into captions")
    captions = [templates[i % len(templates)](classes[y]) for i, y in enumerate(labels)]
    return CaptionDataset(images, captions, labels=labels, skipped=skipped)
