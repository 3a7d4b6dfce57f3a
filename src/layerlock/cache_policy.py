"""When to cache a locked prefix: the cost model and the per-stage decision, as pure functions.

:func:`should_cache` weighs one cache (fill cost against the epochs that reuse it, the
speed-up, randomness, the byte budget); :func:`plan_stage` decides both caches of a
schedule stage (the training features and the evaluation features) through that one code
path. Neither fills nor prints anything: the caller (the fine-tuning job) fills what was
decided and renders the decision's reasons into its log line.

Example:
    >>> plan = plan_stage("auto", 14, 13, stage_epochs=5, evals=5, train_bytes=2**20,
    ...                   val_bytes=2**20, budget=2**30)
    >>> plan.train.cache, plan.eval.cache, plan.views
    (True, True, 1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError
from .groups import LayerGroups

if TYPE_CHECKING:
    from .split import Split

__all__ = [
    "CacheDecision",
    "StageCachePlan",
    "describe_bytes",
    "ideal_costs",
    "plan_stage",
    "should_cache",
]

CACHE_MODES = ("auto", "on", "off")


def describe_bytes(n: float) -> str:
    """``1536 -> '1.5 KB'`` (powers of 1024).

    Example:
        >>> describe_bytes(3 * 2**30)
        '3.0 GB'
    """
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@dataclass(frozen=True)
class CacheDecision:
    """What :func:`should_cache` decided.

    Attributes:
        cache: Whether to cache.
        reason: One line to log.
        speedup: Cost-model speed-up of an epoch after the fill (uncached / cached).
        break_even_epochs: Epochs after which the fill has paid for itself.
        nbytes: Size of the features (0 when unknown).
    """

    cache: bool
    reason: str
    speedup: float
    break_even_epochs: float
    nbytes: int = 0

    def __str__(self) -> str:
        return self.reason


def ideal_costs(
    num_groups: int, boundary: int, costs: Sequence[float] | None = None
) -> dict[str, float]:
    """Cost-model step costs (``3·G·f`` full, ``G·f + 2·(G-m)·f`` with ``m`` groups locked, ``3·(G-m)·f`` cached), in units of one group's forward.

    Returns ``full`` (everything trains), ``locked`` (groups below ``boundary`` frozen,
    prefix still runs forward), ``cached`` (prefix from the cache) and ``prefix``
    (forward of the frozen groups: the fill cost per sample and view).

    Example:
        >>> ideal_costs(14, 12)
        {'full': 42.0, 'locked': 18.0, 'cached': 6.0, 'prefix': 12.0}
    """
    f = list(costs) if costs is not None else [1.0] * num_groups
    if len(f) != num_groups:
        raise ConfigError(f"costs has {len(f)} entries but the model has {num_groups} groups")
    pre, post = sum(f[:boundary]), sum(f[boundary:])
    return {
        "full": 3.0 * (pre + post),
        "locked": pre + 3.0 * post,
        "cached": 3.0 * post,
        "prefix": pre,
    }


def should_cache(
    groups: LayerGroups | int,
    boundary: int,
    *,
    epochs: float,
    split: Split | str | bool = True,
    deterministic: bool = True,
    views: int = 1,
    nbytes: int | None = None,
    budget_bytes: int = 2**30,
    costs: Sequence[float] | None = None,
    min_speedup: float = 1.1,
) -> CacheDecision:
    """Decide whether to cache the frozen prefix for one stage (``--cache auto``).

    Fill costs one prefix forward per sample and view; each epoch from the cache saves
    one prefix forward per sample. Cache when the stage lasts longer than the fill
    (``epochs > views``), the per-epoch speed-up is worth it (``>= min_speedup``), the
    inputs are deterministic (or ``views > 1``), the split is well defined, and the
    features fit in ``budget_bytes``.

    Args:
        groups: The layer groups (or their number).
        boundary: Lowest trainable group of the stage.
        epochs: Length of the stage in epochs (fractions allowed).
        split: The split (or True: assume one), or False / the reason string when
            there is none (``split_model(...) or split_reason(...)``).
        deterministic: Whether the training inputs are free of random augmentation.
        views: Fixed augmented views per sample.
        nbytes: Size of the features (None: unknown, not checked).
        budget_bytes: Cache budget.
        costs: Relative forward cost per group (default: equal).
        min_speedup: Smallest per-epoch speed-up worth caching for.

    Example:
        >>> d = should_cache(14, 13, epochs=5, nbytes=10_000_000)
        >>> d.cache, d.reason
        (True, 'cache on: 5 epoch(s) repay the 1-view fill after 1.0 epoch(s); ~5.3x per epoch after it; 9.5 MB of 1.0 GB budget')
    """
    g = len(groups) if isinstance(groups, LayerGroups) else int(groups)
    ideal = ideal_costs(g, min(max(boundary, 0), g), costs)
    speedup = ideal["locked"] / ideal["cached"] if ideal["cached"] else math.inf
    saving = ideal["locked"] - ideal["cached"]  # per sample per epoch, = prefix forward
    # Filling K views costs K prefix forwards; epoch e of the stage saves one each.
    break_even = views * ideal["prefix"] / saving if saving > 0 else math.inf
    size = nbytes or 0

    def no(why: str) -> CacheDecision:
        return CacheDecision(False, f"cache off: {why}", speedup, break_even, size)

    if boundary <= 0:
        return no("nothing is locked at the bottom (every group trains)")
    if boundary >= g:
        return no("every group is locked: nothing trains")
    if split is False or isinstance(split, str):
        return no(split or "no split of this model at this boundary")
    if not deterministic and views <= 1:
        return no(
            "the training transform is random; cache K fixed augmented views (views=K) or train uncached"
        )
    if speedup < min_speedup:
        return no(f"~{speedup:.2f}x per epoch is below the {min_speedup:.2f}x worth caching for")
    if epochs <= break_even:
        return no(
            f"a {epochs:g}-epoch stage does not repay the {views}-view fill "
            f"(break-even after {break_even:.1f} epoch(s))"
        )
    if nbytes is not None and nbytes > budget_bytes:
        return no(
            f"the features need {describe_bytes(nbytes)}, over the {describe_bytes(budget_bytes)} budget"
        )
    fits = (
        f"; {describe_bytes(nbytes)} of {describe_bytes(budget_bytes)} budget"
        if nbytes is not None
        else ""
    )
    return CacheDecision(
        True,
        f"cache on: {epochs:g} epoch(s) repay the {views}-view fill after {break_even:.1f} "
        f"epoch(s); ~{speedup:.1f}x per epoch after it{fits}",
        speedup,
        break_even,
        size,
    )


@dataclass(frozen=True)
class StageCachePlan:
    """The caches of one schedule stage, as :func:`plan_stage` decided them.

    Attributes:
        train: Whether the training features are cached, and why.
        eval: Whether the evaluation features are cached, and why.
        views: Fixed views per training sample the training cache holds.
        blocked: Why no prefix of this stage can be cached at all (``None`` if one can).
    """

    train: CacheDecision
    eval: CacheDecision
    views: int
    blocked: str | None = None


def plan_stage(
    mode: str,
    groups: LayerGroups | int,
    boundary: int,
    *,
    stage_epochs: float,
    evals: int,
    train_bytes: int,
    val_bytes: int,
    budget: int,
    blocked: str | None = None,
    deterministic: bool = True,
    views: int = 2,
) -> StageCachePlan:
    """Decide the training and evaluation caches of one stage (``cache=auto|on|off``).

    The training cache is decided first; the evaluation cache gets what is left of the
    budget. Both go through :func:`_decide_one`: ``auto`` asks the cost model
    (:func:`should_cache`), ``on`` caches whenever the features fit.

    Args:
        mode: ``auto``, ``on`` or ``off``.
        groups: The layer groups (or their number).
        boundary: Lowest trainable group of the stage.
        stage_epochs: Length of the stage in epochs.
        evals: Evaluations inside the stage.
        train_bytes: Bytes of the training features for ONE view.
        val_bytes: Bytes of the evaluation features.
        budget: Bytes the caches of this stage may use.
        blocked: Why the prefix cannot be cached (no split, a random prefix, DDP, ...).
        deterministic: Whether the training transform is free of random augmentation.
        views: Fixed augmented views per image under a random transform.

    Raises:
        ConfigError: An unknown ``mode``.

    Example:
        >>> p = plan_stage("on", 10, 0, stage_epochs=2, evals=2, train_bytes=1,
        ...                val_bytes=1, budget=2**20, blocked="boundary 0")
        >>> p.train.cache, p.train.reason
        (False, 'uncached: boundary 0')
    """
    if mode not in CACHE_MODES:
        raise ConfigError(f"cache mode {mode!r} is not one of {', '.join(CACHE_MODES)}")
    n_views = 1 if deterministic else views
    if mode == "off":
        blocked = "cache=off"
    if blocked is not None:
        off = CacheDecision(False, f"uncached: {blocked}", 0.0, math.inf)
        return StageCachePlan(off, off, 0, blocked)
    train = _decide_one(
        mode, groups, boundary, stage_epochs, deterministic, n_views, train_bytes * n_views, budget
    )
    left = budget - (train.nbytes if train.cache else 0)
    if evals == 0 and mode == "on":
        val = CacheDecision(False, "cache off: no evaluation in this stage", 0.0, math.inf)
    else:
        val = _decide_one(mode, groups, boundary, float(evals), True, 1, val_bytes, left)
    return StageCachePlan(train, val, n_views)


def _decide_one(
    mode: str,
    groups: LayerGroups | int,
    boundary: int,
    epochs: float,
    deterministic: bool,
    views: int,
    nbytes: int,
    budget: int,
) -> CacheDecision:
    """One cache's decision; the same rule for training and evaluation features."""
    if mode == "auto":
        return should_cache(
            groups,
            boundary,
            epochs=epochs,
            deterministic=deterministic,
            views=views,
            nbytes=nbytes,
            budget_bytes=budget,
        )
    fits = nbytes <= budget
    reason = (
        f"cache on: cache=on; {describe_bytes(nbytes)} of {describe_bytes(budget)} budget"
        if fits
        else f"cache=on but the features need {describe_bytes(nbytes)}, over the "
        f"{describe_bytes(budget)} left of the budget (raise cache.budget_mb); training uncached"
    )
    return CacheDecision(fits, reason, 0.0, math.inf, nbytes)
