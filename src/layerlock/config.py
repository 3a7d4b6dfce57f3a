"""The configuration of a ``layerlock finetune`` run.

A :class:`FinetuneConfig` is built from a YAML file and ``key=value`` overrides (command
line style) or a dict, and validated as a whole: every unknown key and every bad value is
reported at once in a single :class:`~layerlock.errors.ConfigError`, one problem per line,
before any model or data is touched.

Example:
    >>> cfg = load_config(overrides=["epochs=3", "lr=3e-4", "schedule=gradual"])
    >>> cfg.epochs, cfg.lr, cfg.schedule
    (3, 0.0003, 'gradual')
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, suggest

__all__ = [
    "CACHE_DTYPES",
    "CACHE_MODES",
    "PRECISIONS",
    "RESUME_IGNORED",
    "FinetuneConfig",
    "load_config",
    "parse_overrides",
]

PRECISIONS = ("auto", "fp32", "bf16")
CACHE_MODES = ("auto", "on", "off")
CACHE_DTYPES = ("auto", "float16", "bfloat16", "float32")
DATA_SOURCES = ("demo", "folder", "csv", "hf")
BAD_IMAGE_POLICIES = ("skip", "error")
DEVICES = ("auto", "cpu", "cuda", "mps")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on. Defaults run the embedded demo task.

    Attributes:
        model: Model spec: ``demo``, ``timm:NAME``, ``open_clip:NAME``, ``hf:NAME``,
            ``torchvision:NAME`` or ``module:path:factory``.
        pretrained: Load published weights (bool), or an OpenCLIP pretrained tag.
        checkpoint: Local weights (safetensors, or a file ``torch.load(weights_only=True)``
            reads) loaded into the model before training.
        data: Data source: ``demo``, ``folder``, ``csv`` or ``hf``.
        data_path: ImageFolder root (with ``train/`` and ``val/``) or Hugging Face dataset name.
        train_csv: CSV of the training split (``data=csv``).
        val_csv: CSV of the evaluation split (``data=csv``).
        csv_img_key: Image path column of the CSVs.
        csv_label_key: Label column of the CSVs.
        csv_separator: Column separator of the CSVs.
        hf_image_key: Image column of the Hugging Face dataset.
        hf_label_key: Label column of the Hugging Face dataset.
        train_split: Hugging Face split used for training.
        val_split: Hugging Face split used for evaluation.
        bad_images: ``skip`` unreadable images (counted and reported) or stop with an ``error``.
        shots_per_class: Labelled images per class of the demo task.
        augmentation: Keyword arguments of ``timm.data.create_transform`` for training images;
            ``None`` takes the model's own recommendation or timm's defaults.
        deterministic_train_transform: Use the evaluation transform on training images.
        schedule: Unlocking schedule spec (``lp-ft``, ``full``, ``lp``, ``gradual``,
            ``chain-thaw`` ... as understood by the engine).
        epochs: Training epochs.
        batch_size: Images per step and process.
        lr: Peak learning rate of the top group.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        layer_decay: Per-group LR factor down the stack (``None`` or 1.0: same LR everywhere).
        warmup_steps: Linear LR warm-up at the start of training.
        unlock_warmup_steps: Linear LR ramp of a group after it is unlocked.
        grad_clip: Max gradient norm (``None``: no clipping).
        label_smoothing: Cross-entropy label smoothing.
        freeze_bn_stats: Keep BatchNorm statistics of locked groups fixed.
        precision: ``fp32``, ``bf16`` or ``auto`` (bf16 where the device supports it).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        seed: Seed of everything random (data order, augmentation, head init).
        workers: DataLoader worker processes.
        out_dir: Run directory.
        resume: Run directory to continue from (must hold a checkpoint of the same config).
        cache: Cache the output of the locked prefix: ``auto`` (per stage, from the cost
            model), ``on`` (whenever possible) or ``off``.
        cache_budget_mb: Memory the cache may use, in MiB.
        cache_views: Fixed augmented views per training image cached under a random
            train transform (epoch ``e`` trains on view ``e % cache_views``; 1 caches one
            fixed view only with ``cache=on``).
        cache_dtype: Storage dtype of cached features: ``auto`` (bfloat16 on CUDA, float16
            elsewhere), ``float16``, ``bfloat16`` or ``float32``.
        log_every: Steps between per-step metric rows.
        zero_shot_head: Initialise an OpenCLIP head from its text tower's class embeddings.
        prompt: Prompt template of the zero-shot head; ``{}`` is the class name.
    """

    model: str = "demo"
    pretrained: bool | str = False
    checkpoint: str | None = None
    data: str = "demo"
    data_path: str | None = None
    train_csv: str | None = None
    val_csv: str | None = None
    csv_img_key: str = "path"
    csv_label_key: str = "label"
    csv_separator: str = ","
    hf_image_key: str = "image"
    hf_label_key: str = "label"
    train_split: str = "train"
    val_split: str = "validation"
    bad_images: str = "skip"
    shots_per_class: int = 30
    augmentation: dict[str, Any] | None = None
    deterministic_train_transform: bool = False
    schedule: str = "lp-ft"
    epochs: int = 16
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float | None = None
    warmup_steps: int = 0
    unlock_warmup_steps: int = 0
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    freeze_bn_stats: bool = True
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    out_dir: str = "runs/finetune"
    resume: str | None = None
    cache: str = "auto"
    cache_budget_mb: int = 1024
    cache_views: int = 2
    cache_dtype: str = "auto"
    log_every: int = 10
    zero_shot_head: bool = True
    prompt: str = "a photo of a {}."
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FinetuneConfig:
        """Build and validate from a mapping; all problems are raised together.

        Example:
            >>> FinetuneConfig.from_dict({"epochs": "2"}).epochs
            2
        """
        cfg, problems = _build(values)
        if problems:
            raise ConfigError(_format(problems))
        return cfg

    @classmethod
    def from_yaml(
        cls,
        path: str | Path,
        overrides: Sequence[str] | Mapping[str, Any] = (),
    ) -> FinetuneConfig:
        """Read a YAML mapping, apply overrides and validate.

        Example:
            >>> FinetuneConfig.from_yaml("finetune.yaml", ["lr=1e-4"])  # doctest: +SKIP
        """
        return load_config(path, overrides)

    # -- validation -------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Every bad value, one message each (empty when the config is valid)."""
        out: list[str] = []

        def choice(name: str, choices: Sequence[str]) -> None:
            value = getattr(self, name)
            if value not in choices:
                out.append(
                    f"{name}: {value!r} is not one of {', '.join(choices)}"
                    + suggest(str(value), choices)
                )

        def at_least(name: str, low: float, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if value is None or value < low:
                out.append(f"{name}: must be >= {low}, got {value!r}")

        choice("precision", PRECISIONS)
        choice("cache", CACHE_MODES)
        choice("cache_dtype", CACHE_DTYPES)
        choice("data", DATA_SOURCES)
        choice("bad_images", BAD_IMAGE_POLICIES)
        choice("device", (*DEVICES, *(f"cuda:{i}" for i in range(16))))
        for name in ("epochs", "batch_size", "shots_per_class", "log_every", "cache_views"):
            at_least(name, 1)
        for name in ("warmup_steps", "unlock_warmup_steps", "workers", "cache_budget_mb"):
            at_least(name, 0)
        at_least("weight_decay", 0.0)
        if not self.lr > 0:
            out.append(f"lr: must be > 0, got {self.lr!r}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            out.append(f"layer_decay: must be in (0, 1], got {self.layer_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            out.append(f"grad_clip: must be > 0 or none, got {self.grad_clip!r}")
        if not 0 <= self.label_smoothing < 1:
            out.append(f"label_smoothing: must be in [0, 1), got {self.label_smoothing!r}")
        if "{}" not in self.prompt:
            out.append(f"prompt: must contain '{{}}' for the class name, got {self.prompt!r}")
        if not self.schedule.strip():
            out.append("schedule: must not be empty")
        if len(self.csv_separator) != 1:
            out.append(f"csv_separator: must be one character, got {self.csv_separator!r}")
        if self.model != "demo":
            from .models import parse_spec

            try:
                parse_spec(self.model)
            except ConfigError as exc:
                out.append(f"model: {exc}")
        out.extend(self._path_problems())
        return out

    def _path_problems(self) -> list[str]:
        out: list[str] = []
        if self.data == "folder":
            if not self.data_path:
                out.append("data_path: data=folder needs a folder holding train/ and val/")
            elif not Path(self.data_path).is_dir():
                out.append(f"data_path: folder {self.data_path} does not exist")
        elif self.data == "csv":
            for name in ("train_csv", "val_csv"):
                value = getattr(self, name)
                if not value:
                    out.append(f"{name}: data=csv needs a CSV file of path,label rows")
                elif not Path(value).is_file():
                    out.append(f"{name}: file {value} does not exist")
        elif self.data == "hf" and not self.data_path:
            out.append("data_path: data=hf needs the Hugging Face dataset name")
        if self.checkpoint and not Path(self.checkpoint).is_file():
            out.append(f"checkpoint: file {self.checkpoint} does not exist")
        if self.resume and not Path(self.resume).is_dir():
            out.append(f"resume: run directory {self.resume} does not exist")
        return out

    def validate(self) -> FinetuneConfig:
        """Raise one :class:`ConfigError` listing every problem; return ``self`` if none.

        Example:
            >>> FinetuneConfig(epochs=0, precision="fp16").validate()
            Traceback (most recent call last):
            ...
            layerlock.errors.ConfigError: 2 problems in the configuration:
              precision: 'fp16' is not one of auto, fp32, bf16; did you mean 'bf16'?
              epochs: must be >= 1, got 0
        """
        problems = self.problems()
        if problems:
            raise ConfigError(_format(problems))
        return self

    # -- output -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON / YAML safe), in field order.

        Example:
            >>> FinetuneConfig().to_dict()["schedule"]
            'lp-ft'
        """
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}

    def to_yaml(self) -> str:
        """The resolved config as YAML; ``load_config`` of it gives an equal config.

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
            >>> FinetuneConfig(workers=4).fingerprint() == FinetuneConfig().fingerprint()
            True
        """
        relevant = {k: v for k, v in self.to_dict().items() if k not in RESUME_IGNORED}
        text = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def differences(self, other: FinetuneConfig | Mapping[str, Any]) -> list[str]:
        """``"lr: 0.001 -> 0.01"`` for every resume-relevant field that differs from ``other``.

        Example:
            >>> FinetuneConfig(lr=0.01).differences(FinetuneConfig())
            ['lr: 0.001 -> 0.01']
        """
        theirs = other.to_dict() if isinstance(other, FinetuneConfig) else dict(other)
        mine = self.to_dict()
        return [
            f"{k}: {theirs.get(k)!r} -> {mine[k]!r}"
            for k in mine
            if k not in RESUME_IGNORED and _plain(theirs.get(k)) != mine[k]
        ]

    def check_resume(self, saved: FinetuneConfig | Mapping[str, Any], run_dir: str | Path) -> None:
        """Refuse to resume ``run_dir`` (saved with config ``saved``) under a different config.

        Raises:
            ConfigError: Naming the run directory and the fields that differ.

        Example:
            >>> FinetuneConfig(lr=0.01).check_resume(FinetuneConfig(), "runs/a")
            Traceback (most recent call last):
            ...
            layerlock.errors.ConfigError: cannot resume runs/a: it was started with a different config (lr: 0.001 -> 0.01); use the same settings or a new out_dir
        """
        diffs = self.differences(saved)
        if diffs:
            raise ConfigError(
                f"cannot resume {run_dir}: it was started with a different config "
                f"({'; '.join(diffs)}); use the same settings or a new out_dir"
            )


RESUME_IGNORED = frozenset(
    {
        "out_dir",
        "resume",
        "workers",
        "cache",
        "cache_budget_mb",
        "cache_views",
        "cache_dtype",
        "log_every",
        "device",
        "bad_images",
    }
)


def _build(values: Mapping[str, Any]) -> tuple[FinetuneConfig, list[str]]:
    """A config from ``values`` (bad entries left at their defaults) and every problem found."""
    problems: list[str] = []
    known = _field_types()
    names = [n for n in known if n != "extra"]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        if key not in names:
            problems.append(f"unknown key {key!r}{suggest(key, names)}")
            continue
        try:
            kwargs[key] = _coerce(value, known[key])
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    cfg = FinetuneConfig(**kwargs)
    problems.extend(
        p
        for p in cfg.problems()
        if p.split(":", 1)[0] not in {q.split(":", 1)[0] for q in problems}
    )
    return cfg, problems


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(FinetuneConfig)
    return {f.name: hints[f.name] for f in fields(FinetuneConfig)}


def _format(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"bad configuration: {problems[0]}"
    return f"{len(problems)} problems in the configuration:\n" + "\n".join(
        f"  {p}" for p in problems
    )


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _coerce(value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML or a ``key=value`` string) to the annotated type."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.strip().lower() in _NONE)
        ):
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
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            number = float(str(value).replace("_", ""))
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
        if not number.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected a string, got {value!r}")
        return str(value)
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ValueError(f"expected a mapping, got {value!r}") from None
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping such as {{hflip: 0.0}}, got {value!r}")
        return dict(value)
    raise ValueError(f"unsupported type {tp}")  # pragma: no cover - all fields handled above


def parse_overrides(
    overrides: Sequence[str] | Mapping[str, Any],
) -> tuple[dict[str, Any], list[str]]:
    """Turn ``["lr=1e-3", "data.path=x"]`` or a dict into a dict plus a list of problems.

    ``key=value`` strings keep the value as text (types are applied by
    :class:`FinetuneConfig`); dashes in keys become underscores.

    Example:
        >>> parse_overrides(["lr=1e-3", "bad"])
        ({'lr': '1e-3'}, ["override 'bad' is not key=value"])
    """
    if isinstance(overrides, Mapping):
        return {str(k).replace("-", "_"): v for k, v in overrides.items()}, []
    out: dict[str, Any] = {}
    problems = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            problems.append(f"override {item!r} is not key=value")
            continue
        out[key] = value
    return out, problems


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> FinetuneConfig:
    """Load a :class:`FinetuneConfig` from YAML (optional) plus overrides, and validate it.

    Overrides win over the file. Unknown keys and bad values, from both, are reported
    together in one :class:`ConfigError` (one problem per line).

    Args:
        path: A YAML file holding a mapping of config keys, or ``None`` for the defaults.
        overrides: ``["key=value", ...]`` strings or a dict.

    Raises:
        ConfigError: Unreadable YAML or any problem with the values.

    Example:
        >>> load_config(overrides={"schedule": "full", "epochs": 2}).schedule
        'full'
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"config file {path} is not valid YAML: {first}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping of keys, not {type(loaded).__name__}"
            )
        values.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    extra, problems = parse_overrides(overrides)
    values.update(extra)
    cfg, more = _build(values)
    problems.extend(more)
    if problems:
        raise ConfigError(_format(problems))
    return cfg
