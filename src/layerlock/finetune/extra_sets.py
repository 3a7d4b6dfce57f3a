"""The run's extra evaluation sets (``eval.sets``): loaders, kept batches, row columns.

Each rank evaluates its share of every set, like the validation split. The evaluation
transform is deterministic, so a set's preprocessed batches are kept in memory after its
first evaluation (when ``cache.mode`` is not ``off`` and they fit in ``cache.budget_mb``
together) and reused every epoch.

Example:
    >>> sets = ExtraSets({}, cache_off=True, budget_bytes=0)
    >>> sets.names, sets.columns(lambda batches, kind: {})
    ([], {})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..data import dataset_len

__all__ = ["ExtraSets", "KeptBatches"]


class KeptBatches(list):  # type: ignore[type-arg]
    """A loader's batches, kept; ``dataset`` still leads to the data (classes, templates)."""

    def __init__(self, loader: DataLoader) -> None:
        super().__init__(loader)
        self.dataset = loader.dataset

    @property
    def nbytes(self) -> int:
        """Bytes of the kept inputs."""
        return sum(int(x.numel() * x.element_size()) for x, _ in self)


class ExtraSets:
    """Named ``(kind, loader)`` pairs and their kept batches.

    Args:
        loaders: ``name -> (kind, loader)``.
        cache_off: Never keep batches (``cache.mode=off``, or several processes).
        budget_bytes: What the kept batches of all sets may hold.
    """

    def __init__(
        self,
        loaders: Mapping[str, tuple[str, DataLoader]],
        *,
        cache_off: bool,
        budget_bytes: int,
    ) -> None:
        self.loaders = dict(loaders)
        self.cache_off, self.budget_bytes = cache_off, budget_bytes
        self.kept: dict[str, KeptBatches] = {}

    @classmethod
    def build(
        cls,
        sets: Mapping[str, Any],
        *,
        batch_size: int,
        rank: int,
        world: int,
        loader_options: Mapping[str, Any],
        cache_off: bool,
        budget_bytes: int,
    ) -> ExtraSets:
        """Loaders over this rank's share of each :class:`~layerlock.finetune.task.EvalSet`."""
        loaders: dict[str, tuple[str, DataLoader]] = {}
        for name, es in sets.items():
            share = torch.utils.data.Subset(
                es.dataset, list(range(rank, dataset_len(es.dataset), world))
            )
            loader = DataLoader(share, batch_size=batch_size, shuffle=False, **loader_options)
            loaders[name] = (es.kind, loader)
        return cls(loaders, cache_off=cache_off or world > 1, budget_bytes=budget_bytes)

    @property
    def names(self) -> list[str]:
        """The sets' names, in order."""
        return list(self.loaders)

    def batches(self, name: str) -> Any:
        """The set's kept batches, keeping them now if allowed, else its loader."""
        if name in self.kept:
            return self.kept[name]
        loader = self.loaders[name][1]
        if self.cache_off:
            return loader
        x, _ = loader.dataset[0]
        x = torch.as_tensor(x)
        need = x.numel() * x.element_size() * dataset_len(loader.dataset)
        if sum(k.nbytes for k in self.kept.values()) + need > self.budget_bytes:
            return loader
        self.kept[name] = KeptBatches(loader)
        return self.kept[name]

    def columns(self, evaluate: Callable[[Any, str], dict[str, Any]]) -> dict[str, Any]:
        """``<name>/<metric>`` columns of every set: ``evaluate(batches, kind)`` per set."""
        out: dict[str, Any] = {}
        for name, (kind, _) in self.loaders.items():
            metrics = evaluate(self.batches(name), kind)
            out.update(
                {f"{name}/{k}": v for k, v in metrics.items() if v is not None and k[0] != "_"}
            )
        return out
