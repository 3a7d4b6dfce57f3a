"""What the caches of a job share: :class:`BaseCaches`, the interface the recipe drives.

Two caches implement it: the frozen-prefix feature caches
(:class:`~layerlock.finetune.caching.JobCaches`) and the locked-tower embedding caches of
``task=clip`` (:class:`~layerlock.finetune.tower_cache.TowerCaches`). Both decide once per
stage of the schedule, log each decision with its reason, serve the epoch's batches in the
order the image loader would give, and add the same columns to the epoch rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import CacheOptions
from ..unfreezer import Unfreezer
from .reproducible import EpochOrder

__all__ = ["BaseCaches", "Evaluate"]

Evaluate = Callable[[nn.Module, Any], dict[str, Any]]
"""``evaluate(model, batches)`` of the task: the evaluation a cache serves."""


class BaseCaches(ABC):
    """What every cache of a job shares, and the interface the recipe drives.

    The run's facts, the storage dtype, a stage's bounds, the decision log and the epoch
    row's columns; a subclass decides what a stage caches and serves it.

    Args:
        options: The job's cache options (mode, budget, views, dtype).
        unfreezer: The run's Unfreezer (plan, groups, model).
        train_set: Training images (untransformed order; transforms applied per sample).
        val_set: This rank's evaluation images.
        deterministic: Whether the training transform is the evaluation transform.
        device: Where the prefix runs.
        dtype: Autocast dtype (``None``: fp32).
        world: Processes in the run.
        steps_per_epoch: Optimizer steps of one epoch.
        batch_size: Samples per batch.
        workers: DataLoader workers for filling.
        seed: The run's seed (augmentation of the fixed views).
        say: Called with each decision record (``record["line"]`` is the log line).
    """

    stage: Any

    def __init__(
        self,
        options: CacheOptions,
        unfreezer: Unfreezer,
        train_set: Dataset,
        val_set: Dataset,
        *,
        deterministic: bool,
        device: torch.device,
        dtype: torch.dtype | None,
        world: int,
        steps_per_epoch: int,
        batch_size: int,
        workers: int,
        seed: int,
        say: Callable[[dict[str, Any]], None],
    ) -> None:
        self.options, self.unfreezer = options, unfreezer
        self.train_set, self.val_set = train_set, val_set
        self.deterministic = deterministic
        self.device, self.dtype, self.world = device, dtype, world
        self.spe, self.batch_size, self.workers, self.seed = (
            steps_per_epoch,
            batch_size,
            workers,
            seed,
        )
        self.say = say
        self.stage = None
        self.records: list[dict[str, Any]] = []
        self.fill_s = 0.0  # fill time since the last epoch row
        choice = options.dtype
        if choice == "auto":
            choice = "bfloat16" if device.type == "cuda" else "float16"
        self.store = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(
            choice, torch.float32
        )

    @abstractmethod
    def begin_epoch(self, epoch: int, first_step: int) -> None:
        """Decide (once per stage) and fill the caches of the stage in force."""

    @abstractmethod
    def train_epoch(self, epoch: int, first_step: int) -> bool:
        """Whether this epoch trains from the cache (no unlock inside it)."""

    @abstractmethod
    def train_batches(self, epoch: int, order: EpochOrder) -> Iterator[tuple[Any, Any]]:
        """The epoch's batches (same samples, same order as the image loader), cached."""

    @abstractmethod
    def suffix(self) -> nn.Module:
        """The module that trains on the cached batches."""

    @abstractmethod
    def evaluate(self, epoch: int, evaluate: Evaluate) -> tuple[dict[str, Any] | None, str]:
        """Evaluate from the caches: ``(metrics, kind)``, or ``(None, "")``: evaluate uncached."""

    @abstractmethod
    def nbytes(self, stage: Any) -> int:
        """Bytes held by the caches of ``stage``."""

    @abstractmethod
    def close(self) -> None:
        """Drop the caches."""

    def _stage_span(self, ei: int) -> tuple[int, int]:
        """First and end step of the stage that event ``ei`` of the plan opens."""
        plan = self.unfreezer.plan
        end = min(
            plan.events[ei + 1].step if ei + 1 < len(plan.events) else plan.total_steps,
            plan.total_steps,
        )
        return plan.events[ei].step, end

    def _last_step(self, epoch: int) -> int:
        """The last step of ``epoch`` (0-based) within the plan."""
        return min((epoch + 1) * self.spe - 1, self.unfreezer.plan.total_steps - 1)

    def _record(
        self, epoch: int, first_step: int, stage_epochs: float, **facts: Any
    ) -> dict[str, Any]:
        """A decision record with nothing cached yet; ``facts`` follow ``mode``."""
        return {
            "epoch": epoch + 1,
            "step": first_step,
            "mode": self.options.mode,
            **facts,
            "stage_epochs": stage_epochs,
            "train_cached": False,
            "eval_cached": False,
            "views": 0,
            "bytes": 0,
            "fill_s": 0.0,
        }

    def _log(self, record: dict[str, Any], line: str) -> None:
        record["line"] = line
        self.records.append(record)
        self.say(record)

    def _serve(self, served: Dataset, order: EpochOrder) -> Iterator[tuple[Any, Any]]:
        """``served``'s items for the batches of ``order`` (index lists of ``batch_size``)."""
        indices = list(order)
        for i in range(0, len(indices), self.batch_size):
            yield served[indices[i : i + self.batch_size]]

    def epoch_columns(self, cached: bool, eval_kind: str) -> dict[str, Any]:
        """The epoch row's cache columns; the fill time counts since the previous row."""
        out = {
            "cached": cached,
            "eval_cached": eval_kind == "features",
            "eval_images_kept": eval_kind == "images",
            "cache_fill_s": self.fill_s,
            "cache_bytes": self.nbytes(self.stage),
        }
        self.fill_s = 0.0
        return out
