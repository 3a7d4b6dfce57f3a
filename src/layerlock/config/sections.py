"""The sections of a fine-tuning config: one options type per concept, each validating itself.

Each type's ``problems()`` lists every bad value of its section (``"field: message"``);
:class:`~layerlock.config.finetune_config.FinetuneConfig` prefixes them with the section's
name (:data:`SECTIONS`) and reports them all at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..cache_policy import CACHE_MODES
from ..data.datasets import BAD_IMAGE_POLICIES
from ..data.sources import DATA_SOURCES, SourceOptions
from ..errors import ConfigError, shorten, suggest
from ..options import UnfreezeOptions

__all__ = [
    "CACHE_DTYPES",
    "CLIP_CSV_DEFAULTS",
    "CLIP_LOSSES",
    "DEMO_EVAL_SETS",
    "DEVICES",
    "MAX_EPOCHS",
    "MAX_SEED",
    "PRECISIONS",
    "REPORT_TO",
    "RESTORE_BEST",
    "SECTIONS",
    "STRATEGIES",
    "TASKS",
    "WISE_MODES",
    "CacheOptions",
    "DataOptions",
    "EvalOptions",
    "ModelOptions",
    "RetainOptions",
    "RunOptions",
    "TowerOptions",
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


def _at_least(out: list[str], name: str, value: Any, low: int) -> None:
    if value is None or isinstance(value, bool) or value < low:
        out.append(f"{name}: must be >= {low}, got {shorten(value)}")


def check_choice(out: list[str], name: str, value: Any, choices: Sequence[str]) -> None:
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
            from ..models import parse_spec

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
        check_choice(out, "source", self.source, DATA_SOURCES)
        check_choice(out, "bad_images", self.bad_images, BAD_IMAGE_POLICIES)
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
        check_choice(out, "mode", self.mode, CACHE_MODES)
        check_choice(out, "dtype", self.dtype, CACHE_DTYPES)
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
        from ..data.evalsets import parse_eval_sets

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
        from ..data.evalsets import parse_eval_sets

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
        check_choice(out, "restore_best", self.restore_best, RESTORE_BEST)
        check_choice(out, "wise", self.wise, WISE_MODES)
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
            check_choice(out, "report_to", target, REPORT_TO)
        check_choice(out, "precision", self.precision, PRECISIONS)
        check_choice(
            out, "device", self.device, (*DEVICES, *(f"cuda:{i}" for i in range(_MAX_CUDA_INDEX)))
        )
        for name in ("epochs", "batch_size", "log_every"):
            _at_least(out, name, getattr(self, name), 1)
        if self.grad_clip is not None and not self.grad_clip > 0:
            out.append(f"grad_clip: must be > 0 or none, got {self.grad_clip!r}")
        if not 0 <= self.label_smoothing < 1:
            out.append(f"label_smoothing: must be in [0, 1), got {self.label_smoothing!r}")
        check_choice(out, "strategy", self.strategy, STRATEGIES)
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
        from ..errors import ScheduleError
        from ..schedule import parse_schedule

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
        check_choice(out, "loss", self.loss, CLIP_LOSSES)
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
