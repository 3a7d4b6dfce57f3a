"""FSDP2 (``torch.distributed.fsdp.fully_shard``): sharded models under a schedule.

What holds, and why (tested on CPU with two gloo processes):

- **Shard per layer group.** :func:`shard_by_groups` makes each layer group one
  ``fully_shard`` unit (its largest modules together), then the root. A group then
  gathers and reduce-scatters as a whole; parameters left on the root (a ViT's class
  token) form the root's unit.
- **Lock and unlock take effect mid-run.** FSDP2 copies ``requires_grad`` from each
  sharded parameter to its unsharded twin at every all-gather and reduce-scatters only
  the gradients that exist, so :func:`layerlock.lock` on the sharded parameters is all it
  takes: no wrapper to rebuild (unlike DDP). A locked parameter gets no gradient and
  never moves; a newly unlocked one gets the gradient averaged over ranks.
- **The groups must name the sharded parameters.** ``fully_shard`` replaces every
  parameter with a new DTensor parameter; groups computed before sharding point at the
  old ones. :func:`rebind_groups` looks them up again by name (the Unfreezer does it).
- **Checkpoints hold full tensors.** :func:`full_model_state_dict` gathers the weights
  (``get_model_state_dict(..., StateDictOptions(full_state_dict=True, cpu_offload=True))``:
  rank 0 gets everything, on the CPU; other ranks an empty dict) and
  :func:`load_full_model_state_dict` shards them again (``broadcast_from_rank0``). The
  :class:`~layerlock.unfreezer.Unfreezer`'s state gathers its optimizer state the same way
  (:func:`full_optimizer_state`), so a checkpoint has one format whatever the strategy:
  a sharded run resumes unsharded and the other way round. Both are collectives: call
  them on every rank. Distributed checkpoints (DCP) are not used.
- **FSDP1 is refused.** ``FullyShardedDataParallel`` flattens the parameters of a unit
  into one ``FlatParameter`` whose ``requires_grad`` is fixed when it is wrapped. With
  ``use_orig_params=True`` a parameter unlocked after wrapping does get a gradient, but
  each rank a different one (checked with two gloo processes on torch 2.14): replicas
  would drift. :func:`refuse_fsdp1` refuses it.

Example:
    >>> import torch
    >>> is_sharded(torch.nn.Linear(2, 2))
    False
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .errors import ConfigError
from .groups import LayerGroups

__all__ = [
    "FSDP1_MESSAGE",
    "full_model_state_dict",
    "full_optimizer_state",
    "is_sharded",
    "load_full_model_state_dict",
    "rebind_groups",
    "refuse_fsdp1",
    "shard_by_groups",
    "shard_optimizer_state",
]

FSDP1_MESSAGE = (
    "FSDP1 (FullyShardedDataParallel) is not supported: it fixes requires_grad per flat "
    "parameter when it wraps, so a later unlock is not averaged across ranks "
    "(use_orig_params=True included: each rank keeps its own gradient). Use FSDP2 instead: "
    "layerlock.fsdp.shard_by_groups(model, groups) (torch.distributed.fsdp.fully_shard "
    "per layer group), or DDP"
)


def _fsdp_module_type() -> type | None:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without distributed support
        return None
    return FSDPModule


def is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` (FSDP2) was applied to ``model`` or one of its modules.

    Example:
        >>> import torch
        >>> is_sharded(torch.nn.Sequential(torch.nn.Linear(2, 2)))
        False
    """
    kind = _fsdp_module_type()
    return kind is not None and any(isinstance(m, kind) for m in model.modules())


def refuse_fsdp1(model: nn.Module) -> None:
    """Raise :class:`~layerlock.errors.ConfigError` when ``model`` contains an FSDP1 wrapper.

    Example:
        >>> import torch
        >>> refuse_fsdp1(torch.nn.Linear(2, 2))  # nothing to refuse
    """
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()):
        raise ConfigError(FSDP1_MESSAGE)


def shard_by_groups(model: nn.Module, groups: LayerGroups, **fsdp_kwargs: Any) -> nn.Module:
    """``fully_shard`` each layer group as one unit, then the root; needs a process group.

    Args:
        model: The unwrapped model, on its training device.
        groups: Its layer groups (:func:`layerlock.layer_groups`).
        **fsdp_kwargs: Passed to every ``fully_shard`` call (``mesh``, ``mp_policy``,
            ``reshard_after_forward`` ...).

    Returns:
        ``model`` itself (``fully_shard`` changes it in place); compute groups again, or
        :func:`rebind_groups`, before using them on it.

    Example:
        >>> import torch
        >>> from layerlock import layer_groups
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
        >>> shard_by_groups(m, layer_groups(m))  # doctest: +SKIP
    """
    from torch.distributed.fsdp import fully_shard

    for g in groups:
        # modules without parameters (Identity, Dropout) are not units: they would only
        # return views of their input through FSDP's hooks
        modules = [model.get_submodule(name) for name in g.modules if name]
        modules = [m for m in modules if any(True for _ in m.parameters())]
        if modules:
            fully_shard(modules if len(modules) > 1 else modules[0], **fsdp_kwargs)
    fully_shard(model, **fsdp_kwargs)
    return model


def rebind_groups(groups: LayerGroups, model: nn.Module) -> LayerGroups:
    """``groups`` with their parameters looked up again, by name, on ``model``.

    ``fully_shard`` replaces parameters; groups computed before it point at the old
    tensors, and locking those would change nothing the model uses.

    Raises:
        ConfigError: A group names a parameter the model does not have.

    Example:
        >>> import torch
        >>> from layerlock import layer_groups
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> rebind_groups(layer_groups(m), m)[0].params[0] is m[0].weight
        True
    """
    named = dict(model.named_parameters())
    missing = [n for g in groups for n in g.param_names if n not in named]
    if missing:
        raise ConfigError(
            f"the layer groups name parameters the model does not have ({', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}); compute the groups for this model"
        )
    rebound = [replace(g, params=tuple(named[n] for n in g.param_names)) for g in groups]
    return LayerGroups(
        rebound,
        model=model,
        adapter=groups.adapter,
        coarse=groups.coarse,
        module_group=groups.module_group,
        notes=groups.notes,
    )


def full_model_state_dict(model: nn.Module) -> dict[str, Any]:
    """The full (unsharded) weights on rank 0, on the CPU; ``{}`` on other ranks.

    A collective: every rank must call it. An unsharded model gives its own state dict.

    Example:
        >>> import torch
        >>> sorted(full_model_state_dict(torch.nn.Linear(2, 2)))
        ['bias', 'weight']
    """
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_full_model_state_dict(model: nn.Module, state: dict[str, Any]) -> None:
    """Load full weights into a sharded model (rank 0's ``state`` is broadcast and sharded).

    Other ranks may pass ``{}``. A collective: every rank must call it. An unsharded model
    loads ``state`` directly.

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 2)
        >>> load_full_model_state_dict(m, m.state_dict())
    """
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(
        model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    )


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded state tensor gathered in full, on the CPU.

    The layout (integer parameter ids, param groups) is the unsharded one, so the result
    loads into an unsharded optimizer too. A collective when state is sharded: every rank
    must call it (the same parameters hold state on every rank).

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        >>> full_optimizer_state(opt)["state"]
        {}
    """
    from torch.distributed.tensor import DTensor

    saved = optimizer.state_dict()
    state = {
        pid: {k: v.full_tensor().cpu() if isinstance(v, DTensor) else v for k, v in entry.items()}
        for pid, entry in sorted(saved["state"].items())
    }
    return {"state": state, "param_groups": saved["param_groups"]}


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Shard full state tensors (as :func:`full_optimizer_state` saved them) like their parameters.

    Call after ``optimizer.load_state_dict``; every rank holds the full tensors, so each
    keeps its own shard without communication.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        >>> shard_optimizer_state(opt)  # nothing sharded: unchanged
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    for pg in optimizer.param_groups:
        for p in pg["params"]:
            if not isinstance(p, DTensor) or p not in optimizer.state:
                continue
            entry = optimizer.state[p]
            for k, v in entry.items():
                full = isinstance(v, torch.Tensor) and not isinstance(v, DTensor)
                if full and tuple(v.shape) == tuple(p.shape):
                    entry[k] = distribute_tensor(
                        v.to(p.device), p.device_mesh, p.placements, src_data_rank=None
                    )
