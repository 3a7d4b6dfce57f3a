"""Frozen-prefix feature cache: run the locked groups once per sample, train the rest.

While groups ``[0, b)`` are locked and run in eval mode, their output for a given input
never changes. :class:`FeatureCache` computes it once per sample (or once per each of K
fixed augmented views), stores it in fp16 / bf16 in memory or in a memory-mapped file
under a byte budget, and serves ``(features, label)`` batches for training the suffix
(:meth:`layerlock.split.Split.suffix`). Training from the cache then costs about
``3 * (G - b)`` group-forwards per sample instead of ``G + 2 * (G - b)``
(the cost model of :mod:`layerlock.cache_policy`).

A cache is valid for one :class:`CacheKey`: the boundary, a digest of the frozen
prefix's parameters and buffers (BatchNorm statistics), the preprocessing (the dataset's
``transform`` repr) and the dataset's identity. Moving the boundary (an unlock event),
changing a frozen weight or the preprocessing makes :meth:`FeatureCache.stale_reason`
say why, and the caller refills or trains uncached.

:func:`~layerlock.cache_policy.should_cache` (re-exported here) is the cost model behind
``cache=auto``; the policy lives in :mod:`layerlock.cache_policy`.

Example:
    >>> import torch, timm
    >>> from layerlock import layer_groups
    >>> from layerlock.split import split_model
    >>> model = timm.create_model("test_vit", num_classes=2)
    >>> data = torch.utils.data.TensorDataset(torch.randn(6, 3, 32, 32), torch.tensor([0, 1] * 3))
    >>> split = split_model(model, layer_groups(model), boundary=7)
    >>> cache = FeatureCache(split, data, budget_bytes=2**20)
    >>> feats, labels = next(iter(cache.loader(batch_size=4)))
    >>> tuple(feats.shape), cache.stale_reason(split) is None
    ((4, 64), True)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .cache_file import FILE_SUFFIX, FileWriter, file_lock, map_published, problem_with
from .cache_policy import CacheDecision, describe_bytes, should_cache
from .distributed import all_gather_rows, all_sum, rank_and_world, shard_bounds
from .errors import ConfigError, LayerlockError
from .split import Split

__all__ = [
    "CacheBudgetError",
    "CacheDecision",
    "CacheKey",
    "FeatureCache",
    "describe_bytes",
    "prefix_output",
    "should_cache",
    "weights_digest",
]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class CacheBudgetError(LayerlockError, MemoryError):
    """The features do not fit in the cache budget."""


def weights_digest(tensors: Sequence[tuple[str, torch.Tensor]]) -> str:
    """A content hash of named tensors (names, shapes, dtypes and bytes).

    Example:
        >>> a = torch.nn.Linear(2, 2)
        >>> f = weights_digest(list(a.named_parameters()))
        >>> with torch.no_grad():
        ...     _ = a.weight.add_(1)
        >>> f == weights_digest(list(a.named_parameters()))
        False
    """
    h = hashlib.blake2b(digest_size=16)
    for name, t in tensors:
        t = t.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        data = t.to("cpu").contiguous().reshape(-1)
        h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """What a cache's contents depend on; any change invalidates it.

    Attributes:
        boundary: Index of the lowest trainable group.
        family: The split recipe.
        weights: :func:`weights_digest` of the frozen prefix's parameters and buffers.
        transform: The preprocessing (the dataset's ``transform`` repr, or given).
        dataset: The dataset's identity (type, length, root, or given).
        views: Number of fixed augmented views per sample.
        dtype: Storage dtype.
    """

    boundary: int
    family: str
    weights: str
    transform: str
    dataset: str
    views: int
    dtype: str

    def digest(self) -> str:
        """A short hash of the key (used in file names)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def diff(self, other: CacheKey) -> str | None:
        """One line naming what differs, or None."""
        if self.boundary != other.boundary:
            return f"the boundary moved from group {self.boundary} to {other.boundary} (unlock)"
        if self.family != other.family:
            return f"the split changed ({self.family} -> {other.family})"
        if self.weights != other.weights:
            return "the frozen prefix's weights or BatchNorm statistics changed"
        if self.transform != other.transform:
            return "the preprocessing changed"
        if self.dataset != other.dataset:
            return "the dataset changed"
        if (self.views, self.dtype) != (other.views, other.dtype):
            return "the cache settings (views, dtype) changed"
        return None


def _transform_repr(dataset: Any) -> str:
    for obj in (dataset, getattr(dataset, "dataset", None)):
        if obj is None:
            continue
        for attr in ("transform", "transforms"):
            t = getattr(obj, attr, None)
            if t is not None:
                return repr(t)
    return "none"


def _dataset_identity(dataset: Any) -> str:
    parts = [type(dataset).__qualname__, str(len(dataset))]
    for attr in ("root", "path", "name", "split"):
        v = getattr(dataset, attr, None)
        if isinstance(v, (str, os.PathLike, int)):
            parts.append(f"{attr}={v}")
    return ":".join(parts)


def make_key(
    split: Split,
    dataset: Any,
    *,
    views: int = 1,
    dtype: torch.dtype = torch.float16,
    transform_key: str | None = None,
    dataset_key: str | None = None,
) -> CacheKey:
    """The :class:`CacheKey` of caching ``split``'s prefix over ``dataset``."""
    return CacheKey(
        boundary=split.boundary,
        family=split.family,
        weights=weights_digest(split.prefix_params() + split.prefix_buffers()),
        transform=transform_key if transform_key is not None else _transform_repr(dataset),
        dataset=dataset_key if dataset_key is not None else _dataset_identity(dataset),
        views=views,
        dtype=str(dtype).removeprefix("torch."),
    )


class _Features(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, feats: torch.Tensor, labels: torch.Tensor, out: torch.dtype) -> None:
        self.feats, self.labels, self.out = feats, labels, out

    def __len__(self) -> int:
        return int(self.feats.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.feats[i].to(self.out), self.labels[i]


class FeatureCache:
    """The frozen prefix's output for every sample of a dataset.

    Filled on construction: the prefix runs once per sample (per view) under
    ``torch.no_grad()`` with the model in eval mode (BatchNorm on running statistics, no
    dropout / drop-path); the modules' train/eval flags are restored afterwards.

    Args:
        split: The model split (:func:`layerlock.split.split_model`).
        dataset: A map-style dataset of ``(input, label)`` pairs; its transform must be
            deterministic unless ``views > 1``.
        dtype: Storage dtype (``torch.float16``, ``torch.bfloat16`` or ``torch.float32``).
        budget_bytes: The most the features may take; more raises
            :class:`CacheBudgetError` before any work is done.
        storage: ``"memory"`` or ``"mmap"``: one file per key under ``dir``
            (:mod:`layerlock.cache_file`: checked on open, published atomically), reused
            without a fill by any later cache with the same key.
        dir: Directory of the feature files (required for ``"mmap"``).
        views: K fixed augmented views per sample: view v is filled with the random
            generators seeded with ``seed + v``; epoch e trains on view ``e % K``.
        batch_size: Batch size of the fill.
        num_workers: DataLoader workers of the fill.
        seed: Base seed of the views.
        transform_key: Overrides the preprocessing part of the key.
        dataset_key: Overrides the dataset part of the key.
        device: Where the prefix runs (default: the model's device).
        progress: Called with ``(done, total)`` samples during the fill (this rank's).
        across_ranks: Split the fill over the ranks of the process group (each fills a
            contiguous block of samples, then the blocks are exchanged: every rank ends
            with all features, filled in about ``1 / world`` of the time). A collective:
            every rank constructs the cache with the same arguments.

    Raises:
        ConfigError: Bad arguments (listed together).
        CacheBudgetError: The features need more than ``budget_bytes``.
    """

    def __init__(
        self,
        split: Split,
        dataset: Any,
        *,
        dtype: torch.dtype = torch.float16,
        budget_bytes: int = 2**30,
        storage: str = "memory",
        dir: str | os.PathLike[str] | None = None,
        views: int = 1,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        transform_key: str | None = None,
        dataset_key: str | None = None,
        device: torch.device | str | None = None,
        progress: Callable[[int, int], None] | None = None,
        across_ranks: bool = False,
    ) -> None:
        problems = []
        if dtype not in _DTYPES.values():
            problems.append(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype}")
        if storage not in ("memory", "mmap"):
            problems.append(f"storage must be 'memory' or 'mmap', got {storage!r}")
        if storage == "mmap" and dir is None:
            problems.append("storage='mmap' needs dir= (where the feature file goes)")
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            problems.append(f"views must be an int >= 1, got {views!r}")
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
            problems.append(f"budget_bytes must be an int >= 0, got {budget_bytes!r}")
        if batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            problems.append("the dataset is empty")
        if problems:
            raise ConfigError("feature cache: " + "; ".join(problems))
        self.split = split
        self.dataset = dataset
        self.dtype = dtype
        self.budget_bytes = budget_bytes
        self.storage = storage
        self.views = views
        self.seed = seed
        self._batch_size = batch_size
        self._num_workers = num_workers
        self._transform_key = transform_key
        self._dataset_key = dataset_key
        self.device = torch.device(device) if device is not None else _device_of(split.model)
        self.key = make_key(
            split,
            dataset,
            views=views,
            dtype=dtype,
            transform_key=transform_key,
            dataset_key=dataset_key,
        )
        self.num_samples = len(dataset)
        self.feature_shape = self._probe_shape()
        self.nbytes = self.num_samples * views * math.prod(self.feature_shape) * _itemsize(dtype)
        if self.nbytes > budget_bytes:
            raise CacheBudgetError(
                f"the feature cache needs {describe_bytes(self.nbytes)} ({self.num_samples:,} "
                f"samples x {views} view(s) x {'x'.join(map(str, self.feature_shape))} "
                f"{self.key.dtype}) but the budget is {describe_bytes(budget_bytes)}; raise "
                "--cache-budget, move the boundary up, or use --cache off"
            )
        self.path: Path | None = None
        self.fill_seconds = 0.0
        #: Whether the features came from a published file (no fill).
        self.reused = False
        #: Why a file found under ``dir`` was not trusted (then filled again), or None.
        self.rejected: str | None = None
        self.across_ranks = across_ranks
        total = (self.num_samples * views, *self.feature_shape)
        if storage == "memory":
            self.features = torch.empty(total, dtype=dtype)
            self.labels = torch.empty(total[0], dtype=torch.long)
            self._fill(progress)
            return
        assert dir is not None
        Path(dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(dir) / f"features-{self.key.digest()}{FILE_SUFFIX}"
        rank, world = rank_and_world() if across_ranks else (0, 1)
        # Rank 0 alone locks and writes; a second run with the same key waits for the
        # lock, then finds the published file and reuses it.
        with file_lock(self.path) if rank == 0 else contextlib.nullcontext():
            self._open_or_fill(total, rank, world, progress)

    def _open_or_fill(
        self,
        total: tuple[int, ...],
        rank: int,
        world: int,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        assert self.path is not None
        key = asdict(self.key)
        problem = problem_with(self.path, key, total, self.dtype)
        # every rank must find a valid file, or all of them fill (the fill is collective)
        valid = float(problem is None)
        if world > 1:
            valid = all_sum([valid], self.device)[0]
        if valid == world:
            self.features, self.labels = map_published(self.path, total, self.dtype)
            self.reused = True
            return
        if problem != "no file":
            self.rejected = problem
        writer = FileWriter(self.path, key, total, self.dtype) if rank == 0 else None
        if writer is not None:
            self.features, self.labels = writer.features, writer.labels
        else:
            self.features = torch.empty(total, dtype=self.dtype)
            self.labels = torch.empty(total[0], dtype=torch.long)
        try:
            self._fill(progress)
            if writer is not None:
                writer.publish()
        except BaseException:
            if writer is not None:
                writer.discard()
            raise
        if writer is not None:  # serve from the published, read-only file
            self.features, self.labels = map_published(self.path, total, self.dtype)

    # -- filling ---------------------------------------------------------------------
    def _probe_shape(self) -> tuple[int, ...]:
        x, _ = self.dataset[0]
        with _eval_mode(self.split.model), torch.no_grad():
            out = self.split.prefix(torch.as_tensor(x).unsqueeze(0).to(self.device))
        return tuple(out.shape[1:])

    def _fill(self, progress: Callable[[int, int], None] | None) -> None:
        import time

        start = time.perf_counter()
        rank, world = rank_and_world() if self.across_ranks else (0, 1)
        lo, hi = shard_bounds(self.num_samples, rank, world)
        total = (hi - lo) * self.views
        done = 0
        with _eval_mode(self.split.model), torch.no_grad():
            for v in range(self.views):
                if self.views > 1:
                    torch.manual_seed(self.seed + v)
                loader = DataLoader(
                    Subset(self.dataset, range(lo, hi)) if world > 1 else self.dataset,
                    batch_size=self._batch_size,
                    shuffle=False,
                    num_workers=self._num_workers,
                )
                i = v * self.num_samples + lo
                for x, y in loader:
                    out = self.split.prefix(x.to(self.device))
                    n = out.shape[0]
                    self.features[i : i + n] = out.to("cpu", self.dtype)
                    self.labels[i : i + n] = torch.as_tensor(y).long()
                    i += n
                    done += n
                    if progress is not None:
                        progress(done, total)
        if world > 1:  # every rank filled its rows of each view: exchange them
            for v in range(self.views):
                rows = slice(v * self.num_samples, (v + 1) * self.num_samples)
                all_gather_rows(self.features[rows])
                all_gather_rows(self.labels[rows])
        self.fill_seconds = time.perf_counter() - start

    # -- validity --------------------------------------------------------------------
    def stale_reason(
        self, split: Split | None = None, dataset: Any = None, *, transform_key: str | None = None
    ) -> str | None:
        """Why the cache no longer matches (one line), or None when it is valid.

        Args:
            split: The current split (default: the one the cache was filled with; its
                weights are digested again).
            dataset: The current dataset (default: the one filled from).
            transform_key: The current preprocessing, when given explicitly at fill time.
        """
        if split is None:
            split = self.split
        now = make_key(
            split,
            self.dataset if dataset is None else dataset,
            views=self.views,
            dtype=self.dtype,
            transform_key=transform_key if transform_key is not None else self._transform_key,
            dataset_key=self._dataset_key,
        )
        return self.key.diff(now)

    # -- serving ---------------------------------------------------------------------
    def view_of(self, epoch: int) -> int:
        """The view epoch ``epoch`` trains on (``epoch % views``)."""
        return epoch % self.views

    def dataset_for(self, epoch: int = 0, out_dtype: torch.dtype = torch.float32) -> _Features:
        """A Dataset of ``(features, label)`` of one view, features cast to ``out_dtype``."""
        lo = self.view_of(epoch) * self.num_samples
        hi = lo + self.num_samples
        return _Features(self.features[lo:hi], self.labels[lo:hi], out_dtype)

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        epoch: int = 0,
        drop_last: bool = False,
        out_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> _Batches:
        """Batches of ``(features, labels)`` for one epoch, sliced from the store.

        ``shuffle`` draws the order from ``generator`` exactly like
        ``DataLoader(shuffle=True, generator=...)`` (a ``RandomSampler``), so cached and
        uncached runs see the same batches when seeded alike.
        """
        return _Batches(self, batch_size, shuffle, generator, epoch, drop_last, out_dtype, device)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"FeatureCache({self.num_samples:,} x {self.views} view(s) x "
            f"{tuple(self.feature_shape)} {self.key.dtype}, {describe_bytes(self.nbytes)} "
            f"in {self.storage}, boundary {self.key.boundary})"
        )


class _Batches:
    def __init__(
        self,
        cache: FeatureCache,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None,
        epoch: int,
        drop_last: bool,
        out_dtype: torch.dtype,
        device: torch.device | str | None,
    ) -> None:
        self.cache, self.batch_size, self.shuffle = cache, batch_size, shuffle
        self.generator, self.epoch, self.drop_last = generator, epoch, drop_last
        self.out_dtype, self.device = out_dtype, device

    def __len__(self) -> int:
        n = self.cache.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.cache.num_samples
        base = self.cache.view_of(self.epoch) * n
        # A DataLoader over the indices draws the order exactly as one over the dataset.
        order: DataLoader[int] = DataLoader(
            range(n),  # type: ignore[arg-type]
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            generator=self.generator,
            drop_last=self.drop_last,
        )
        for b in order:
            feats = self.cache.features[base + b].to(self.out_dtype)
            labels = self.cache.labels[base + b]
            if self.device is not None:
                feats, labels = feats.to(self.device), labels.to(self.device)
            yield feats, labels


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def prefix_output(split: Split, x: torch.Tensor) -> torch.Tensor:
    """The locked prefix's output for a batch ``x``, computed as the cache computes it.

    Every module in eval mode (restored after), no autograd.

    Example:
        >>> import timm, torch
        >>> from layerlock import layer_groups
        >>> from layerlock.split import split_model
        >>> model = timm.create_model("test_vit", num_classes=2)
        >>> split = split_model(model, layer_groups(model), boundary=7)
        >>> tuple(prefix_output(split, torch.randn(1, 3, 32, 32)).shape)
        (1, 64)
    """
    with _eval_mode(split.model), torch.no_grad():
        return split.prefix(x)


class _eval_mode:
    """Put every module in eval mode; restore each module's own flag on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for m, flag in self.flags:
            m.training = flag
