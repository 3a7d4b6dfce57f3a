"""The locked-tower embedding cache of ``task=clip`` (LiT): :class:`TowerCaches`.

A tower locked for a whole stage of the merged tower schedule is run once per sample and its
embeddings are reused; :class:`CachedTowers` serves them in place of the tower.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from ..cache_policy import describe_bytes
from ..data import dataset_len
from ..devices import autocast
from .cache_base import BaseCaches
from .reproducible import EpochOrder, SeededSamples, rng_state, set_rng_state
from .towers import TOWERS

__all__ = ["CachedTowers", "TowerCaches", "tower_randomness"]


class CachedTowers(nn.Module):
    """The model with locked towers served from cached embeddings.

    ``forward(image, text)`` takes embeddings for a cached tower and inputs for the other, and
    returns what the model's forward returns (normalised features, ``logit_scale.exp()``,
    ``logit_bias``); ``encode_image`` / ``encode_text`` likewise, for evaluation.
    """

    def __init__(self, model: nn.Module, *, visual: bool, text: bool) -> None:
        super().__init__()
        self.model = model
        self.visual, self.text = visual, text

    def encode_image(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if self.visual:
            return x.float()
        return self.model.encode_image(x, normalize=normalize)  # type: ignore[operator]

    def encode_text(self, t: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if self.text:
            return t.float()
        return self.model.encode_text(t, normalize=normalize)  # type: ignore[operator]

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[Any, ...]:
        out: tuple[Any, ...] = (
            self.encode_image(image),
            self.encode_text(text),
            self.model.logit_scale.exp(),  # type: ignore[operator]
        )
        bias = getattr(self.model, "logit_bias", None)
        return (*out, bias) if bias is not None else out


def _tower_modules(model: nn.Module, tower: str) -> list[nn.Module]:
    if tower == "visual":
        return [model.visual]  # type: ignore[list-item]
    if hasattr(model, "text"):
        return [model.text]  # type: ignore[list-item]
    names = ("token_embedding", "transformer", "ln_final")
    return [getattr(model, n) for n in names if isinstance(getattr(model, n, None), nn.Module)]


def tower_randomness(model: nn.Module, tower: str) -> str | None:
    """Why a tower's training-mode output is not a function of its input (or None)."""
    for top in _tower_modules(model, tower):
        for name, m in top.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
                return f"BatchNorm {name} of the {tower} tower updates its statistics in training"
            if "drop" in type(m).__name__.lower():
                for attr in ("p", "prob", "drop_prob"):
                    value = getattr(m, attr, None)
                    if isinstance(value, (int, float)) and value > 0:
                        return f"{type(m).__name__} {name} (p={value:g}) of the {tower} tower is random"
    return None


class _Batches(Dataset):
    """Items by index lists: ``(image embeddings or images, text embeddings or tokens)``."""

    def __init__(
        self,
        images: Callable[[list[int]], torch.Tensor],
        texts: Callable[[list[int]], torch.Tensor],
    ) -> None:
        self.images, self.texts = images, texts

    def __getitem__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images(index), self.texts(index)


class TowerCaches(BaseCaches):
    """Embeddings of the towers locked in the current stage, computed once (LiT).

    The same interface as :class:`~layerlock.finetune.caching.JobCaches`. At the first epoch
    of each stage of the merged schedule, a tower with no trainable group is cached when the
    stage lasts at least two epochs (``cache.mode=auto``; ``on``: always; ``off``: never):
    the image tower over ``cache.views`` fixed augmented views of each training image (view
    ``v`` is the augmentation the uncached run draws in epoch ``v``; epoch ``e`` trains on
    view ``e % views``; one view under a deterministic transform) and the evaluation images;
    the text tower (deterministic) over the training and evaluation captions. Never cached:
    under DDP, or a tower that is random in training (dropout, BatchNorm). Each decision is
    logged, with its reason, like the prefix cache's.
    """

    stage: dict[str, Any] | None

    # -- decisions ---------------------------------------------------------------------------
    def begin_epoch(self, epoch: int, first_step: int) -> None:
        plan = self.unfreezer.plan
        ei = plan.event_index(min(first_step, plan.total_steps - 1))
        if self.stage is not None and self.stage["index"] == ei:
            return
        self.stage = None
        self.stage = self._decide(ei, epoch, first_step)

    def _decide(self, ei: int, epoch: int, first_step: int) -> dict[str, Any]:
        plan, groups, mode = self.unfreezer.plan, self.unfreezer.groups, self.options.mode
        trainable = plan.events[ei].trainable
        first, end = self._stage_span(ei)
        stage_epochs = (end - first) / self.spe
        locked = [t for t in TOWERS if not set(groups.tower_indices(t)) & trainable]
        stage: dict[str, Any] = {"index": ei, "train": {}, "val": {}, "views": 0}
        why: str | None = None
        if mode == "off":
            why = "cache=off"
        elif not locked:
            why = "both towers train"
        elif self.world > 1:
            why = "DistributedDataParallel: cached towers would bypass its gradient averaging"
        elif mode == "auto" and stage_epochs < 2:
            why = f"the stage lasts {stage_epochs:g} epoch(s): a cache would not pay back"
        else:
            random = [r for r in (tower_randomness(self.unfreezer.base, t) for t in locked) if r]
            why = random[0] if random else None
        record = self._record(epoch, first_step, stage_epochs, locked_towers=locked)
        where = f"cache (epoch {epoch + 1}, stage of {stage_epochs:g} epoch(s))"
        if why is not None:
            record["reason"] = why
            line = f"{where}: towers uncached: {why}"
        else:
            start = time.perf_counter()
            state = rng_state()
            try:
                self._fill(stage, locked)
            finally:
                set_rng_state(state)
            fill = time.perf_counter() - start
            self.fill_s += fill
            nbytes = self.nbytes(stage)
            record.update(
                train_cached=True, eval_cached=True, views=stage["views"], bytes=nbytes, fill_s=fill
            )
            names = {"visual": "image", "text": "text"}
            parts = [
                f"{names[t]} tower locked: its embeddings computed once"
                + (
                    f" ({stage['views']} fixed augmented view(s) per image, epoch e trains on view e % {stage['views']})"
                    if t == "visual" and not self.deterministic
                    else ""
                )
                for t in locked
            ]
            trains = [names[t] for t in TOWERS if t not in locked]
            line = (
                f"{where}: {'; '.join(parts)}; {' and '.join(trains) or 'no'} tower trains; "
                f"filled {describe_bytes(nbytes)} in {fill:.2f} s"
            )
            record["reason"] = "; ".join(parts)
        self._log(record, line)
        return stage

    def _encode(
        self, fn: Callable[[torch.Tensor], torch.Tensor], data: Dataset, part: int
    ) -> torch.Tensor:
        loader = DataLoader(
            data, batch_size=self.batch_size, shuffle=False, num_workers=self.workers
        )
        out = []
        with torch.no_grad(), autocast(self.device, self.dtype):
            for item in loader:
                out.append(fn(item[part].to(self.device)).float().to(self.store).cpu())
        return torch.cat(out)

    def _fill(self, stage: dict[str, Any], locked: list[str]) -> None:
        model = self.unfreezer.base
        encode_image = getattr(model, "encode_image")  # noqa: B009
        encode_text = getattr(model, "encode_text")  # noqa: B009
        was = model.training
        model.eval()
        try:
            if "visual" in locked:
                views = 1 if self.deterministic else self.options.views
                stage["views"] = views
                per_view = []
                for v in range(views):
                    samples = SeededSamples(self.train_set, self.seed)
                    samples.epoch = v  # view v = the augmentation the uncached run draws in epoch v
                    per_view.append(
                        self._encode(lambda x: encode_image(x, normalize=True), samples, 0)
                    )
                stage["train"]["visual"] = per_view
                stage["val"]["visual"] = self._encode(
                    lambda x: encode_image(x, normalize=True), self.val_set, 0
                )
            if "text" in locked:
                tokens = self.train_set.tokens  # type: ignore[attr-defined]
                encode = lambda t: encode_text(t, normalize=True)  # noqa: E731
                stage["train"]["text"] = self._encode(encode, _Rows(tokens), 0)
                stage["val"]["text"] = self._encode(encode, self.val_set, 1)
        finally:
            model.train(was)

    # -- serving ------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, first_step: int) -> bool:
        stage = self.stage
        if stage is None or not stage["train"]:
            return False
        plan = self.unfreezer.plan
        last = self._last_step(epoch)
        return plan.event_index(min(first_step, last)) == plan.event_index(last) == stage["index"]

    def train_batches(self, epoch: int, order: EpochOrder) -> Iterator[tuple[Any, Any]]:
        assert self.stage is not None
        cached = self.stage["train"]
        if "visual" in cached:
            views = cached["visual"]
            feats = views[epoch % len(views)]
            images: Callable[[list[int]], torch.Tensor] = lambda idx: feats[idx].float()  # noqa: E731
        else:
            samples = SeededSamples(self.train_set, self.seed)
            samples.epoch = epoch
            images = lambda idx: torch.stack([samples[i][0] for i in idx])  # noqa: E731
        if "text" in cached:
            texts: Callable[[list[int]], torch.Tensor] = lambda idx: cached["text"][idx].float()  # noqa: E731
        else:
            tokens = self.train_set.tokens  # type: ignore[attr-defined]
            texts = lambda idx: tokens[idx]  # noqa: E731
        return self._serve(_Batches(images, texts), order)

    def suffix(self) -> nn.Module:
        assert self.stage is not None
        cached = self.stage["train"]
        return CachedTowers(self.unfreezer.base, visual="visual" in cached, text="text" in cached)

    def evaluate(
        self, epoch: int, evaluate: Callable[[nn.Module, Any], dict[str, Any]]
    ) -> tuple[dict[str, Any] | None, str]:
        stage = self.stage
        if stage is None or not stage["val"] or epoch < 0:
            return None, ""
        if self.unfreezer.plan.event_index(self._last_step(epoch)) != stage["index"]:
            return None, ""  # a cached tower was unlocked during the epoch
        val = stage["val"]
        rows = range(dataset_len(self.val_set))
        images = (
            (lambda idx: val["visual"][idx].float())
            if "visual" in val
            else (lambda idx: torch.stack([self.val_set[i][0] for i in idx]))
        )
        texts = (
            (lambda idx: val["text"][idx].float())
            if "text" in val
            else (lambda idx: torch.stack([torch.as_tensor(self.val_set[i][1]) for i in idx]))
        )
        sampler = BatchSampler(SequentialSampler(rows), self.batch_size, drop_last=False)
        loader = DataLoader(_Batches(images, texts), batch_size=None, sampler=sampler)
        model = CachedTowers(self.unfreezer.base, visual="visual" in val, text="text" in val)
        return evaluate(model, loader), "features"

    def nbytes(self, stage: dict[str, Any] | None) -> int:
        if stage is None:
            return 0
        tensors = [
            t
            for part in (stage["train"], stage["val"])
            for v in part.values()
            for t in (v if isinstance(v, list) else [v])
        ]
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def close(self) -> None:
        self.stage = None


class _Rows(Dataset):
    """The rows of a tensor as one-element items (``(row,)``)."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor]:
        return (self.rows[index],)
