"""How the training-framework callbacks read their unfreezing options.

Both callbacks take an :class:`~layerlock.options.UnfreezeOptions` (or a schedule) plus
keyword overrides, like the :class:`~layerlock.unfreezer.Unfreezer`. They differ from it in
one way: by default the framework's optimizer and LR scheduler keep owning the learning
rates, and layerlock sets them only when asked (an ``lr`` keyword, or ``manage_lr=True``).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..options import UnfreezeOptions, resolve_options
from ..schedule import Schedule, parse_schedule

__all__ = ["callback_options"]


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
