"""The unfreezing options: one type, one default each, shared by every entry point.

:class:`UnfreezeOptions` holds everything that decides how a model is locked, unlocked
and optimised while it trains. The :class:`~layerlock.unfreezer.Unfreezer`,
:func:`~layerlock.optim.create_optimizer`, the Lightning and Hugging Face callbacks and the
``unfreeze`` section of :class:`~layerlock.config.FinetuneConfig` all take it, and all
accept its fields as keyword overrides, so a default is declared here and nowhere else.

Example:
    >>> opts = UnfreezeOptions(schedule="gradual", lr=3e-4)
    >>> opts.with_overrides(layer_decay=0.75).layer_decay
    0.75
    >>> UnfreezeOptions(lr=0).problems()
    ['lr: must be a finite number > 0, got 0']
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError, suggest
from .schedule import Schedule

__all__ = ["LR_SCHEDULES", "TOWERS", "UnfreezeOptions", "resolve_options"]

#: Shapes of the main LR schedule after its warm-up.
LR_SCHEDULES = ("cosine", "linear", "constant")
#: Towers a schedule can be restricted to (``None``: every tower).
TOWERS = ("visual", "text", "both")
# the engine also takes "all" as a spelling of "both"
_TOWER_ALIASES = ("all",)


@dataclass
class UnfreezeOptions:
    """How layer groups are unlocked and optimised; every field has its one default here.

    Attributes:
        schedule: Unlocking schedule: a :class:`~layerlock.schedule.Schedule` or its text
            (``"lp-ft"``, ``"gradual"``, ``"chain-thaw"``, ``"0:1, 2:all"`` ...).
        lr: Base learning rate (the head's); lower groups get the multipliers below.
        weight_decay: AdamW weight decay of weights (never of biases, norms, other 1-D
            parameters and the model's ``no_weight_decay()`` names). 0.05 is the usual
            fine-tuning value of the ViT recipes (DeiT, BEiT, MAE).
        layer_decay: Layer-wise LR decay per group from the top, in (0, 1]; 1 = off.
        discriminative: ULMFiT factor, each lower group's LR divided by it (> 0); 1 = off.
        no_weight_decay: Extra parameter names or glob patterns without weight decay.
        warmup_steps: Linear warm-up of the main LR schedule, in optimizer steps.
        lr_schedule: ``"cosine"``, ``"linear"`` or ``"constant"`` after the warm-up.
        min_lr_ratio: Floor of the main schedule as a fraction of the peak, in [0, 1].
        unlock_warmup_steps: LR ramp length of a group unlocked after step 0.
        unlock_warmup_start: Fraction of its LR such a group starts the ramp at, in [0, 1].
        freeze_bn_stats: BatchNorm layers of locked groups use and keep their running
            statistics. On by default: a locked group is meant to compute exactly what
            it computed before, and small fine-tuning batches would otherwise overwrite
            the pretrained statistics of layers whose weights cannot adapt to them (it
            also lets the locked prefix be cached). Models without BatchNorm are
            unaffected.
        train_norm: Normalisation parameters of locked groups keep training.
        train_bias: Bias terms of locked groups keep training.
        tower: Apply the schedule to one tower of a multi-tower model (``"visual"``,
            ``"text"``; ``"both"`` or None: every tower).
        coarse: Use the model family's coarse grouping (timm: stages) when the groups
            are computed from the model.
        reset_state_on_unlock: Drop a group's optimizer state whenever it is unlocked.
    """

    schedule: str | Schedule = "lp-ft"
    lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float = 1.0
    discriminative: float = 1.0
    no_weight_decay: tuple[str, ...] = ()
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    unlock_warmup_steps: int = 0
    unlock_warmup_start: float = 0.1
    freeze_bn_stats: bool = True
    train_norm: bool = False
    train_bias: bool = False
    tower: str | None = None
    coarse: bool = False
    reset_state_on_unlock: bool = False

    def __post_init__(self) -> None:
        # a list or a single string given by a user reads as the tuple it means
        if isinstance(self.no_weight_decay, str):
            self.no_weight_decay = (self.no_weight_decay,)
        elif not isinstance(self.no_weight_decay, tuple):
            with contextlib.suppress(TypeError):  # not iterable: reported by problems()
                self.no_weight_decay = tuple(self.no_weight_decay)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The option names, in declaration order.

        Example:
            >>> UnfreezeOptions.field_names()[:3]
            ('schedule', 'lr', 'weight_decay')
        """
        return tuple(f.name for f in fields(cls))

    def with_overrides(self, **overrides: Any) -> UnfreezeOptions:
        """A copy with some fields replaced; an unknown name raises.

        Raises:
            ConfigError: A name that is not an option, with a close match.

        Example:
            >>> UnfreezeOptions().with_overrides(lr=0.01, tower="visual").tower
            'visual'
        """
        names = self.field_names()
        unknown = [k for k in overrides if k not in names]
        if unknown:
            raise ConfigError(
                "; ".join(
                    f"unknown unfreezing option {k!r}{suggest(k, names)}; options: "
                    + ", ".join(names)
                    for k in unknown
                )
            )
        return dataclasses.replace(self, **overrides)

    def problems(self) -> list[str]:
        """Every invalid value, one ``"name: message"`` each (empty when valid).

        Example:
            >>> UnfreezeOptions(layer_decay=1.5, lr_schedule="cosin").problems()
            ['layer_decay: must be in (0, 1], got 1.5', "lr_schedule: 'cosin' is not one of cosine, linear, constant; did you mean 'cosine'?"]
        """
        out: list[str] = []
        if isinstance(self.schedule, str):
            if not self.schedule.strip():
                out.append("schedule: must not be empty")
        elif not isinstance(self.schedule, Schedule):
            out.append(
                f"schedule: expected a Schedule or its text, got {type(self.schedule).__name__}"
            )
        if not _number(self.lr) or not self.lr > 0:
            out.append(f"lr: must be a finite number > 0, got {self.lr!r}")
        if not _number(self.weight_decay) or self.weight_decay < 0:
            out.append(f"weight_decay: must be a finite number >= 0, got {self.weight_decay!r}")
        if not _number(self.layer_decay) or not 0 < self.layer_decay <= 1:
            out.append(f"layer_decay: must be in (0, 1], got {self.layer_decay!r}")
        if not _number(self.discriminative) or not self.discriminative > 0:
            out.append(f"discriminative: must be a finite number > 0, got {self.discriminative!r}")
        if not isinstance(self.no_weight_decay, tuple) or not all(
            isinstance(n, str) for n in self.no_weight_decay
        ):
            out.append(
                f"no_weight_decay: expected parameter names or globs, got {self.no_weight_decay!r}"
            )
        for name in ("warmup_steps", "unlock_warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                out.append(f"{name}: must be an integer >= 0, got {value!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            out.append(
                f"lr_schedule: {self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}"
                + suggest(str(self.lr_schedule), LR_SCHEDULES)
            )
        for name in ("min_lr_ratio", "unlock_warmup_start"):
            value = getattr(self, name)
            if not _number(value) or not 0 <= value <= 1:
                out.append(f"{name}: must be in [0, 1], got {value!r}")
        for name in ("freeze_bn_stats", "train_norm", "train_bias", "coarse"):
            if not isinstance(getattr(self, name), bool):
                out.append(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if not isinstance(self.reset_state_on_unlock, bool):
            out.append(
                f"reset_state_on_unlock: expected true or false, got {self.reset_state_on_unlock!r}"
            )
        if self.tower is not None and self.tower not in (*TOWERS, *_TOWER_ALIASES):
            out.append(
                f"tower: {self.tower!r} is not one of {', '.join(TOWERS)} or none"
                + suggest(str(self.tower), TOWERS)
            )
        return out

    def validate(self) -> UnfreezeOptions:
        """Raise one :class:`ConfigError` listing every problem; return ``self`` if none.

        Example:
            >>> UnfreezeOptions(lr=-1.0).validate()
            Traceback (most recent call last):
            ...
            layerlock.errors.ConfigError: bad unfreezing option: lr: must be a finite number > 0, got -1.0
        """
        problems = self.problems()
        if len(problems) == 1:
            raise ConfigError(f"bad unfreezing option: {problems[0]}")
        if problems:
            raise ConfigError(
                f"{len(problems)} problems in the unfreezing options:\n"
                + "\n".join(f"  {p}" for p in problems)
            )
        return self


def resolve_options(
    options: UnfreezeOptions | str | Schedule | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> UnfreezeOptions:
    """The validated options an entry point runs with.

    Args:
        options: An :class:`UnfreezeOptions`, a schedule (text or
            :class:`~layerlock.schedule.Schedule`) meaning the defaults with that
            schedule, a mapping of option names, or None for the defaults.
        **overrides: Option fields that replace those of ``options``.

    Returns:
        New options (``options`` is never modified).

    Raises:
        ConfigError: An unknown option name or invalid values, all listed together.

    Example:
        >>> resolve_options("gradual", lr=0.01).lr
        0.01
        >>> resolve_options(UnfreezeOptions(lr=0.01), weight_decay=0.0).weight_decay
        0.0
    """
    if options is None:
        base = UnfreezeOptions()
    elif isinstance(options, UnfreezeOptions):
        base = options
    elif isinstance(options, (str, Schedule)):
        base = UnfreezeOptions(schedule=options)
    elif isinstance(options, Mapping):
        base = UnfreezeOptions().with_overrides(**dict(options))
    else:
        raise ConfigError(
            "options must be UnfreezeOptions, a schedule (text or Schedule), a mapping "
            f"of option names or None, got {type(options).__name__}"
        )
    return base.with_overrides(**overrides).validate()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
