"""How the training-framework callbacks read their unfreezing options.

Both callbacks take an :class:`~layerlock.options.UnfreezeOptions` (or a schedule) plus
keyword overrides, like the :class:`~layerlock.unfreezer.Unfreezer`. They differ from it in
one way: by default the framework's optimizer and LR scheduler keep owning the learning
rates, and layerlock sets them only when asked (an ``lr`` keyword, or ``manage_lr=True``).
:func:`framework_unfreezer` builds the Unfreezer over the framework's optimizer and
:func:`hand_back_lrs` gives the framework its learning rates back.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..groups import layer_groups
from ..options import UnfreezeOptions, resolve_options
from ..schedule import Schedule, parse_schedule
from ..unfreezer import Unfreezer

__all__ = ["callback_options", "framework_unfreezer", "hand_back_lrs"]


def callback_options(
    options: UnfreezeOptions | str | Schedule | None,
    overrides: dict[str, Any],
    manage_lr: bool | None,
) -> tuple[UnfreezeOptions, Schedule, bool]:
    """Validated options, the parsed schedule and whether layerlock sets the LRs.

    ``lr=None`` among the overrides means "not given" (the framework owns the LRs).

    Raises:
        ConfigError: A bad ``lr``, an unknown option name, invalid values.
        ScheduleError: A schedule that does not parse.

    Example:
        >>> opts, schedule, manage = callback_options("lp-ft", {"lr": 0.01}, None)
        >>> opts.lr, str(schedule), manage
        (0.01, 'lp-ft', True)
    """
    overrides = dict(overrides)
    if "lr" in overrides and overrides["lr"] is None:
        del overrides["lr"]
    lr = overrides.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise ConfigError(f"lr must be None or a number > 0, got {lr!r}")
    if manage_lr is not None and not isinstance(manage_lr, bool):
        raise ConfigError(f"manage_lr must be None, true or false, got {manage_lr!r}")
    opts = resolve_options(options, **overrides)
    schedule = parse_schedule(opts.schedule)
    return opts, schedule, ("lr" in overrides) if manage_lr is None else manage_lr


def framework_unfreezer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    options: UnfreezeOptions,
    schedule: Schedule,
    *,
    epochs: int,
    steps_per_epoch: int,
    lr: float,
) -> Unfreezer:
    """An :class:`~layerlock.unfreezer.Unfreezer` over the optimizer a framework built.

    The Unfreezer appends the param groups ``optimizer`` lacks; the framework wraps the model
    for DDP itself. Its warning about param groups without layerlock names is silenced: the
    callbacks decide what to say about them.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> opts, schedule, _ = callback_options("full", {}, None)
        >>> u = framework_unfreezer(model, opt, opts, schedule, epochs=1, steps_per_epoch=2, lr=0.1)
        >>> u.optimizer is opt, u.manage_lr
        (True, False)
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*do not carry layerlock group names.*")
        return Unfreezer(
            model,
            options,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            optimizer=optimizer,
            groups=layer_groups(model, options.coarse),
            ddp=False,
            schedule=schedule,
            lr=lr,
        )


def hand_back_lrs(unfreezer: Unfreezer, lrs: list[float], base_lr: float) -> None:
    """Leave the learning rates to the framework (``manage_lr`` off).

    The Unfreezer set every LR by its formula when it was built: the framework's param groups
    get their LRs ``lrs`` back, the groups it added get ``base_lr`` times their ``lr_scale``.

    Args:
        unfreezer: Built by :func:`framework_unfreezer`.
        lrs: The LRs of the optimizer's param groups before the Unfreezer was built.
        base_lr: The framework's base learning rate.
    """
    unfreezer.manage_lr = False
    groups = unfreezer.optimizer.param_groups
    for pg, lr in zip(groups, lrs):
        pg["lr"] = lr
    for pg in groups[len(lrs) :]:
        pg["lr"] = base_lr * float(pg.get("lr_scale", 1.0))
