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
  :func:`tower_unfreezer`.
- **Cache**: a tower locked for a whole stage is run once per sample and its embeddings are
  reused (LiT): :class:`TowerCaches`.
- **Evaluation** (every epoch and, by default, before training): image<->text retrieval and
  ``clip_val_loss`` on the validation pairs, zero-shot top-1 / top-5 on class-labelled sets,
  under open_clip_train's metric names.

Example:
    >>> import torch
    >>> image = torch.eye(3)
    >>> retrieval_metrics(image, image)["image_to_text_R@1"]
    1.0
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from ..adapters import MODEL_LEVEL
from ..cache_policy import describe_bytes
from ..config import CacheOptions, FinetuneConfig
from ..data import TrainVal, Transforms, dataset_len, model_transforms, open_clip_preprocess
from ..data.captions import CaptionDataset, caption_csv, load_templates, prompt_captions
from ..devices import autocast
from ..distributed import all_sum, gather_objects, is_distributed
from ..errors import ConfigError
from ..groups import LayerGroups, layer_groups
from ..optim import NO_DECAY_SUFFIX, group_multipliers, layer_group_of
from ..schedule import ResolvedSchedule, Schedule, Stage, resolve_schedule
from ..unfreezer import Unfreezer
from .reproducible import EpochOrder, SeededSamples, rng_state, set_rng_state
from .state import EpochTracker, RunResult
from .task import Batches, BatchStats, EvalSet, Task

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

TOWERS = ("visual", "text")
#: A tower schedule under which the tower never trains.
LOCKED = "locked"
#: Presets of ``unfreeze.schedule`` for ``task=clip``: (image tower, text tower).
CLIP_PRESETS: dict[str, tuple[str, str]] = {
    # LiT (Zhai et al. 2022): the image tower locked, the text tower trained
    "lit": (LOCKED, "full"),
    # FLYP (Goyal et al. 2023): both towers, contrastively, on class-prompt captions
    "flyp": ("full", "full"),
}
RETRIEVAL_KS = (1, 5, 10)


# -- tower schedules ---------------------------------------------------------------------
def tower_schedules(config: FinetuneConfig) -> dict[str, str]:
    """Each tower's schedule text: ``towers.<tower>``, else ``unfreeze.schedule`` (presets expanded).

    Example:
        >>> from layerlock.config import load_config
        >>> tower_schedules(load_config(overrides=["task=clip", "unfreeze=lit"]))
        {'visual': 'locked', 'text': 'full'}
        >>> tower_schedules(load_config(overrides=["task=clip", "unfreeze=gradual", "towers.text=lp"]))
        {'visual': 'gradual', 'text': 'lp'}
    """
    return pair_schedules(str(config.unfreeze.schedule), config.towers.visual, config.towers.text)


def pair_schedules(base: str, visual: str | None = None, text: str | None = None) -> dict[str, str]:
    """Each tower's schedule: its own if given, else ``base`` (``lit`` / ``flyp`` expanded).

    Example:
        >>> pair_schedules("flyp", text="gradual")
        {'visual': 'full', 'text': 'gradual'}
    """
    v, t = CLIP_PRESETS.get(base, (base, base))
    return {"visual": visual or v, "text": text or t}


def _check_two_towers(groups: LayerGroups) -> None:
    missing = [t for t in TOWERS if not groups.tower_indices(t)]
    if missing:
        towers = [str(t) for t in groups.towers if t not in (None, MODEL_LEVEL)]
        raise ConfigError(
            "task=clip needs a two-tower OpenCLIP model (groups visual.* and text.*); this "
            f"model has {'towers ' + ', '.join(towers) if towers else 'one tower'}"
        )


def tower_plans(
    groups: LayerGroups, schedules: Mapping[str, str], epochs: int, steps_per_epoch: int
) -> dict[str, ResolvedSchedule | None]:
    """Resolve each tower's schedule on its own groups (``None``: the tower stays locked).

    Raises:
        ConfigError: A model without two towers, or both towers locked.
        ScheduleError: A schedule that does not fit its tower (naming the tower).
    """
    _check_two_towers(groups)
    plans: dict[str, ResolvedSchedule | None] = {}
    for tower in TOWERS:
        text = schedules[tower]
        plans[tower] = (
            None
            if text == LOCKED
            else resolve_schedule(text, groups, epochs, steps_per_epoch, tower=tower)
        )
    if all(p is None or not any(e.trainable for e in p.events) for p in plans.values()):
        raise ConfigError(
            "both towers are locked (towers.visual and towers.text): nothing would train; "
            "give one of them a schedule, e.g. unfreeze=lit"
        )
    return plans


def combined_schedule(
    groups: LayerGroups, plans: Mapping[str, ResolvedSchedule | None]
) -> Schedule:
    """One schedule over all groups, by step: each tower's trainable groups, plus the
    model-level group (``logit_scale``) whenever anything trains.

    Example:
        >>> import open_clip
        >>> from layerlock import layer_groups
        >>> clip = open_clip.CLIP(8, dict(image_size=16, patch_size=8, width=16, layers=1, head_width=8),
        ...                       dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1))
        >>> g = layer_groups(clip)
        >>> str(combined_schedule(g, tower_plans(g, {"visual": "locked", "text": "lp"}, 1, 2)))
        's0:text.proj,logit_scale'
    """
    steps = sorted({0} | {e.step for p in plans.values() if p is not None for e in p.events})
    model_level = set(groups.tower_indices(MODEL_LEVEL))
    stages = []
    for step in steps:
        chosen: set[int] = set()
        for plan in plans.values():
            if plan is not None:
                chosen |= plan.trainable_at(step)
        if chosen:
            chosen |= model_level
        names = [groups[i].name for i in sorted(chosen)]
        stages.append(Stage(step, ",".join(names) if names else "none"))
    return Schedule(stages=tuple(stages), unit="step")


def tower_rates(
    groups: LayerGroups, config: FinetuneConfig
) -> tuple[dict[str, float], dict[str, float]]:
    """Per layer group: LR multiplier (relative to ``unfreeze.lr``) and weight decay.

    Each tower's base LR (``towers.<tower>_lr``) and layer decay (``towers.<tower>_layer_decay``)
    give ``lr_tower / unfreeze.lr * layer_decay ** depth``; ``logit_scale`` keeps ``unfreeze.lr``.
    """
    u, t = config.unfreeze, config.towers
    mult: dict[str, float] = {}
    decay: dict[str, float] = {}
    for g in groups:
        mult[g.name], decay[g.name] = 1.0, u.weight_decay
    for tower in TOWERS:
        lr = getattr(t, f"{tower}_lr") or u.lr
        ld = getattr(t, f"{tower}_layer_decay") or u.layer_decay
        wd = getattr(t, f"{tower}_weight_decay")
        base = group_multipliers(groups, layer_decay=ld, discriminative=u.discriminative)
        for i in groups.tower_indices(tower):
            name = groups[i].name
            mult[name] = lr / u.lr * base[name]
            decay[name] = u.weight_decay if wd is None else wd
    return mult, decay


def tower_unfreezer(
    model: nn.Module,
    config: FinetuneConfig,
    *,
    epochs: int,
    steps_per_epoch: int,
    groups: LayerGroups | None = None,
    ddp_kwargs: dict[str, Any] | None = None,
) -> Unfreezer:
    """An Unfreezer that steers the two towers of a CLIP model, each by its own schedule.

    The towers' schedules become one schedule over every group (:func:`combined_schedule`),
    so one Unfreezer holds one optimizer and one DDP wrapper (rebuilt whenever either tower
    changes) and a checkpoint resumes both towers exactly. Per-tower LRs, weight decay and
    layer decay are set on its named param groups (:func:`tower_rates`).

    Attributes set on the result:
        tower_plans: Each tower's resolved schedule (``None``: locked), for display.

    Raises:
        ConfigError: A model without two towers, or both towers locked.
        ScheduleError: A tower schedule that does not fit its tower.
    """
    groups = groups if groups is not None else layer_groups(model, config.unfreeze.coarse)
    plans = tower_plans(groups, tower_schedules(config), epochs, steps_per_epoch)
    options = config.unfreeze.with_overrides(schedule=combined_schedule(groups, plans), tower=None)
    unfreezer = Unfreezer(
        model,
        options,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        groups=groups,
        ddp_kwargs=ddp_kwargs,
    )
    mult, decay = tower_rates(groups, config)
    # the Unfreezer sets each param group's LR from these multipliers at every step
    unfreezer.multipliers.update(mult)
    for pg in unfreezer.optimizer.param_groups:
        name = str(pg["name"])
        group = layer_group_of(name)
        pg["lr_scale"] = mult[group]
        if not name.endswith(NO_DECAY_SUFFIX):
            pg["weight_decay"] = decay[group]
    unfreezer.sync(unfreezer.global_step)
    unfreezer.tower_plans = plans  # type: ignore[attr-defined]
    return unfreezer


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
def retrieval_metrics(
    image: torch.Tensor, text: torch.Tensor, same: torch.Tensor | None = None
) -> dict[str, float]:
    """open_clip_train's retrieval metrics of paired, normalised features.

    ``image[i]`` and ``text[i]`` are a pair. The rank of a query is 1 + the number of
    candidates that score higher than its best true match; without ``same`` the true match
    is the pair's own item (open_clip_train's definition). ``same[i, j]`` marks caption ``j``
    as identical to caption ``i``: identical captions cannot be told apart, so retrieving any
    of them counts (with unique captions this is open_clip_train's rank).

    Returns:
        ``image_to_text_{mean_rank,median_rank,R@1,R@5,R@10}`` and the same for ``text_to_image``.

    Example:
        >>> img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> txt = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
        >>> retrieval_metrics(img, txt)["image_to_text_mean_rank"]
        2.0
    """
    sim = image.float() @ text.float().T
    n = sim.shape[0]
    if same is None:
        same = torch.eye(n, dtype=torch.bool)
    out: dict[str, float] = {}
    for name, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        best = s.masked_fill(~same, -math.inf).max(dim=1).values
        ranks = ((s > best[:, None]) & ~same).sum(dim=1).numpy()  # 0-based
        out[f"{name}_mean_rank"] = float(ranks.mean() + 1)
        out[f"{name}_median_rank"] = float(np.floor(np.median(ranks)) + 1)
        for k in RETRIEVAL_KS:
            out[f"{name}_R@{k}"] = float(np.mean(ranks < k))
    return out


def zero_shot_classifier(
    encode_text: Callable[..., torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    classes: Sequence[str],
    templates: Sequence[Callable[[str], str]],
    device: torch.device,
) -> torch.Tensor:
    """``[dim, classes]``: each class's mean normalised template embedding, normalised
    (OpenCLIP's ``build_zero_shot_classifier``)."""
    columns = []
    for c in classes:
        tokens = tokenizer([t(c) for t in templates]).to(device)
        emb = F.normalize(encode_text(tokens, normalize=True).float(), dim=-1).mean(dim=0)
        columns.append(F.normalize(emb, dim=-1))
    return torch.stack(columns, dim=1)


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
        return tower_unfreezer(
            model,
            config,
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
    ) -> Any:
        return TowerCaches(options, unfreezer, train_set, val_set, **kwargs)

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
    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        batches: Batches,
        device: torch.device,
        dtype: torch.dtype | None,
        kind: str = "main",
    ) -> dict[str, Any]:
        was = model.training
        model.eval()
        try:
            if kind == "classify":
                return self._zero_shot(model, batches, device, dtype)
            return self._retrieval(model, batches, device, dtype)
        finally:
            model.train(was)

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


# -- the tower cache ---------------------------------------------------------------------
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


class TowerCaches:
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
        self.records: list[dict[str, Any]] = []
        self.stage: dict[str, Any] | None = None
        self.fill_s = 0.0
        choice = options.dtype
        if choice == "auto":
            choice = "bfloat16" if device.type == "cuda" else "float16"
        self.store = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(
            choice, torch.float32
        )

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
        end = min(
            plan.events[ei + 1].step if ei + 1 < len(plan.events) else plan.total_steps,
            plan.total_steps,
        )
        stage_epochs = (end - plan.events[ei].step) / self.spe
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
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": first_step,
            "mode": mode,
            "locked_towers": locked,
            "stage_epochs": stage_epochs,
            "train_cached": False,
            "eval_cached": False,
            "views": 0,
            "bytes": 0,
            "fill_s": 0.0,
        }
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
        record["line"] = line
        self.records.append(record)
        self.say(record)
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
        last = min((epoch + 1) * self.spe - 1, plan.total_steps - 1)
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
        served = _Batches(images, texts)
        indices = list(order)
        for i in range(0, len(indices), self.batch_size):
            yield served[indices[i : i + self.batch_size]]

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
        plan = self.unfreezer.plan
        last = min((epoch + 1) * self.spe - 1, plan.total_steps - 1)
        if plan.event_index(last) != stage["index"]:
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

    def epoch_columns(self, cached: bool, eval_kind: str) -> dict[str, Any]:
        out = {
            "cached": cached,
            "eval_cached": eval_kind == "features",
            "eval_images_kept": False,
            "cache_fill_s": self.fill_s,
            "cache_bytes": self.nbytes(self.stage),
        }
        self.fill_s = 0.0
        return out

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
