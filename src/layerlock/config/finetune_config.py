"""The whole config of a run: :class:`FinetuneConfig` and :func:`load_config`.

Built from YAML, overrides or a mapping, and validated as a whole: every problem of every
section is reported at once in one :class:`~layerlock.errors.ConfigError`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, shorten, suggest
from ..options import UnfreezeOptions
from ..yaml_io import read_yaml
from .coerce import coerce, format_problems, is_none, parse_overrides, plain_value, type_hints
from .keys import LEGACY_KEYS, all_keys, dotted_keys, suggest_key
from .sections import (
    CLIP_CSV_DEFAULTS,
    SECTIONS,
    TASKS,
    CacheOptions,
    DataOptions,
    EvalOptions,
    ModelOptions,
    RetainOptions,
    RunOptions,
    TowerOptions,
    check_choice,
)

__all__ = [
    "RESUME_IGNORED",
    "FinetuneConfig",
    "load_config",
]

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
        check_choice(out, "task", self.task, TASKS)
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
            raise ConfigError(format_problems(problems))
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
            out[name] = {f.name: plain_value(getattr(section, f.name)) for f in fields(section)}
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
        raise ConfigError(format_problems([*problems, *more]))
    return cfg


def _build(values: Mapping[str, Any]) -> tuple[FinetuneConfig, list[str]]:
    """A config from dotted ``values`` (bad entries left at their defaults) and every problem."""
    problems: list[str] = []
    known = all_keys()
    kwargs: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    task: Any = "classify"
    for key, value in values.items():
        if key not in known:
            problems.append(f"unknown key {shorten(key)}{suggest_key(key[:200], known)}")
            continue
        if key == "task":
            try:
                task = coerce(value, str)
            except ValueError as exc:
                problems.append(f"task: {exc}")
            continue
        section, _, leaf = key.partition(".")
        if key == "unfreeze.layer_decay" and is_none(value):
            value = 1.0  # "none", as the previous release wrote it, means off
        try:
            kwargs[section][leaf] = coerce(value, type_hints(SECTIONS[section])[leaf])
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
    if task == "clip":  # open_clip_train's CSV defaults, unless given
        for key, default in CLIP_CSV_DEFAULTS.items():
            kwargs["data"].setdefault(key.partition(".")[2], default)
    cfg = FinetuneConfig(task=task, **{name: SECTIONS[name](**kw) for name, kw in kwargs.items()})
    reported = {p.split(":", 1)[0] for p in problems}
    problems.extend(p for p in cfg.problems() if p.split(":", 1)[0] not in reported)
    return cfg, problems


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
