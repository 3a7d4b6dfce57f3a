"""DDP on CPU (2 processes, gloo): replicas stay identical across unlock events; torch.compile."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from conftest import spawn_for_results
from layerlock.distributed import all_equal_across_ranks, free_port, is_distributed, wrap_ddp
from layerlock.unfreezer import Unfreezer

STEPS = 9
SCHEDULE = "s0:1, s3:2, s6:all"


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


def _worker(rank: int, world: int, port: int, mode: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = mlp()
        start = [p.detach().clone() for p in model.parameters()]
        if mode == "rebuild":
            u = Unfreezer(
                model, SCHEDULE, epochs=1, steps_per_epoch=STEPS, lr=0.05, weight_decay=0.01
            )
            assert u._ddp and isinstance(u.model, nn.parallel.DistributedDataParallel)
            call = lambda: u.model  # noqa: E731 - always the current wrapper
        else:  # the defect: wrap once, before later unlocks
            u = Unfreezer(
                model,
                SCHEDULE,
                epochs=1,
                steps_per_epoch=STEPS,
                lr=0.05,
                weight_decay=0.01,
                ddp=False,
            )
            fixed = nn.parallel.DistributedDataParallel(model)
            call = lambda: fixed  # noqa: E731
        wrappers: list[nn.Module] = []  # kept alive so identities are not reused
        for step in range(STEPS):
            g = torch.Generator().manual_seed(1000 * rank + step)  # different data per rank
            x, y = torch.randn(8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
            if not any(call() is w for w in wrappers):
                wrappers.append(call())
            nn.functional.cross_entropy(call()(x), y).backward()
            u.step()
        same = all_equal_across_ranks(list(model.parameters()))
        moved = [not torch.equal(a, b) for a, b in zip(start, model.parameters())]
        torch.save(
            {"same": same, "moved": moved, "wrappers": len(wrappers)}, Path(out) / f"{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def _spawn(mode: str, tmp_path: Path) -> list[dict[str, Any]]:
    results = [tmp_path / f"{r}.pt" for r in range(2)]
    spawn_for_results(_worker, (2, free_port(), mode, str(tmp_path)), results)
    return [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.slow
def test_ddp_replicas_identical_when_wrapper_is_rebuilt(tmp_path: Path) -> None:
    results = _spawn("rebuild", tmp_path)
    assert all(r["same"] for r in results)
    assert all(all(r["moved"]) for r in results), "every parameter was unlocked and trained"
    assert results[0]["wrappers"] == 3  # one wrapper per trainable set


@pytest.mark.slow
def test_ddp_replicas_drift_without_rebuild(tmp_path: Path) -> None:
    """The failure mode the invariant above guards against (seen in Lightning's BackboneFinetuning)."""
    results = _spawn("fixed", tmp_path)
    assert not any(r["same"] for r in results)


def test_single_process_has_no_wrapper() -> None:
    model = mlp()
    assert not is_distributed()
    assert wrap_ddp(model) is model
    u = Unfreezer(model, "lp-ft:at=s1", epochs=1, steps_per_epoch=2)
    assert u.model is model


def test_torch_compile_trains_newly_unlocked_parameters() -> None:
    """Compiled model across an unlock event (aot_eager: the autograd graph, no C++ build).

    Following the documented recipe, a listener resets dynamo at each change.
    """
    torch._dynamo.reset()
    model = mlp()
    u = Unfreezer(model, "s0:1, s2:all", epochs=1, steps_per_epoch=4, lr=0.05)
    u.add_listener(lambda event: torch._dynamo.reset())
    compiled = torch.compile(model, backend="aot_eager")
    first = model[0].weight.detach().clone()
    head = model[6].weight.detach().clone()
    for step in range(4):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
        nn.functional.cross_entropy(compiled(x), y).backward()
        if step < 2:
            assert model[0].weight.grad is None
        else:
            assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
        u.step()
        if step == 1:
            assert torch.equal(first, model[0].weight)
    assert not torch.equal(first, model[0].weight)
    assert not torch.equal(head, model[6].weight)
    torch._dynamo.reset()
