"""Image-classification datasets: ImageFolder trees, CSV files, Hugging Face datasets.

Every dataset here is a ``torch.utils.data.Dataset`` of ``(tensor, label)`` pairs with a
``classes`` list; label ``i`` is ``classes[i]`` and the evaluation dataset always uses the
training dataset's class indices. :class:`TrainVal` holds the pair.

Unreadable or corrupt images: every image file is opened and decoded once when the dataset
is built. With ``bad_images="skip"`` (the default) such files are left out and listed in
``dataset.skipped`` as ``(path, reason)`` so the caller can report how many; with
``bad_images="error"`` the first one raises a :class:`~layerlock.errors.LayerlockError`
naming the file. A file that breaks later (changed on disk) always raises, naming the file.
Only regular files (or links to one) are opened: a FIFO, socket or device named like an
image would block or never end, so it counts as unreadable without being opened.

Links in an ImageFolder tree are followed, with three rules that hold whatever the
``bad_images`` policy (these entries are left out and listed in ``skipped`` with the reason):
a folder already read (a link loop such as ``cat/loop -> .``, or two links to one folder)
is not read again; a file reached twice (by its resolved path) counts once, under its first
path; and a file or folder whose resolved path lies inside another class's folder (``cat/x
-> ../dog``) is not taken into this class, so a link never changes a file's label.
"""

from __future__ import annotations

import csv
import io
import math
import os
import stat
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
        """Entries left out, per split: ``{"train": [(path, reason)], "val": [...]}``.

        Unreadable images, non-regular files, and links that loop, repeat a file or cross
        into another class (see the module docstring).
        """
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
            text += f"; skipped {n} file(s), e.g. {first}"
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
    if isinstance(exc, _NotRegular):
        return str(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:160]


def _not_regular(path: str) -> str | None:
    """Why ``path`` must not be opened (a FIFO would block ``open()`` forever), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if os.path.islink(path):
            return f"broken link ({exc.strerror})"
        return None  # opening it reports the error
    if stat.S_ISREG(mode):
        return None
    kind = (
        "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a folder"
        if stat.S_ISDIR(mode)
        else "a device or socket"
    )
    return f"not a regular file ({kind})"


class _NotRegular(OSError):
    """A path that is not a regular file, found before opening it."""


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
            why = _not_regular(path)
            if why is not None:
                raise _NotRegular(why)
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
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(root)
    if not root.is_dir():
        raise LayerlockError(f"image folder {root} does not exist")
    tree = _read_tree(root, IMG_EXTENSIONS)
    if not tree.classes:
        raise LayerlockError(
            f"image folder {root} has no class folders (expected {root}/<class>/<image>)"
        )
    names = tree.classes
    counts = np.bincount(np.asarray(tree.targets, dtype=np.int64), minlength=len(names))
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
    samples = [(path, index[names[t]]) for path, t in tree.samples]
    if not samples:
        raise LayerlockError(f"image folder {root} has no images in its class folders")
    good, skipped = _scan(samples, bad_images)
    if not good:
        raise LayerlockError(f"image folder {root}: none of its {len(samples)} images is readable")
    return ImageDataset(
        good, classes, transform=transform, mode=mode, skipped=[*tree.skipped, *skipped]
    )


@dataclass
class _Tree:
    """What :func:`_read_tree` found: class names, ``(path, class index)``, skipped entries."""

    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[tuple[str, str]]

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]


def _owner(real: str, class_roots: dict[str, str]) -> str | None:
    """The class whose folder holds the resolved path ``real`` (the deepest such folder)."""
    best: str | None = None
    for name, folder in class_roots.items():
        if (real == folder or real.startswith(folder.rstrip(os.sep) + os.sep)) and (
            best is None or len(folder) > len(class_roots[best])
        ):
            best = name
    return best


def _read_tree(root: Path, extensions: tuple[str, ...]) -> _Tree:
    """The image files of ``root/<class>/**`` in torchvision's ImageFolder order, links safely.

    Classes are the sub-folders of ``root`` sorted by name; each class's files are sorted by
    (folder, name), as ``ImageFolder`` orders them. Links follow the rules of the module
    docstring: no folder is read twice, no file counts twice, nothing crosses into another
    class. Files named like images that are not regular files are kept here: :func:`_scan`
    reports them under the ``bad_images`` policy.
    """
    with os.scandir(root) as it:
        classes = sorted(e.name for e in it if e.is_dir())
    class_roots = {c: os.path.realpath(root / c) for c in classes}
    visited: dict[str, str] = {}  # resolved folder -> the path it was first read under
    first_path: dict[str, str] = {}  # resolved file -> the path it was first counted under
    samples: list[tuple[str, int]] = []
    skipped: list[tuple[str, str]] = []
    for label, name in enumerate(classes):
        found: list[tuple[str, str]] = []  # (folder, file name), sorted at the end
        stack = [str(root / name)]
        while stack:
            folder = stack.pop()
            real = os.path.realpath(folder)
            owner = _owner(real, class_roots)
            if owner is not None and owner != name:
                skipped.append((folder, f"link into class folder {owner!r}; not read as {name!r}"))
                continue
            if real in visited:
                skipped.append((folder, f"link to a folder already read ({visited[real]})"))
                continue
            visited[real] = folder
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                skipped.append((folder, f"cannot list folder ({exc.strerror or exc})"))
                continue
            for entry in reversed(entries):
                if entry.is_dir():  # follows links: their targets are checked above
                    stack.append(entry.path)
                elif entry.name.lower().endswith(extensions):
                    found.append((folder, entry.name))
        for folder, file_name in sorted(found):
            path = os.path.join(folder, file_name)
            real = os.path.realpath(path)
            owner = _owner(real, class_roots)
            if owner is not None and owner != name:
                skipped.append((path, f"link into class folder {owner!r}; not counted as {name!r}"))
            elif real in first_path:
                skipped.append((path, f"same file as {first_path[real]}; counted once"))
            else:
                first_path[real] = path
                samples.append((path, label))
    return _Tree(classes, samples, skipped)


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


def _read_csv(
    path: Path, img_key: str, label_key: str, sep: str, encoding: str = "utf-8"
) -> tuple[list[str], list[str]]:
    from ..yaml_io import decode_text

    if path.is_dir():
        raise LayerlockError(f"CSV file {path} is a folder, not a file")
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise LayerlockError(f"CSV file {path} {what}")
    # binary or wrongly encoded files fail here, naming the file and the encoding expected
    text = decode_text(path.read_bytes(), f"CSV file {path}", encoding, nul_is_binary=False)
    if "\x00" in text.partition("\n")[0]:
        raise ConfigError(f"CSV file {path} is a binary file (NUL byte in its header line)")
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f, delimiter=sep)
        header = reader.fieldnames or []
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise ConfigError(
                f"CSV {path} has column(s) {', '.join(repr(c) for c in repeated)} more than "
                "once in its header; name every column once"
            )
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
            if "\x00" in p or "\x00" in lab:
                raise LayerlockError(
                    f"CSV {path} line {line}: a NUL character in {img_key!r} or {label_key!r}"
                )
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
    encoding: str = "utf-8",
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
        encoding: Text encoding of the CSV file (a UTF-8 byte-order mark is allowed).

    Raises:
        LayerlockError: Missing file, no rows, empty cells or NUL characters (naming the
            line), no readable image.
        ConfigError: Unknown or repeated column names, labels that ``classes`` lacks, a
            binary file or one that is not ``encoding`` text.

    Example:
        >>> ds = csv_dataset("train.csv", img_key="filepath", label_key="class")  # doctest: +SKIP
    """
    csv_path = Path(csv_path)
    paths, labels = _read_csv(csv_path, img_key, label_key, sep, encoding)
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


def _load_saved(datasets: Any, name: str) -> dict[str, Any] | None:
    """The splits of a folder written by ``save_to_disk``, or None for other names.

    A ``DatasetDict`` folder (``dataset_dict.json``) gives its splits; a single ``Dataset``
    folder (``state.json``) is one split, named by the split it was made from (``train``
    when it does not say).
    """
    folder = Path(name)
    if not (folder / "dataset_dict.json").is_file() and not (folder / "state.json").is_file():
        return None
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as exc:  # datasets raises many types for a damaged folder
        raise LayerlockError(
            f"cannot load Hugging Face dataset folder {folder}: {_reason(exc)}"
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded)
    return {str(getattr(loaded, "split", None) or "train"): loaded}


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

    A local folder written by ``save_to_disk`` (a ``DatasetDict``, or a single ``Dataset``
    holding one split) is read with ``datasets.load_from_disk``.

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

    saved = _load_saved(datasets, name)

    def load(split: str) -> Any:
        if saved is not None:
            if split not in saved:
                raise ConfigError(
                    f"Hugging Face dataset {name!r} (saved with save_to_disk) has no split "
                    f"{split!r}{suggest(split, list(saved))} Splits: {', '.join(saved)}"
                )
            return saved[split]
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
