"""The feature cache under DDP: 2 CPU processes (gloo), one spawn, four runs.

Uncached, cached in memory, cached on disk (``cache.dir``: fills and publishes) and the
same again (reuses the file: no fill) must train alike: the same loss at every step (up to
float32 rounding: the fill's batches differ from the training batches) and replicas
identical bit for bit. Each rank fills its share of the training set; a direct
FeatureCache check confirms every rank ends with every sample's features.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from layerlock import layer_groups
from layerlock.cache import FeatureCache
from layerlock.distributed import free_port
from layerlock.finetune import finetune
from layerlock.split import split_model
from test_finetune import make_folder, tiny_config

FLOAT32_ATOL = 1e-5  # float32 rounding of the prefix's matmuls, as in test_finetune_cache
RUNS = {
    "off": {"cache": "off"},
    "memory": {"cache": "on"},
    "disk": {"cache": "on", "cache_dir": "features"},
    "again": {"cache": "on", "cache_dir": "features"},
}


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    tmp = Path(root)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out: dict[str, Any] = {}
        for name, extra in RUNS.items():
            kw = dict(extra)
            if "cache_dir" in kw:
                kw["cache.dir"] = str(tmp / str(kw.pop("cache_dir")))
            cfg = tiny_config(
                tmp,
                out_dir=str(tmp / name),
                schedule="0:1, 2:all",
                epochs=3,
                deterministic_train_transform=True,
                cache_dtype="float32",
                device="cpu",
                **kw,
            )
            losses: list[float] = []
            result = finetune(cfg, progress=False, on_step=lambda _, x, log=losses: log.append(x))
            out[name] = {
                "losses": losses,
                "agree": result.replicas_agree,
                "cache": result.cache,
                "epochs": result.epochs,
            }
        # a direct fill across ranks: every rank ends with the single-process features
        import timm

        torch.manual_seed(0)
        model = timm.create_model("test_vit", num_classes=3)
        data = torch.utils.data.TensorDataset(torch.randn(7, 3, 32, 32), torch.arange(7) % 3)
        split = split_model(model, layer_groups(model), 7)
        shared = FeatureCache(split, data, dtype=torch.float32, across_ranks=True, batch_size=2)
        alone = FeatureCache(split, data, dtype=torch.float32, batch_size=2)
        out["shared_equal"] = torch.allclose(shared.features, alone.features, atol=1e-6)
        out["shared_labels"] = torch.equal(shared.labels, alone.labels)
        torch.save(out, tmp / f"result{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_cached_ddp_equals_uncached_ddp(tmp_path: Path) -> None:
    make_folder(tmp_path / "data", train=5)
    try:
        mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    except mp.ProcessExitedException:
        # gloo sometimes aborts in teardown after the results were written
        if not all((tmp_path / f"result{r}.pt").exists() for r in range(2)):
            raise
    r0, r1 = (torch.load(tmp_path / f"result{r}.pt", weights_only=False) for r in range(2))
    off = torch.tensor(r0["off"]["losses"], dtype=torch.float64)
    assert len(off) == 6  # 15 images, 2 ranks, batches of 4: 2 steps a epoch
    for name in RUNS:
        for r in (r0, r1):
            assert r[name]["agree"] is True, name
            got = torch.tensor(r[name]["losses"], dtype=torch.float64)
            torch.testing.assert_close(got, off, rtol=0, atol=FLOAT32_ATOL)
            for a, b in zip(r[name]["epochs"], r0["off"]["epochs"]):
                assert a["val_acc"] == b["val_acc"]
    first = next(d for d in r0["memory"]["cache"] if d["epoch"] == 1)
    assert first["train_cached"] and first["fills"] >= 1
    disk = next(d for d in r0["disk"]["cache"] if d["epoch"] == 1)
    again = next(d for d in r0["again"]["cache"] if d["epoch"] == 1)
    assert disk["fills"] >= 1 and disk["reused"] == 0
    assert again["fills"] == 0 and again["reused"] == disk["fills"]  # second run: no fill
    assert r0["shared_equal"] and r1["shared_equal"]
    assert r0["shared_labels"] and r1["shared_labels"]
