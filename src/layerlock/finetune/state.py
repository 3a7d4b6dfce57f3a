"""The results of a run and the running state the recipe checkpoints between epochs.

Example:
    >>> tracker = EpochTracker()
    >>> tracker.add(1.5, {"seen": 3.0, "right": 2.0})
    >>> tracker.counts
    {'seen': 3.0, 'right': 2.0}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["EpochTracker", "RunResult"]


@dataclass
class RunResult:
    """What a :func:`finetune` run produced.

    Attributes:
        run_dir: The run directory.
        classes: Class names; label ``i`` is ``classes[i]``.
        final_top1: Top-1 accuracy on the evaluation split after the last epoch.
        best_top1: Best top-1 accuracy over the epochs.
        best_epoch: Epoch (1-based) of ``best_top1``.
        final_top5: Top-5 accuracy after the last epoch (``None`` with 5 classes or fewer).
        final_loss: Evaluation loss after the last epoch.
        per_class: Top-1 accuracy per class after the last epoch.
        epochs: The per-epoch metric rows.
        trainable_params: Parameters trainable at the end.
        total_params: All parameters.
        wall_time_s: Seconds of training and evaluation (summed over resumed sessions).
        steps: Optimizer steps done.
        interrupted: The run stopped early (Ctrl-C or ``stop_after``); resume it.
        replicas_agree: Under DDP, whether every rank ended with identical weights.
        skipped_images: Unreadable image files left out of the data.
        cache: The feature-cache decisions, one per schedule stage (and per resume).
        final_sets: Top-1 on each extra evaluation set (``eval.sets``) after the last epoch.
        wise: The WiSE-FT result (``retain.wise=auto``): ``best_alpha`` and one row per α.
        model: The trained model (unwrapped).
    """

    run_dir: Path
    classes: list[str]
    final_top1: float = math.nan
    best_top1: float = math.nan
    best_epoch: int = 0
    final_top5: float | None = None
    final_loss: float = math.nan
    per_class: dict[str, float] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    wall_time_s: float = 0.0
    steps: int = 0
    interrupted: bool = False
    replicas_agree: bool | None = None
    skipped_images: int = 0
    cache: list[dict[str, Any]] = field(default_factory=list)
    final_sets: dict[str, float] = field(default_factory=dict)
    wise: dict[str, Any] | None = None
    model: nn.Module | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON safe), without the model."""
        return {
            "run_dir": str(self.run_dir),
            "classes": list(self.classes),
            "final_top1": self.final_top1,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "final_top5": self.final_top5,
            "final_loss": self.final_loss,
            "per_class": dict(self.per_class),
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "wall_time_s": self.wall_time_s,
            "steps": self.steps,
            "interrupted": self.interrupted,
            "replicas_agree": self.replicas_agree,
            "skipped_images": self.skipped_images,
            "cache": [dict(r) for r in self.cache],
            "final_sets": dict(self.final_sets),
            "wise": self.wise,
        }


# -- models -------------------------------------------------------------------------------


class EpochTracker:
    """Running sums of the epoch in progress, finished epoch rows, the best epoch, timings.

    Everything here is checkpointed (:meth:`dump` / :meth:`load`), so a resumed run
    continues the epoch's sums where the interrupted one stopped.
    """

    def __init__(self, best_metric: str = "val_acc") -> None:
        self.best_metric = best_metric
        self.evaluated = 0
        self.loss_sum = 0.0
        self.counts: dict[str, float] = {}
        self.elapsed = 0.0
        self.best = -math.inf
        self.best_epoch = 0
        self.last: dict[str, Any] = {}
        self.details: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        self.last_lrs: dict[str, float] = {}
        self.last_trained: dict[str, int] = {}
        self.baseline: dict[str, Any] = {}

    def add(self, loss_sum: float, counts: Mapping[str, float]) -> None:
        """Add one step's loss (summed over its samples) and counts to the epoch's sums."""
        self.loss_sum += loss_sum
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0.0) + v

    def finish_epoch(self, row: Mapping[str, Any], details: Mapping[str, Any]) -> None:
        """Record a finished epoch's row and evaluation details; reset the sums."""
        self.evaluated = int(row["epoch"])
        if self.evaluated == 0:
            self.baseline = dict(row)
        self.loss_sum, self.counts = 0.0, {}
        value = row.get(self.best_metric)
        if value is not None and float(value) > self.best:
            self.best, self.best_epoch = float(value), int(row["epoch"])
        self.last = dict(row)
        self.details = dict(details)
        self.rows.append(dict(row))

    def dump(self, elapsed: float) -> dict[str, Any]:
        """The checkpointed part (plain values)."""
        return {
            "evaluated_epochs": self.evaluated,
            "epoch_sums": {"loss_sum": self.loss_sum, **self.counts},
            "elapsed_s": elapsed,
            "best": [self.best, self.best_epoch],
            "last_row": {k: v for k, v in self.last.items() if v is not None},
            "details": dict(self.details),
            "last_lrs": dict(self.last_lrs),
            "last_trained": dict(self.last_trained),
            "baseline": {k: v for k, v in self.baseline.items() if v is not None},
        }

    def load(self, ckpt: Mapping[str, Any]) -> None:
        """Restore what :meth:`dump` wrote."""
        self.evaluated = int(ckpt["evaluated_epochs"])
        raw = ckpt["epoch_sums"]
        if isinstance(raw, (list, tuple)):  # layerlock-finetune/1: [loss_sum, right, seen]
            raw = {"loss_sum": raw[0], "seen": raw[2], "right": raw[1]} if raw[2] else {}
        sums = {k: float(v) for k, v in dict(raw).items()}
        self.loss_sum = sums.pop("loss_sum", 0.0)
        self.counts = sums
        self.elapsed = float(ckpt["elapsed_s"])
        self.best, self.best_epoch = float(ckpt["best"][0]), int(ckpt["best"][1])
        self.last = dict(ckpt.get("last_row", {}))
        self.details = dict(ckpt.get("details", {}))
        if "per_class" in ckpt:  # layerlock-finetune/1
            self.details["_per_class"] = list(ckpt["per_class"])
        self.last_lrs = dict(ckpt.get("last_lrs", {}))
        self.last_trained = dict(ckpt.get("last_trained", {}))
        self.baseline = dict(ckpt.get("baseline", {}))
