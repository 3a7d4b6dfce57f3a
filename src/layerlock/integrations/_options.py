"""How the training-framework callbacks read their unfreezing options.

Both callbacks take an :class:`~layerlock.options.UnfreezeOptions` (or a schedule) plus
keyword overrides, like the :class:`~layerlock.unfreezer.Unfreezer`. They differ from it in
one way: by default the framework's optimizer and LR scheduler keep owning the learning
rates, and layerlock sets them only when asked (an ``lr`` keyword, or ``manage_lr=True``).
:func:`framework_unfreezer` builds the Unfreezer over the framework's optimizer.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import ConfigError
from ..groups import layer_groups
from ..options import UnfreezeOptions, resolve_options
from ..schedule import Schedule, parse_schedule
from ..unfreezer import Unfreezer
from ._schedulers import extend_scheduler

__all__ = ["CallbackSettings", "callback_options", "framework_unfreezer"]


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


class CallbackSettings(Protocol):
    """What each callback holds: the three results of :func:`callback_options`."""

    options: UnfreezeOptions
    schedule: Schedule
    manage_lr: bool


def framework_unfreezer(
    callback: CallbackSettings,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lengths: tuple[int, int],
    framework_lr: float,
    schedulers: Iterable[Any] = (),
) -> Unfreezer:
    """An :class:`~layerlock.unfreezer.Unfreezer` over the optimizer a framework built.

    The Unfreezer appends the param groups ``optimizer`` lacks, and each of ``schedulers``
    (the framework's LR schedulers of ``optimizer``) is extended to them. The framework wraps
    the model for DDP itself. The warning about param groups without layerlock names is
    silenced: each callback says what they mean for its framework.

    Args:
        callback: The callback's options, schedule and ``manage_lr``. Without ``manage_lr``
            the Unfreezer's LRs are given back: the framework's param groups keep theirs,
            the added ones get ``framework_lr`` times their ``lr_scale``.
        model: The model the framework trains.
        optimizer: The framework's optimizer.
        lengths: Epochs of the run and optimizer steps per epoch.
        framework_lr: The framework's base learning rate.
        schedulers: LR schedulers to extend to the added param groups.

    Returns:
        The Unfreezer (``manage_lr`` off unless layerlock sets the LRs and can).

    Example:
        >>> import types
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> opt = torch.optim.SGD(model[1].parameters(), lr=0.1)
        >>> opts, schedule, manage_lr = callback_options("full", {}, None)
        >>> cb = types.SimpleNamespace(options=opts, schedule=schedule, manage_lr=manage_lr)
        >>> u = framework_unfreezer(cb, model, opt, (1, 2), framework_lr=0.1)
        >>> u.optimizer is opt, u.manage_lr, len(opt.param_groups) > 1
        (True, False, True)
    """
    options, manage_lr = callback.options, callback.manage_lr
    lr = options.lr if manage_lr else framework_lr
    epochs, steps_per_epoch = lengths
    framework_lrs = [pg["lr"] for pg in optimizer.param_groups]
    before = len(framework_lrs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*do not carry layerlock group names.*")
        unfreezer = Unfreezer(
            model,
            options,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            optimizer=optimizer,
            groups=layer_groups(model, options.coarse),
            ddp=False,
            schedule=callback.schedule,
            lr=lr,
        )
    added = optimizer.param_groups[before:]
    for scheduler in schedulers:
        extend_scheduler(scheduler, added, before)
    if not manage_lr:
        # the Unfreezer set LRs by its formula when it was built: give them back
        unfreezer.manage_lr = False
        for pg, framework_lr in zip(optimizer.param_groups, framework_lrs):
            pg["lr"] = framework_lr
        for pg in added:
            pg["lr"] = lr * float(pg.get("lr_scale", 1.0))
    return unfreezer
