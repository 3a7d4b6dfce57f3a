"""Evaluation sets beyond the run's own validation split (``eval.sets``).

A run evaluates its validation split and, every epoch, each named evaluation set: shifted
versions of the demo digits, a folder or CSV of labelled images, a Hugging Face split.
Their labels must be among the training classes (they index the same head).

Spec (``eval.sets``): a mapping ``name -> source``, or text ``"a,b,name=source"``; a
built-in source may stand alone (its name is the set's name).

=========================== ==========================================================
``demo``                    the demo's held-out digits (the validation split itself)
``demo-<shift>``            the same digits shifted (:mod:`layerlock.data.shifts`)
``folder:PATH``             ``PATH/<class>/<image>``
``csv:PATH``                a CSV with the run's ``csv_img_key`` / ``csv_label_key``
``hf:NAME:SPLIT``           a split of a Hugging Face dataset (``SPLIT`` default ``test``)
=========================== ==========================================================

Example:
    >>> sets = parse_eval_sets("demo-rotated,mine=folder:data/shifted")
    >>> [(s.name, s.kind, s.location) for s in sets.values()]
    [('demo-rotated', 'demo', 'rotated'), ('mine', 'folder', 'data/shifted')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from ..errors import ConfigError, suggest
from .shifts import SHIFTS

if TYPE_CHECKING:
    from .datasets import ArrayImageDataset
    from .sources import SourceOptions
    from .transforms import Transform

__all__ = ["EVAL_KINDS", "EvalSource", "load_eval_set", "parse_eval_sets"]

EVAL_KINDS = ("demo", "folder", "csv", "hf")
BUILTIN_SETS = ("demo", *(f"demo-{s}" for s in SHIFTS))


@dataclass(frozen=True)
class EvalSource:
    """Where one evaluation set comes from.

    Attributes:
        name: The set's name: its columns are ``<name>/val_acc`` ... in the metrics.
        kind: ``demo``, ``folder``, ``csv`` or ``hf``.
        location: The shift (``demo``; empty: unshifted), a path, or a dataset name.
        split: The Hugging Face split (``hf`` only).
    """

    name: str
    kind: str
    location: str = ""
    split: str = ""


def parse_eval_sets(spec: str | Mapping[str, str] | None) -> dict[str, EvalSource]:
    """Parse ``eval.sets`` into named sources; every problem is reported at once.

    Raises:
        ConfigError: Unknown built-in sets or kinds, unnamed path sources, duplicate names.

    Example:
        >>> parse_eval_sets({"rot": "demo-rotated"})["rot"].location
        'rotated'
        >>> parse_eval_sets("demo-twisted")
        Traceback (most recent call last):
        ...
        layerlock.errors.ConfigError: eval.sets: unknown built-in set 'demo-twisted'; built-in sets: demo, demo-rotated, demo-thick, demo-blurred, demo-inverted, demo-noisy, demo-shifted; did you mean 'demo-shifted' or 'demo-rotated' or 'demo-inverted'?
    """
    if not spec:
        return {}
    items: list[tuple[str, str]] = []
    if isinstance(spec, Mapping):
        items = [(str(k), str(v)) for k, v in spec.items()]
    else:
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.partition("=")
            items.append((name.strip(), value.strip()) if sep else ("", part))
    out: dict[str, EvalSource] = {}
    problems: list[str] = []
    for name, value in items:
        try:
            source = _parse_one(name, value)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if source.name in out:
            problems.append(f"eval.sets: the name {source.name!r} is used twice")
        out[source.name] = source
    if problems:
        raise ConfigError("; ".join(problems))
    return out


def _parse_one(name: str, value: str) -> EvalSource:
    kind, sep, rest = value.partition(":")
    if not sep:
        if value not in BUILTIN_SETS:
            raise ConfigError(
                f"eval.sets: unknown built-in set {value!r}; built-in sets: "
                f"{', '.join(BUILTIN_SETS)}" + suggest(value, list(BUILTIN_SETS))
                if value.startswith("demo")
                else f"eval.sets: {value!r} is neither a built-in set ({', '.join(BUILTIN_SETS)}) "
                "nor KIND:LOCATION with KIND one of folder, csv, hf"
            )
        name = name or value
        shift = value.partition("-")[2]
        return _named(EvalSource(name, "demo", shift))
    if kind not in EVAL_KINDS[1:]:
        raise ConfigError(
            f"eval.sets: unknown kind {kind!r} in {value!r}; kinds: folder, csv, hf"
            + suggest(kind, ["folder", "csv", "hf"])
        )
    if not name:
        raise ConfigError(f"eval.sets: give {value!r} a name: NAME={value}")
    if not rest:
        raise ConfigError(f"eval.sets: {name}={value} names no location")
    if kind == "hf":
        dataset, _, split = rest.partition(":")
        return _named(EvalSource(name, kind, dataset, split or "test"))
    return _named(EvalSource(name, kind, rest))


def _named(source: EvalSource) -> EvalSource:
    if "/" in source.name or not source.name.strip():
        raise ConfigError(
            f"eval.sets: set name {source.name!r} must be non-empty and without '/' "
            "(it prefixes the set's metric columns)"
        )
    return source


def load_eval_set(
    source: EvalSource,
    *,
    classes: Sequence[str],
    options: SourceOptions,
    seed: int,
    transform: Transform | None,
    mode: str,
) -> Dataset:
    """The dataset of one evaluation set, labelled with the run's class indices.

    Args:
        source: From :func:`parse_eval_sets`.
        classes: The run's training classes.
        options: The run's data options (demo shots, CSV keys, bad-image policy ...).
        seed: The run's seed (which demo images are held out; the shifts' randomness).
        transform: The evaluation transform.
        mode: PIL mode images are converted to.

    Raises:
        ConfigError: Labels outside the training classes; a demo set in a run on other data.
        LayerlockError: Missing or unreadable data.
    """
    from . import datasets

    if source.kind == "demo":
        dataset = _demo_set(source, classes, options.shots_per_class, seed)
        dataset.transform, dataset.mode = transform, mode
        return dataset
    if source.kind in ("folder", "csv") and not Path(source.location).exists():
        raise ConfigError(
            f"eval.sets: {source.name}: {source.kind} {source.location} does not exist"
        )
    if source.kind == "folder":
        return datasets.image_folder(
            source.location,
            classes=classes,
            transform=transform,
            mode=mode,
            bad_images=options.bad_images,
        )
    if source.kind == "csv":
        return datasets.csv_dataset(
            source.location,
            classes=classes,
            img_key=options.csv_img_key,
            label_key=options.csv_label_key,
            sep=options.csv_separator,
            transform=transform,
            mode=mode,
            bad_images=options.bad_images,
        )
    data = datasets.hf_train_val(
        source.location,
        train_split=source.split,
        val_split=source.split,
        image_key=options.hf_image_key,
        label_key=options.hf_label_key,
        eval_transform=transform,
        mode=mode,
    )
    datasets.check_classes(classes, data.classes, f"eval set {source.name}")
    index = {c: i for i, c in enumerate(classes)}
    val = data.val
    val.targets = [index[data.classes[t]] for t in val.targets]  # type: ignore[attr-defined]
    val.classes = list(classes)  # type: ignore[attr-defined]
    return val


def _demo_set(
    source: EvalSource, classes: Sequence[str], shots_per_class: int, seed: int
) -> ArrayImageDataset:
    """The demo's held-out digits (shifted when the source names a shift), untransformed."""
    from .datasets import ArrayImageDataset
    from .demo import DEMO_CLASSES, demo_task
    from .shifts import shift_images

    if list(classes) != DEMO_CLASSES:
        raise ConfigError(
            f"eval.sets: {source.name} holds the demo digits {', '.join(DEMO_CLASSES)}; this "
            f"run's classes are {', '.join(classes[:6])}{' ...' if len(classes) > 6 else ''}"
        )
    val = demo_task(seed, shots_per_class).val
    images = shift_images(val.images, source.location, seed) if source.location else val.images
    return ArrayImageDataset(images, val.targets, list(DEMO_CLASSES))
