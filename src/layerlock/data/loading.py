"""DataLoader options for a job: how many decoding workers, pinned memory, prefetching.

Decoding and augmenting images runs in worker processes so that it overlaps with the model's
step; on an accelerator the batches are also copied from pinned memory and the workers stay
alive between epochs, so decoding never starves the device.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import ConfigError

__all__ = [
    "ACCELERATOR_PREFETCH_FACTOR",
    "AUTO_WORKERS",
    "CPU_PREFETCH_FACTOR",
    "MAX_AUTO_WORKERS",
    "available_cores",
    "loader_options",
    "resolve_workers",
]

AUTO_WORKERS = "auto"
# More decoders rarely help a single device and each one holds a copy of the dataset.
MAX_AUTO_WORKERS = 8
# Batches each worker prepares ahead: torch's default on CPU, more on an accelerator, whose
# steps are short next to decoding.
CPU_PREFETCH_FACTOR = 2
ACCELERATOR_PREFETCH_FACTOR = 4


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one).

    Example:
        >>> available_cores() >= 1
        True
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | str, device: torch.device, *, in_memory: bool = False) -> int:
    """The number of DataLoader worker processes to use.

    An integer is used as given (``0`` decodes in the training process). ``"auto"`` keeps one
    of the :func:`available_cores` for the training process and gives decoders the rest, up
    to :data:`MAX_AUTO_WORKERS`: all of them when the model runs on an accelerator, half of
    them on CPU (at least one), where the model's own computation needs the same cores. A
    single core gives ``0``. On two cores one worker decodes the next batch while the step
    runs: measured on a 2-core CPU (resnet18, 224 px, batch 32) it cut the wait for a batch
    from about 460 ms to 8 ms (``benchmarks/input_pipeline.py``).
    So does a data set already decoded in memory (``in_memory``).

    Args:
        workers: A non-negative integer or ``"auto"``.
        device: Where the model runs.
        in_memory: The images are decoded arrays in memory (the demo source).

    Returns:
        The worker count, ``>= 0``.

    Raises:
        ConfigError: ``workers`` is neither a non-negative integer nor ``"auto"``.

    Example:
        >>> import torch
        >>> resolve_workers(3, torch.device("cpu"))
        3
        >>> resolve_workers("auto", torch.device("cpu")) <= MAX_AUTO_WORKERS
        True
    """
    if isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0:
        return workers
    if workers != AUTO_WORKERS:
        raise ConfigError(
            f"workers must be a non-negative integer or {AUTO_WORKERS!r}, got {workers!r}"
        )
    if in_memory:
        return 0
    spare = available_cores() - 1
    if device.type == "cpu" and spare > 1:
        spare //= 2  # the model's own computation needs the cores too
    return max(0, min(spare, MAX_AUTO_WORKERS))


def loader_options(
    device: torch.device, workers: int | str, *, persistent: bool = True
) -> dict[str, Any]:
    """Keyword arguments of ``torch.utils.data.DataLoader`` for a model on ``device``.

    ``num_workers`` comes from :func:`resolve_workers`. On CUDA, batches come from pinned
    memory (``pin_memory``) so the copy to the device can overlap the step. With workers,
    ``prefetch_factor`` is set (more on an accelerator) and, on CUDA, the workers persist
    between epochs instead of starting again for each one.

    A persistent worker keeps the copy of the dataset it made on the first epoch: state that
    the training process changes between epochs (an epoch counter that seeds augmentation)
    does not reach it. Pass ``persistent=False`` for such a dataset.

    Args:
        device: Where the model runs.
        workers: A non-negative integer or ``"auto"`` (see :func:`resolve_workers`).
        persistent: Allow ``persistent_workers`` on CUDA.

    Returns:
        ``num_workers`` and ``pin_memory``, plus ``prefetch_factor`` and
        ``persistent_workers`` when there are workers.

    Raises:
        ConfigError: ``workers`` is neither a non-negative integer nor ``"auto"``.

    Example:
        >>> import torch
        >>> loader_options(torch.device("cpu"), 0)
        {'num_workers': 0, 'pin_memory': False}
        >>> loader_options(torch.device("cuda"), 2)
        {'num_workers': 2, 'pin_memory': True, 'prefetch_factor': 4, 'persistent_workers': True}
    """
    num_workers = resolve_workers(workers, device)
    cuda = device.type == "cuda"
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": cuda}
    if num_workers > 0:
        accelerator = device.type != "cpu"
        options["prefetch_factor"] = (
            ACCELERATOR_PREFETCH_FACTOR if accelerator else CPU_PREFETCH_FACTOR
        )
        options["persistent_workers"] = cuda and persistent
    return options
