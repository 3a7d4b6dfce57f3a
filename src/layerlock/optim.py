"""Optimizer parameter groups and learning rates by layer group, coupled by name only.

:func:`param_groups` turns a model's layer groups into optimizer param-group dicts, each
with a ``"name"``: the layer group's name, or ``"<group>/no_decay"`` for its parameters
that take no weight decay (biases, normalisation parameters, other 1-D parameters and the
names the model lists in ``no_weight_decay()``).

:class:`LRSchedule` gives the learning rate of every param group at every global step as
a pure function. For a param group of layer group ``g`` at global step ``t``::

    lr_g(t) = lr * m_g * main(t) * w_g(t)          (0 while g is locked)

    m_g     = layer_decay ** d_g / discriminative ** d_g
              d_g = depth of g from the top of its tower (the head has d = 0;
              model-level groups such as CLIP's logit_scale have d = 0)
    main(t) = (t + 1) / warmup_steps                               if t < warmup_steps
            = r + (1 - r) * (1 + cos(pi * p)) / 2                  cosine (default)
            = r + (1 - r) * (1 - p)                                linear
            = 1                                                    constant
              p = min(1, (t - warmup_steps) / max(1, total_steps - warmup_steps)),
              r = min_lr_ratio
    w_g(t)  = s + (1 - s) * min(1, (t - u_g) / unlock_warmup_steps)
              u_g = the step g was last unlocked, s = unlock_warmup_start;
              w_g = 1 when unlock_warmup_steps == 0 or g was trainable from step 0

Factors are looked up by the param group's ``"name"``, never by position, so adding or
removing param groups cannot shift them.

Example:
    >>> import torch, timm
    >>> from layerlock import layer_groups
    >>> groups = layer_groups(timm.create_model("test_vit", num_classes=3))
    >>> pg = param_groups(groups, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    >>> [(g["name"], g["lr"]) for g in pg][-3:]
    [('blocks.5/no_decay', 0.0005), ('head', 0.001), ('head/no_decay', 0.001)]
    >>> opt = torch.optim.AdamW(pg)
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .adapters import MODEL_LEVEL
from .errors import ConfigError
from .groups import LayerGroups, layer_groups
from .lock import is_bias, is_norm
from .options import UnfreezeOptions, resolve_options

__all__ = [
    "NO_DECAY_SUFFIX",
    "LRSchedule",
    "OptimizerFactory",
    "create_optimizer",
    "group_multipliers",
    "layer_group_of",
    "no_weight_decay_names",
    "param_groups",
]

#: Suffix of the param group holding a layer group's parameters without weight decay.
NO_DECAY_SUFFIX = "/no_decay"

#: Builds an optimizer from param-group dicts (``torch.optim.AdamW`` is one).
OptimizerFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]


def layer_group_of(param_group_name: str) -> str:
    """The layer group a param group belongs to (``"blocks.3/no_decay"`` -> ``"blocks.3"``).

    Example:
        >>> layer_group_of("blocks.3/no_decay"), layer_group_of("head")
        ('blocks.3', 'head')
    """
    if param_group_name.endswith(NO_DECAY_SUFFIX):
        return param_group_name[: -len(NO_DECAY_SUFFIX)]
    return param_group_name


def _check_positive(
    name: str, value: float, problems: list[str], *, upper: float | None = None
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        problems.append(f"{name} must be a number > 0, got {value!r}")
    elif upper is not None and value > upper:
        problems.append(f"{name} must be <= {upper}, got {value!r}")


def group_multipliers(
    groups: LayerGroups, *, layer_decay: float = 1.0, discriminative: float = 1.0
) -> dict[str, float]:
    """LR multiplier of each layer group: ``layer_decay ** d / discriminative ** d``.

    ``d`` is the group's depth from the top of its tower (head: 0).

    Args:
        groups: The model's layer groups.
        layer_decay: BEiT/MAE layer-wise decay (0.65 for ViT-B, 0.75 for ViT-L); 1 = off.
        discriminative: ULMFiT factor, each lower group's LR divided by it (2.6); 1 = off.

    Raises:
        ConfigError: For a value <= 0 (or a layer_decay above 1).

    Example:
        >>> import torch.nn as nn
        >>> from layerlock import layer_groups
        >>> g = layer_groups(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)))
        >>> group_multipliers(g, layer_decay=0.5)
        {'0': 0.25, '1': 0.5, '2': 1.0}
    """
    problems: list[str] = []
    _check_positive("layer_decay", layer_decay, problems, upper=1.0)
    _check_positive("discriminative", discriminative, problems)
    if problems:
        raise ConfigError("; ".join(problems))
    out: dict[str, float] = {}
    for g in groups:
        depth = 0 if g.tower == MODEL_LEVEL else groups.first_unlocked_by(g.index) - 1
        out[g.name] = float(layer_decay**depth / discriminative**depth)
    return out


def no_weight_decay_names(model: nn.Module, extra: Iterable[str] = ()) -> set[str]:
    """Parameter names that take no weight decay.

    Biases, parameters of normalisation layers, every parameter with ``ndim <= 1``, and
    the names (or glob patterns) the model's ``no_weight_decay()`` returns, plus ``extra``.

    Example:
        >>> import timm
        >>> names = no_weight_decay_names(timm.create_model("test_vit"))
        >>> "pos_embed" in names, "blocks.0.norm1.weight" in names, "blocks.0.mlp.fc1.weight" in names
        (True, True, False)
    """
    patterns = list(extra)
    hook = getattr(model, "no_weight_decay", None)
    if callable(hook):
        patterns.extend(hook())
    norm_ids: set[int] = set()
    for m in model.modules():
        if is_norm(m):
            norm_ids.update(id(p) for p in m.parameters(recurse=False))
    out = set()
    for name, p in model.named_parameters():
        if (
            p.ndim <= 1
            or is_bias(name)
            or id(p) in norm_ids
            or any(name == pat or fnmatch.fnmatchcase(name, pat) for pat in patterns)
        ):
            out.add(name)
    return out


def param_groups(
    groups: LayerGroups,
    *,
    lr: float,
    weight_decay: float = 0.0,
    layer_decay: float = 1.0,
    discriminative: float = 1.0,
    no_weight_decay: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Optimizer param groups from layer groups, named, with LR multipliers and WD exclusions.

    Every parameter of the model appears exactly once (frozen ones too: a frozen
    parameter has ``.grad is None``, which every torch optimizer skips entirely).

    Args:
        groups: The model's layer groups (``groups.model`` is the model).
        lr: Base learning rate (the head's).
        weight_decay: Weight decay of the decayed parameters.
        layer_decay: See :func:`group_multipliers`.
        discriminative: See :func:`group_multipliers`.
        no_weight_decay: Extra parameter names or glob patterns without weight decay.

    Returns:
        A list of dicts with ``params``, ``name``, ``lr`` (= lr * multiplier),
        ``weight_decay``, ``lr_scale`` (the multiplier, timm's key) and ``layer_group``.

    Example:
        >>> import torch.nn as nn
        >>> from layerlock import layer_groups
        >>> g = layer_groups(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
        >>> [(d["name"], d["weight_decay"]) for d in param_groups(g, lr=0.1, weight_decay=0.01)]
        [('0', 0.01), ('0/no_decay', 0.0), ('1', 0.01), ('1/no_decay', 0.0)]
    """
    problems: list[str] = []
    _check_positive("lr", lr, problems)
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, (int, float))
        or weight_decay < 0
    ):
        problems.append(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if problems:
        raise ConfigError("; ".join(problems))
    mult = group_multipliers(groups, layer_decay=layer_decay, discriminative=discriminative)
    skip = no_weight_decay_names(groups.model, no_weight_decay)
    out: list[dict[str, Any]] = []
    for g in groups:
        decay = [p for n, p in zip(g.param_names, g.params) if n not in skip]
        plain = [p for n, p in zip(g.param_names, g.params) if n in skip]
        for suffix, params, wd in (("", decay, weight_decay), (NO_DECAY_SUFFIX, plain, 0.0)):
            if params:
                out.append(
                    {
                        "params": params,
                        "name": g.name + suffix,
                        "layer_group": g.name,
                        "lr": lr * mult[g.name],
                        "lr_scale": mult[g.name],
                        "weight_decay": float(wd),
                    }
                )
    return out


def create_optimizer(
    model: nn.Module,
    options: UnfreezeOptions | None = None,
    *,
    groups: LayerGroups | None = None,
    factory: OptimizerFactory | None = None,
    **option_overrides: Any,
) -> torch.optim.Optimizer:
    """An optimizer over every layer group of ``model`` (locked ones too), as named groups.

    Build it before training and keep it: groups unlocked later are already in it, so LR
    schedulers and checkpoints never see param groups appear. Locked parameters have
    ``.grad`` None, which every torch optimizer skips (no weight decay, no momentum).
    The param groups come from :func:`param_groups` with the options' ``lr``,
    ``weight_decay``, ``layer_decay``, ``discriminative`` and ``no_weight_decay``: the
    rules the :class:`~layerlock.unfreezer.Unfreezer` applies by group name.

    Args:
        model: The model (unwrapped).
        options: Unfreezing options (default: :class:`~layerlock.options.UnfreezeOptions`
            defaults); only the optimizer fields above and ``coarse`` are used here.
        groups: Layer groups computed earlier (else :func:`~layerlock.groups.layer_groups`
            with ``options.coarse``).
        factory: Called with the param-group dicts; default ``torch.optim.AdamW``.
        **option_overrides: :class:`~layerlock.options.UnfreezeOptions` fields replacing
            those of ``options`` (``lr=3e-4``, ``layer_decay=0.75`` ...).

    Returns:
        The optimizer; its param groups are named after the layer groups (plus a
        ``"<group>/no_decay"`` group each where some parameters take no weight decay).

    Raises:
        ConfigError: Invalid options (all listed), an unknown option name, or a factory
            that does not return a ``torch.optim.Optimizer``.

    Example:
        >>> import torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> opt = create_optimizer(model, lr=0.1, layer_decay=0.5)
        >>> [(pg["name"], pg["lr"]) for pg in opt.param_groups]
        [('0', 0.05), ('0/no_decay', 0.05), ('1', 0.1), ('1/no_decay', 0.1)]
    """
    opts = resolve_options(options, **option_overrides)
    groups = groups if groups is not None else layer_groups(model, opts.coarse)
    pgs = param_groups(
        groups,
        lr=opts.lr,
        weight_decay=opts.weight_decay,
        layer_decay=opts.layer_decay,
        discriminative=opts.discriminative,
        no_weight_decay=opts.no_weight_decay,
    )
    if factory is None:
        return torch.optim.AdamW(pgs, lr=opts.lr, weight_decay=opts.weight_decay)
    if not callable(factory):
        raise ConfigError(
            f"factory must be a callable taking param groups (torch.optim.AdamW, "
            f"functools.partial(torch.optim.SGD, momentum=0.9) ...), got {type(factory).__name__}"
        )
    built = factory(pgs)
    if not isinstance(built, torch.optim.Optimizer):
        raise ConfigError(
            f"the optimizer factory returned {type(built).__name__}, not a torch.optim.Optimizer"
        )
    return built


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate of each param group at each global step (formula: module docstring).

    Attributes:
        lr: Base learning rate.
        total_steps: Length of the run in optimizer steps.
        warmup_steps: Linear warm-up of the main schedule.
        kind: ``"cosine"``, ``"linear"`` or ``"constant"`` after the warm-up.
        min_lr_ratio: Floor of the decay as a fraction of the peak.
        unlock_warmup_steps: Length of the ramp a group gets when it is unlocked later.
        unlock_warmup_start: Fraction of its LR a group starts the ramp at.

    Example:
        >>> s = LRSchedule(lr=1.0, total_steps=10, warmup_steps=2, unlock_warmup_steps=4)
        >>> [round(s.main(t), 3) for t in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
        >>> round(s.group_lr(5, multiplier=0.5, unlocked_at=3), 4)  # 0.5 * main(5) * (0.1 + 0.9 * 2/4)
        0.1901
    """

    lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    unlock_warmup_steps: int = 0
    unlock_warmup_start: float = 0.1

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid value, one message each."""
        out: list[str] = []
        _check_positive("lr", self.lr, out)
        for name in ("total_steps", "warmup_steps", "unlock_warmup_steps"):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, int)
                or v < (1 if name == "total_steps" else 0)
            ):
                out.append(
                    f"{name} must be an int >= {1 if name == 'total_steps' else 0}, got {v!r}"
                )
        if self.kind not in ("cosine", "linear", "constant"):
            out.append(f"unknown LR schedule {self.kind!r}; choose cosine, linear or constant")
        for name in ("min_lr_ratio", "unlock_warmup_start"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                out.append(f"{name} must be a number in [0, 1], got {v!r}")
        return out

    def main(self, step: int) -> float:
        """The main factor ``main(t)``: linear warm-up, then cosine / linear / constant."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        p = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        r = self.min_lr_ratio
        if self.kind == "linear":
            return r + (1.0 - r) * (1.0 - p)
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * p))

    def unlock(self, step: int, unlocked_at: int | None) -> float:
        """The unlock ramp ``w_g(t)`` of a group last unlocked at ``unlocked_at``.

        ``unlocked_at`` None or 0 (trainable from the start) gives 1.
        """
        if not unlocked_at or self.unlock_warmup_steps == 0:
            return 1.0
        s = self.unlock_warmup_start
        return s + (1.0 - s) * min(1.0, (step - unlocked_at) / self.unlock_warmup_steps)

    def group_lr(self, step: int, multiplier: float, unlocked_at: int | None) -> float:
        """``lr * multiplier * main(step) * unlock(step, unlocked_at)``."""
        return self.lr * multiplier * self.main(step) * self.unlock(step, unlocked_at)
