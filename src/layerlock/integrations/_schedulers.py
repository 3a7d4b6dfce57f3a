"""Extend an LR scheduler built before param groups were added to its optimizer.

torch's schedulers keep one entry per param group (``base_lrs``, ``lr_lambdas``,
``_last_lr``) and, since torch 2.x, fail on the next ``step()`` when the optimizer has
more groups than that (``zip(..., strict=True)``). The integrations add
the parameters a framework's optimizer lacks once, before training, and call
:func:`extend_scheduler` so the new groups follow the same schedule as the first one.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

__all__ = ["extend_scheduler"]

_SAFE = ("base_lrs", "lr_lambdas", "_last_lr")


def extend_scheduler(scheduler: Any, added: list[dict[str, Any]], before: int) -> None:
    """Give ``scheduler`` an entry for each param group in ``added`` (appended after ``before``).

    Each new group gets ``initial_lr`` = its LR and the first group's ``lr_lambda``
    (LambdaLR / MultiplicativeLR: Hugging Face's schedulers). Schedulers with other
    per-group lists (OneCycleLR, CyclicLR ...) are refused.

    Raises:
        ConfigError: A scheduler whose per-group state cannot be extended.

    Example:
        >>> import torch
        >>> p, q = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
        >>> opt = torch.optim.SGD([p], lr=0.1)
        >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
        >>> opt.add_param_group({"params": [q], "lr": 0.2})
        >>> extend_scheduler(sched, opt.param_groups[1:], before=1)
        >>> opt.step(); sched.step(); [pg["lr"] for pg in opt.param_groups]
        [0.05, 0.1]
    """
    if not added:
        return
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler
    lists = {k: v for k, v in vars(inner).items() if isinstance(v, list) and len(v) == before}
    unknown = sorted(k for k in lists if k not in _SAFE)
    if "base_lrs" not in lists or unknown:
        raise ConfigError(
            f"cannot add param groups to the optimizer of {type(inner).__name__}: it keeps "
            f"per-group state {unknown or ['(no base_lrs)']}; build the optimizer from all "
            "parameters (layerlock.create_optimizer) so nothing has to be added"
        )
    for pg in added:
        pg.setdefault("initial_lr", pg["lr"])
        inner.base_lrs.append(pg["initial_lr"])
        if "lr_lambdas" in lists:
            inner.lr_lambdas.append(inner.lr_lambdas[0])
        if "_last_lr" in lists:
            inner._last_lr.append(pg["lr"])
