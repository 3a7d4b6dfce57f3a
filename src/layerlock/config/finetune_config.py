"""The configuration of a ``layerlock finetune`` run: one section per concept.

A :class:`FinetuneConfig` has a ``task`` and five sections, each its own options type:
``model`` (:class:`ModelOptions`), ``data`` (:class:`DataOptions`), ``unfreeze``
(:class:`~layerlock.options.UnfreezeOptions`, the type the Unfreezer and the callbacks
take), ``cache`` (:class:`CacheOptions`) and ``run`` (:class:`RunOptions`). It is built
from a YAML file (nested mappings) and ``section.key=value`` overrides, or a dict, and
validated as a whole: every unknown key and every bad value is reported at once in a
single :class:`~layerlock.errors.ConfigError`, one problem per line, keys shown dotted,
before any model or data is touched.

A section given a scalar means its primary field: ``model=timm:resnet18`` is
``model.name``, ``data=folder`` is ``data.source``, ``cache=off`` is ``cache.mode`` and
``unfreeze=gradual`` is ``unfreeze.schedule``.

The flat keys of the previous release (``lr``, ``epochs``, ``data_path``,
``cache_budget_mb`` ...; :data:`LEGACY_KEYS`) still work for one release: each is mapped
to its dotted key with a :class:`FutureWarning`, and the messages are kept in
:attr:`FinetuneConfig.deprecations` for the command line to print. A run's flat
``config.yaml`` written by that release loads the same way.

Example:
    >>> cfg = load_config(overrides=["run.epochs=3", "unfreeze.lr=3e-4", "unfreeze=gradual"])
    >>> cfg.run.epochs, cfg.unfreeze.lr, cfg.unfreeze.schedule
    (3, 0.0003, 'gradual')
"""

from __future__ import annotations

import difflib
import hashlib
import json
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from .cache_policy import CACHE_MODES
from .data.datasets import BAD_IMAGE_POLICIES
from .data.sources import DATA_SOURCES, SourceOptions
from .errors import ConfigError, shorten, suggest
from .options import UnfreezeOptions
from .yaml_io import load_yaml, read_yaml

__all__ = [
    "BAD_IMAGE_POLICIES",
    "CACHE_DTYPES",
    "CACHE_MODES",
    "DATA_SOURCES",
    "DEVICES",
    "LEGACY_KEYS",
    "PRECISIONS",
    "RESUME_IGNORED",
    "SECTIONS",
    "TASKS",
    "CacheOptions",
    "DataOptions",
    "EvalOptions",
    "FinetuneConfig",
    "ModelOptions",
    "RetainOptions",
    "RunOptions",
    "dotted_keys",
    "load_config",
    "parse_overrides",
]

TASKS = ("classify", "clip")
#: Where ``run.report_to`` sends metrics besides the run directory's files.
REPORT_TO = ("tensorboard", "wandb")
PRECISIONS = ("auto", "fp32", "bf16")
RESTORE_BEST = ("off", "stage", "run")
STRATEGIES = ("ddp", "fsdp")
#: ``eval.sets=auto`` on the demo data: its held-out digits, shifted three ways.
DEMO_EVAL_SETS = "demo-rotated,demo-noisy,demo-shifted"
WISE_MODES = ("off", "auto")
CACHE_DTYPES = ("auto", "float16", "bfloat16", "float32")
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Seeds are 32-bit (NumPy's limit; the data order mixes them with the epoch).
MAX_SEED = 2**32
#: More epochs than this is a typo, not a run.
MAX_EPOCHS = 1_000_000
#: ``cuda:0`` ... ``cuda:15`` are accepted devices too.
_MAX_CUDA_INDEX = 16
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}


def _at_least(out: list[str], name: str, value: Any, low: int) -> None:
    if value is None or isinstance(value, bool) or value < low:
        out.append(f"{name}: must be >= {low}, got {shorten(value)}")


def _choice(out: list[str], name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        out.append(
            f"{name}: {shorten(value)} is not one of {', '.join(choices)}"
            + suggest(str(value)[:200], choices)
        )


_TOO_LONG = "too long a path (at most 255 bytes per name, 4,096 in all)"


def _path_kind(value: str | Path) -> str | None:
    """``"file"``, ``"folder"``, ``"too long"``, another kind (``"FIFO"`` ...) or None (missing)."""
    import errno
    import os
    import stat

    try:
        mode = os.stat(value).st_mode
    except OSError as exc:
        return "too long" if exc.errno == errno.ENAMETOOLONG else None
    except ValueError:  # a NUL character
        return None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    return "FIFO" if stat.S_ISFIFO(mode) else "special file"


def _need_path(out: list[str], name: str, value: str | Path, kind: str, what: str) -> None:
    """Report ``value`` unless it is a ``kind`` (file or folder), saying what it is instead."""
    found = _path_kind(value)
    if found == kind:
        return
    text = str(value) if len(str(value)) <= 200 else shorten(str(value))
    if found is None:
        out.append(f"{name}: {what} {text} does not exist")
    elif found == "too long":
        out.append(f"{name}: {text} is {_TOO_LONG}")
    else:
        out.append(f"{name}: {text} is a {found}, not a {kind}")


@dataclass
class ModelOptions:
    """The model to fine-tune (section ``model``; ``model=SPEC`` sets :attr:`name`).

    Attributes:
        name: Model spec: ``demo``, ``timm:NAME``, ``open_clip:NAME``, ``hf:NAME``,
            ``torchvision:NAME`` or ``module:path:factory``.
        pretrained: Load published weights (bool), or an OpenCLIP pretrained tag.
        checkpoint: Local weights (safetensors, or a file ``torch.load(weights_only=True)``
            reads) loaded into the model before training.
        zero_shot_head: Initialise an OpenCLIP head from its text tower's class embeddings.
        prompt: Prompt template of the zero-shot head; ``{}`` is the class name.
    """

    name: str = "demo"
    pretrained: bool | str = False
    checkpoint: str | None = None
    zero_shot_head: bool = True
    prompt: str = "a photo of a {}."

    def problems(self) -> list[str]:
        """Every bad value, ``"field: message"`` each (empty when valid)."""
        out: list[str] = []
        if "{}" not in self.prompt:
            out.append(f"prompt: must contain '{{}}' for the class name, got {self.prompt!r}")
        if self.name != "demo":
            from .models import parse_spec

            try:
                parse_spec(self.name)
            except ConfigError as exc:
                out.append(f"name: {exc}")
        if self.checkpoint:
            _need_path(out, "checkpoint", self.checkpoint, "file", "file")
        return out


@dataclass
class DataOptions(SourceOptions):
    """Where the images come from and how they are read (section ``data``).

    Where to find the data are the fields of :class:`~layerlock.data.sources.SourceOptions`
    (``path``, ``train_csv``, ``val_csv``, ``csv_img_key``, ``csv_label_key``,
    ``csv_separator``, ``csv_encoding``, ``hf_image_key``, ``hf_label_key``, ``train_split``, ``val_split``,
    ``bad_images``, ``shots_per_class``); this section adds:

    Attributes:
        source: ``demo``, ``folder``, ``csv`` or ``hf`` (``data=SOURCE`` sets it).
        augmentation: Keyword arguments of ``timm.data.create_transform`` for training images;
            ``None`` takes the model's own recommendation or timm's defaults.
        deterministic_train_transform: Use the evaluation transform on training images.
        workers: DataLoader worker processes, or ``auto``
            (:func:`~layerlock.data.loading.resolve_workers`).
        csv_caption_key: Caption column of an image-caption CSV (``task=clip``;
            open_clip_train's ``--csv-caption-key``). With ``task=clip``, ``csv_img_key``
            and ``csv_separator`` default to open_clip_train's ``filepath`` and tab.
        templates: Prompt templates that turn class labels into captions (``task=clip``
            on a folder, a CSV of labels or the demo; and zero-shot sets): ``openai``,
            ``simple``, ``digits`` or a file of one template per line; ``None``: the
            source's own (``digits`` for the demo, else ``simple``).
    """

    source: str = "demo"
    augmentation: dict[str, Any] | None = None
    deterministic_train_transform: bool = False
    workers: int | Literal["auto"] = "auto"
    csv_caption_key: str = "title"
    templates: str | None = None

    def problems(self) -> list[str]:
        """Every bad value, ``"field: message"`` each (empty when valid)."""
        out: list[str] = []
        _choice(out, "source", self.source, DATA_SOURCES)
        _choice(out, "bad_images", self.bad_images, BAD_IMAGE_POLICIES)
        _at_least(out, "shots_per_class", self.shots_per_class, 1)
        if self.workers != "auto":
            _at_least(out, "workers", self.workers, 0)
        if len(self.csv_separator) != 1:
            out.append(f"csv_separator: must be one character, got {self.csv_separator!r}")
        try:
            import codecs

            codecs.lookup(self.csv_encoding)
        except LookupError:
            out.append(
                f"csv_encoding: unknown text encoding {shorten(self.csv_encoding)} "
                "(e.g. utf-8, latin-1, cp1252)"
            )
        if self.source == "folder":
            if not self.path:
                out.append("path: source=folder needs a folder holding train/ and val/")
            else:
                _need_path(out, "path", self.path, "folder", "folder")
        elif self.source == "csv":
            for name in ("train_csv", "val_csv"):
                value = getattr(self, name)
                if not value:
                    out.append(f"{name}: source=csv needs a CSV file of path,label rows")
                else:
                    _need_path(out, name, value, "file", "file")
        elif self.source == "hf" and not self.path:
            out.append("path: source=hf needs the Hugging Face dataset name")
        return out


@dataclass
class CacheOptions:
    """The feature cache of the locked prefix (section ``cache``; ``cache=MODE`` sets :attr:`mode`).

    Attributes:
        mode: ``auto`` (per stage, from the cost model), ``on`` (whenever possible) or ``off``.
        budget_mb: Memory the cache may use, in MiB.
        views: Fixed augmented views per training image cached under a random train
            transform (epoch ``e`` trains on view ``e % views``; 1 caches one fixed view
            only with ``mode=on``).
        dtype: Storage dtype of cached features: ``auto`` (bfloat16 on CUDA, float16
            elsewhere), ``float16``, ``bfloat16`` or ``float32``.
        dir: Folder for the training features on disk (memory-mapped, one checked file
            per cache key); a later run or schedule whose key matches reuses them
            without a fill. ``None``: in memory, dropped with the run.
    """

    mode: str = "auto"
    budget_mb: int = 1024
    views: int = 2
    dtype: str = "auto"
    dir: str | None = None

    def problems(self) -> list[str]:
        """Every bad value, ``"field: message"`` each (empty when valid)."""
        out: list[str] = []
        _choice(out, "mode", self.mode, CACHE_MODES)
        _choice(out, "dtype", self.dtype, CACHE_DTYPES)
        _at_least(out, "views", self.views, 1)
        _at_least(out, "budget_mb", self.budget_mb, 0)
        if self.dir is not None and Path(self.dir).is_file():
            out.append(f"dir: {self.dir} is a file, not a folder")
        return out


@dataclass
class EvalOptions:
    """What is evaluated besides the validation split, and when (section ``eval``).

    Attributes:
        sets: Extra evaluation sets, each evaluated after every epoch: a mapping
            ``name -> source`` or text ``"demo-rotated,mine=folder:PATH"`` (sources in
            :mod:`layerlock.data.evalsets`). Their columns are ``<name>/val_acc`` ...
            ``auto``: the demo's shifted sets (:data:`DEMO_EVAL_SETS`) on the demo data,
            none otherwise; ``""``: none.
        at_start: Evaluate before training too (an ``epoch 0`` row: the starting point).
            ``auto``: when the retention guard needs it or the task asks for it.
    """

    sets: str | dict[str, str] = "auto"
    at_start: bool | Literal["auto"] = "auto"

    def resolved(self, source: str) -> str | dict[str, str]:
        """:attr:`sets` with ``auto`` resolved for the data ``source``.

        Example:
            >>> EvalOptions().resolved("demo"), EvalOptions().resolved("folder")
            ('demo-rotated,demo-noisy,demo-shifted', '')
        """
        if self.sets == "auto":
            return DEMO_EVAL_SETS if source == "demo" else ""
        return self.sets

    def problems(self) -> list[str]:
        """Every bad value, ``"field: message"`` each (empty when valid)."""
        from .data.evalsets import parse_eval_sets

        out: list[str] = []
        try:
            parse_eval_sets(self.resolved("demo"))
        except ConfigError as exc:
            out.append(str(exc).removeprefix("eval."))
        if self.at_start not in (True, False, "auto"):
            out.append(f"at_start: must be true, false or auto, got {self.at_start!r}")
        return out

    def set_names(self, source: str) -> list[str]:
        """The extra sets' names for the data ``source``, in order."""
        from .data.evalsets import parse_eval_sets

        return list(parse_eval_sets(self.resolved(source)))


@dataclass
class RetainOptions:
    """Keep what the model knew (section ``retain``; ``retain=SET`` sets :attr:`set`).

    Attributes:
        set: The reference evaluation set of the retention guard (``val`` or a name of
            ``eval.sets``); ``None``: no guard. After each epoch, if its accuracy falls more
            than :attr:`max_drop` points below its value before training, the run restores
            the best weights of the current stage, stops unlocking deeper groups and
            multiplies the learning rates by :attr:`lr_factor` (logged in ``events.jsonl``).
        max_drop: The largest tolerated drop, in accuracy points (0-100).
        lr_factor: Learning-rate factor applied when the guard triggers (1: unchanged).
        restore_best: ``stage``: at the end of each stage restore the weights of its best
            epoch (first evaluation set) before the next stage unlocks more; ``run``: end
            the run with its best epoch's weights; ``off``.
        wise: ``auto``: after the run, interpolate its start and end weights (WiSE-FT) and
            keep the mixing coefficient best on the first evaluation set; ``off``.
    """

    set: str | None = None
    max_drop: float = 5.0
    lr_factor: float = 1.0
    restore_best: str = "off"
    wise: str = "off"

    def problems(self) -> list[str]:
        """Every bad value, ``"field: message"`` each (empty when valid)."""
        out: list[str] = []
        if not (0 <= self.max_drop <= 100):
            out.append(f"max_drop: must be in [0, 100] accuracy points, got {self.max_drop!r}")
        if not (0 < self.lr_factor <= 1):
            out.append(f"lr_factor: must be in (0, 1], got {self.lr_factor!r}")
        _choice(out, "restore_best", self.restore_best, RESTORE_BEST)
        _choice(out, "wise", self.wise, WISE_MODES)
        return out


@dataclass
class RunOptions:
    """How long and where the run trains, and where it writes (section ``run``).

    Attributes:
        epochs: Training epochs.
        batch_size: Images per step and process.
        grad_clip: Max gradient norm (``None``: no clipping).
        label_smoothing: Cross-entropy label smoothing.
        precision: ``fp32``, ``bf16`` or ``auto`` (bf16 where the device supports it).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        seed: Seed of everything random (data order, augmentation, head init).
        out_dir: Run directory.
        resume: Run directory to continue from (must hold a checkpoint of the same config).
        log_every: Steps between per-step metric rows.
        allow_data_change: Resume even if the data changed since the run started (files
            added, removed or rewritten); the change is logged in ``events.jsonl``.
        strategy: Under ``torchrun``: ``ddp`` (DistributedDataParallel, rebuilt at each
            unlock) or ``fsdp`` (each layer group its own ``fully_shard`` unit; checkpoints
            hold the full state dict, gathered on rank 0).
        report_to: Also log metrics to ``tensorboard`` and / or ``wandb`` (a list, or
            ``tensorboard,wandb``); needs ``pip install 'layerlock[tensorboard]'`` /
            ``'layerlock[wandb]'``.
    """

    epochs: int = 16
    batch_size: int = 16
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    out_dir: str = "runs/finetune"
    resume: str | None = None
    log_every: int = 10
    allow_data_change: bool = False
    strategy: str = "ddp"
    report_to: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        """Every bad value, ``"field: message"`` each (empty when valid)."""
        out: list[str] = []
        for target in self.report_to:
            _choice(out, "report_to", target, REPORT_TO)
        _choice(out, "precision", self.precision, PRECISIONS)
        _choice(
            out, "device", self.device, (*DEVICES, *(f"cuda:{i}" for i in range(_MAX_CUDA_INDEX)))
        )
        for name in ("epochs", "batch_size", "log_every"):
            _at_least(out, name, getattr(self, name), 1)
        if self.grad_clip is not None and not self.grad_clip > 0:
            out.append(f"grad_clip: must be > 0 or none, got {self.grad_clip!r}")
        if not 0 <= self.label_smoothing < 1:
            out.append(f"label_smoothing: must be in [0, 1), got {self.label_smoothing!r}")
        _choice(out, "strategy", self.strategy, STRATEGIES)
        if not 0 <= self.seed < MAX_SEED:
            out.append(f"seed: must be in [0, {MAX_SEED}), got {self.seed!r}")
        if self.epochs > MAX_EPOCHS:
            out.append(f"epochs: {self.epochs:,} is more than the {MAX_EPOCHS:,} supported")
        if not self.out_dir.strip():
            out.append("out_dir: must not be empty (a run writes into its own folder)")
        elif _path_kind(self.out_dir) == "too long":
            out.append(f"out_dir: {shorten(self.out_dir)} is {_TOO_LONG}")
        elif _path_kind(self.out_dir) not in (None, "folder"):
            out.append(f"out_dir: {self.out_dir} is a {_path_kind(self.out_dir)}, not a folder")
        if self.resume is not None:
            if not self.resume.strip():
                out.append("resume: must name a run directory, got an empty value")
            elif _path_kind(self.resume) == "file":
                out.append(f"resume: {self.resume} is a file; pass its run directory")
            else:
                _need_path(out, "resume", self.resume, "folder", "run directory")
        return out


@dataclass
class TowerOptions:
    """The two towers of a contrastive run, ``task=clip`` (section ``towers``).

    ``unfreeze.schedule`` applies to both towers (each tower's last k groups, its head ...;
    ``lit`` and ``flyp`` are presets of tower pairs); :attr:`visual` and :attr:`text`
    replace it for one tower. ``logit_scale`` (and SigLIP's ``logit_bias``) train whenever
    a tower trains. Rates left at ``None`` are the ``unfreeze`` section's. In YAML a tower
    may also be a mapping: ``towers: {text: {schedule: gradual, lr: 1e-4}}``.

    Attributes:
        visual: Schedule of the image tower: any schedule, or ``locked`` (never trains).
        text: Schedule of the text tower: any schedule, or ``locked``.
        visual_lr: Base learning rate of the image tower.
        text_lr: Base learning rate of the text tower.
        visual_weight_decay: Weight decay of the image tower's weights.
        text_weight_decay: Weight decay of the text tower's weights.
        visual_layer_decay: Layer-wise LR decay within the image tower, in (0, 1].
        text_layer_decay: Layer-wise LR decay within the text tower, in (0, 1].
        loss: ``clip`` (OpenCLIP's ``ClipLoss``), ``siglip`` (``SigLipLoss``) or ``auto``
            (``siglip`` for models with a ``logit_bias``).
    """

    visual: str | None = None
    text: str | None = None
    visual_lr: float | None = None
    text_lr: float | None = None
    visual_weight_decay: float | None = None
    text_weight_decay: float | None = None
    visual_layer_decay: float | None = None
    text_layer_decay: float | None = None
    loss: str = "auto"

    def problems(self) -> list[str]:
        """Every bad value, ``"field: message"`` each (empty when valid)."""
        from .errors import ScheduleError
        from .schedule import parse_schedule

        out: list[str] = []
        for tower in ("visual", "text"):
            text = getattr(self, tower)
            if text is not None and text != "locked":
                try:
                    parse_schedule(text)
                except ScheduleError as exc:
                    out.append(f"{tower}: {exc} (or 'locked')")
            lr = getattr(self, f"{tower}_lr")
            if lr is not None and not lr > 0:
                out.append(f"{tower}_lr: must be > 0, got {lr!r}")
            wd = getattr(self, f"{tower}_weight_decay")
            if wd is not None and not wd >= 0:
                out.append(f"{tower}_weight_decay: must be >= 0, got {wd!r}")
            ld = getattr(self, f"{tower}_layer_decay")
            if ld is not None and not 0 < ld <= 1:
                out.append(f"{tower}_layer_decay: must be in (0, 1], got {ld!r}")
        _choice(out, "loss", self.loss, CLIP_LOSSES)
        return out


#: ``towers.loss`` values.
CLIP_LOSSES = ("auto", "clip", "siglip")
#: The open_clip_train CSV defaults ``task=clip`` reads (``--csv-img-key`` ... ).
CLIP_CSV_DEFAULTS = {"data.csv_img_key": "filepath", "data.csv_separator": "\t"}

#: Section name -> its options type, in the order configs are written.
SECTIONS: dict[str, type] = {
    "model": ModelOptions,
    "data": DataOptions,
    "unfreeze": UnfreezeOptions,
    "cache": CacheOptions,
    "eval": EvalOptions,
    "retain": RetainOptions,
    "towers": TowerOptions,
    "run": RunOptions,
}
#: The field a section given a scalar sets (``model=timm:x`` is ``model.name``).
_PRIMARY = {
    "model": "name",
    "data": "source",
    "unfreeze": "schedule",
    "cache": "mode",
    "eval": "sets",
    "retain": "set",
}

#: Flat keys of the previous release -> their dotted keys (accepted, with a warning,
#: for one release). ``model``, ``data`` and ``cache`` need no entry: a scalar given to
#: a section sets its primary field.
LEGACY_KEYS: dict[str, str] = {
    "pretrained": "model.pretrained",
    "checkpoint": "model.checkpoint",
    "zero_shot_head": "model.zero_shot_head",
    "prompt": "model.prompt",
    "data_path": "data.path",
    **{
        name: f"data.{name}"
        for name in (
            "train_csv",
            "val_csv",
            "csv_img_key",
            "csv_label_key",
            "csv_separator",
            "hf_image_key",
            "hf_label_key",
            "train_split",
            "val_split",
            "bad_images",
            "shots_per_class",
            "augmentation",
            "deterministic_train_transform",
            "workers",
        )
    },
    **{
        name: f"unfreeze.{name}"
        for name in (
            "schedule",
            "lr",
            "weight_decay",
            "layer_decay",
            "warmup_steps",
            "unlock_warmup_steps",
            "freeze_bn_stats",
        )
    },
    "cache_budget_mb": "cache.budget_mb",
    "cache_views": "cache.views",
    "cache_dtype": "cache.dtype",
    **{
        name: f"run.{name}"
        for name in (
            "epochs",
            "batch_size",
            "grad_clip",
            "label_smoothing",
            "precision",
            "device",
            "seed",
            "out_dir",
            "resume",
            "log_every",
        )
    },
}

#: Dotted keys that do not change the training trajectory: a run can be resumed with
#: other values, and :meth:`FinetuneConfig.fingerprint` leaves them out.
RESUME_IGNORED = frozenset(
    {
        "run.out_dir",
        "run.resume",
        "run.log_every",
        "run.allow_data_change",
        "run.strategy",
        "run.device",
        "run.report_to",
        "data.workers",
        "data.bad_images",
        "cache.mode",
        "cache.budget_mb",
        "cache.views",
        "cache.dtype",
        "cache.dir",
    }
)


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on. Defaults run the embedded demo task.

    Attributes:
        task: What is trained: ``classify`` (an image classifier).
        model: The model (:class:`ModelOptions`).
        data: The images (:class:`DataOptions`).
        unfreeze: Schedule, learning rates, weight decay, BatchNorm
            (:class:`~layerlock.options.UnfreezeOptions`).
        cache: The locked-prefix feature cache (:class:`CacheOptions`).
        eval: Extra evaluation sets and evaluation before training (:class:`EvalOptions`).
        retain: The retention guard, best-epoch restore and WiSE-FT (:class:`RetainOptions`).
        run: Length, batch size, precision, device, seed and run directory
            (:class:`RunOptions`).
        deprecations: One message per old flat key this config was built from (not part
            of the config: left out of comparisons and output).

    Example:
        >>> cfg = FinetuneConfig(unfreeze=UnfreezeOptions(lr=0.01), run=RunOptions(epochs=2))
        >>> cfg.validate().unfreeze.lr
        0.01
    """

    task: str = "classify"
    model: ModelOptions = field(default_factory=ModelOptions)
    data: DataOptions = field(default_factory=DataOptions)
    unfreeze: UnfreezeOptions = field(default_factory=UnfreezeOptions)
    cache: CacheOptions = field(default_factory=CacheOptions)
    eval: EvalOptions = field(default_factory=EvalOptions)
    retain: RetainOptions = field(default_factory=RetainOptions)
    towers: TowerOptions = field(default_factory=TowerOptions)
    run: RunOptions = field(default_factory=RunOptions)
    deprecations: list[str] = field(default_factory=list, repr=False, compare=False)

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FinetuneConfig:
        """Build and validate from a mapping (nested, dotted or old flat keys).

        All problems are raised together.

        Example:
            >>> FinetuneConfig.from_dict({"run": {"epochs": "2"}}).run.epochs
            2
            >>> FinetuneConfig.from_dict({"run.epochs": 3, "model": "timm:test_vit"}).model.name
            'timm:test_vit'
        """
        flat, deprecations, problems = dotted_keys(values)
        return _checked(flat, deprecations, problems)

    @classmethod
    def from_yaml(
        cls,
        path: str | Path,
        overrides: Sequence[str] | Mapping[str, Any] = (),
    ) -> FinetuneConfig:
        """Read a YAML mapping, apply overrides and validate.

        Example:
            >>> FinetuneConfig.from_yaml("finetune.yaml", ["unfreeze.lr=1e-4"])  # doctest: +SKIP
        """
        return load_config(path, overrides)

    def with_overrides(self, overrides: Sequence[str] | Mapping[str, Any]) -> FinetuneConfig:
        """A validated copy with some keys replaced (dotted keys, as in :func:`load_config`).

        Raises:
            ConfigError: Every problem of the result, at once.

        Example:
            >>> cfg = FinetuneConfig().with_overrides({"unfreeze.schedule": "full"})
            >>> cfg.unfreeze.schedule, FinetuneConfig().unfreeze.schedule
            ('full', 'lp-ft')
        """
        values, problems = parse_overrides(overrides)
        flat, deprecations, more = dotted_keys(values)
        return _checked({**self.flat_dict(), **flat}, deprecations, problems + more)

    # -- validation -------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Every bad value, one ``"section.field: message"`` each (empty when valid).

        Example:
            >>> FinetuneConfig(run=RunOptions(epochs=0)).problems()
            ['run.epochs: must be >= 1, got 0']
        """
        out: list[str] = []
        _choice(out, "task", self.task, TASKS)
        for name in SECTIONS:
            out.extend(f"{name}.{p}" for p in getattr(self, name).problems())
        if self.run.strategy == "fsdp" and (
            self.retain.set is not None or self.retain.restore_best != "off"
        ):
            out.append(
                "run.strategy: fsdp does not support retain.set or retain.restore_best yet "
                "(they keep full weight copies); use run.strategy=ddp"
            )
        # a classifier's sets are known here; other tasks add their own (checked at setup)
        if (
            self.task == "classify"
            and self.retain.set is not None
            and not any(p.startswith("eval.sets") for p in out)
        ):
            known = ["val", *self.eval.set_names(self.data.source)]
            if self.retain.set not in known:
                out.append(
                    f"retain.set: {self.retain.set!r} is not an evaluation set; sets: "
                    f"{', '.join(known)} (add it to eval.sets)" + suggest(self.retain.set, known)
                )
        return out

    def validate(self) -> FinetuneConfig:
        """Raise one :class:`ConfigError` listing every problem; return ``self`` if none.

        Example:
            >>> FinetuneConfig(run=RunOptions(epochs=0, precision="fp16")).validate()
            Traceback (most recent call last):
            ...
            layerlock.errors.ConfigError: 2 problems in the configuration:
              run.precision: 'fp16' is not one of auto, fp32, bf16; did you mean 'bf16'?
              run.epochs: must be >= 1, got 0
        """
        problems = self.problems()
        if problems:
            raise ConfigError(_format(problems))
        return self

    # -- output -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON / YAML safe), nested by section, in field order.

        Example:
            >>> FinetuneConfig().to_dict()["unfreeze"]["schedule"]
            'lp-ft'
        """
        out: dict[str, Any] = {"task": self.task}
        for name in SECTIONS:
            section = getattr(self, name)
            out[name] = {f.name: _plain(getattr(section, f.name)) for f in fields(section)}
        return out

    def flat_dict(self) -> dict[str, Any]:
        """Plain values keyed by dotted name (``"unfreeze.lr"``), in field order.

        Example:
            >>> FinetuneConfig().flat_dict()["run.epochs"]
            16
        """
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict) and key in SECTIONS:
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    def to_yaml(self) -> str:
        """The resolved config as nested YAML; ``load_config`` of it gives an equal config.

        Example:
            >>> "epochs: 16" in FinetuneConfig().to_yaml()
            True
        """
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        """A stable hash of the fields that decide the training trajectory.

        Fields in :data:`RESUME_IGNORED` (output folder, workers, cache, logging, ...) are
        left out, so a run can be resumed with different ones.

        Example:
            >>> cfg = FinetuneConfig()
            >>> cfg.with_overrides({"data.workers": 4}).fingerprint() == cfg.fingerprint()
            True
        """
        relevant = {k: v for k, v in self.flat_dict().items() if k not in RESUME_IGNORED}
        return _hash(relevant)

    def fingerprint_matches(self, fingerprint: str) -> bool:
        """Whether a checkpoint's ``fingerprint`` belongs to this config.

        Also accepts the flat fingerprint the previous release wrote, so its runs resume.

        Example:
            >>> cfg = FinetuneConfig()
            >>> cfg.fingerprint_matches(cfg.fingerprint()), cfg.fingerprint_matches("0" * 16)
            (True, False)
        """
        return fingerprint == self.fingerprint() or fingerprint in self._legacy_fingerprints()

    def _legacy_fingerprints(self) -> set[str]:
        """Fingerprints the previous (flat) release gave this config; empty if it could not."""
        defaults = FinetuneConfig()
        flat = self.flat_dict()
        known = set(LEGACY_KEYS.values()) | {"model.name", "data.source", "cache.mode"}
        # options that release did not have must be at their defaults
        if any(v != defaults.flat_dict()[k] for k, v in flat.items() if k not in known):
            return set()
        old = {name: flat[new] for name, new in LEGACY_KEYS.items()}
        old.update(model=self.model.name, data=self.data.source, cache=self.cache.mode)
        ignored = {name for name, new in LEGACY_KEYS.items() if new in RESUME_IGNORED}
        relevant = {k: v for k, v in old.items() if k not in ignored | {"cache"}}
        out = {_hash(relevant)}
        if relevant["layer_decay"] == 1.0:  # that release wrote "off" as null
            out.add(_hash({**relevant, "layer_decay": None}))
        return out

    def differences(self, other: FinetuneConfig | Mapping[str, Any]) -> list[str]:
        """``"unfreeze.lr: 0.001 -> 0.01"`` for every resume-relevant field that differs.

        ``other`` may be a config or a mapping (a run's ``config.yaml``, old flat keys
        included).

        Example:
            >>> cfg = FinetuneConfig(unfreeze=UnfreezeOptions(lr=0.01))
            >>> cfg.differences(FinetuneConfig())
            ['unfreeze.lr: 0.001 -> 0.01']
        """
        theirs = _as_config(other).flat_dict()
        mine = self.flat_dict()
        return [
            f"{k}: {theirs.get(k)!r} -> {mine[k]!r}"
            for k in mine
            if k not in RESUME_IGNORED and theirs.get(k) != mine[k]
        ]

    def check_resume(self, saved: FinetuneConfig | Mapping[str, Any], run_dir: str | Path) -> None:
        """Refuse to resume ``run_dir`` (saved with config ``saved``) under a different config.

        Raises:
            ConfigError: Naming the run directory and the fields that differ.

        Example:
            >>> FinetuneConfig(run=RunOptions(seed=1)).check_resume(FinetuneConfig(), "runs/a")
            Traceback (most recent call last):
            ...
            layerlock.errors.ConfigError: cannot resume runs/a: it was started with a different config (run.seed: 0 -> 1); use the same settings or a new run.out_dir
        """
        diffs = self.differences(saved)
        if diffs:
            raise ConfigError(
                f"cannot resume {run_dir}: it was started with a different config "
                f"({'; '.join(diffs)}); use the same settings or a new run.out_dir"
            )


def _as_config(value: FinetuneConfig | Mapping[str, Any]) -> FinetuneConfig:
    """``value`` as a config; a mapping's bad entries are left at their defaults, quietly."""
    if isinstance(value, FinetuneConfig):
        return value
    flat, _, _ = dotted_keys(value)
    return _build(flat)[0]


def _hash(values: Mapping[str, Any]) -> str:
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _checked(
    values: Mapping[str, Any], deprecations: list[str], problems: list[str]
) -> FinetuneConfig:
    """The config of dotted ``values``, once the deprecations are warned.

    Raises:
        ConfigError: ``problems`` (found while reading the values) and those of the
            result, all at once.
    """
    for message in deprecations:
        # the caller of the public function that called this one
        warnings.warn(message, FutureWarning, stacklevel=3)
    cfg, more = _build(values)
    cfg.deprecations = deprecations
    if problems or more:
        raise ConfigError(_format([*problems, *more]))
    return cfg


def _all_keys() -> list[str]:
    return ["task"] + [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]


def dotted_keys(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """Normalise nested, dotted, shorthand and old flat keys to dotted keys.

    Dashes in keys become underscores. Nothing is validated but the shape: unknown keys
    pass through (``_build`` reports them).

    Returns:
        ``(values by dotted key, deprecation messages, problems)``.

    Example:
        >>> flat, old, _ = dotted_keys({"model": "timm:x", "run": {"epochs": 2}, "lr": 0.1})
        >>> flat
        {'model.name': 'timm:x', 'run.epochs': 2, 'unfreeze.lr': 0.1}
        >>> old
        ["config key 'lr' is deprecated: use 'unfreeze.lr' (the flat name stops working in the next release)"]
    """
    out: dict[str, Any] = {}
    deprecations: list[str] = []
    problems: list[str] = []
    for raw, value in values.items():
        key = str(raw).strip().replace("-", "_")
        if key in SECTIONS:
            if isinstance(value, SECTIONS[key]):
                value = {f.name: getattr(value, f.name) for f in fields(SECTIONS[key])}
            if isinstance(value, Mapping):
                for sub, v in value.items():
                    sub = str(sub).strip().replace("-", "_")
                    if key == "towers" and isinstance(v, Mapping):  # towers: {text: {lr: x}}
                        for leaf, w in v.items():
                            out[_tower_key(f"towers.{sub}.{leaf}")] = w
                        continue
                    out[f"{key}.{sub}"] = v
            elif key in _PRIMARY:
                out[f"{key}.{_PRIMARY[key]}"] = value
            else:
                problems.append(f"{key}: expected a mapping of {key}.* keys, got {shorten(value)}")
        elif key in LEGACY_KEYS:
            new = LEGACY_KEYS[key]
            out[new] = value
            deprecations.append(
                f"config key {key!r} is deprecated: use {new!r} "
                "(the flat name stops working in the next release)"
            )
        else:
            out[_tower_key(key)] = value
    return out, deprecations, problems


def _tower_key(key: str) -> str:
    """``towers.text.lr`` -> ``towers.text_lr``; ``towers.text.schedule`` -> ``towers.text``."""
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != "towers":
        return key
    _, tower, leaf = parts
    leaf = leaf.strip().replace("-", "_")
    return f"towers.{tower}" if leaf == "schedule" else f"towers.{tower}_{leaf}"


def _build(values: Mapping[str, Any]) -> tuple[FinetuneConfig, list[str]]:
    """A config from dotted ``values`` (bad entries left at their defaults) and every problem."""
    problems: list[str] = []
    known = _all_keys()
    kwargs: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    task: Any = "classify"
    for key, value in values.items():
        if key not in known:
            problems.append(f"unknown key {shorten(key)}{_suggest_key(key[:200], known)}")
            continue
        if key == "task":
            try:
                task = _coerce(value, str)
            except ValueError as exc:
                problems.append(f"task: {exc}")
            continue
        section, _, leaf = key.partition(".")
        if key == "unfreeze.layer_decay" and _is_none(value):
            value = 1.0  # "none", as the previous release wrote it, means off
        try:
            kwargs[section][leaf] = _coerce(value, _hints(SECTIONS[section])[leaf])
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    if task == "clip":  # open_clip_train's CSV defaults, unless given
        for key, default in CLIP_CSV_DEFAULTS.items():
            kwargs["data"].setdefault(key.partition(".")[2], default)
    cfg = FinetuneConfig(task=task, **{name: SECTIONS[name](**kw) for name, kw in kwargs.items()})
    reported = {p.split(":", 1)[0] for p in problems}
    problems.extend(p for p in cfg.problems() if p.split(":", 1)[0] not in reported)
    return cfg, problems


def _suggest_key(key: str, known: list[str]) -> str:
    """``"; did you mean 'run.epochs'?"`` for a misspelt dotted, flat or bare field name."""
    section, dot, leaf = key.partition(".")
    if dot and section in SECTIONS:
        leaves = [f.name for f in fields(SECTIONS[section])]
        close = difflib.get_close_matches(leaf, leaves, n=3, cutoff=0.6)
        return suggest(key, [f"{section}.{m}" for m in close], n=len(close) or 1)
    if dot:
        return suggest(key, known)
    by_leaf: dict[str, list[str]] = {}
    for full in known:
        by_leaf.setdefault(full.rpartition(".")[2], []).append(full)
    for old, new in LEGACY_KEYS.items():
        by_leaf.setdefault(old, []).append(new)
    matches: list[str] = []
    for leaf in difflib.get_close_matches(key, list(by_leaf), n=3, cutoff=0.6):
        matches.extend(m for m in by_leaf[leaf] if m not in matches)
    if not matches:
        return ""
    return "; did you mean " + " or ".join(repr(m) for m in matches[:3]) + "?"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


#: A problem line longer than this is cut in the middle (values are shortened where
#: they are quoted; this bounds what a message quotes from anywhere else).
_MAX_PROBLEM_CHARS = 400


def _cut(line: str) -> str:
    if len(line) <= _MAX_PROBLEM_CHARS:
        return line
    return f"{line[:300]} ... {line[-80:]}"


def _format(problems: list[str]) -> str:
    problems = [_cut(p) for p in problems]
    if len(problems) == 1:
        return f"bad configuration: {problems[0]}"
    return f"{len(problems)} problems in the configuration:\n" + "\n".join(
        f"  {p}" for p in problems
    )


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    # Path, Schedule: their text form
    return str(value)


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE)


_SIMPLE = (bool, int, float, str)


def _coerce(value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML or a ``key=value`` string) to the annotated type."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        # only the types a config file can spell (a Schedule is given as its text)
        options = [
            a
            for a in args
            if a in _SIMPLE or typing.get_origin(a) in (dict, tuple, Literal) or a is dict
        ]
        if type(None) in args and _is_none(value):
            return None
        # bool | str (pretrained): a boolean word is a bool, anything else the string
        if bool in options and str in options:
            if isinstance(value, bool):
                return value
            text = str(value).strip()
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            return text
        errors = []
        for option in options:
            try:
                return _coerce(value, option)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if value is None:
        raise ValueError("must not be empty")
    if origin is Literal:
        text = str(value).strip()
        if text in args:
            return text
        raise ValueError(f"expected {' or '.join(repr(a) for a in args)}, got {shorten(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {shorten(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {shorten(value)}")
        if isinstance(value, int):
            return value
        try:
            number = float(str(value).replace("_", ""))
        except ValueError:
            raise ValueError(f"expected an integer, got {shorten(value)}") from None
        if not number.is_integer():
            raise ValueError(f"expected an integer, got {shorten(value)}")
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {shorten(value)}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {shorten(value)}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected a string, got {shorten(value)}")
        return str(value)
    if origin is tuple:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = load_yaml(text, "value")
                except ConfigError:
                    raise ValueError(
                        f"expected a list such as [pos_embed], got {shorten(value)}"
                    ) from None
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list such as [pos_embed], got {shorten(value)}")
        return tuple(str(v) for v in value)
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = load_yaml(value, "value")
            except ConfigError as exc:
                raise ValueError(f"expected a mapping, got {shorten(value)} ({exc})") from None
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping such as {{hflip: 0.0}}, got {shorten(value)}")
        return dict(value)
    raise ValueError(f"unsupported type {tp}")  # pragma: no cover - all fields handled above


def parse_overrides(
    overrides: Sequence[str] | Mapping[str, Any],
) -> tuple[dict[str, Any], list[str]]:
    """Turn ``["unfreeze.lr=1e-3", "data.path=x"]`` or a dict into a dict plus problems.

    ``key=value`` strings keep the value as text (types are applied by
    :class:`FinetuneConfig`); dashes in keys become underscores.

    Example:
        >>> parse_overrides(["unfreeze.lr=1e-3", "bad"])
        ({'unfreeze.lr': '1e-3'}, ["override 'bad' is not key=value"])
    """
    if isinstance(overrides, Mapping):
        return {str(k).replace("-", "_"): v for k, v in overrides.items()}, []
    out: dict[str, Any] = {}
    problems = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            problems.append(f"override {shorten(item)} is not key=value")
            continue
        out[key] = value
    return out, problems


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> FinetuneConfig:
    """Load a :class:`FinetuneConfig` from YAML (optional) plus overrides, and validate it.

    Overrides win over the file. Keys may be nested (YAML mappings per section), dotted
    (``unfreeze.lr``), a section's shorthand (``model: timm:resnet18``) or the previous
    release's flat names (mapped, with a :class:`FutureWarning` each and a message in
    :attr:`FinetuneConfig.deprecations`). Unknown keys and bad values, from both sources,
    are reported together in one :class:`ConfigError` (one problem per line).

    Args:
        path: A YAML file holding a mapping of config keys, or ``None`` for the defaults.
        overrides: ``["section.key=value", ...]`` strings or a dict.

    Raises:
        ConfigError: Unreadable YAML or any problem with the values.

    Example:
        >>> cfg = load_config(overrides={"unfreeze.schedule": "full", "run.epochs": 2})
        >>> cfg.unfreeze.schedule, cfg.run.epochs
        ('full', 2)
    """
    values: dict[str, Any] = {}
    deprecations: list[str] = []
    problems: list[str] = []
    if path is not None:
        path = Path(path)
        # bounded: size, depth, no aliases, no repeated keys, UTF-8 text
        loaded = read_yaml(path, "config file") or {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping of keys, not {type(loaded).__name__}"
            )
        flat, deprecations, problems = dotted_keys(loaded)
        values.update(flat)
    extra, more = parse_overrides(overrides)
    problems.extend(more)
    flat, old, more = dotted_keys(extra)
    deprecations.extend(d for d in old if d not in deprecations)
    problems.extend(more)
    values.update(flat)
    return _checked(values, deprecations, problems)
