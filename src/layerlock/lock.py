"""lock / unlock: set which layer groups train, reversibly and explicitly.

Every call sets every addressed group (OpenCLIP's semantics), so calling ``lock`` again
with another k moves the boundary. State that must survive between calls lives in a
plain attribute on the model (never in its ``state_dict``):

- the parameters that were frozen when layerlock first saw the model ("created
  frozen", like a fixed sin-cos position embedding) - they stay frozen;
- which groups are trainable, so that locking one tower leaves the other as it was.

BatchNorm statistics are frozen by flag, not by module replacement: a forward pre-hook
puts a flagged BatchNorm into eval mode before each call, so ``model.train()`` cannot
undo it, and clearing the flag restores ordinary behaviour. Module objects, optimizer
references, DDP wrappers and state-dict keys never change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .adapters import MODEL_LEVEL
from .errors import ConfigError, abbreviate, suggest
from .groups import GroupSelector, LayerGroups, layer_groups, require_module, unwrap

__all__ = [
    "GroupState",
    "LockReport",
    "frozen_bn_modules",
    "group_trainable",
    "is_bias",
    "is_norm",
    "lock",
    "unlock",
]

_STATE_ATTR = "_layerlock_state"
_BN_FLAG = "_layerlock_frozen_stats"
_BN_HOOKED = "_layerlock_bn_hooked"

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


@dataclass
class _State:
    created_frozen: frozenset[str]
    trainable: dict[str, bool] = field(default_factory=dict)
    bn_frozen: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class GroupState:
    """One group in a :class:`LockReport`."""

    index: int
    name: str
    trainable: bool
    num_params: int
    trainable_params: int
    tower: str | None = None


@dataclass(frozen=True)
class LockReport:
    """What a :func:`lock` or :func:`unlock` call left trainable.

    Attributes:
        trainable_params: Scalar parameters with ``requires_grad=True``.
        total_params: All scalar parameters.
        groups: Per-group state, input side first.
        frozen_bn: Names of BatchNorm modules whose running statistics are frozen.
    """

    trainable_params: int
    total_params: int
    groups: tuple[GroupState, ...]
    frozen_bn: tuple[str, ...] = ()

    @property
    def trainable_groups(self) -> list[str]:
        """Names of the groups set trainable."""
        return [g.name for g in self.groups if g.trainable]

    def __str__(self) -> str:
        share = 100.0 * self.trainable_params / max(self.total_params, 1)
        names = self.trainable_groups
        text = (
            f"trainable {self.trainable_params:,} / {self.total_params:,} ({share:.1f}%); "
            f"unlocked groups ({len(names)}/{len(self.groups)}): "
            f"{abbreviate(names) if names else 'none'}"
        )
        if self.frozen_bn:
            text += f"; BatchNorm stats frozen in {len(self.frozen_bn)} layer(s)"
        return text

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title=str(self), title_justify="left")
        for col in ("#", "group", "params", "trainable"):
            table.add_column(col, justify="right" if col != "group" else "left")
        for g in self.groups:
            mark = "yes" if g.trainable else ("partly" if g.trainable_params else "-")
            table.add_row(str(g.index), g.name, f"{g.num_params:,}", mark)
        return table


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (BatchNorm, LayerNorm, GroupNorm, RMSNorm ...).

    Example:
        >>> is_norm(nn.LayerNorm(4)), is_norm(nn.Linear(4, 4))
        (True, False)
    """
    if isinstance(module, _NORM_TYPES):
        return True
    name = type(module).__name__
    return "Norm" in name and not any(True for _ in module.children())


def is_bias(param_name: str) -> bool:
    """Whether a parameter name denotes a bias term (BitFit's selection).

    Example:
        >>> is_bias("blocks.0.attn.qkv.bias"), is_bias("blocks.0.attn.q_bias"), is_bias("fc.weight")
        (True, True, False)
    """
    leaf = param_name.rsplit(".", 1)[-1]
    return leaf == "bias" or leaf.endswith("_bias")


def _state(model: nn.Module) -> _State:
    state = model.__dict__.get(_STATE_ATTR)
    if state is None:
        created_frozen = frozenset(n for n, p in model.named_parameters() if not p.requires_grad)
        state = _State(created_frozen=created_frozen)
        model.__dict__[_STATE_ATTR] = state
    return state


def _bn_pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
    if getattr(module, _BN_FLAG, False):
        module.training = False


def _set_bn_frozen(module: nn.Module, frozen: bool, training: bool) -> None:
    if frozen:
        if not getattr(module, _BN_HOOKED, False):
            module.register_forward_pre_hook(_bn_pre_hook)
            object.__setattr__(module, _BN_HOOKED, True)
        object.__setattr__(module, _BN_FLAG, True)
        module.training = False
    elif getattr(module, _BN_FLAG, False):
        object.__setattr__(module, _BN_FLAG, False)
        module.training = training


def frozen_bn_modules(model: nn.Module) -> list[str]:
    """Names of BatchNorm modules whose running statistics layerlock has frozen.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1))
        >>> _ = lock(m, 1, freeze_bn_stats=True)
        >>> frozen_bn_modules(m)
        ['1']
    """
    return [n for n, m in unwrap(model).named_modules() if getattr(m, _BN_FLAG, False)]


def _towers_for(groups: LayerGroups, tower: str | None) -> list[str | None]:
    towers = [t for t in groups.towers if t != MODEL_LEVEL]
    if tower in (None, "both", "all"):
        return towers
    if tower not in towers:
        valid = [t for t in towers if t is not None]
        raise ConfigError(
            f"unknown tower {tower!r}{suggest(str(tower), valid)} "
            + (
                f"Towers of this model: {', '.join(valid)}, both"
                if valid
                else "This model has a single tower; leave tower unset"
            )
        )
    return [tower]


def lock(
    model: nn.Module,
    unlocked_groups: int | None = None,
    *,
    groups: GroupSelector | None = None,
    tower: str | None = None,
    freeze_bn_stats: bool = False,
    train_norm: bool = False,
    train_bias: bool = False,
    coarse: bool = False,
    partition: LayerGroups | None = None,
) -> LockReport:
    """Lock all layer groups but the last ``unlocked_groups`` (or all but ``groups``).

    Every addressed group is set explicitly, so a second call with another k moves the
    boundary. Parameters the model created frozen stay frozen. Newly frozen parameters get
    ``.grad = None`` so an optimizer cannot move them through weight decay or momentum.

    Args:
        model: The model (wrappers such as DDP and ``torch.compile`` are looked through).
        unlocked_groups: k: the last k groups train (per tower in a multi-tower model);
            0 freezes everything, k >= the number of groups trains everything.
        groups: Instead of k, the groups that train: indices (negative from the top),
            names, glob patterns, slices, or a string like ``"0,blocks.1*,-1"``.
        tower: ``"visual"``, ``"text"`` or ``"both"`` for multi-tower models (CLIP); a
            single tower leaves the other tower as it was.
        freeze_bn_stats: BatchNorm layers in frozen groups stop updating their running
            statistics and normalise with them, even after ``model.train()``.
        train_norm: Normalisation parameters of frozen groups keep training (fastai's
            ``train_bn``).
        train_bias: Bias terms of frozen groups keep training (BitFit).
        coarse: Use the family's coarse grouping.
        partition: Groups computed earlier by :func:`layer_groups` for this model.

    Returns:
        A :class:`LockReport` (prints as one line, renders as a table with rich).

    Raises:
        ConfigError: Negative or non-integer k, both k and groups, an unknown tower, a
            model that is not a torch.nn.Module.
        UnknownGroupError: A selection that matches nothing.

    Example:
        >>> import timm
        >>> model = timm.create_model("test_vit", num_classes=3)
        >>> print(lock(model, unlocked_groups=2))  # doctest: +ELLIPSIS
        trainable 42,051 / 306,435 (13.7%); unlocked groups (2/8): blocks.5, head
        >>> lock(model, groups="blocks.0").trainable_groups
        ['blocks.0']
    """
    require_module(model)
    if unlocked_groups is not None and groups is not None:
        raise ConfigError(
            "give either unlocked_groups=k (the last k groups train) or groups=... "
            "(exactly these train), not both"
        )
    if groups is None:
        k = 0 if unlocked_groups is None else unlocked_groups
        if isinstance(k, bool) or not isinstance(k, int):
            raise ConfigError(f"unlocked_groups must be an int >= 0, got {k!r}")
        if k < 0:
            raise ConfigError(
                f"unlocked_groups must be >= 0, got {k}: 0 locks everything, k unlocks the "
                "last k groups; use groups=[...] with negative indices to count from the top"
            )
    base = unwrap(model)
    parts = partition if partition is not None else layer_groups(base, coarse)
    state = _state(base)
    towers = _towers_for(parts, tower)
    addressed = [i for t in towers for i in parts.tower_indices(t)]
    if groups is None:
        chosen: set[int] = set()
        if k > 0:
            for t in towers:
                chosen.update(parts.tower_indices(t)[-k:])
        touch_model_level = tower in (None, "both", "all")
        if touch_model_level:
            for i in parts.tower_indices(MODEL_LEVEL):
                addressed.append(i)
                if k > 0:
                    chosen.add(i)
    else:
        pool = list(range(len(parts))) if tower in (None, "both", "all") else addressed
        addressed = pool
        chosen = set(parts.select(groups, within=pool))
    for i in addressed:
        state.trainable[parts[i].name] = i in chosen
        if freeze_bn_stats and i not in chosen:
            state.bn_frozen.add(parts[i].name)
        else:
            state.bn_frozen.discard(parts[i].name)
    return _apply(base, parts, state, train_norm=train_norm, train_bias=train_bias)


def unlock(
    model: nn.Module, *, coarse: bool = False, partition: LayerGroups | None = None
) -> LockReport:
    """Make every group trainable again and restore normal BatchNorm behaviour.

    Parameters the model created frozen stay frozen.

    Example:
        >>> import timm
        >>> model = timm.create_model("test_vit", num_classes=3)
        >>> _ = lock(model, 0)
        >>> unlock(model).trainable_params == sum(p.numel() for p in model.parameters())
        True
    """
    base = unwrap(model)
    parts = partition if partition is not None else layer_groups(base, coarse)
    state = _state(base)
    for g in parts:
        state.trainable[g.name] = True
    state.bn_frozen.clear()
    return _apply(base, parts, state, train_norm=False, train_bias=False)


def _apply(
    model: nn.Module, parts: LayerGroups, state: _State, *, train_norm: bool, train_bias: bool
) -> LockReport:
    norm_params: set[int] = set()
    if train_norm:
        for m in model.modules():
            if is_norm(m):
                norm_params.update(id(p) for p in m.parameters(recurse=False))
    report: list[GroupState] = []
    trainable_total = 0
    for g in parts:
        on = state.trainable.get(g.name, True)
        count = 0
        for name, p in zip(g.param_names, g.params):
            want = on or (train_norm and id(p) in norm_params) or (train_bias and is_bias(name))
            want = want and name not in state.created_frozen
            p.requires_grad_(want)
            if not want:
                p.grad = None
            if want:
                count += p.numel()
        trainable_total += count
        report.append(GroupState(g.index, g.name, on, g.num_params, count, g.tower))
    frozen_bn: list[str] = []
    for mname, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            gi = parts.module_group.get(mname)
            frozen = gi is not None and parts[gi].name in state.bn_frozen
            _set_bn_frozen(m, frozen, model.training)
            if frozen:
                frozen_bn.append(mname)
    return LockReport(trainable_total, parts.num_params, tuple(report), tuple(frozen_bn))


def group_trainable(model: nn.Module) -> dict[str, bool]:
    """Which groups the last :func:`lock` call left trainable (empty before any call)."""
    state = unwrap(model).__dict__.get(_STATE_ATTR)
    return dict(state.trainable) if state else {}
