"""Image-classification datasets: ImageFolder trees, CSV files, Hugging Face datasets.

Every dataset here is a ``torch.utils.data.Dataset`` of ``(tensor, label)`` pairs with a
``classes`` list; label ``i`` is ``classes[i]`` and the evaluation dataset always uses the
training dataset's class indices. :class:`TrainVal` holds the pair.

Unreadable or corrupt images: every image file is opened and decoded once when the dataset
is built. With ``bad_images="skip"`` (the default) such files are left out and listed in
``dataset.skipped`` as ``(path, reason)`` so the caller can report how many; with
``bad_images="error"`` the first one raises a :class:`~layerlock.errors.LayerlockError`
naming the file. A file that breaks later (changed on disk) always raises, naming the file.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError, LayerlockError, MissingDependencyError, suggest
from .transforms import Transform

__all__ = [
    "BAD_IMAGE_POLICIES",
    "VAL_DIR_NAMES",
    "ArrayImageDataset",
    "HFImageDataset",
    "ImageDataset",
    "TrainVal",
    "check_classes",
    "csv_dataset",
    "dataset_len",
    "folder_train_val",
    "hf_train_val",
    "image_folder",
]

BAD_IMAGE_POLICIES = ("skip", "error")
VAL_DIR_NAMES = ("val", "validation", "valid", "test")
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass
class TrainVal:
    """The training and evaluation datasets of one task.

    Attributes:
        train: Training dataset (``(tensor, label)`` items, ``classes`` attribute).
        val: Evaluation dataset, labelled with the training classes' indices.
        classes: Class names; label ``i`` is ``classes[i]``.
    """

    train: Dataset
    val: Dataset
    classes: list[str]

    @property
    def skipped(self) -> dict[str, list[tuple[str, str]]]:
        """Unreadable files left out, per split: ``{"train": [(path, reason)], "val": [...]}``."""
        return {
            "train": list(getattr(self.train, "skipped", [])),
            "val": list(getattr(self.val, "skipped", [])),
        }

    def summary(self) -> str:
        """One line: image counts, classes and skipped files.

        Example:
            >>> TrainVal(ImageDataset([], ["a"]), ImageDataset([], ["a"]), ["a"]).summary()
            'train 0 images, val 0 images, 1 classes'
        """
        n_train, n_val = len(self.train), len(self.val)  # type: ignore[arg-type]
        text = f"train {n_train:,} images, val {n_val:,} images, {len(self.classes)} classes"
        skipped = self.skipped
        n = len(skipped["train"]) + len(skipped["val"])
        if n:
            first = (skipped["train"] + skipped["val"])[0][0]
            text += f"; skipped {n} unreadable file(s), e.g. {first}"
        return text


def _open(path: str, mode: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert(mode)


class ImageDataset(Dataset):
    """Image files with integer labels.

    Attributes:
        samples: ``(path, label)`` pairs, in a fixed order.
        targets: The labels alone.
        classes: Class names; label ``i`` is ``classes[i]``.
        skipped: ``(path, reason)`` of unreadable files left out when the dataset was built.
        transform: Applied to the PIL image (converted to ``mode``); may be reassigned.
        mode: PIL mode images are converted to (``"L"`` or ``"RGB"``).

    Example:
        >>> ds = ImageDataset([], ["cat", "dog"])
        >>> len(ds), ds.classes
        (0, ['cat', 'dog'])
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        transform: Transform | None = None,
        mode: str = "RGB",
        skipped: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.classes = list(classes)
        self.skipped = list(skipped)
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        try:
            img = _open(path, self.mode)
        except _READ_ERRORS as exc:
            raise LayerlockError(f"cannot read image {path}: {_reason(exc)}") from exc
        return (self.transform(img) if self.transform else img), label


class ArrayImageDataset(Dataset):
    """Images held in a uint8 array (``N x H x W`` or ``N x H x W x C``) with labels.

    Example:
        >>> import numpy as np
        >>> ds = ArrayImageDataset(np.zeros((2, 4, 4), np.uint8), [0, 1], ["a", "b"])
        >>> ds[1][0].size, ds[1][1]
        ((4, 4), 1)
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int],
        classes: Sequence[str],
        transform: Transform | None = None,
        mode: str | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise LayerlockError(f"{len(images)} images but {len(labels)} labels")
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.targets = [int(t) for t in labels]
        self.classes = list(classes)
        self.skipped: list[tuple[str, str]] = []
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index])
        if self.mode and img.mode != self.mode:
            img = img.convert(self.mode)
        return (self.transform(img) if self.transform else img), self.targets[index]


class HFImageDataset(Dataset):
    """A split of a Hugging Face ``datasets.Dataset`` seen as ``(tensor, label)`` pairs."""

    def __init__(
        self,
        hf: Any,
        image_key: str,
        label_map: Sequence[int],
        classes: Sequence[str],
        transform: Transform | None = None,
        mode: str = "RGB",
        name: str = "",
    ) -> None:
        self.hf = hf
        self.image_key = image_key
        self.targets = list(label_map)
        self.classes = list(classes)
        self.skipped: list[tuple[str, str]] = []
        self.transform = transform
        self.mode = mode
        self.name = name

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        try:
            img = _to_pil(self.hf[index][self.image_key]).convert(self.mode)
        except _READ_ERRORS as exc:
            raise LayerlockError(
                f"cannot read image {index} of Hugging Face dataset {self.name!r}: {_reason(exc)}"
            ) from exc
        return (self.transform(img) if self.transform else img), self.targets[index]


def _to_pil(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):  # datasets' undecoded Image feature: {"bytes", "path"}
        if value.get("bytes"):
            import io

            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return Image.open(value["path"])
    if isinstance(value, (str, Path)):
        return Image.open(value)
    if isinstance(value, np.ndarray):
        return Image.fromarray(value.astype(np.uint8))
    raise ValueError(f"unsupported image value of type {type(value).__name__}")


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:160]


def _scan(
    samples: Sequence[tuple[str, int]], bad_images: str
) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """Decode every image once; keep the readable ones, skip or raise on the others."""
    if bad_images not in BAD_IMAGE_POLICIES:
        raise ConfigError(
            f"bad_images must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {bad_images!r}"
        )
    good, skipped = [], []
    for path, label in samples:
        try:
            with Image.open(path) as img:
                img.load()
        except _READ_ERRORS as exc:
            if bad_images == "error":
                raise LayerlockError(
                    f"cannot read image {path}: {_reason(exc)} "
                    "(use bad_images=skip to leave such files out)"
                ) from exc
            skipped.append((path, _reason(exc)))
            continue
        good.append((path, label))
    return good, skipped


def dataset_len(dataset: Dataset) -> int:
    """``len(dataset)`` (torch types ``Dataset`` without ``__len__``; map-style ones have it).

    Example:
        >>> import torch
        >>> dataset_len(torch.utils.data.TensorDataset(torch.zeros(3)))
        3
    """
    return len(dataset)  # type: ignore[arg-type]


def _class_key(name: str) -> tuple[int, float, str]:
    """Sort numeric class names numerically ("2" before "10"), the rest alphabetically.

    A total order for any strings: only finite numbers sort as numbers (``nan`` compares
    false with everything and would make the order depend on the input's order), equal
    values fall back to the text, and everything else sorts by its text.
    """
    try:
        value = float(name)
    except ValueError:
        return (1, 0.0, name)
    return (0, value, name) if math.isfinite(value) else (1, 0.0, name)


def check_classes(train_classes: Sequence[str], other: Sequence[str], where: str) -> None:
    """Raise :class:`ConfigError` when ``other`` has classes that training lacks.

    Example:
        >>> check_classes(["cat", "dog"], ["dog"], "val")
        >>> check_classes(["cat", "dog"], ["cow"], "val")
        Traceback (most recent call last):
        ...
        layerlock.errors.ConfigError: labels in val that train lacks: 'cow'; train has cat, dog
    """
    known = set(train_classes)
    extra = [c for c in other if c not in known]
    if extra:
        from ..errors import abbreviate

        shown = ", ".join(repr(c) for c in extra[:10]) + (" ..." if len(extra) > 10 else "")
        raise ConfigError(
            f"labels in {where} that train lacks: {shown}; train has {abbreviate(list(train_classes), 5)}"
        )


def image_folder(
    root: str | Path,
    *,
    classes: Sequence[str] | None = None,
    transform: Transform | None = None,
    mode: str = "RGB",
    bad_images: str = "skip",
) -> ImageDataset:
    """One split of an ImageFolder tree: ``root/<class>/<image>``.

    Args:
        root: The split folder (e.g. ``data/train``).
        classes: The training classes, for an evaluation split: labels use their indices and
            a class folder not among them raises. ``None`` takes the sorted folder names.
        transform: Applied to each PIL image.
        mode: ``"L"`` or ``"RGB"``.
        bad_images: ``"skip"`` or ``"error"`` for unreadable files (see the module doc).

    Raises:
        LayerlockError: The folder is missing, has no class folders, or a class folder of a
            training split has no images.
        ConfigError: Class folders that ``classes`` lacks.

    Example:
        >>> ds = image_folder("data/train")  # doctest: +SKIP
    """
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(root)
    if not root.is_dir():
        raise LayerlockError(f"image folder {root} does not exist")
    try:
        folder = ImageFolder(str(root), allow_empty=True)
    except FileNotFoundError as exc:
        raise LayerlockError(
            f"image folder {root} has no class folders (expected {root}/<class>/<image>)"
        ) from exc
    names = list(folder.classes)
    counts = np.bincount(np.asarray(folder.targets, dtype=np.int64), minlength=len(names))
    if classes is None:
        empty = [n for n, c in zip(names, counts) if c == 0]
        if empty:
            raise LayerlockError(
                f"class folder {root / empty[0]} has no images"
                + (f" (nor {len(empty) - 1} other class folders)" if len(empty) > 1 else "")
                + f"; image extensions: {' '.join(IMG_EXTENSIONS)}"
            )
        classes = sorted(names, key=_class_key)
    else:
        check_classes(classes, [n for n, c in zip(names, counts) if c > 0], str(root))
    index = {c: i for i, c in enumerate(classes)}
    samples = [(path, index[names[t]]) for path, t in folder.samples]
    if not samples:
        raise LayerlockError(f"image folder {root} has no images in its class folders")
    good, skipped = _scan(samples, bad_images)
    if not good:
        raise LayerlockError(f"image folder {root}: none of its {len(samples)} images is readable")
    return ImageDataset(good, classes, transform=transform, mode=mode, skipped=skipped)


def _find_val_dir(root: Path) -> Path:
    for name in VAL_DIR_NAMES:
        if (root / name).is_dir():
            return root / name
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    raise LayerlockError(
        f"no val/ folder in {root} (tried {', '.join(VAL_DIR_NAMES)}; found: "
        f"{', '.join(found) or 'nothing'}); expected {root}/train/<class>/* and {root}/val/<class>/*"
    )


def folder_train_val(
    root: str | Path,
    *,
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    mode: str = "RGB",
    bad_images: str = "skip",
) -> TrainVal:
    """Train and evaluation splits of an ImageFolder tree ``root/train`` + ``root/val``.

    The evaluation folder may also be called ``validation``, ``valid`` or ``test``.

    Raises:
        LayerlockError: A missing or empty folder (named in the message).
        ConfigError: Class folders in val that train lacks.

    Example:
        >>> data = folder_train_val("data")  # doctest: +SKIP
    """
    root = Path(root)
    if not root.is_dir():
        raise LayerlockError(f"data folder {root} does not exist")
    if not (root / "train").is_dir():
        raise LayerlockError(
            f"no train/ folder in {root}; expected {root}/train/<class>/* and {root}/val/<class>/*"
        )
    train = image_folder(
        root / "train", transform=train_transform, mode=mode, bad_images=bad_images
    )
    val = image_folder(
        _find_val_dir(root),
        classes=train.classes,
        transform=eval_transform,
        mode=mode,
        bad_images=bad_images,
    )
    return TrainVal(train, val, train.classes)


def _read_csv(path: Path, img_key: str, label_key: str, sep: str) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise LayerlockError(f"CSV file {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=sep)
        header = reader.fieldnames or []
        for key, what in ((img_key, "csv_img_key"), (label_key, "csv_label_key")):
            if key not in header:
                raise ConfigError(
                    f"CSV {path} has no column {key!r} ({what}){suggest(key, header)} "
                    f"Columns: {', '.join(header) or 'none'} (separator {sep!r})"
                )
        paths, labels = [], []
        for line, row in enumerate(reader, start=2):
            p, lab = (row.get(img_key) or "").strip(), (row.get(label_key) or "").strip()
            if not p or not lab:
                raise LayerlockError(f"CSV {path} line {line}: empty {img_key!r} or {label_key!r}")
            paths.append(p)
            labels.append(lab)
    if not paths:
        raise LayerlockError(f"CSV {path} has a header but no rows")
    return paths, labels


def csv_dataset(
    csv_path: str | Path,
    *,
    classes: Sequence[str] | None = None,
    img_key: str = "path",
    label_key: str = "label",
    sep: str = ",",
    transform: Transform | None = None,
    mode: str = "RGB",
    bad_images: str = "skip",
) -> ImageDataset:
    """A CSV of image paths and class labels, with a header row.

    Relative paths are resolved against the CSV file's folder. Labels are class names
    (numbers are fine: they sort numerically).

    Args:
        csv_path: The CSV file.
        classes: The training classes, for an evaluation split; ``None`` takes the sorted
            distinct labels.
        img_key: Column holding the image path (OpenCLIP's ``--csv-img-key``).
        label_key: Column holding the label.
        sep: Column separator (OpenCLIP's ``--csv-separator``).
        transform: Applied to each PIL image.
        mode: ``"L"`` or ``"RGB"``.
        bad_images: ``"skip"`` or ``"error"``; missing files count as unreadable.

    Raises:
        LayerlockError: Missing file, no rows, empty cells, no readable image.
        ConfigError: Unknown column names or labels that ``classes`` lacks.

    Example:
        >>> ds = csv_dataset("train.csv", img_key="filepath", label_key="class")  # doctest: +SKIP
    """
    csv_path = Path(csv_path)
    paths, labels = _read_csv(csv_path, img_key, label_key, sep)
    distinct = sorted(set(labels), key=_class_key)
    if classes is None:
        classes = distinct
    else:
        check_classes(classes, distinct, str(csv_path))
    index = {c: i for i, c in enumerate(classes)}
    base = csv_path.parent
    samples = [(str(base / p), index[lab]) for p, lab in zip(paths, labels)]
    good, skipped = _scan(samples, bad_images)
    if not good:
        raise LayerlockError(f"CSV {csv_path}: none of its {len(samples)} images is readable")
    return ImageDataset(good, classes, transform=transform, mode=mode, skipped=skipped)


def hf_train_val(
    name: str,
    *,
    train_split: str = "train",
    val_split: str = "validation",
    image_key: str = "image",
    label_key: str = "label",
    train_transform: Transform | None = None,
    eval_transform: Transform | None = None,
    mode: str = "RGB",
) -> TrainVal:
    """Train and evaluation splits of a Hugging Face dataset (``datasets.load_dataset``).

    Class names come from a ``ClassLabel`` feature when the label column has one, else from
    the sorted distinct labels of the training split.

    Raises:
        MissingDependencyError: ``datasets`` is not installed.
        LayerlockError: The dataset or a split cannot be loaded.
        ConfigError: Unknown columns, or labels in val that train lacks.

    Example:
        >>> data = hf_train_val("beans", val_split="validation")  # doctest: +SKIP
    """
    try:
        import datasets
    except ImportError as exc:
        raise MissingDependencyError(
            "Hugging Face datasets need the datasets package: pip install datasets"
        ) from exc

    def load(split: str) -> Any:
        try:
            return datasets.load_dataset(name, split=split)
        except Exception as exc:  # datasets raises many unrelated types (network, missing split)
            raise LayerlockError(
                f"cannot load split {split!r} of Hugging Face dataset {name!r}: {_reason(exc)}"
            ) from exc

    train_hf, val_hf = load(train_split), load(val_split)
    for ds, split in ((train_hf, train_split), (val_hf, val_split)):
        columns = list(ds.column_names)
        for key, what in ((image_key, "hf_image_key"), (label_key, "hf_label_key")):
            if key not in columns:
                raise ConfigError(
                    f"Hugging Face dataset {name!r} split {split!r} has no column {key!r} "
                    f"({what}){suggest(key, columns)} Columns: {', '.join(columns)}"
                )

    def names_of(ds: Any) -> list[str] | None:
        feature: Any = getattr(ds, "features", {}).get(label_key)
        return list(feature.names) if getattr(feature, "names", None) else None

    def label_names(ds: Any) -> list[str]:
        raw = list(ds[label_key])
        named = names_of(ds)
        return [named[int(v)] for v in raw] if named else [str(v) for v in raw]

    train_labels, val_labels = label_names(train_hf), label_names(val_hf)
    classes = names_of(train_hf) or sorted(set(train_labels), key=_class_key)
    check_classes(classes, sorted(set(val_labels), key=_class_key), f"{name}[{val_split}]")
    index = {c: i for i, c in enumerate(classes)}
    train = HFImageDataset(
        train_hf, image_key, [index[v] for v in train_labels], classes, train_transform, mode, name
    )
    val = HFImageDataset(
        val_hf, image_key, [index[v] for v in val_labels], classes, eval_transform, mode, name
    )
    return TrainVal(train, val, classes)
