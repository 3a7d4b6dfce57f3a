"""Distributed training: keep replicas identical when the trainable set changes.

DistributedDataParallel
    DDP registers its gradient hooks only for the parameters that require grad when the
    wrapper is built. A parameter unlocked later is then trained on its local gradient
    only, and replicas drift apart without any error; a parameter locked later makes DDP
    fail ("Expected to have finished reduction") unless ``find_unused_parameters=True``;
    ``static_graph=True`` forbids any change. :class:`~layerlock.unfreezer.Unfreezer`
    therefore rebuilds the wrapper (:func:`wrap_ddp`) after every change of the
    trainable set and removes the old wrapper's hooks. Training code must call the model
    through ``unfreezer.model`` at every step (never keep the wrapper in a variable
    across steps): after a rebuild the old wrapper no longer averages gradients.
    Building a DDP wrapper broadcasts rank 0's parameters and buffers, so every rank
    must reach each change at the same step (the schedule is a function of the global
    step, so it does when every rank runs the same number of steps).

FSDP2 (``torch.distributed.fsdp.fully_shard``)
    Supported, and tested on CPU with two gloo processes (:mod:`layerlock.fsdp`). Shard
    each layer group as one unit (:func:`layerlock.fsdp.shard_by_groups`), then build the
    Unfreezer on the sharded model: it sees the DTensor parameters (groups computed before
    sharding are looked up again by name), builds no DDP wrapper, and locks by flipping
    ``requires_grad`` on the sharded parameters. FSDP2 copies that flag to the unsharded
    parameters at every all-gather and reduce-scatters only existing gradients, so a
    locked group gets no gradient and a newly unlocked one gets the rank average. The
    Unfreezer's :meth:`~layerlock.unfreezer.Unfreezer.state_dict` gathers the optimizer
    state in full and weights are saved with
    :func:`layerlock.fsdp.full_model_state_dict` (both collectives: every rank calls them).
    FSDP1 (``FullyShardedDataParallel``) is refused with an explanation.

torch.compile
    Dynamo guards on ``requires_grad`` and recompiles when it changes; a stale compiled graph
    reused after such a change has been reported against PyTorch. What to do:
    compile the model *inside* the DDP wrapper and call ``torch._dynamo.reset()`` (or
    compile again) after each unlock event - register a listener with
    ``unfreezer.add_listener(lambda event: torch._dynamo.reset())``. The test suite
    checks on CPU that a compiled model trains newly unlocked parameters after an event.

Example:
    >>> import torch
    >>> wrap_ddp(torch.nn.Linear(2, 2)) .__class__.__name__  # no process group: unchanged
    'Linear'
"""

from __future__ import annotations

import socket
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "all_equal_across_ranks",
    "all_gather_rows",
    "all_sum",
    "broadcast_object",
    "free_port",
    "gather_objects",
    "init_from_env",
    "is_distributed",
    "rank_and_world",
    "replicas_agree",
    "shard_bounds",
    "unhook_ddp",
    "unwrap_ddp",
    "wrap_ddp",
]

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialised.

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def unwrap_ddp(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself).

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 2)
        >>> unwrap_ddp(m) is m
        True
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module
    return model


def wrap_ddp(module: nn.Module, old: nn.Module | None = None, **ddp_kwargs: Any) -> nn.Module:
    """Wrap ``module`` in a fresh DistributedDataParallel for its current trainable set.

    The hooks of ``old`` (a previous wrapper of the same module) are removed first. With
    no trainable parameter, or without a multi-rank process group, ``module`` itself is
    returned (DDP refuses modules without trainable parameters).

    Args:
        module: The unwrapped model.
        old: The wrapper built before, if any.
        **ddp_kwargs: Passed to ``DistributedDataParallel`` (``device_ids``,
            ``broadcast_buffers``, ``find_unused_parameters`` ...).

    Returns:
        The new wrapper, or ``module``.

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 2)
        >>> wrap_ddp(m, find_unused_parameters=True) is m  # single process
        True
    """
    if old is not None:
        unhook_ddp(old)
    if not is_distributed() or not any(p.requires_grad for p in module.parameters()):
        return module
    return nn.parallel.DistributedDataParallel(module, **ddp_kwargs)


def unhook_ddp(wrapper: nn.Module) -> None:
    """Remove a DistributedDataParallel wrapper's gradient hooks (no-op for other modules).

    Example:
        >>> unhook_ddp(torch.nn.Linear(2, 2))
    """
    if isinstance(wrapper, nn.parallel.DistributedDataParallel) and hasattr(
        wrapper, "_remove_autograd_hooks"
    ):
        wrapper._remove_autograd_hooks()


def free_port() -> int:
    """A TCP port that is free on this host right now (for ``MASTER_PORT``).

    Example:
        >>> 0 < free_port() < 65536
        True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def all_equal_across_ranks(tensors: list[torch.Tensor]) -> bool:
    """Whether every tensor is bitwise equal on all ranks (gathered to compare).

    Example:
        >>> import torch
        >>> all_equal_across_ranks([torch.ones(2)])  # single process
        True
    """
    if not is_distributed():
        return True
    device = _collective_device()
    ok = torch.tensor(1, device=device)
    for t in tensors:
        flat = t.detach().reshape(-1).to(device, copy=True)
        gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        if not all(torch.equal(g, gathered[0]) for g in gathered):
            ok = torch.tensor(0, device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def _collective_device() -> torch.device:
    """Where collective tensors must live: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_from_env() -> tuple[int, int, int, bool]:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Returns:
        ``(rank, world_size, local_rank, created)``; ``created`` says whether this call
        initialised the process group (the caller then destroys it when done).

    Example:
        >>> init_from_env()  # no WORLD_SIZE in the environment: a single process
        (0, 1, 0, False)
    """
    import os

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


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` element-wise over all ranks (float64); unchanged in one process.

    Example:
        >>> all_sum([1.0, 2.0], torch.device("cpu"))
        [1.0, 2.0]
    """
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def replicas_agree(model: nn.Module, device: torch.device) -> bool | None:
    """Whether every rank holds the same weights (per-parameter float64 sums compared).

    Returns:
        ``None`` outside a multi-rank process group.

    Example:
        >>> replicas_agree(torch.nn.Linear(2, 2), torch.device("cpu")) is None
        True
    """
    if not is_distributed():
        return None
    from torch.distributed.tensor import DTensor

    # a sharded (FSDP2) parameter is compared as its full tensor (a collective)
    full = [p.full_tensor() if isinstance(p, DTensor) else p for p in model.parameters()]
    sums = torch.stack([p.detach().double().sum() for p in full]).to(device)
    gathered = [torch.empty_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def broadcast_object(value: T, src: int = 0) -> T:
    """Rank ``src``'s ``value`` on every rank (pickled; small objects only).

    Example:
        >>> broadcast_object("runs/a")
        'runs/a'
    """
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=src)
    result: T = box[0]
    return result


def gather_objects(value: T) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank (``[value]`` in one process).

    Example:
        >>> gather_objects({"step": 3})
        [{'step': 3}]
    """
    if not is_distributed():
        return [value]
    box: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(box, value)
    return box


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the process group, ``(0, 1)`` without one.

    Example:
        >>> rank_and_world()
        (0, 1)
    """
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of ``n`` that ``rank`` owns: contiguous blocks of ``ceil(n / world)``.

    Example:
        >>> [shard_bounds(5, r, 2) for r in range(2)]
        [(0, 3), (3, 5)]
    """
    per = -(-n // world)
    return min(rank * per, n), min((rank + 1) * per, n)


def all_gather_rows(full: torch.Tensor, piece_bytes: int = 64 * 2**20) -> None:
    """Fill every rank's ``full`` with the rows each rank owns (:func:`shard_bounds`), in place.

    Rank ``r`` has written rows ``shard_bounds(len(full), r, world)`` of ``full``; after
    the call every rank holds all rows. Rows travel as raw bytes (any dtype; gloo lacks
    bfloat16), in pieces of about ``piece_bytes`` per rank so that a large CPU (or
    memory-mapped) tensor is never copied whole to the collective device.

    Example:
        >>> t = torch.arange(4.0)
        >>> all_gather_rows(t); t.tolist()  # one process: nothing to gather
        [0.0, 1.0, 2.0, 3.0]
    """
    rank, world = rank_and_world()
    n = int(full.shape[0])
    if world == 1 or n == 0:
        return
    row_bytes = max(full[0].numel() * full.element_size(), 1)
    raw = (
        full.view(n, -1).view(torch.uint8) if full.dim() > 1 else full.view(n, 1).view(torch.uint8)
    )
    per = -(-n // world)
    step = max(1, piece_bytes // row_bytes)
    device = _collective_device()
    for offset in range(0, per, step):
        k = min(step, per - offset)
        lo, hi = shard_bounds(n, rank, world)
        a, b = min(lo + offset, hi), min(lo + offset + k, hi)
        send = torch.zeros(k, raw.shape[1], dtype=torch.uint8, device=device)
        send[: b - a] = raw[a:b].to(device)
        pieces = [torch.empty_like(send) for _ in range(world)]
        dist.all_gather(pieces, send)
        for r, piece in enumerate(pieces):
            if r == rank:
                continue
            rlo, rhi = shard_bounds(n, r, world)
            ra, rb = min(rlo + offset, rhi), min(rlo + offset + k, rhi)
            raw[ra:rb] = piece[: rb - ra].to(raw.device)
