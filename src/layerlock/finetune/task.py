"""Tasks: what the recipe trains for (loss, step metrics, evaluation), behind one interface.

The recipe (:class:`~layerlock.finetune.recipe.FinetuneRecipe`) owns the Unfreezer, the
data order, checkpoints and the run directory; a :class:`Task` owns what depends on the
objective: which data and which model it needs, the loss of a batch, the counts that
become step and epoch metrics, and the evaluation. A task is chosen by name
(``task=classify``) from :data:`TASKS`; a second task (contrastive image-text) plugs in
beside :class:`ClassificationTask` without a branch in the loop.

Example:
    >>> import torch
    >>> task = ClassificationTask(["cat", "dog"])
    >>> stats = task.batch(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    >>> stats.counts
    {'seen': 2.0, 'right': 1.0}
    >>> task.step_columns(stats.counts)
    {'accuracy': 0.5}
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..config import CacheOptions, FinetuneConfig
from ..data import TrainVal, Transforms, load_train_val, model_transforms, open_clip_preprocess
from ..data.evalsets import load_eval_set, parse_eval_sets
from ..devices import autocast
from ..distributed import all_sum
from ..errors import ConfigError, LayerlockError
from ..groups import LayerGroups
from ..models import OpenCLIPClassifier, build_classifier, classifier_logits
from ..unfreezer import Unfreezer
from .cache_base import BaseCaches
from .caching import JobCaches
from .state import EpochTracker, RunResult

__all__ = [
    "TASKS",
    "BatchStats",
    "Batches",
    "ClassificationTask",
    "EvalSet",
    "Placement",
    "Task",
    "make_task",
]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
"""Evaluation input: ``(inputs, targets)`` pairs (a DataLoader, or cached features)."""


@dataclass
class BatchStats:
    """The loss of one batch and the counts it adds to the step and epoch metrics.

    Attributes:
        loss: The tensor ``backward()`` is called on (mean over the batch).
        counts: Plain numbers the recipe sums over ranks and over the epoch; ``seen``
            (samples in the batch) is always present.
    """

    loss: torch.Tensor
    counts: dict[str, float]


class Placement(NamedTuple):
    """Where an evaluation runs."""

    device: torch.device
    dtype: torch.dtype | None
    """Autocast dtype (``None``: fp32)."""


@dataclass
class EvalSet:
    """An evaluation set besides the validation split.

    Attributes:
        dataset: Its samples (with the evaluation transform).
        kind: What it holds: ``classify`` (class-labelled images) or ``captions``.
    """

    dataset: Dataset
    kind: str = "classify"


class Task(ABC):
    """What a training objective provides to the recipe.

    Attributes:
        name: The task's name in configs and summaries (``classify``).
        best_metric: The evaluation column that decides the best epoch (higher is better).
    """

    name: str
    best_metric: str
    classes: list[str]
    eval_at_start: bool = False
    """Whether ``eval.at_start=auto`` evaluates this task before training."""
    set_metric: str = "val_acc"
    """The accuracy column of a class-labelled evaluation set (what the guard watches)."""
    cache_type: type[BaseCaches] = JobCaches
    """The run's caches (the locked prefix's features; a task may cache other parts)."""

    @abstractmethod
    def load_data(self, config: FinetuneConfig) -> TrainVal:
        """The training and evaluation datasets (untransformed: see :meth:`transforms`)."""

    @abstractmethod
    def build_model(
        self, config: FinetuneConfig
    ) -> tuple[nn.Module, list[str], LayerGroups | None]:
        """The model, notes for the summary, and its layer groups (``None``: the adapters')."""

    def transforms(self, model: nn.Module, config: FinetuneConfig) -> Transforms:
        """The model's own preprocessing (its data config, or OpenCLIP's preprocess)."""
        d = config.data
        if isinstance(model, OpenCLIPClassifier):
            preprocess = open_clip_preprocess(model.visual, d.augmentation)
            return model_transforms(
                preprocess=preprocess, deterministic_train=d.deterministic_train_transform
            )
        return model_transforms(
            model, augmentation=d.augmentation, deterministic_train=d.deterministic_train_transform
        )

    def eval_sets(self, config: FinetuneConfig, transforms: Transforms) -> dict[str, EvalSet]:
        """The extra evaluation sets of ``eval.sets``, labelled with this task's classes."""
        sources = parse_eval_sets(config.eval.resolved(config.data.source))
        return {
            name: EvalSet(
                load_eval_set(
                    source,
                    classes=self.classes,
                    options=config.data,
                    seed=config.run.seed,
                    transform=transforms.eval,
                    mode=transforms.mode,
                ),
                "classify",
            )
            for name, source in sources.items()
        }

    def make_unfreezer(
        self,
        model: nn.Module,
        config: FinetuneConfig,
        *,
        epochs: int,
        steps_per_epoch: int,
        groups: LayerGroups | None,
        ddp_kwargs: dict[str, Any],
    ) -> Unfreezer:
        """The run's Unfreezer: ``config.unfreeze`` over every group (a task may steer towers)."""
        return Unfreezer(
            model,
            config.unfreeze,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            groups=groups,
            ddp_kwargs=ddp_kwargs,
        )

    def job_caches(
        self,
        options: CacheOptions,
        unfreezer: Unfreezer,
        train_set: Dataset,
        val_set: Dataset,
        **kwargs: Any,
    ) -> BaseCaches:
        """The run's caches, of :attr:`cache_type` (keyword arguments: its own)."""
        return self.cache_type(options, unfreezer, train_set, val_set, **kwargs)

    def forward(self, net: nn.Module, inputs: Any, targets: Any) -> BatchStats:
        """Run ``net`` on a training batch and score it (the recipe calls it under autocast)."""
        return self.batch(net(inputs), targets)

    def check_output(self, model: nn.Module, dataset: Dataset, device: torch.device) -> None:
        """Check, before training, that ``model`` runs on one item of ``dataset``.

        The default does nothing; a task whose output must have a shape checks it here,
        so that a bad model fails in one line before the run directory is written.
        """
        return None

    @abstractmethod
    def batch(self, output: Any, target: torch.Tensor) -> BatchStats:
        """Loss and counts of one training batch from the model's output."""

    @abstractmethod
    def step_columns(self, counts: Mapping[str, float]) -> dict[str, float]:
        """Columns of a step row from one step's counts (summed over ranks)."""

    @abstractmethod
    def train_columns(self, loss_sum: float, counts: Mapping[str, float]) -> dict[str, Any]:
        """Columns of an epoch row from the epoch's summed loss and counts."""

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        batches: Batches,
        device: torch.device,
        dtype: torch.dtype | None,
        kind: str = "main",
    ) -> dict[str, Any]:
        """Evaluation metrics over ``batches`` (all ranks' shares combined), in eval mode.

        ``kind`` is ``main`` for the validation split, else the :class:`EvalSet`'s kind.
        The model's training mode is restored afterwards.

        Returns:
            Epoch-row columns (``None`` values are left out of the row) plus, under keys
            starting with ``_``, details kept beside the row (e.g. ``_per_class``).
        """
        was = model.training
        model.eval()
        try:
            return self.metrics(model, batches, Placement(device, dtype), kind)
        finally:
            model.train(was)

    @abstractmethod
    def metrics(
        self, model: nn.Module, batches: Batches, on: Placement, kind: str
    ) -> dict[str, Any]:
        """What :meth:`evaluate` returns, with ``model`` already in eval mode and no grad."""

    @abstractmethod
    def fill_result(self, result: RunResult, tracker: EpochTracker) -> None:
        """Copy the final and best metrics of ``tracker`` into ``result``."""


class ClassificationTask(Task):
    """Image classification: cross-entropy, top-1 / top-5, per-class accuracy.

    Args:
        classes: Class names; label ``i`` is ``classes[i]``.
        label_smoothing: Cross-entropy label smoothing of the training loss.
    """

    name = "classify"
    best_metric = "val_acc"

    def __init__(self, classes: Sequence[str] = (), label_smoothing: float = 0.0) -> None:
        self.classes = list(classes)
        self.label_smoothing = label_smoothing

    @classmethod
    def from_config(cls, config: FinetuneConfig) -> ClassificationTask:
        """The task of a ``task=classify`` run (classes come with :meth:`load_data`)."""
        return cls(label_smoothing=config.run.label_smoothing)

    def load_data(self, config: FinetuneConfig) -> TrainVal:
        identity = Transforms(lambda img: img, lambda img: img, "RGB")
        data = load_train_val(
            config.data.source, transforms=identity, options=config.data, seed=config.run.seed
        )
        self.classes = list(data.classes)
        if len(self.classes) < 2:
            raise LayerlockError(
                f"the training data has {len(self.classes)} class; a classifier needs 2 or more"
            )
        return data

    def build_model(
        self, config: FinetuneConfig
    ) -> tuple[nn.Module, list[str], LayerGroups | None]:
        m = config.model
        return build_classifier(
            m.name,
            self.classes,
            pretrained=m.pretrained,
            checkpoint=m.checkpoint,
            zero_shot_head=m.zero_shot_head,
            prompt=m.prompt,
        )

    def check_output(self, model: nn.Module, dataset: Dataset, device: torch.device) -> None:
        """One evaluation image through ``model``: it must give ``len(classes)`` logits.

        Raises:
            LayerlockError: The model cannot take an image batch (a text-only model), or
                gives another number of outputs than there are classes.
        """
        if len(dataset) == 0:  # type: ignore[arg-type]
            return
        x = dataset[0][0]
        if not isinstance(x, torch.Tensor):
            return
        modes = [(m, m.training) for m in model.modules()]
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                output = model.eval()(x.unsqueeze(0).to(device))
        except Exception as exc:  # any model code: report it as one line
            text = str(exc).splitlines()[0][:160] if str(exc) else "no message"
            raise LayerlockError(
                f"the model cannot classify images: a batch of shape {tuple(x.unsqueeze(0).shape)} "
                f"raised {type(exc).__name__}: {text} (is it an image model?)"
            ) from exc
        finally:
            for m, training in modes:
                m.training = training
        logits = classifier_logits(output)
        if logits.ndim != 2 or logits.shape[-1] != len(self.classes):
            raise LayerlockError(
                f"the model gives outputs of shape {tuple(logits.shape)} per batch of 1 but the "
                f"data has {len(self.classes)} classes; its head must have {len(self.classes)} outputs"
            )

    def batch(self, output: Any, target: torch.Tensor) -> BatchStats:
        logits = classifier_logits(output).float()
        loss = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        right = float((logits.detach().argmax(-1) == target).sum())
        return BatchStats(loss, {"seen": float(target.numel()), "right": right})

    def step_columns(self, counts: Mapping[str, float]) -> dict[str, float]:
        return {"accuracy": counts["right"] / max(counts["seen"], 1.0)}

    def train_columns(self, loss_sum: float, counts: Mapping[str, float]) -> dict[str, Any]:
        seen = counts.get("seen", 0.0)
        if not seen:
            return {"train_loss": None, "train_acc": None}
        return {"train_loss": loss_sum / seen, "train_acc": counts["right"] / seen}

    def metrics(
        self, model: nn.Module, batches: Batches, on: Placement, kind: str
    ) -> dict[str, Any]:
        device, dtype = on
        n = len(self.classes)
        loss_sum = correct1 = correct5 = total = 0.0
        right = torch.zeros(n, dtype=torch.float64)
        count = torch.zeros(n, dtype=torch.float64)
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, dtype):
                logits = classifier_logits(model(x)).float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            hit = (logits.argmax(-1) == y).double().cpu()
            correct1 += float(hit.sum())
            if n > 5:
                top5 = logits.topk(5, dim=-1).indices
                correct5 += float((top5 == y[:, None]).any(-1).sum())
            total += y.numel()
            yc = y.cpu()
            right.index_add_(0, yc, hit)
            count.index_add_(0, yc, torch.ones_like(hit))
        sums = all_sum(
            [loss_sum, correct1, correct5, total, *right.tolist(), *count.tolist()], device
        )
        loss_sum, correct1, correct5, total = sums[:4]
        right_l, count_l = sums[4 : 4 + n], sums[4 + n :]
        total = max(total, 1.0)
        return {
            "val_loss": loss_sum / total,
            "val_acc": correct1 / total,
            "val_top5": correct5 / total if n > 5 else None,
            "_per_class": [r / c if c else math.nan for r, c in zip(right_l, count_l)],
        }

    def fill_result(self, result: RunResult, tracker: EpochTracker) -> None:
        last = tracker.last
        if not last:
            return
        result.final_top1 = float(last["val_acc"])
        result.final_loss = float(last["val_loss"])
        top5 = last.get("val_top5")
        result.final_top5 = float(top5) if top5 is not None else None
        result.best_top1, result.best_epoch = tracker.best, tracker.best_epoch
        per_class = tracker.details.get("_per_class", [])
        result.per_class = {c: float(a) for c, a in zip(self.classes, per_class)}
        result.final_sets = {
            k.rsplit("/", 1)[0]: float(v) for k, v in last.items() if k.endswith("/val_acc")
        }


def _contrastive_task(config: FinetuneConfig) -> Task:
    from .contrastive import ContrastiveTask  # imports this module: loaded when chosen

    return ContrastiveTask.from_config(config)


TASKS: dict[str, Callable[[FinetuneConfig], Task]] = {
    "classify": ClassificationTask.from_config,
    "clip": _contrastive_task,
}
"""Task name (``task=``) -> the function that builds it from a config."""


def make_task(config: FinetuneConfig) -> Task:
    """The task ``config.task`` names.

    Raises:
        ConfigError: An unknown task name, with the valid ones.

    Example:
        >>> from layerlock.config import FinetuneConfig
        >>> make_task(FinetuneConfig()).name
        'classify'
    """
    try:
        build = TASKS[config.task]
    except KeyError:
        raise ConfigError(f"task {config.task!r} is not one of {', '.join(TASKS)}") from None
    return build(config)
