"""What makes a run reproducible and exactly resumable: data order and random streams.

- The training order of epoch ``e`` is a permutation drawn from ``(seed, e)`` alone
  (:class:`EpochOrder`), sharded by rank under DDP.
- The random augmentation of sample ``i`` in epoch ``e`` is drawn from ``(seed, e, i)``
  (:class:`SeededSamples`), whatever process loads it, so worker processes and resuming
  mid-epoch do not change it.
- The global random streams (dropout, drop-path) are saved and restored whole
  (:func:`rng_state`, :func:`set_rng_state`).

Example:
    >>> order = EpochOrder(10, seed=0, rank=0, world=1, batch_size=4)
    >>> order.steps(), sorted(order.indices()) == list(range(10))
    (3, True)
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..data import dataset_len

__all__ = [
    "EpochOrder",
    "SeededSamples",
    "rng_scope",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]

SEED_MIX = 1_000_003
"""Multiplier that mixes the run seed with the epoch (and the sample index)."""


class EpochOrder(Sampler[int]):
    """The training order of one epoch: a function of ``(seed, epoch, rank)`` only.

    Set :attr:`epoch` before iterating; :attr:`skip` drops the first samples (resuming
    mid-epoch). A trailing batch of one sample is dropped (it breaks BatchNorm in training).

    Example:
        >>> order = EpochOrder(5, seed=1, rank=0, world=1, batch_size=2)
        >>> order.epoch = 1
        >>> len(list(order))  # the fifth sample would make a batch of one
        4
    """

    def __init__(self, n: int, seed: int, rank: int, world: int, batch_size: int) -> None:
        self.n, self.seed, self.rank, self.world, self.batch_size = n, seed, rank, world, batch_size
        self.epoch = 0
        self.skip = 0

    def indices(self) -> list[int]:
        """This rank's sample indices of the current epoch, in training order."""
        g = torch.Generator().manual_seed(self.seed * SEED_MIX + self.epoch)
        order: list[int] = torch.randperm(self.n, generator=g).tolist()
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
        """Optimizer steps of one epoch on this rank."""
        return math.ceil(len(self.indices()) / self.batch_size)


@contextlib.contextmanager
def rng_scope(seed: int) -> Iterator[None]:
    """Run the body under the global RNGs seeded with ``seed``; restore them all after.

    Only the CPU generator is seeded (data loading runs on the CPU): ``torch.manual_seed``
    would also reseed every CUDA device, whose state the scope would then leak.

    Example:
        >>> before = torch.get_rng_state()
        >>> with rng_scope(3):
        ...     _ = torch.rand(1)
        >>> torch.equal(before, torch.get_rng_state())
        True
    """
    torch_state, py_state, np_state = (
        torch.get_rng_state(),
        random.getstate(),
        np.random.get_state(),
    )
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


class SeededSamples(Dataset):
    """Loads sample ``i`` of epoch ``e`` under global RNGs seeded from ``(seed, e, i)``.

    Example:
        >>> samples = SeededSamples([0, 1, 2], seed=0)
        >>> samples[1]
        1
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return dataset_len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        seed = ((self.seed * SEED_MIX + self.epoch) * 10_000_019 + index) % (2**63)
        with rng_scope(seed):
            return self.dataset[index]


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, Python, NumPy) as plain, loadable values.

    Example:
        >>> sorted(rng_state())[:3]
        ['numpy', 'python', 'torch']
    """
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
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned.

    Example:
        >>> saved = rng_state(); a = torch.rand(1); set_rng_state(saved)
        >>> torch.equal(a, torch.rand(1))
        True
    """
    torch.set_rng_state(state["torch"])
    version, inner, gauss = state["python"]
    random.setstate((version, tuple(inner), gauss))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's and NumPy's global RNGs.

    Example:
        >>> seed_everything(0); a = torch.rand(1); seed_everything(0)
        >>> torch.equal(a, torch.rand(1))
        True
    """
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
