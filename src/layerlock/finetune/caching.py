"""The job's frozen-prefix feature caches: fill what the policy decided, serve it, log it.

At the first epoch of each schedule stage (and after a resume), with ``b`` the lowest
trainable group, :class:`JobCaches` asks :func:`layerlock.cache_policy.plan_stage`
whether the locked groups ``[0, b)`` are served from a
:class:`~layerlock.cache.FeatureCache` (training and evaluation features alike), fills
what was decided and logs one line why (stderr, ``cache.jsonl``, the summary). Never
cached: ``cache.mode=off``, ``b == 0``, a model without a split
(:func:`layerlock.split.split_model`), a random prefix in training mode (dropout /
drop-path with p > 0, BatchNorm without ``freeze_bn_stats``).

A cached epoch trains the suffix on stored features in exactly the batches the image
loader would give (same :class:`~layerlock.finetune.reproducible.EpochOrder`), so a
deterministic train transform gives the uncached run's weights up to float tolerance.
With a random train transform the cache holds ``cache.views`` fixed views per image, view
``v`` being the augmentation the uncached run draws in epoch ``v``; epoch ``e`` trains on
view ``e % views`` (a deliberate change: augmentations repeat). In stages where no prefix
can be cached, the preprocessed evaluation images are kept instead when they fit the
budget. Filling never moves the run's random streams and decisions depend on the plan
only, so resuming a cached run is as exact as an uncached one. Caches live in memory and
are dropped when the boundary moves or the run ends; a change of the locked weights,
BatchNorm buffers or preprocessing refills them.

With ``cache.dir`` the training features go to disk instead (one checked, atomically
published file per cache key: :mod:`layerlock.cache_file`) and a later run, or another
schedule of a ``compare``, whose key matches (same boundary, locked weights, preprocessing,
training images, seed and view) reuses them without a fill: the head-only stage of
``lp`` and of ``lp-ft`` share one file. A corrupt or partial file is filled again.

Under DistributedDataParallel each rank fills a contiguous block of the training set and
the blocks are exchanged (every rank then holds all features, for the order
:class:`~layerlock.finetune.reproducible.EpochOrder` gives it), so a fill takes about
``1 / world`` of the time; each rank fills the evaluation features of its own share. The
cached suffix trains through its own DDP wrapper: its gradients are averaged like the
uncached model's, and the decisions are rank 0's, so every rank fills the same caches.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from .. import distributed
from ..cache import FeatureCache, prefix_output
from ..cache_policy import StageCachePlan, describe_bytes, plan_stage
from ..data import dataset_len
from ..data.identity import dataset_digest
from ..devices import autocast
from ..lock import frozen_bn_modules
from ..split import Split, SuffixModule, split_model, split_reason
from .cache_base import BaseCaches, Evaluate
from .reproducible import EpochOrder, SeededSamples, rng_state, set_rng_state

__all__ = ["CACHE_LOG_FILE", "JobCaches"]

CACHE_LOG_FILE = "cache.jsonl"


def prefix_randomness(split: Split, frozen_bn: set[str]) -> str | None:
    """Why the locked prefix, run in training mode, is not a function of its input (or None).

    The cache is filled in eval mode; it may stand in for the training-mode prefix only when
    both give the same output: no dropout / drop-path with p > 0, no BatchNorm that updates
    (and normalises with) batch statistics, no parameter that still trains.
    """
    trainable = [n for n, p in split.prefix_params() if p.requires_grad]
    if trainable:
        return f"parameter {trainable[0]} of a locked group still trains"
    names = {id(m): n for n, m in split.model.named_modules()}
    for top in split.prefix_modules():
        for m in top.modules():
            name = names.get(id(m), type(m).__name__)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if name not in frozen_bn or not m.track_running_stats:
                    return (
                        f"BatchNorm {name} in the locked groups updates its statistics in "
                        "training (set freeze_bn_stats=true to cache)"
                    )
            elif "drop" in type(m).__name__.lower():
                for attr in ("p", "drop_prob", "prob", "drop_rate"):
                    value = getattr(m, attr, None)
                    if isinstance(value, (int, float)) and value > 0:
                        return (
                            f"{type(m).__name__} {name} (p={value:g}) in the locked groups is "
                            "random in training"
                        )
    return None


class _FeatureBatches(Dataset):
    """Batches of cached features by index list (served through a DataLoader like images)."""

    def __init__(self, cache: FeatureCache) -> None:
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(index, dtype=torch.long)
        return self.cache.features[idx].float(), self.cache.labels[idx]


class _StoredBatches(Dataset):
    """Batches of stored tensors by index list."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(index, dtype=torch.long)
        return self.x[idx], self.y[idx]


@dataclass
class _StageCaches:
    """The caches filled for one schedule stage (one unlock event of the plan)."""

    index: int
    boundary: int
    split: Split | None = None
    train: list[FeatureCache] = field(default_factory=list)
    val: FeatureCache | None = None
    #: The suffix's DDP wrapper (built at the stage's first cached epoch, multi-rank only).
    ddp: nn.Module | None = None


class JobCaches(BaseCaches):
    """The feature caches of the schedule stage in force (the locked prefix's).

    Args: as :class:`~layerlock.finetune.cache_base.BaseCaches`.
    """

    stage: _StageCaches | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._digests: dict[str, str] = {}

    # -- decisions -----------------------------------------------------------------------
    def begin_epoch(self, epoch: int, first_step: int) -> None:
        """Decide (once per stage), check the caches are still valid, fill them."""
        plan = self.unfreezer.plan
        ei = self.unfreezer.event_at(first_step)
        if self.stage is not None and self.stage.index == ei:
            # the views share the split and the preprocessing: checking one checks all
            val = [self.stage.val] if self.stage.val is not None else []
            stale = next(
                (r for r in (c.stale_reason() for c in self.stage.train[:1] + val) if r), None
            )
            if stale is None:
                return
            self._drop()
            self.stage = self._decide(ei, epoch, first_step, f"refilled: {stale}")
            return
        dropped = None
        if self.stage is not None and (self.stage.train or self.stage.val is not None):
            dropped = (
                f"dropped the group-{self.stage.boundary} cache: the boundary moved "
                f"(unlock at step {plan.events[ei].step})"
            )
        self._drop()  # free the old features before filling new ones
        self.stage = self._decide(ei, epoch, first_step, dropped)

    def _blocked(self, boundary: int, split: Split | None) -> str | None:
        """Why no prefix of this stage can be cached (the mechanism's facts), or None."""
        groups = self.unfreezer.groups
        if self.unfreezer.sharded:
            return "FSDP2: the locked prefix is sharded; training uncached"
        if boundary == 0:
            return "nothing is locked below the lowest trainable group (boundary 0)"
        if boundary >= len(groups):
            return "every group is locked: nothing trains"
        if split is None:
            return split_reason(self.unfreezer.base, groups, boundary)
        return prefix_randomness(split, set(frozen_bn_modules(self.unfreezer.base)))

    def _decide(self, ei: int, epoch: int, first_step: int, note: str | None) -> _StageCaches:
        plan, groups, mode = self.unfreezer.plan, self.unfreezer.groups, self.options.mode
        event = plan.events[ei]
        start, end = self._stage_span(ei)
        boundary = min(event.trainable) if event.trainable else len(groups)
        split = None
        if mode != "off" and not self.unfreezer.sharded and 0 < boundary < len(groups):
            split = split_model(self.unfreezer.base, groups, boundary)
        stage_epochs = (end - start) / self.spe
        evals = end // self.spe - start // self.spe
        # the kept evaluation images (earlier stages) count against the budget too
        budget = self.options.budget_mb * 2**20 - self.nbytes(None)
        blocked = None if mode == "off" else self._blocked(boundary, split)
        per = self._feature_bytes(split) if blocked is None and split is not None else 0
        decided = plan_stage(
            mode,
            groups,
            boundary,
            stage_epochs=stage_epochs,
            evals=evals,
            train_bytes=dataset_len(self.train_set) * per,
            val_bytes=dataset_len(self.val_set) * per,
            budget=budget,
            blocked=blocked,
            deterministic=self.deterministic,
            views=self.options.views,
        )
        # rank 0 decides for all: the fills are collective (sizes may differ by a sample)
        decided = distributed.broadcast_object(decided)
        stage = _StageCaches(ei, boundary, split if decided.blocked is None else None)
        record = self._record(
            epoch,
            first_step,
            stage_epochs,
            boundary=boundary,
            boundary_group=groups[boundary].name if boundary < len(groups) else None,
        )
        if note:
            record["note"] = note
        fill = self._fill_stage(stage, decided) if decided.blocked is None else 0.0
        built = stage.train + ([stage.val] if stage.val is not None else [])
        record.update(
            fills=sum(not c.reused for c in built),
            reused=sum(c.reused for c in built),
            rejected="; ".join(c.rejected for c in built if c.rejected),
            train_cached=bool(stage.train),
            eval_cached=stage.val is not None,
            views=len(stage.train),
            bytes=self.nbytes(stage),
            fill_s=fill,
            reason=self._train_reason(decided),
        )
        if decided.blocked is None:
            record.update(train_reason=record["reason"], eval_reason=decided.eval.reason)
        left = budget - sum(c.nbytes for c in stage.train)
        inputs = self._keep_inputs(evals, left) if stage.val is None else None
        if inputs:
            record["eval_inputs"] = inputs
        self._log(record, self._line(record, decided, epoch, inputs, note))
        return stage

    def _fill_stage(self, stage: _StageCaches, decided: StageCachePlan) -> float:
        """Fill the caches ``decided`` asks for, without moving the run's random streams."""
        if not (decided.train.cache or decided.eval.cache):
            return 0.0
        assert stage.split is not None
        state = rng_state()
        start = time.perf_counter()
        try:
            with autocast(self.device, self.dtype):
                if decided.train.cache:
                    views = decided.views
                    stage.train = [self._fill(stage.split, v, views) for v in range(views)]
                if decided.eval.cache:
                    stage.val = self._fill(stage.split, None, 1)
        finally:
            set_rng_state(state)
        fill = time.perf_counter() - start
        self.fill_s += fill
        return fill

    def _line(
        self,
        record: dict[str, Any],
        decided: StageCachePlan,
        epoch: int,
        inputs: str | None,
        note: str | None,
    ) -> str:
        """The decision's log line, rendered from the decision."""
        where = f"cache (epoch {epoch + 1}, stage of {record['stage_epochs']:g} epoch(s))"
        if decided.blocked is not None:
            why = decided.blocked
            line = f"{where}: uncached: {why}"
            if self.options.mode == "on":
                line = f"{where}: cache=on is not possible, training uncached: {why}"
        else:
            train_why = self._train_reason(decided)
            line = (
                f"{where}, locked below {record['boundary_group']}: "
                f"train {'cached' if decided.train.cache else 'uncached'} ({train_why}); "
                f"eval {'cached' if decided.eval.cache else 'uncached'} ({decided.eval.reason})"
            )
        if inputs:
            line += f"; eval {inputs}"
        if record["reused"]:
            line += f"; {record['reused']} cache(s) reused from {self.options.dir} (no fill)"
        if record["fills"]:
            line += f"; filled {describe_bytes(record['bytes'])} in {record['fill_s']:.2f} s"
        if record.get("rejected"):
            line += f" (a file in {self.options.dir} was rebuilt: {record['rejected']})"
        if note:
            line += f" ({note})"
        return line

    def _train_reason(self, decided: StageCachePlan) -> str:
        if decided.train.cache and not self.deterministic:
            return (
                f"{decided.train.reason}; {decided.views} fixed augmented view(s) per image, "
                f"epoch e trains on view e % {decided.views}"
            )
        return decided.train.reason

    def _keep_inputs(self, evals: int, budget: int) -> str | None:
        """Keep the preprocessed evaluation images when no prefix cache serves the evaluation.

        The evaluation transform is deterministic, so its output can be stored once (in its
        own dtype: evaluation stays bit-identical) and reused by every later evaluation.
        Returns a note for the decision line, or None when nothing is said.
        """
        if self.inputs is not None:
            return "from the preprocessed images kept earlier"
        if self.options.mode == "off" or self.world > 1 or evals < 2:
            return None  # one evaluation pays nothing back
        x, _ = self.val_set[0]
        x = torch.as_tensor(x)
        need = dataset_len(self.val_set) * x.numel() * x.element_size()
        if need > budget:
            return (
                f"preprocessed images not kept: {describe_bytes(need)} over the "
                f"{describe_bytes(budget)} left of the budget"
            )
        state = rng_state()
        start = time.perf_counter()
        try:
            loader = DataLoader(
                self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.workers
            )
            xs, ys = zip(*loader)
            self.inputs = (torch.cat(xs), torch.cat(ys))
        finally:
            set_rng_state(state)
        self.fill_s += time.perf_counter() - start
        return f"from preprocessed images kept in memory ({describe_bytes(need)})"

    def _feature_bytes(self, split: Split) -> int:
        x, _ = self.val_set[0]
        state = rng_state()
        try:
            with autocast(self.device, self.dtype):
                out = prefix_output(split, torch.as_tensor(x).unsqueeze(0).to(self.device))
        finally:
            set_rng_state(state)
        return int(out[0].numel()) * torch.empty((), dtype=self.store).element_size()

    def _fill(self, split: Split, view: int | None, views: int) -> FeatureCache:
        if view is None:
            dataset: Any = self.val_set
            key = f"val:{dataset_len(self.val_set)}"
        else:
            dataset = SeededSamples(self.train_set, self.seed)
            dataset.epoch = view  # view v = the augmentation the uncached run draws in epoch v
            # view v's content does not depend on how many views are kept
            key = f"train:{len(dataset)}:seed {self.seed}:view {view}"
        where = self.options.dir
        if where is not None:  # on disk, the key must name the images, not just count them
            key += f":data {self._digest(view is None)}"
        return FeatureCache(
            split,
            dataset,
            dtype=self.store,
            budget_bytes=2**62,  # checked by the decision, for all caches together
            storage="memory" if where is None else "mmap",
            dir=where,
            views=1,
            batch_size=self.batch_size,
            num_workers=self.workers,
            seed=self.seed,
            dataset_key=key,
            device=self.device,
            # each rank evaluates its own share; the training set is filled by all ranks
            across_ranks=view is not None and self.world > 1,
        )

    def _digest(self, val: bool) -> str:
        """Digest of the training images or of this rank's evaluation images (computed once)."""
        name = "val" if val else "train"
        if name not in self._digests:
            self._digests[name] = dataset_digest(self.val_set if val else self.train_set)
        return self._digests[name]

    # -- serving -------------------------------------------------------------------------
    def train_epoch(self, epoch: int, first_step: int) -> bool:
        """Whether this epoch trains from the cache (no unlock inside it)."""
        stage = self.stage
        if stage is None or not stage.train:
            return False
        last = self._last_step(epoch)
        event_at = self.unfreezer.event_at
        return event_at(min(first_step, last)) == event_at(last) == stage.index

    def train_batches(self, epoch: int, order: EpochOrder) -> Iterator[tuple[Any, Any]]:
        """The epoch's batches (same samples, same order as the image loader) as features."""
        assert self.stage is not None
        cache = self.stage.train[epoch % len(self.stage.train)]
        return self._serve(_FeatureBatches(cache), order)

    def suffix(self) -> nn.Module:
        """The module that trains on cached features (the split's suffix).

        Under DDP, its own DistributedDataParallel wrapper (built once per stage, on every
        rank at the same epoch): the suffix's trainable parameters are all the model's
        trainable parameters, so averaging their gradients keeps the replicas identical,
        as the model's wrapper does in uncached epochs.
        """
        stage = self.stage
        assert stage is not None and stage.split is not None
        if self.world == 1:
            return SuffixModule(stage.split)
        if stage.ddp is None:
            kwargs: dict[str, Any] = {}
            if self.device.type == "cuda":
                kwargs["device_ids"] = [self.device.index]
            stage.ddp = distributed.wrap_ddp(SuffixModule(stage.split), **kwargs)
        return stage.ddp

    def evaluate(self, epoch: int, evaluate: Evaluate) -> tuple[dict[str, Any] | None, str]:
        """Evaluate from the cached features (still valid) or the kept images.

        Args:
            epoch: The epoch just trained (0-based).
            evaluate: ``evaluate(model, batches)`` of the task.

        Returns:
            ``(metrics, "features" | "images")``, or ``(None, "")``: evaluate uncached.
        """
        stage = self.stage
        if stage is not None and stage.val is None and self.inputs is not None:
            images = _StoredBatches(*self.inputs)
            loader = self._batches(images)
            return evaluate(self.unfreezer.base, loader), "images"
        if stage is None or stage.val is None or stage.split is None:
            return None, ""
        last = self._last_step(epoch)
        if self.unfreezer.event_at(last) != stage.index and stage.val.stale_reason() is not None:
            return None, ""  # groups of the prefix were unlocked and trained during the epoch
        # a DataLoader, like the image loader, so that both draw the same random numbers
        loader = self._batches(_FeatureBatches(stage.val))
        return evaluate(SuffixModule(stage.split), loader), "features"

    def _batches(self, data: Dataset) -> DataLoader:
        sampler = BatchSampler(
            SequentialSampler(range(dataset_len(data))),
            self.batch_size,
            drop_last=False,
        )
        return DataLoader(data, batch_size=None, sampler=sampler)

    def nbytes(self, stage: _StageCaches | None) -> int:
        """Bytes held by the caches of ``stage`` and the kept evaluation images."""
        held = sum(t.numel() * t.element_size() for t in self.inputs or ())
        if stage is None:
            return int(held)
        caches = stage.train + ([stage.val] if stage.val is not None else [])
        return int(held + sum(c.nbytes for c in caches))

    def close(self) -> None:
        """Drop the caches."""
        self._drop()

    def _drop(self) -> None:
        if self.stage is not None and self.stage.ddp is not None:
            distributed.unhook_ddp(self.stage.ddp)
        self.stage = None
