"""``finetune``: progressive fine-tuning of a pretrained image classifier, end to end.

One call builds the model and the data from a :class:`~layerlock.config.FinetuneConfig`,
trains it with an :class:`~layerlock.unfreezer.Unfreezer` (schedule, per-group LRs,
warm-up, weight-decay rules, AdamW, gradient clipping, bf16 autocast where the device
supports it), evaluates every epoch and keeps everything in a run directory (layout in
:mod:`layerlock.runs`).

Reproducibility and exact resume:

- the training order of epoch ``e`` is a permutation drawn from ``(seed, e)`` alone;
- the random augmentation of image ``i`` in epoch ``e`` is drawn from ``(seed, e, i)``
  (the sample is transformed under its own RNG seed, whatever process loads it), so
  worker processes and resuming mid-epoch do not change it;
- the checkpoint holds the model, the Unfreezer (optimizer, step), the global RNG states
  (dropout, drop-path), the epoch's running sums and the elapsed time. Resuming at step
  ``S`` restores them and skips the first ``S mod steps_per_epoch`` batches of the epoch,
  so the resumed run follows the uninterrupted one step for step (bit-identical on CPU).

Frozen-prefix feature cache (``cache=auto|on|off``, ``cache_budget_mb``, ``cache_views``,
``cache_dtype``): at the first epoch of each schedule stage (and after a resume), with
``b`` the lowest trainable group, the run decides once whether the locked groups ``[0, b)``
are served from a :class:`~layerlock.cache.FeatureCache` and logs one line why (stderr,
``cache.jsonl``, the summary's ``cache`` and ``notes``). Never cached: ``cache=off``,
``b == 0``, a model without a split (:func:`layerlock.split.split_model`), a random prefix
in training mode (dropout / drop-path with p > 0, BatchNorm without ``freeze_bn_stats``),
DistributedDataParallel. ``auto`` asks :func:`~layerlock.cache.should_cache` (stage length,
views, bytes against the budget); ``on`` caches whenever possible and otherwise trains
uncached with the reason in its line. A cached epoch trains the suffix on stored features
in exactly the batches the image loader would give (same :class:`_EpochOrder`), so a
deterministic train transform gives the uncached run's weights up to float tolerance
(bit-identical with ``cache_dtype=float32`` on CPU in the tests). With a random train
transform the cache holds ``cache_views`` fixed views per image, view ``v`` being the
augmentation the uncached run draws in epoch ``v``; epoch ``e`` trains on view
``e % cache_views``. This is a deliberate change from the uncached run: from epoch
``cache_views`` on, augmentations repeat. The evaluation images' prefix features are cached
too; in stages where no prefix can be cached, the preprocessed evaluation images are kept
instead (when they fit the budget). Filling never moves the run's random streams, and the
decision depends on the plan only, so resuming a cached run is as exact as an uncached one.
The caches live in memory and are dropped when the boundary moves or the run ends;
a change of the locked weights, BatchNorm buffers or preprocessing refills them.

Ctrl-C (SIGINT) is turned into a flag checked between steps: the run stops after the
current step and writes a resumable checkpoint. Under ``torchrun`` every rank trains
(DistributedDataParallel, rebuilt by the Unfreezer on each unlock) and rank 0 alone writes.

Example:
    >>> from layerlock.config import FinetuneConfig
    >>> result = finetune(FinetuneConfig(epochs=1, out_dir="runs/demo"))  # doctest: +SKIP
    >>> 0.0 <= result.final_top1 <= 1.0  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import FinetuneConfig
from .errors import ConfigError, LayerlockError
from .groups import LayerGroups, layer_groups
from .optim import layer_group_of
from .runs import CONFIG_FILE, MODEL_FILE, RunDir, load_weights
from .schedule import UnlockEvent
from .unfreezer import Unfreezer

__all__ = [
    "OpenCLIPClassifier",
    "RunResult",
    "build_classifier",
    "finetune",
    "load_run_config",
    "zero_shot_head",
]

SUMMARY_FILE = "summary.json"
PER_CLASS_FILE = "per_class.csv"
_SEED_MIX = 1_000_003


# -- results ------------------------------------------------------------------------------


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
        }


# -- models -------------------------------------------------------------------------------


class OpenCLIPClassifier(nn.Module):
    """An OpenCLIP image tower with a linear head on its L2-normalised embedding.

    With the head initialised by :func:`zero_shot_head`, the logits equal CLIP's
    zero-shot logits (``logit_scale * cos(image, "a photo of a {class}.")``), as in
    WiSE-FT / FLYP.

    Example:
        >>> import open_clip, torch
        >>> clip = open_clip.CLIP(16, dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16),
        ...                       dict(context_length=16, vocab_size=1000, width=32, heads=2, layers=1))
        >>> OpenCLIPClassifier(clip.visual, 16, 3)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self, visual: nn.Module, embed_dim: int, num_classes: int, normalize: bool = True
    ) -> None:
        super().__init__()
        self.visual = visual
        self.head = nn.Linear(embed_dim, num_classes)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.visual(x)
        if isinstance(features, (tuple, list)):
            features = features[0]
        if self.normalize:
            features = F.normalize(features, dim=-1)
        return self.head(features)

    def layer_groups(self) -> LayerGroups:
        """The image tower's OpenCLIP groups (``embeddings``, ``layer.{i}``, ``proj``), then ``head``."""
        from .adapters import GroupSpec
        from .groups import _build  # the partition builder behind layer_groups()

        tower = layer_groups(self.visual)
        specs = [GroupSpec(g.name, tuple(f"visual.{n}" for n in g.param_names)) for g in tower] + [
            GroupSpec("head", tuple(f"head.{n}" for n, _ in self.head.named_parameters()))
        ]
        return _build(self, specs, "open_clip", False, dict(self.named_parameters()), [])


def zero_shot_head(
    clip: Any,
    head: nn.Linear,
    classes: list[str],
    tokenizer: Callable[[list[str]], torch.Tensor],
    prompt: str = "a photo of a {}.",
) -> None:
    """Set ``head`` to CLIP's zero-shot classifier: normalised text embeddings x logit scale.

    Args:
        clip: The full OpenCLIP model (text tower and ``logit_scale``).
        head: The linear head on normalised image embeddings (bias set to 0).
        classes: Class names, put into ``prompt``.
        tokenizer: OpenCLIP tokenizer of the model.
        prompt: Template with ``{}`` for the class name.

    Example:
        >>> import open_clip, torch
        >>> clip = open_clip.CLIP(16, dict(image_size=32, patch_size=8, width=32, layers=1, head_width=16),
        ...                       dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))
        >>> head = torch.nn.Linear(16, 2)
        >>> zero_shot_head(clip, head, ["cat", "dog"], open_clip.get_tokenizer("ViT-B-32", context_length=16))
        >>> bool(torch.allclose(head.weight.norm(dim=-1), clip.logit_scale.exp().detach()))
        True
    """
    tokens = tokenizer([prompt.format(c) for c in classes])
    vocab = getattr(clip, "vocab_size", None)
    if vocab is not None and int(tokens.max()) >= int(vocab):
        raise LayerlockError(
            f"the tokenizer gives token ids up to {int(tokens.max())} but the text tower has "
            f"a vocabulary of {vocab}; set zero_shot_head=false"
        )
    was = clip.training
    clip.eval()
    with torch.no_grad():
        text = clip.encode_text(tokens, normalize=True).float()
        scale = clip.logit_scale.exp().float() if hasattr(clip, "logit_scale") else 1.0
        head.weight.copy_(text * scale)
        head.bias.zero_()
    clip.train(was)


def _embed_dim(visual: nn.Module) -> int:
    dim = getattr(visual, "output_dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    size = getattr(visual, "image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    with torch.no_grad():
        out = visual.eval()(torch.zeros(1, 3, *size))
    visual.train()
    return int((out[0] if isinstance(out, (tuple, list)) else out).shape[-1])


def build_classifier(
    config: FinetuneConfig, classes: list[str]
) -> tuple[nn.Module, list[str], LayerGroups | None]:
    """Build the model of ``config`` with a ``len(classes)``-way head.

    Returns:
        ``(model, notes, groups)``: notes say what was done (zero-shot head, checkpoint
        loaded); ``groups`` is set when the model needs its own grouping (OpenCLIP).

    Raises:
        UnknownModelError: A model name the family does not know (with suggestions).
        LayerlockError: Pretrained weights unreachable, a bad checkpoint file.

    Example:
        >>> model, notes, _ = build_classifier(FinetuneConfig(model="timm:test_vit"), ["a", "b"])
        >>> model.num_classes
        2
    """
    from .models import build_model, parse_spec

    notes: list[str] = []
    groups: LayerGroups | None = None
    n = len(classes)
    if config.model == "demo":
        from .demo import load_demo_backbone

        model = load_demo_backbone(n)
        notes.append("demo backbone: ViT pretrained on MNIST digits 0-4")
    elif parse_spec(config.model)[0] == "open_clip":
        clip: Any = build_model(config.model, pretrained=config.pretrained)
        visual: nn.Module = clip.visual
        classifier = OpenCLIPClassifier(visual, _embed_dim(visual), n)
        if config.zero_shot_head and hasattr(clip, "encode_text") and config.checkpoint is None:
            import open_clip

            name = parse_spec(config.model)[1]
            zero_shot_head(
                clip, classifier.head, classes, open_clip.get_tokenizer(name), config.prompt
            )
            notes.append(f"head initialised zero-shot from prompts {config.prompt!r}")
        model = classifier
        groups = classifier.layer_groups()
    else:
        model = build_model(config.model, pretrained=config.pretrained, num_classes=n)
    if config.checkpoint:
        notes.append(_load_checkpoint_into(model, config.checkpoint, groups))
    return model, notes, groups


def _load_checkpoint_into(model: nn.Module, path: str, groups: LayerGroups | None) -> str:
    state = load_weights(path)
    own = model.state_dict()
    head = set((groups or layer_groups(model))[-1].param_names)
    reshaped = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    bad = [k for k in reshaped if k not in head]
    if bad:
        raise ConfigError(
            f"checkpoint {path} does not fit the model: {len(bad)} tensor(s) of another shape, "
            f"e.g. {bad[0]} {tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}"
        )
    for k in reshaped:
        state.pop(k)
    if not any(k in own for k in state):
        raise ConfigError(
            f"checkpoint {path} has none of the model's tensor names (it has e.g. "
            f"{', '.join(list(state)[:3])}; the model has e.g. {', '.join(list(own)[:3])})"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in head]
    if missing or result.unexpected_keys:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if result.unexpected_keys:
            parts.append(
                f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]})"
            )
        raise ConfigError(f"checkpoint {path} does not fit the model: {'; '.join(parts)} tensors")
    fresh = " (new head)" if reshaped or any(k in head for k in result.missing_keys) else ""
    return f"weights loaded from {path}{fresh}"


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise LayerlockError(
        f"the model returned {type(output).__name__}; expected logits (a tensor or .logits)"
    )


# -- data order and augmentation RNG -------------------------------------------------------


class _EpochOrder(Sampler[int]):
    """The training order of one epoch: a function of (seed, epoch, rank) only."""

    def __init__(self, n: int, seed: int, rank: int, world: int, batch_size: int) -> None:
        self.n, self.seed, self.rank, self.world, self.batch_size = n, seed, rank, world, batch_size
        self.epoch = 0
        self.skip = 0

    def indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * _SEED_MIX + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        if self.world > 1:
            order += order[: (-len(order)) % self.world]
            order = order[self.rank :: self.world]
        if len(order) % self.batch_size == 1 and len(order) > 1:
            order = order[:-1]  # a batch of one breaks BatchNorm in training mode
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.skip :])

    def __len__(self) -> int:
        return max(len(self.indices()) - self.skip, 0)

    def steps(self) -> int:
        return math.ceil(len(self.indices()) / self.batch_size)


@contextlib.contextmanager
def _rng_scope(seed: int) -> Iterator[None]:
    torch_state = torch.get_rng_state()
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


class _SeededSamples(Dataset):
    """Transforms sample ``i`` of epoch ``e`` under an RNG seeded from ``(seed, e, i)``."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        seed = ((self.seed * _SEED_MIX + self.epoch) * 10_000_019 + index) % (2**63)
        with _rng_scope(seed):
            return self.dataset[index]


def _rng_state() -> dict[str, Any]:
    version, state, gauss = random.getstate()
    np_state: Any = np.random.get_state()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(state), gauss],
        "numpy": [
            np_state[0],
            np.asarray(np_state[1]).tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, inner, gauss = state["python"]
    random.setstate((version, tuple(inner), gauss))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


# -- devices, precision, distributed -------------------------------------------------------


def _distributed() -> tuple[int, int, int, bool]:
    """``(rank, world, local_rank, created)``; joins the torchrun process group if any."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1, 0, False
    created = False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
        created = True
    return dist.get_rank(), dist.get_world_size(), local, created


def _device(choice: str, local_rank: int) -> torch.device:
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device: 'cuda' requested but no CUDA device is available; use auto or cpu"
        )
    if choice == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(choice)


def _precision(choice: str, device: torch.device) -> torch.dtype | None:
    if choice == "fp32":
        return None
    if choice == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"precision: bf16 is not supported on {device}; use fp32 or auto")
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None  # CPU autocast to bf16 is slower than fp32 on most CPUs


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _replicas_agree(model: nn.Module, device: torch.device) -> bool | None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(device)
    gathered = [torch.empty_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    return all(torch.equal(g, gathered[0]) for g in gathered)


# -- run directory --------------------------------------------------------------------------


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config a run directory was started with (its ``config.yaml``).

    Raises:
        LayerlockError: ``run_dir`` is not a layerlock run directory.

    Example:
        >>> load_run_config("runs/finetune")["schedule"]  # doctest: +SKIP
        'lp-ft'
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise LayerlockError(
            f"{run_dir} is not a layerlock run directory (no {CONFIG_FILE}); "
            "pass the out_dir of an earlier finetune run"
        )
    import yaml

    loaded = yaml.safe_load(path.read_text())
    if not isinstance(loaded, dict):
        raise LayerlockError(f"{path} does not hold a config mapping")
    return loaded


def _fresh_dir(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3`` ... when it already holds a run."""
    if not (path / CONFIG_FILE).exists():
        return path
    i = 2
    while (path.parent / f"{path.name}-{i}" / CONFIG_FILE).exists():
        i += 1
    return path.parent / f"{path.name}-{i}"


def _agree_on_dir(path: Path) -> Path:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        box = [str(path)]
        dist.broadcast_object_list(box, src=0)
        return Path(box[0])
    return path


# -- progress ------------------------------------------------------------------------------


class _Progress:
    """A rich progress bar with ETA on stderr; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task("training", total=total, completed=done)

    def update(self, description: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=description)

    def describe(self, description: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=description)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _StopFlag:
    """SIGINT sets a flag (checked between steps) instead of raising mid-step."""

    def __init__(self) -> None:
        self.raised = False
        self._old: Any = None

    def __enter__(self) -> _StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


# -- evaluation ------------------------------------------------------------------------------


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    dtype: torch.dtype | None,
) -> dict[str, Any]:
    was = model.training
    model.eval()
    loss_sum = correct1 = correct5 = total = 0.0
    right = torch.zeros(num_classes, dtype=torch.float64)
    count = torch.zeros(num_classes, dtype=torch.float64)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, dtype):
            logits = _logits(model(x)).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        pred = logits.argmax(-1)
        hit = (pred == y).double().cpu()
        correct1 += float(hit.sum())
        if num_classes > 5:
            top5 = logits.topk(5, dim=-1).indices
            correct5 += float((top5 == y[:, None]).any(-1).sum())
        total += y.numel()
        yc = y.cpu()
        right.index_add_(0, yc, hit)
        count.index_add_(0, yc, torch.ones_like(hit))
    model.train(was)
    sums = _all_sum([loss_sum, correct1, correct5, total, *right.tolist(), *count.tolist()], device)
    loss_sum, correct1, correct5, total = sums[:4]
    right_l = sums[4 : 4 + num_classes]
    count_l = sums[4 + num_classes :]
    total = max(total, 1.0)
    return {
        "val_loss": loss_sum / total,
        "val_acc": correct1 / total,
        "val_top5": correct5 / total if num_classes > 5 else None,
        "per_class": [r / c if c else math.nan for r, c in zip(right_l, count_l)],
    }


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _event_label(unfreezer: Unfreezer, event: UnlockEvent) -> str:
    names = unfreezer.groups.names
    if event.step == 0 and len(event.trainable) == len(names):
        return "all groups"
    if len(event.trainable) == len(names):
        return "unlock all"
    plus = [names[i] for i in sorted(event.unlocked)]
    minus = [names[i] for i in sorted(event.locked)]
    parts = []
    if plus:
        parts.append("+" + ",".join(plus) if len(plus) <= 2 else f"+{len(plus)} groups")
    if minus:
        parts.append("-" + ",".join(minus) if len(minus) <= 2 else f"-{len(minus)} groups")
    return " ".join(parts) or "nothing trains"


def _lrs(unfreezer: Unfreezer) -> dict[str, float]:
    out: dict[str, float] = {}
    for pg in unfreezer.optimizer.param_groups:
        group = layer_group_of(str(pg.get("name")))
        if f"lr/{group}" not in out or pg["lr"] > out[f"lr/{group}"]:
            out[f"lr/{group}"] = float(pg["lr"])
    return out


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- frozen-prefix feature cache -------------------------------------------------------------

CACHE_LOG_FILE = "cache.jsonl"


def _prefix_randomness(split: Any, frozen_bn: set[str]) -> str | None:
    """Why the frozen prefix, run in training mode, is not a function of its input (or None).

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
    """Batches of cached features by index list (served through a DataLoader like the images)."""

    def __init__(self, cache: Any) -> None:
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


class _Suffix(nn.Module):
    """Calls ``split.suffix``; holds the model so that ``train()`` / ``eval()`` reach it."""

    def __init__(self, split: Any) -> None:
        super().__init__()
        self.body = split.model
        self.split = split
        self.training = split.model.training

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.split.suffix(features)


@dataclass
class _Stage:
    index: int
    boundary: int
    split: Any = None
    train: list[Any] = field(default_factory=list)
    val: Any = None


class _Caches:
    """The feature caches of the schedule stage in force (``cache=auto|on|off``).

    A stage is one unlock event of the plan. At the first epoch of a stage (and after a
    resume) :meth:`begin_epoch` decides, logs one line and fills the caches: the training
    images' prefix features (one view under a deterministic train transform, else
    ``cache_views`` fixed views, view ``v`` drawn exactly like epoch ``v``'s augmentation of
    the uncached run) and the evaluation images'. The decision depends on the plan and the
    data only, never on where a session started, so a resumed run makes the same choices.
    """

    def __init__(
        self,
        config: FinetuneConfig,
        unfreezer: Unfreezer,
        train_set: Dataset,
        val_set: Dataset,
        *,
        deterministic: bool,
        device: torch.device,
        dtype: torch.dtype | None,
        world: int,
        steps_per_epoch: int,
        say: Callable[[dict[str, Any]], None],
    ) -> None:
        self.config, self.unfreezer = config, unfreezer
        self.train_set, self.val_set = train_set, val_set
        self.deterministic = deterministic
        self.device, self.dtype, self.world = device, dtype, world
        self.spe = steps_per_epoch
        self.say = say
        self.stage: _Stage | None = None
        self.records: list[dict[str, Any]] = []
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.fill_s = 0.0  # fill time since the last epoch row
        choice = config.cache_dtype
        if choice == "auto":
            choice = "bfloat16" if device.type == "cuda" else "float16"
        self.store = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(
            choice, torch.float32
        )

    # -- decisions -----------------------------------------------------------------------
    def begin_epoch(self, epoch: int, first_step: int) -> None:
        """Decide (once per stage), check the caches are still valid, fill them."""
        plan = self.unfreezer.plan
        ei = plan.event_index(min(first_step, plan.total_steps - 1))
        if self.stage is not None and self.stage.index == ei:
            # the views share the split and the preprocessing: checking one checks all
            val = [self.stage.val] if self.stage.val is not None else []
            stale = next(
                (r for r in (c.stale_reason() for c in self.stage.train[:1] + val) if r), None
            )
            if stale is None:
                return
            self.stage = None
            self.stage = self._decide(ei, epoch, first_step, f"refilled: {stale}")
            return
        dropped = None
        if self.stage is not None and (self.stage.train or self.stage.val is not None):
            dropped = (
                f"dropped the group-{self.stage.boundary} cache: the boundary moved "
                f"(unlock at step {plan.events[ei].step})"
            )
        self.stage = None  # free the old features before filling new ones
        self.stage = self._decide(ei, epoch, first_step, dropped)

    def _why_not(self, boundary: int, split: Any) -> str | None:
        groups = self.unfreezer.groups
        if self.config.cache == "off":
            return "cache=off"
        if self.world > 1:
            return (
                "DistributedDataParallel: a cached suffix would bypass its gradient "
                "averaging; training uncached"
            )
        if boundary == 0:
            return "nothing is locked below the lowest trainable group (boundary 0)"
        if boundary >= len(groups):
            return "every group is locked: nothing trains"
        if split is None:
            from .split import split_reason

            return split_reason(self.unfreezer.base, groups, boundary)
        from .lock import frozen_bn_modules

        return _prefix_randomness(split, set(frozen_bn_modules(self.unfreezer.base)))

    def _decide(self, ei: int, epoch: int, first_step: int, note: str | None) -> _Stage:
        from .cache import describe_bytes, should_cache
        from .split import split_model

        plan, groups, config = self.unfreezer.plan, self.unfreezer.groups, self.config
        event = plan.events[ei]
        start = event.step
        end = plan.events[ei + 1].step if ei + 1 < len(plan.events) else plan.total_steps
        end = min(end, plan.total_steps)
        boundary = min(event.trainable) if event.trainable else len(groups)
        split = None
        if config.cache != "off" and self.world == 1 and 0 < boundary < len(groups):
            split = split_model(self.unfreezer.base, groups, boundary)
        stage = _Stage(ei, boundary)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": first_step,
            "mode": config.cache,
            "boundary": boundary,
            "boundary_group": groups[boundary].name if boundary < len(groups) else None,
            "stage_epochs": (end - start) / self.spe,
            "train_cached": False,
            "eval_cached": False,
            "views": 0,
            "bytes": 0,
            "fill_s": 0.0,
        }
        if note:
            record["note"] = note
        why = self._why_not(boundary, split)
        where = f"cache (epoch {epoch + 1}, stage of {record['stage_epochs']:g} epoch(s))"
        evals = end // self.spe - start // self.spe
        # the kept evaluation images (earlier stages) count against the budget too
        budget = config.cache_budget_mb * 2**20 - self.nbytes(None)
        if why is not None:
            record["reason"] = f"uncached: {why}"
            line = f"{where}: uncached: {why}"
            if config.cache == "on":
                line = f"{where}: cache=on is not possible, training uncached: {why}"
            inputs = self._inputs(evals, budget)
            if inputs:
                record["eval_inputs"] = inputs
                line += f"; eval {inputs}"
            if note:
                line += f" ({note})"
            self._log(record, line)
            return stage
        stage.split = split
        views = 1 if self.deterministic else config.cache_views
        per = self._feature_bytes(split)
        train_bytes = len(self.train_set) * views * per  # type: ignore[arg-type]
        val_bytes = len(self.val_set) * per  # type: ignore[arg-type]
        if config.cache == "auto":
            td = should_cache(
                groups,
                boundary,
                epochs=(end - start) / self.spe,
                split=split or False,
                deterministic=self.deterministic,
                views=views,
                nbytes=train_bytes,
                budget_bytes=budget,
            )
            train_on, train_why = td.cache, td.reason
        else:
            train_on = train_bytes <= budget
            train_why = (
                f"cache on: cache=on; {describe_bytes(train_bytes)} of "
                f"{describe_bytes(budget)} budget"
                if train_on
                else f"cache=on but the features need {describe_bytes(train_bytes)}, over "
                f"the {describe_bytes(budget)} budget (raise cache_budget_mb); training uncached"
            )
        if train_on and not self.deterministic:
            train_why += (
                f"; {views} fixed augmented view(s) per image, epoch e trains on view e % {views}"
            )
        left = budget - (train_bytes if train_on else 0)
        if config.cache == "auto":
            vd = should_cache(
                groups,
                boundary,
                epochs=evals,
                split=split or False,
                deterministic=True,
                views=1,
                nbytes=val_bytes,
                budget_bytes=left,
            )
            val_on, val_why = vd.cache, vd.reason
        else:
            val_on = val_bytes <= left
            val_why = (
                "cache on: cache=on"
                if val_on
                else f"cache=on but the features need {describe_bytes(val_bytes)}, over "
                f"the {describe_bytes(left)} left of the budget"
            )
        if evals == 0 and config.cache == "on":
            val_on, val_why = False, "cache off: no evaluation in this stage"
        record.update(train_reason=train_why, eval_reason=val_why, reason=train_why)
        state = _rng_state()
        start_fill = time.perf_counter()
        try:
            with _autocast(self.device, self.dtype):
                if train_on:
                    stage.train = [self._fill(split, v, views) for v in range(views)]
                if val_on:
                    stage.val = self._fill(split, None, 1)
        finally:
            _set_rng_state(state)  # filling must not move the run's random streams
        fill = time.perf_counter() - start_fill
        self.fill_s += fill
        record.update(
            train_cached=bool(stage.train),
            eval_cached=stage.val is not None,
            views=len(stage.train),
            bytes=self.nbytes(stage),
            fill_s=fill,
        )
        line = (
            f"{where}, locked below {record['boundary_group']}: "
            f"train {'cached' if train_on else 'uncached'} ({train_why}); "
            f"eval {'cached' if val_on else 'uncached'} ({val_why})"
        )
        if not val_on:
            inputs = self._inputs(evals, left)
            if inputs:
                record["eval_inputs"] = inputs
                line += f"; eval {inputs}"
        if train_on or val_on:
            line += f"; filled {describe_bytes(record['bytes'])} in {fill:.2f} s"
        if note:
            line += f" ({note})"
        self._log(record, line)
        return stage

    def _inputs(self, evals: int, budget: int) -> str | None:
        """Keep the preprocessed evaluation images when no prefix cache serves the evaluation.

        The evaluation transform is deterministic, so its output can be stored once (in its
        own dtype: evaluation stays bit-identical) and reused by every later evaluation.
        Returns a note for the decision line, or None when nothing is said.
        """
        from .cache import describe_bytes

        if self.inputs is not None:
            return "from the preprocessed images kept earlier"
        if self.config.cache == "off" or self.world > 1 or evals < 2:
            return None  # one evaluation pays nothing back
        x, _ = self.val_set[0]
        x = torch.as_tensor(x)
        need = len(self.val_set) * x.numel() * x.element_size()  # type: ignore[arg-type]
        if need > budget:
            return (
                f"preprocessed images not kept: {describe_bytes(need)} over the "
                f"{describe_bytes(budget)} left of the budget"
            )
        state = _rng_state()
        start = time.perf_counter()
        try:
            loader = DataLoader(
                self.val_set,
                batch_size=self.config.batch_size,
                shuffle=False,
                num_workers=self.config.workers,
            )
            xs, ys = zip(*loader)
            self.inputs = (torch.cat(xs), torch.cat(ys))
        finally:
            _set_rng_state(state)
        self.fill_s += time.perf_counter() - start
        return f"from preprocessed images kept in memory ({describe_bytes(need)})"

    def _log(self, record: dict[str, Any], line: str) -> None:
        record["line"] = line
        self.records.append(record)
        self.say(record)

    def _feature_bytes(self, split: Any) -> int:
        from .cache import _eval_mode

        x, _ = self.val_set[0]
        state = _rng_state()
        try:
            with _eval_mode(split.model), torch.no_grad(), _autocast(self.device, self.dtype):
                out = split.prefix(torch.as_tensor(x).unsqueeze(0).to(self.device))
        finally:
            _set_rng_state(state)
        return int(out[0].numel()) * torch.empty((), dtype=self.store).element_size()

    def _fill(self, split: Any, view: int | None, views: int) -> Any:
        from .cache import FeatureCache

        if view is None:
            dataset: Any = self.val_set
            key = f"val:{len(self.val_set)}"  # type: ignore[arg-type]
        else:
            dataset = _SeededSamples(self.train_set, self.config.seed)
            dataset.epoch = view  # view v = the augmentation the uncached run draws in epoch v
            key = f"train:{len(dataset)}:seed {self.config.seed}:view {view}/{views}"
        return FeatureCache(
            split,
            dataset,
            dtype=self.store,
            budget_bytes=2**62,  # checked by the decision, for all caches together
            views=1,
            batch_size=self.config.batch_size,
            num_workers=self.config.workers,
            seed=self.config.seed,
            dataset_key=key,
            device=self.device,
        )

    # -- serving -------------------------------------------------------------------------
    def train_epoch(self, epoch: int, first_step: int) -> bool:
        """Whether this epoch trains from the cache (no unlock inside it)."""
        stage = self.stage
        if stage is None or not stage.train:
            return False
        plan = self.unfreezer.plan
        last = min((epoch + 1) * self.spe - 1, plan.total_steps - 1)
        return plan.event_index(min(first_step, last)) == plan.event_index(last) == stage.index

    def train_batches(self, epoch: int, order: _EpochOrder) -> Iterator[tuple[Any, Any]]:
        """The epoch's batches (same samples, same order as the image loader) as features."""
        assert self.stage is not None
        cache = self.stage.train[epoch % len(self.stage.train)]
        indices = list(order)
        served = _FeatureBatches(cache)
        for i in range(0, len(indices), self.config.batch_size):
            yield served[indices[i : i + self.config.batch_size]]

    def suffix(self) -> nn.Module:
        assert self.stage is not None
        return _Suffix(self.stage.split)

    def evaluate(self, epoch: int, num_classes: int) -> tuple[dict[str, Any] | None, str]:
        """Evaluate from the cached features (still valid) or the kept images.

        Returns:
            ``(metrics, "features" | "images")``, or ``(None, "")``: evaluate uncached.
        """
        from torch.utils.data import BatchSampler, SequentialSampler

        stage = self.stage
        if stage is not None and stage.val is None and self.inputs is not None:
            images = _StoredBatches(*self.inputs)
            sampler = BatchSampler(
                SequentialSampler(range(len(images))), self.config.batch_size, drop_last=False
            )
            loader = DataLoader(images, batch_size=None, sampler=sampler)
            ev = _evaluate(self.unfreezer.base, loader, self.device, num_classes, self.dtype)
            return ev, "images"
        if stage is None or stage.val is None:
            return None, ""
        plan = self.unfreezer.plan
        last = min((epoch + 1) * self.spe - 1, plan.total_steps - 1)
        if plan.event_index(last) != stage.index and stage.val.stale_reason() is not None:
            return None, ""  # groups of the prefix were unlocked and trained during the epoch
        sampler = BatchSampler(
            SequentialSampler(range(len(stage.val))), self.config.batch_size, drop_last=False
        )
        # a DataLoader, like the image loader, so that both draw the same random numbers
        loader = DataLoader(_FeatureBatches(stage.val), batch_size=None, sampler=sampler)
        suffix = _Suffix(stage.split)
        return _evaluate(suffix, loader, self.device, num_classes, self.dtype), "features"

    def nbytes(self, stage: _Stage | None) -> int:
        """Bytes held by the caches of ``stage`` and the kept evaluation images."""
        held = sum(t.numel() * t.element_size() for t in self.inputs or ())
        if stage is None:
            return int(held)
        caches = stage.train + ([stage.val] if stage.val is not None else [])
        return int(held + sum(c.nbytes for c in caches))

    def epoch_metrics(self, cached: bool, eval_kind: str) -> dict[str, Any]:
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

    def close(self) -> None:
        self.stage = None
        self.inputs = None


# -- the run -------------------------------------------------------------------------------


def finetune(
    config: FinetuneConfig,
    *,
    stop_after: int | None = None,
    progress: bool | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> RunResult:
    """Fine-tune ``config.model`` on ``config.data`` under ``config.schedule``.

    Args:
        config: The run's configuration (validated here; ``resume`` continues a run).
        stop_after: Stop after this many optimizer steps (global) as if interrupted:
            a resumable checkpoint is written and ``interrupted`` is set (for debugging
            and tests of resume).
        progress: Show a progress bar with ETA on stderr (default: when stderr is a TTY).
        on_step: Called with ``(global_step, loss)`` after every step (rank 0 and others).

    Returns:
        A :class:`RunResult`.

    Raises:
        ConfigError: Bad config values (all at once), resuming under another config,
            a checkpoint that does not fit the model.
        ScheduleError: A schedule that does not fit the model.
        LayerlockError: Missing or empty data, unknown model names, unreachable
            pretrained weights, a non-finite loss (with the step and the LR).

    Example:
        >>> cfg = FinetuneConfig(epochs=1, shots_per_class=5, out_dir="runs/doc")
        >>> finetune(cfg).steps  # doctest: +SKIP
        1
    """
    config.validate()
    rank, world, local_rank, created_pg = _distributed()
    try:
        return _run(config, rank, world, local_rank, stop_after, progress, on_step)
    finally:
        if created_pg:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(
    config: FinetuneConfig,
    rank: int,
    world: int,
    local_rank: int,
    stop_after: int | None,
    progress: bool | None,
    on_step: Callable[[int, float], None] | None,
) -> RunResult:
    from .data import Transforms, load_splits, model_transforms, open_clip_preprocess

    checkpoint: dict[str, Any] | None = None
    if config.resume:
        saved = load_run_config(config.resume)
        config.check_resume(saved, config.resume)
        rd_probe = RunDir(config.resume, rank=1)  # reading only
        if not rd_probe.has_checkpoint():
            raise LayerlockError(
                f"{config.resume} has no checkpoint to resume from (the run stopped before "
                "its first checkpoint); start it again"
            )
        checkpoint = rd_probe.load_checkpoint()
        if checkpoint.get("fingerprint") != config.fingerprint():
            raise ConfigError(
                f"cannot resume {config.resume}: its checkpoint belongs to another config; "
                "use the same settings or a new out_dir"
            )
    device = _device(config.device, local_rank)
    dtype = _precision(config.precision, device)
    _seed_everything(config.seed)

    # Data first (classes decide the head), transforms once the model is known.
    identity = Transforms(lambda img: img, lambda img: img, "RGB")
    splits = load_splits(
        config.data,
        transforms=identity,
        path=config.data_path,
        train_csv=config.train_csv,
        val_csv=config.val_csv,
        csv_img_key=config.csv_img_key,
        csv_label_key=config.csv_label_key,
        csv_separator=config.csv_separator,
        hf_image_key=config.hf_image_key,
        hf_label_key=config.hf_label_key,
        train_split=config.train_split,
        val_split=config.val_split,
        bad_images=config.bad_images,
        seed=config.seed,
        shots_per_class=config.shots_per_class,
    )
    classes = list(splits.classes)
    if len(classes) < 2:
        raise LayerlockError(
            f"the training data has {len(classes)} class; a classifier needs 2 or more"
        )
    model, notes, groups = build_classifier(config, classes)
    if isinstance(model, OpenCLIPClassifier):
        transforms = model_transforms(
            preprocess=open_clip_preprocess(model.visual, config.augmentation),
            deterministic_train=config.deterministic_train_transform,
        )
    else:
        transforms = model_transforms(
            model,
            augmentation=config.augmentation,
            deterministic_train=config.deterministic_train_transform,
        )
    for ds, tf in ((splits.train, transforms.train), (splits.val, transforms.eval)):
        ds.transform = tf  # type: ignore[attr-defined]
        ds.mode = transforms.mode  # type: ignore[attr-defined]
    model.to(device)

    order = _EpochOrder(len(splits.train), config.seed, rank, world, config.batch_size)  # type: ignore[arg-type]
    steps_per_epoch = order.steps()
    train_data = _SeededSamples(splits.train, config.seed)
    pin = device.type == "cuda"
    train_loader = DataLoader(
        train_data,
        batch_size=config.batch_size,
        sampler=order,
        num_workers=config.workers,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(config.seed),
    )
    val_idx = list(range(rank, len(splits.val), world))  # type: ignore[arg-type]
    val_loader = DataLoader(
        torch.utils.data.Subset(splits.val, val_idx),
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=config.workers,
        pin_memory=pin,
    )
    ddp_kwargs: dict[str, Any] = {}
    if device.type == "cuda" and world > 1:
        ddp_kwargs["device_ids"] = [device.index]
    unfreezer = Unfreezer(
        model,
        config.schedule,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        lr=config.lr,
        weight_decay=config.weight_decay,
        layer_decay=config.layer_decay or 1.0,
        warmup_steps=config.warmup_steps,
        unlock_warmup_steps=config.unlock_warmup_steps,
        freeze_bn_stats=config.freeze_bn_stats,
        groups=groups,
        ddp_kwargs=ddp_kwargs,
    )

    # Everything is checked: only now touch the run directory.
    if config.resume:
        run_path = Path(config.resume)
    else:
        run_path = _fresh_dir(Path(config.out_dir)) if rank == 0 else Path(config.out_dir)
    run_path = _agree_on_dir(run_path)
    run = RunDir(run_path, rank=rank)
    state = _SessionState()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        unfreezer.load_state_dict(checkpoint["unfreezer"])
        state.load(checkpoint)
        _set_rng_state(
            checkpoint["rng"][rank] if rank < len(checkpoint["rng"]) else checkpoint["rng"][0]
        )
    else:
        resolved = config.to_dict()
        resolved["out_dir"] = str(run_path)
        run.write_yaml(CONFIG_FILE, resolved)
    logger = run.metrics(resume_step=unfreezer.global_step if checkpoint is not None else None)
    spe = steps_per_epoch

    live = {"trainable": _trainable(model), "groups": len(unfreezer.trainable)}

    def on_event(event: UnlockEvent) -> None:
        live["trainable"], live["groups"] = _trainable(model), len(unfreezer.trainable)
        logger.log_event(
            event.step,
            event.step / spe,
            _event_label(unfreezer, event),
            trainable_params=_trainable(model),
        )

    if checkpoint is None:
        on_event(unfreezer.plan.events[0])
    unfreezer.add_listener(on_event)

    def say_cache(record: dict[str, Any]) -> None:
        notes.append(record["line"])
        if rank == 0:
            print(f"layerlock finetune: {record['line']}", file=sys.stderr, flush=True)
            with run.file(CACHE_LOG_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    caches = _Caches(
        config,
        unfreezer,
        splits.train,
        val_loader.dataset,
        deterministic=transforms.deterministic_train or transforms.train is transforms.eval,
        device=device,
        dtype=dtype,
        world=world,
        steps_per_epoch=spe,
        say=say_cache,
    )

    show = (sys.stderr.isatty() if progress is None else progress) and rank == 0
    bar = _Progress(show, config.epochs * spe, unfreezer.global_step)
    total_params = sum(p.numel() for p in model.parameters())
    result = RunResult(run_path, classes, total_params=total_params, model=model)
    result.skipped_images = sum(len(v) for v in splits.skipped.values())
    result.cache = caches.records
    params = list(model.parameters())
    label_smoothing = config.label_smoothing
    interrupted = False
    session_start = time.perf_counter()

    def elapsed() -> float:
        return state.elapsed + time.perf_counter() - session_start

    def save_checkpoint() -> None:
        rngs = _gather_rng(world)
        if rank == 0:
            run.save_checkpoint(
                {
                    "format": "layerlock-finetune/1",
                    "fingerprint": config.fingerprint(),
                    "model": model.state_dict(),
                    "unfreezer": unfreezer.state_dict(),
                    "rng": rngs,
                    **state.dump(elapsed()),
                }
            )

    with _StopFlag() as stop:
        try:
            while state.evaluated < config.epochs:
                epoch = state.evaluated
                done_in_epoch = unfreezer.global_step - epoch * spe
                cached = False
                if done_in_epoch < spe:
                    order.epoch = train_data.epoch = epoch
                    order.skip = done_in_epoch * config.batch_size
                    caches.begin_epoch(epoch, unfreezer.global_step)
                    cached = caches.train_epoch(epoch, unfreezer.global_step)
                    unfreezer.model.train()
                    # cached: the suffix trains on the prefix's stored output, same batches
                    suffix = caches.suffix() if cached else None
                    batches = caches.train_batches(epoch, order) if cached else train_loader
                    t_log, n_log = time.perf_counter(), 0
                    for x, y in batches:
                        step = unfreezer.global_step
                        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                        with _autocast(device, dtype):
                            net = suffix if suffix is not None else unfreezer.model
                            logits = _logits(net(x)).float()
                        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
                        lrs = _lrs(unfreezer)
                        trained = dict(live)
                        batch_right = float((logits.detach().argmax(-1) == y).sum())
                        loss_value, flag, n_seen, right = _all_sum(
                            [
                                float(loss.detach()),
                                float(stop.raised),
                                float(y.numel()),
                                batch_right,
                            ],
                            device,
                        )
                        loss_value /= world
                        if not math.isfinite(loss_value):
                            top = max(lrs.items(), key=lambda kv: kv[1])
                            raise LayerlockError(
                                f"loss became {loss_value} at step {step} (epoch {epoch + 1}) "
                                f"with learning rate {top[1]:.3g} ({top[0][3:]}); lower lr "
                                f"(now {config.lr:g}) or set grad_clip"
                            )
                        loss.backward()
                        if config.grad_clip is not None:
                            torch.nn.utils.clip_grad_norm_(
                                [p for p in params if p.grad is not None], config.grad_clip
                            )
                        unfreezer.step()
                        state.add(loss_value * n_seen, right, n_seen)
                        state.last_lrs, state.last_trained = lrs, trained
                        n_log += int(n_seen)
                        gs = unfreezer.global_step
                        if gs % config.log_every == 0 or gs == 1 or gs % spe == 0:
                            now = time.perf_counter()
                            logger.log_step(
                                {
                                    "step": gs,
                                    "epoch": gs / spe,
                                    "loss": loss_value,
                                    "accuracy": right / max(n_seen, 1),
                                    **lrs,
                                    "trainable_params": trained["trainable"],
                                    "unlocked_groups": trained["groups"],
                                    "images_per_s": n_log / max(now - t_log, 1e-9),
                                }
                            )
                            t_log, n_log = now, 0
                        if on_step is not None:
                            on_step(gs, loss_value)
                        bar.update(f"epoch {epoch + 1}/{config.epochs} loss {loss_value:.3f}")
                        # under DDP only the all-reduced flag, so that every rank stops together
                        now_stop = flag or (world == 1 and stop.raised)
                        if now_stop or (stop_after is not None and gs >= stop_after):
                            interrupted = True
                            break
                    if interrupted:
                        break
                bar.describe(f"epoch {epoch + 1}/{config.epochs} evaluating")
                t_eval = time.perf_counter()
                ev, eval_kind = caches.evaluate(epoch, len(classes))
                if ev is None:
                    ev = _evaluate(model, val_loader, device, len(classes), dtype)
                row = state.epoch_row(epoch + 1, unfreezer.global_step, ev, elapsed())
                # the LRs and trainable set the epoch's last step trained with
                row.update(state.last_lrs or _lrs(unfreezer))
                row["trainable_params"] = state.last_trained.get("trainable", live["trainable"])
                row["unlocked_groups"] = state.last_trained.get("groups", live["groups"])
                row["eval_s"] = time.perf_counter() - t_eval
                row.update(caches.epoch_metrics(cached, eval_kind))
                logger.log_epoch(row)
                state.finish_epoch(row, ev["per_class"])
                save_checkpoint()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
            caches.close()

    if interrupted:
        save_checkpoint()
    result.interrupted = interrupted
    result.steps = unfreezer.global_step
    result.trainable_params = _trainable(model)
    result.wall_time_s = elapsed()
    result.epochs = logger.rows("epochs") if rank == 0 else list(state.rows)
    state.fill(result, classes)
    result.replicas_agree = _replicas_agree(model, device)
    if rank == 0:
        run.plot()
        if not interrupted:
            run.save_weights(
                model,
                MODEL_FILE,
                metadata={"classes": classes, "model": config.model, "schedule": config.schedule},
            )
        run.write_json(SUMMARY_FILE, {**result.to_dict(), "notes": notes})  # cache decisions too
        run.write_csv(
            PER_CLASS_FILE,
            [{"class": c, "accuracy": a} for c, a in result.per_class.items()],
            ["class", "accuracy"],
        )
    return result


def _gather_rng(world: int) -> list[dict[str, Any]]:
    import torch.distributed as dist

    mine = _rng_state()
    if world <= 1 or not dist.is_initialized():
        return [mine]
    box: list[Any] = [None] * world
    dist.all_gather_object(box, mine)
    return box


class _SessionState:
    """Running sums of the epoch, finished epoch rows and timings (checkpointed)."""

    def __init__(self) -> None:
        self.evaluated = 0
        self.loss_sum = 0.0
        self.right = 0.0
        self.seen = 0.0
        self.elapsed = 0.0
        self.best = -1.0
        self.best_epoch = 0
        self.last: dict[str, Any] = {}
        self.per_class: list[float] = []
        self.rows: list[dict[str, Any]] = []
        self.last_lrs: dict[str, float] = {}
        self.last_trained: dict[str, int] = {}

    def add(self, loss_sum: float, right: float, seen: float) -> None:
        self.loss_sum += loss_sum
        self.right += right
        self.seen += seen

    def epoch_row(
        self, epoch: int, step: int, ev: Mapping[str, Any], elapsed: float
    ) -> dict[str, Any]:
        seen = max(self.seen, 1.0)
        row = {
            "epoch": epoch,
            "step": step,
            "train_loss": self.loss_sum / seen if self.seen else None,
            "train_acc": self.right / seen if self.seen else None,
            "val_loss": ev["val_loss"],
            "val_acc": ev["val_acc"],
        }
        if ev["val_top5"] is not None:
            row["val_top5"] = ev["val_top5"]
        row["elapsed_s"] = elapsed
        return row

    def finish_epoch(self, row: dict[str, Any], per_class: list[float]) -> None:
        self.evaluated = int(row["epoch"])
        self.loss_sum = self.right = self.seen = 0.0
        if row["val_acc"] > self.best:
            self.best, self.best_epoch = float(row["val_acc"]), int(row["epoch"])
        self.last = dict(row)
        self.per_class = list(per_class)
        self.rows.append(dict(row))

    def dump(self, elapsed: float) -> dict[str, Any]:
        return {
            "evaluated_epochs": self.evaluated,
            "epoch_sums": [self.loss_sum, self.right, self.seen],
            "elapsed_s": elapsed,
            "best": [self.best, self.best_epoch],
            "last_row": {k: v for k, v in self.last.items() if v is not None},
            "per_class": list(self.per_class),
            "last_lrs": dict(self.last_lrs),
            "last_trained": dict(self.last_trained),
        }

    def load(self, ckpt: Mapping[str, Any]) -> None:
        self.evaluated = int(ckpt["evaluated_epochs"])
        self.loss_sum, self.right, self.seen = (float(v) for v in ckpt["epoch_sums"])
        self.elapsed = float(ckpt["elapsed_s"])
        self.best, self.best_epoch = float(ckpt["best"][0]), int(ckpt["best"][1])
        self.last = dict(ckpt.get("last_row", {}))
        self.per_class = list(ckpt.get("per_class", []))
        self.last_lrs = dict(ckpt.get("last_lrs", {}))
        self.last_trained = dict(ckpt.get("last_trained", {}))

    def fill(self, result: RunResult, classes: list[str]) -> None:
        if not self.last:
            return
        result.final_top1 = float(self.last["val_acc"])
        result.final_loss = float(self.last["val_loss"])
        top5 = self.last.get("val_top5")
        result.final_top5 = float(top5) if top5 is not None else None
        result.best_top1, result.best_epoch = self.best, self.best_epoch
        result.per_class = {c: float(a) for c, a in zip(classes, self.per_class)}


# -- summary -------------------------------------------------------------------------------


def summary_renderable(result: RunResult, config: FinetuneConfig) -> Any:
    """A one-screen rich summary of a run (what ``layerlock finetune`` prints at the end).

    Example:
        >>> from rich.console import Console
        >>> Console().print(summary_renderable(result, cfg))  # doctest: +SKIP
    """
    from rich.console import Group
    from rich.table import Table

    status = "interrupted" if result.interrupted else "finished"
    head = Table(title=f"layerlock finetune: {status}", title_justify="left", show_header=False)
    head.add_column(style="bold")
    head.add_column()
    top5 = f"{result.final_top5:.1%}" if result.final_top5 is not None else "-"
    share = 100.0 * result.trainable_params / max(result.total_params, 1)
    rows = [
        (
            "model",
            config.model + (f" (pretrained {config.pretrained})" if config.pretrained else ""),
        ),
        ("data", f"{config.data}: {len(result.classes)} classes"),
        ("schedule", f"{config.schedule}, {config.epochs} epochs, lr {config.lr:g}"),
        (
            "top-1",
            f"{result.final_top1:.1%} (best {result.best_top1:.1%} at epoch {result.best_epoch})",
        ),
        ("top-5", top5),
        ("val loss", f"{result.final_loss:.4f}"),
        (
            "trainable at end",
            f"{result.trainable_params:,} / {result.total_params:,} ({share:.1f}%)",
        ),
        ("steps / wall time", f"{result.steps:,} / {result.wall_time_s:.1f} s"),
        ("run directory", str(result.run_dir)),
    ]
    if result.skipped_images:
        rows.append(("skipped images", f"{result.skipped_images} unreadable file(s) left out"))
    if any(
        r.get("cached") or r.get("eval_cached") or r.get("eval_images_kept") for r in result.epochs
    ):
        from .cache import describe_bytes

        n = len(result.epochs)
        trained = sum(bool(r.get("cached")) for r in result.epochs)
        evaluated = sum(bool(r.get("eval_cached")) for r in result.epochs)
        kept = sum(bool(r.get("eval_images_kept")) for r in result.epochs)
        fill = sum(float(r.get("cache_fill_s") or 0.0) for r in result.epochs)
        peak = max(int(r.get("cache_bytes") or 0) for r in result.epochs)
        rows.append(
            (
                "feature cache",
                f"train {trained}/{n} epochs, eval {evaluated}/{n} from features, {kept}/{n} "
                f"from kept images; fill {fill:.1f} s, "
                f"up to {describe_bytes(peak)} (decisions in {CACHE_LOG_FILE})",
            )
        )
    if result.replicas_agree is not None:
        rows.append(("DDP replicas agree", "yes" if result.replicas_agree else "NO"))
    if result.interrupted:
        rows.append(("resume with", f"layerlock finetune --resume {result.run_dir}"))
    for k, v in rows:
        head.add_row(k, v)
    per = Table(title="per-class top-1", title_justify="left")
    items = sorted(result.per_class.items(), key=lambda kv: kv[1])
    shown = items if len(items) <= 10 else items[:5] + items[-5:]
    per.add_column("class")
    per.add_column("accuracy", justify="right")
    for c, a in shown:
        per.add_row(c, f"{a:.1%}" if math.isfinite(a) else "-")
    if len(items) > 10:
        per.caption = f"worst 5 and best 5 of {len(items)}; all in {PER_CLASS_FILE}"
    return Group(head, per) if result.per_class else head
