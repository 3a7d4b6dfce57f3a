"""Contrastive image-text fine-tuning of OpenCLIP models (``task=clip``).

:class:`ContrastiveTask` plugs into the recipe beside classification. It trains an OpenCLIP
model (CLIP, CustomTextCLIP, SigLIP; CoCa's contrastive part) on image-caption pairs with
OpenCLIP's own losses, and evaluates it the way open_clip_train does.

- **Data**: open_clip_train's CSVs (``data.csv_img_key`` ``filepath``,
  ``data.csv_caption_key`` ``title``, tab-separated), or a class-labelled set whose labels
  become captions through prompt templates (FLYP), or the embedded digit demo
  (:mod:`layerlock.data.clip_demo`).
- **Loss**: ``open_clip.loss.ClipLoss`` with global negatives under DDP
  (``gather_with_grad=True, local_loss=False``) or ``SigLipLoss``; the learnable
  ``logit_scale`` (and ``logit_bias``) are the model's.
- **Towers**: each tower follows its own schedule (``towers.visual`` / ``towers.text``, any
  schedule or ``locked``; ``unfreeze.schedule`` for both, with the presets ``lit`` and
  ``flyp``), with its own LR, weight decay and layer decay. The two schedules are merged
  into one schedule over all groups, driven by one :class:`~layerlock.unfreezer.Unfreezer`
  (one optimizer, one DDP wrapper rebuilt on every change, an exact resume): see
  :mod:`~layerlock.finetune.towers`.
- **Cache**: a tower locked for a whole stage is run once per sample and its embeddings are
  reused (LiT): :mod:`~layerlock.finetune.tower_cache`.
- **Evaluation** (every epoch and, by default, before training): image<->text retrieval and
  ``clip_val_loss`` on the validation pairs, zero-shot top-1 / top-5 on class-labelled sets,
  under open_clip_train's metric names (:mod:`~layerlock.finetune.retrieval`).

The names of those modules stay importable from here.

Example:
    >>> import torch
    >>> image = torch.eye(3)
    >>> retrieval_metrics(image, image)["image_to_text_R@1"]
    1.0
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FinetuneConfig
from ..data import TrainVal, Transforms, model_transforms, open_clip_preprocess
from ..data.captions import CaptionDataset, caption_csv, load_templates, prompt_captions
from ..devices import autocast
from ..distributed import all_sum, gather_objects, is_distributed
from ..errors import ConfigError
from ..groups import LayerGroups
from ..unfreezer import Unfreezer
from .retrieval import retrieval_metrics, zero_shot_classifier
from .state import EpochTracker, RunResult
from .task import Batches, BatchStats, EvalSet, Placement, Task
from .tower_cache import TowerCaches
from .towers import (
    CLIP_PRESETS,
    LOCKED,
    TOWERS,
    combined_schedule,
    pair_schedules,
    tower_plans,
    tower_schedules,
    tower_unfreezer,
)

__all__ = [
    "CLIP_PRESETS",
    "LOCKED",
    "TOWERS",
    "ContrastiveTask",
    "TowerCaches",
    "clip_outputs",
    "combined_schedule",
    "contrastive_loss",
    "pair_schedules",
    "retrieval_metrics",
    "tower_plans",
    "tower_schedules",
    "tower_unfreezer",
    "zero_shot_classifier",
]


# -- loss --------------------------------------------------------------------------------
def clip_outputs(output: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """``(image_features, text_features, logit_scale, logit_bias or None)`` of a model call."""
    if isinstance(output, Mapping):
        return (
            output["image_features"],
            output["text_features"],
            output["logit_scale"],
            output.get("logit_bias"),
        )
    bias = output[3] if len(output) > 3 and torch.is_tensor(output[3]) else None
    return output[0], output[1], output[2], bias


def contrastive_loss(kind: str, *, rank: int = 0, world: int = 1) -> nn.Module:
    """OpenCLIP's loss as open_clip_train builds it: global negatives across ranks.

    Args:
        kind: ``clip`` (``ClipLoss(gather_with_grad=True, local_loss=False)``) or ``siglip``.
        rank: This process's rank.
        world: Number of processes.

    Example:
        >>> type(contrastive_loss("clip")).__name__
        'ClipLoss'
    """
    from open_clip.loss import ClipLoss, SigLipLoss

    if kind == "siglip":
        return SigLipLoss(rank=rank, world_size=world)
    return ClipLoss(
        local_loss=False, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world
    )


# -- metrics -----------------------------------------------------------------------------
def _root(batches: Any) -> Any:
    """The dataset under a DataLoader and Subsets (holds ``classes`` and ``templates``)."""
    ds = getattr(batches, "dataset", batches)
    while not hasattr(ds, "classes") and hasattr(ds, "dataset"):
        ds = ds.dataset
    return ds


# -- the task ----------------------------------------------------------------------------
class ContrastiveTask(Task):
    """Contrastive image-text fine-tuning (``task=clip``): see the module docstring.

    Args:
        config: The run's config (data keys, templates, loss, towers).
    """

    name = "clip"
    best_metric = "image_to_text_R@1"
    eval_at_start = True
    set_metric = "zeroshot-val-top1"
    cache_type = TowerCaches

    def __init__(self, config: FinetuneConfig) -> None:
        self.config = config
        self.classes: list[str] = []
        self.templates = load_templates(
            config.data.templates or ("digits" if config.data.source == "demo" else "simple")
        )
        self.tokenizer: Callable[[list[str]], torch.Tensor] | None = None
        self.model_name = ""
        self.loss_kind = config.towers.loss
        self._loss: nn.Module | None = None

    @classmethod
    def from_config(cls, config: FinetuneConfig) -> ContrastiveTask:
        """The task of a ``task=clip`` run."""
        return cls(config)

    # -- data and model ---------------------------------------------------------------------
    def load_data(self, config: FinetuneConfig) -> TrainVal:
        d = config.data
        if d.source == "demo":
            from ..data.clip_demo import demo_caption_data

            demo = demo_caption_data(config.run.seed, d.shots_per_class)
            self.classes = demo.classes
            self.data = TrainVal(demo.train, demo.val, demo.classes)
        elif d.source == "csv" and _has_column(d.train_csv, d.csv_caption_key, d.csv_separator):
            self.data = TrainVal(self._caption_csv(d.train_csv), self._caption_csv(d.val_csv), [])
        elif d.source in ("csv", "folder"):
            from ..data import load_train_val

            identity = Transforms(lambda img: img, lambda img: img, "RGB")
            labelled = load_train_val(
                d.source, transforms=identity, options=d, seed=config.run.seed
            )
            self.classes = list(labelled.classes)
            self.data = TrainVal(
                self._prompts(labelled.train), self._prompts(labelled.val), self.classes
            )
        else:
            raise ConfigError(
                f"task=clip reads data=csv (open_clip_train's caption CSVs, or a CSV of labels), "
                f"data=folder (class prompts) or data=demo; got data={d.source}"
            )
        return self.data

    def _caption_csv(self, path: Any) -> CaptionDataset:
        d = self.config.data
        return caption_csv(
            path,
            img_key=d.csv_img_key,
            caption_key=d.csv_caption_key,
            sep=d.csv_separator,
            bad_images=d.bad_images,
        )

    def _prompts(self, labelled: Any) -> CaptionDataset:
        paths = [p for p, _ in labelled.samples]
        labels = [int(y) for _, y in labelled.samples]
        skipped = getattr(labelled, "skipped", [])
        return prompt_captions(paths, labels, self.classes, self.templates, skipped=skipped)

    def build_model(
        self, config: FinetuneConfig
    ) -> tuple[nn.Module, list[str], LayerGroups | None]:
        m = config.model
        notes: list[str] = []
        if m.name == "demo":
            from ..data.clip_demo import DEMO_CLIP_NAME, load_demo_clip

            model = load_demo_clip()
            self.model_name = DEMO_CLIP_NAME
            notes.append("the CLIP demo model, pretrained contrastively on digits 0-4")
        else:
            from ..models import build_model, parse_spec

            family, name = parse_spec(m.name)
            if family != "open_clip":
                raise ConfigError(
                    f"task=clip trains OpenCLIP models: model=open_clip:NAME (or demo); got {m.name}"
                )
            model = build_model(m.name, pretrained=m.pretrained)
            self.model_name = name
        if m.checkpoint:
            from ..runs import load_weights

            try:
                model.load_state_dict(load_weights(m.checkpoint))
            except RuntimeError as exc:
                raise ConfigError(
                    f"checkpoint {m.checkpoint} does not fit the model: {str(exc).splitlines()[0]}"
                ) from exc
            notes.append(f"weights loaded from {m.checkpoint}")
        if not (hasattr(model, "encode_image") and hasattr(model, "encode_text")):
            raise ConfigError(f"task=clip needs an image and a text tower; {m.name} has not both")
        if self.loss_kind == "auto":
            self.loss_kind = "siglip" if getattr(model, "logit_bias", None) is not None else "clip"
        notes.append(
            f"loss: {self.loss_kind} (OpenCLIP's {'SigLipLoss' if self.loss_kind == 'siglip' else 'ClipLoss'})"
        )
        return model, notes, None

    def transforms(self, model: nn.Module, config: FinetuneConfig) -> Transforms:
        import open_clip

        d = config.data
        preprocess = open_clip_preprocess(model.visual, d.augmentation)  # type: ignore[arg-type]
        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        for ds in (self.data.train, self.data.val):
            ds.tokenize(self.tokenizer)  # type: ignore[attr-defined]
        return model_transforms(
            preprocess=preprocess, deterministic_train=d.deterministic_train_transform
        )

    def eval_sets(self, config: FinetuneConfig, transforms: Transforms) -> dict[str, EvalSet]:
        """Zero-shot sets: ``eval.sets`` (folders / CSVs of labels, the demo's) and, on the
        demo, ``digits0-4`` (what the model knew) and ``digits5-9`` (what it learns)."""
        from ..data.evalsets import parse_eval_sets

        out: dict[str, EvalSet] = {}
        d = config.data
        if d.source == "demo":
            from ..data.clip_demo import demo_zero_shot_sets

            for name, zs in demo_zero_shot_sets(config.run.seed, d.shots_per_class).items():
                out[name] = EvalSet(zs, "classify")
        for name, source in parse_eval_sets(
            "" if config.eval.sets == "auto" else config.eval.sets
        ).items():
            if source.kind == "demo":
                if name not in out:
                    from ..data.clip_demo import demo_zero_shot_sets

                    out[name] = EvalSet(demo_zero_shot_sets()["digits5-9"], "classify")
                continue
            if source.kind not in ("folder", "csv"):
                raise ConfigError(
                    f"eval.sets: {name} ({source.kind}) is not supported by task=clip; "
                    "zero-shot sets are folders or CSVs of labelled images"
                )
            from ..data import csv_dataset, image_folder

            ds: Any
            if source.kind == "folder":
                ds = image_folder(source.location)
            else:
                ds = csv_dataset(
                    source.location,
                    img_key=d.csv_img_key,
                    label_key=d.csv_label_key,
                    sep=d.csv_separator,
                )
            ds.templates = self.templates  # type: ignore[attr-defined]
            out[name] = EvalSet(ds, "classify")
        for es in out.values():
            es.dataset.transform = transforms.eval  # type: ignore[attr-defined]
            es.dataset.mode = transforms.mode  # type: ignore[attr-defined]
        return out

    # -- training ---------------------------------------------------------------------------
    def make_unfreezer(self, model: nn.Module, config: FinetuneConfig, **kwargs: Any) -> Unfreezer:
        """One Unfreezer over both towers, each by its own schedule (:func:`tower_unfreezer`)."""
        return tower_unfreezer(model, config, **kwargs)

    def loss_fn(self) -> nn.Module:
        """The contrastive loss (built on first use, with this process's rank and world)."""
        if self._loss is None:
            rank, world = 0, 1
            if is_distributed():
                import torch.distributed as dist

                rank, world = dist.get_rank(), dist.get_world_size()
            self._loss = contrastive_loss(self.loss_kind, rank=rank, world=world)
        return self._loss

    def forward(self, net: nn.Module, inputs: Any, targets: Any) -> BatchStats:
        image, text, scale, bias = clip_outputs(net(inputs, targets))
        loss = self.loss_fn()(image, text, scale, bias)
        n = float(image.shape[0])
        return BatchStats(loss, {"seen": n, "logit_scale": float(scale.detach()) * n})

    def batch(self, output: Any, target: torch.Tensor) -> BatchStats:
        image, text, scale, bias = clip_outputs(output)
        n = float(image.shape[0])
        loss = self.loss_fn()(image, text, scale, bias)
        return BatchStats(loss, {"seen": n, "logit_scale": float(scale.detach()) * n})

    def step_columns(self, counts: Mapping[str, float]) -> dict[str, float]:
        return {"logit_scale": counts["logit_scale"] / max(counts["seen"], 1.0)}

    def train_columns(self, loss_sum: float, counts: Mapping[str, float]) -> dict[str, Any]:
        seen = counts.get("seen", 0.0)
        if not seen:
            return {"train_loss": None}
        return {"train_loss": loss_sum / seen, "logit_scale": counts["logit_scale"] / seen}

    # -- evaluation -------------------------------------------------------------------------
    def metrics(
        self, model: nn.Module, batches: Batches, on: Placement, kind: str
    ) -> dict[str, Any]:
        if kind == "classify":
            return self._zero_shot(model, batches, *on)
        return self._retrieval(model, batches, *on)

    def _retrieval(
        self, model: nn.Module, batches: Batches, device: torch.device, dtype: torch.dtype | None
    ) -> dict[str, Any]:
        images: list[torch.Tensor] = []
        texts: list[torch.Tensor] = []
        tokens: list[torch.Tensor | None] = []
        loss_sum = seen = 0.0
        scale = _logit_scale(model)
        for x, t in batches:
            x, t = x.to(device), t.to(device)
            with autocast(device, dtype):
                fi = model.encode_image(x, normalize=True).float()  # type: ignore[operator]
                ft = model.encode_text(t, normalize=True).float()  # type: ignore[operator]
            # open_clip_train's clip_val_loss: the batch's symmetric cross-entropy
            logits = scale * fi @ ft.T
            labels = torch.arange(len(fi), device=device)
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            loss_sum += float(loss) * len(fi)
            seen += len(fi)
            images.append(fi.cpu())
            texts.append(ft.cpu())
            tokens.append(t.cpu() if t.dtype in (torch.int64, torch.int32) else None)
        ids: torch.Tensor | None = None
        if tokens and all(v is not None for v in tokens):
            ids = torch.cat([v for v in tokens if v is not None])
        shares = gather_objects(
            (
                torch.cat(images) if images else torch.zeros(0, 1),
                torch.cat(texts) if texts else torch.zeros(0, 1),
                ids,
            )
        )
        loss_sum, seen = all_sum([loss_sum, seen], device)
        image = torch.cat([s[0] for s in shares])
        text = torch.cat([s[1] for s in shares])
        same = None
        token_shares = [s[2] for s in shares if s[2] is not None]
        if len(token_shares) == len(shares) and len(image):
            toks = torch.cat(token_shares)
            _, group = torch.unique(toks, dim=0, return_inverse=True)
            same = group[:, None] == group[None, :]
        out: dict[str, Any] = retrieval_metrics(image, text, same) if len(image) else {}
        out["clip_val_loss"] = loss_sum / max(seen, 1.0)
        out["num_samples"] = int(seen)
        return out

    def _zero_shot(
        self, model: nn.Module, batches: Batches, device: torch.device, dtype: torch.dtype | None
    ) -> dict[str, Any]:
        import open_clip

        root = _root(batches)
        classes = list(root.classes)
        templates = getattr(root, "templates", None) or self.templates
        tokenizer = self.tokenizer or open_clip.get_tokenizer(self.model_name)
        with autocast(device, dtype):
            weights = zero_shot_classifier(
                getattr(model, "encode_text"),  # noqa: B009
                tokenizer,
                classes,
                templates,
                device,  # type: ignore[arg-type]
            )
        top1 = top5 = total = 0.0
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            with autocast(device, dtype):
                f = model.encode_image(x, normalize=True).float()  # type: ignore[operator]
            logits = f @ weights
            top1 += float((logits.argmax(-1) == y).sum())
            k = min(5, len(classes))
            top5 += float((logits.topk(k, dim=-1).indices == y[:, None]).any(-1).sum())
            total += y.numel()
        top1, top5, total = all_sum([top1, top5, total], device)
        total = max(total, 1.0)
        return {
            "zeroshot-val-top1": top1 / total,
            "zeroshot-val-top5": top5 / total if len(classes) > 5 else None,
        }

    def fill_result(self, result: RunResult, tracker: EpochTracker) -> None:
        last = tracker.last
        if not last:
            return
        if last.get(self.best_metric) is not None:
            result.final_top1 = float(last[self.best_metric])
        if last.get("image_to_text_R@5") is not None:
            result.final_top5 = float(last["image_to_text_R@5"])
        if last.get("clip_val_loss") is not None:
            result.final_loss = float(last["clip_val_loss"])
        result.best_top1, result.best_epoch = tracker.best, tracker.best_epoch


def _logit_scale(model: nn.Module) -> torch.Tensor:
    base = getattr(model, "model", model)
    scale = getattr(base, "logit_scale", None)
    return scale.exp().float() if scale is not None else torch.tensor(100.0)


def _has_column(path: Any, column: str, sep: str) -> bool:
    if not path or not Path(path).is_file():
        return True  # let the caption reader report it
    with Path(path).open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f, delimiter=sep), [])
    return column in header
