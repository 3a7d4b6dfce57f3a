"""The two towers of a CLIP model, each steered by its own schedule (``task=clip``).

Each tower follows its own schedule (``towers.visual`` / ``towers.text``, any schedule or
``locked``; ``unfreeze.schedule`` for both, with the presets ``lit`` and ``flyp``), with its
own LR, weight decay and layer decay. The two schedules are merged into one schedule over all
groups (:func:`combined_schedule`), driven by one :class:`~layerlock.unfreezer.Unfreezer`
(one optimizer, one DDP wrapper rebuilt on every change, an exact resume):
:func:`tower_unfreezer`.

Example:
    >>> pair_schedules("lit")
    {'visual': 'locked', 'text': 'full'}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..adapters import MODEL_LEVEL
from ..config import FinetuneConfig
from ..errors import ConfigError
from ..groups import LayerGroups, layer_groups
from ..optim import NO_DECAY_SUFFIX, group_multipliers, layer_group_of
from ..schedule import ResolvedSchedule, Schedule, Stage, resolve_schedule
from ..unfreezer import Unfreezer

__all__ = [
    "CLIP_PRESETS",
    "LOCKED",
    "TOWERS",
    "combined_schedule",
    "pair_schedules",
    "tower_plans",
    "tower_rates",
    "tower_schedules",
    "tower_unfreezer",
]

TOWERS = ("visual", "text")
#: A tower schedule under which the tower never trains.
LOCKED = "locked"
#: Presets of ``unfreeze.schedule`` for ``task=clip``: (image tower, text tower).
CLIP_PRESETS: dict[str, tuple[str, str]] = {
    # LiT (Zhai et al. 2022): the image tower locked, the text tower trained
    "lit": (LOCKED, "full"),
    # FLYP (Goyal et al. 2023): both towers, contrastively, on class-prompt captions
    "flyp": ("full", "full"),
}


def tower_schedules(config: FinetuneConfig) -> dict[str, str]:
    """Each tower's schedule text: ``towers.<tower>``, else ``unfreeze.schedule`` (presets expanded).

    Example:
        >>> from layerlock.config import load_config
        >>> tower_schedules(load_config(overrides=["task=clip", "unfreeze=lit"]))
        {'visual': 'locked', 'text': 'full'}
        >>> tower_schedules(load_config(overrides=["task=clip", "unfreeze=gradual", "towers.text=lp"]))
        {'visual': 'gradual', 'text': 'lp'}
    """
    return pair_schedules(str(config.unfreeze.schedule), config.towers.visual, config.towers.text)


def pair_schedules(base: str, visual: str | None = None, text: str | None = None) -> dict[str, str]:
    """Each tower's schedule: its own if given, else ``base`` (``lit`` / ``flyp`` expanded).

    Example:
        >>> pair_schedules("flyp", text="gradual")
        {'visual': 'full', 'text': 'gradual'}
    """
    v, t = CLIP_PRESETS.get(base, (base, base))
    return {"visual": visual or v, "text": text or t}


def _check_two_towers(groups: LayerGroups) -> None:
    missing = [t for t in TOWERS if not groups.tower_indices(t)]
    if missing:
        towers = [str(t) for t in groups.towers if t not in (None, MODEL_LEVEL)]
        raise ConfigError(
            "task=clip needs a two-tower OpenCLIP model (groups visual.* and text.*); this "
            f"model has {'towers ' + ', '.join(towers) if towers else 'one tower'}"
        )


def tower_plans(
    groups: LayerGroups, schedules: Mapping[str, str], epochs: int, steps_per_epoch: int
) -> dict[str, ResolvedSchedule | None]:
    """Resolve each tower's schedule on its own groups (``None``: the tower stays locked).

    Raises:
        ConfigError: A model without two towers, or both towers locked.
        ScheduleError: A schedule that does not fit its tower (naming the tower).
    """
    _check_two_towers(groups)
    plans: dict[str, ResolvedSchedule | None] = {}
    for tower in TOWERS:
        text = schedules[tower]
        plans[tower] = (
            None
            if text == LOCKED
            else resolve_schedule(text, groups, epochs, steps_per_epoch, tower=tower)
        )
    if all(p is None or not any(e.trainable for e in p.events) for p in plans.values()):
        raise ConfigError(
            "both towers are locked (towers.visual and towers.text): nothing would train; "
            "give one of them a schedule, e.g. unfreeze=lit"
        )
    return plans


def combined_schedule(
    groups: LayerGroups, plans: Mapping[str, ResolvedSchedule | None]
) -> Schedule:
    """One schedule over all groups, by step: each tower's trainable groups, plus the
    model-level group (``logit_scale``) whenever anything trains.

    Example:
        >>> import open_clip
        >>> from layerlock import layer_groups
        >>> clip = open_clip.CLIP(8, dict(image_size=16, patch_size=8, width=16, layers=1, head_width=8),
        ...                       dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1))
        >>> g = layer_groups(clip)
        >>> str(combined_schedule(g, tower_plans(g, {"visual": "locked", "text": "lp"}, 1, 2)))
        's0:text.proj,logit_scale'
    """
    steps = sorted({0} | {e.step for p in plans.values() if p is not None for e in p.events})
    model_level = set(groups.tower_indices(MODEL_LEVEL))
    stages = []
    for step in steps:
        chosen: set[int] = set()
        for plan in plans.values():
            if plan is not None:
                chosen |= plan.trainable_at(step)
        if chosen:
            chosen |= model_level
        names = [groups[i].name for i in sorted(chosen)]
        stages.append(Stage(step, ",".join(names) if names else "none"))
    return Schedule(stages=tuple(stages), unit="step")


def tower_rates(
    groups: LayerGroups, config: FinetuneConfig
) -> tuple[dict[str, float], dict[str, float]]:
    """Per layer group: LR multiplier (relative to ``unfreeze.lr``) and weight decay.

    Each tower's base LR (``towers.<tower>_lr``) and layer decay (``towers.<tower>_layer_decay``)
    give ``lr_tower / unfreeze.lr * layer_decay ** depth``; ``logit_scale`` keeps ``unfreeze.lr``.
    """
    u, t = config.unfreeze, config.towers
    mult: dict[str, float] = {}
    decay: dict[str, float] = {}
    for g in groups:
        mult[g.name], decay[g.name] = 1.0, u.weight_decay
    for tower in TOWERS:
        lr = getattr(t, f"{tower}_lr") or u.lr
        ld = getattr(t, f"{tower}_layer_decay") or u.layer_decay
        wd = getattr(t, f"{tower}_weight_decay")
        base = group_multipliers(groups, layer_decay=ld, discriminative=u.discriminative)
        for i in groups.tower_indices(tower):
            name = groups[i].name
            mult[name] = lr / u.lr * base[name]
            decay[name] = u.weight_decay if wd is None else wd
    return mult, decay


def tower_unfreezer(
    model: nn.Module,
    config: FinetuneConfig,
    *,
    epochs: int,
    steps_per_epoch: int,
    groups: LayerGroups | None = None,
    ddp_kwargs: dict[str, Any] | None = None,
) -> Unfreezer:
    """An Unfreezer that steers the two towers of a CLIP model, each by its own schedule.

    The towers' schedules become one schedule over every group (:func:`combined_schedule`),
    so one Unfreezer holds one optimizer and one DDP wrapper (rebuilt whenever either tower
    changes) and a checkpoint resumes both towers exactly. Per-tower LRs, weight decay and
    layer decay are set on its named param groups (:func:`tower_rates`).

    Attributes set on the result:
        tower_plans: Each tower's resolved schedule (``None``: locked), for display.

    Raises:
        ConfigError: A model without two towers, or both towers locked.
        ScheduleError: A tower schedule that does not fit its tower.
    """
    groups = groups if groups is not None else layer_groups(model, config.unfreeze.coarse)
    plans = tower_plans(groups, tower_schedules(config), epochs, steps_per_epoch)
    options = config.unfreeze.with_overrides(schedule=combined_schedule(groups, plans), tower=None)
    unfreezer = Unfreezer(
        model,
        options,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        groups=groups,
        ddp_kwargs=ddp_kwargs,
    )
    mult, decay = tower_rates(groups, config)
    # the Unfreezer sets each param group's LR from these multipliers at every step
    unfreezer.multipliers.update(mult)
    for pg in unfreezer.optimizer.param_groups:
        name = str(pg["name"])
        group = layer_group_of(name)
        pg["lr_scale"] = mult[group]
        if not name.endswith(NO_DECAY_SUFFIX):
            pg["weight_decay"] = decay[group]
    unfreezer.sync(unfreezer.global_step)
    unfreezer.tower_plans = plans  # type: ignore[attr-defined]
    return unfreezer
