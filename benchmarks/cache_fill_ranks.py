"""Feature-cache fill time with 1 rank vs R ranks (gloo, one thread per rank), side by side.

Each configuration fills a FeatureCache of the same model prefix over the same images;
with R ranks every rank fills N / R samples and the blocks are exchanged
(``FeatureCache(..., across_ranks=True)``). Reported: the fill time (slowest rank, exchange
included) per configuration, alternated ``--repeats`` times, and the ratio.

Example:
    OMP_NUM_THREADS=1 python benchmarks/cache_fill_ranks.py --model vit_small_patch16_224 \\
        --img-size 112 --samples 256 --ranks 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from layerlock import layer_groups
from layerlock.cache import FeatureCache
from layerlock.distributed import free_port
from layerlock.split import split_model


def _fill(model_name: str, img: int, samples: int, boundary: int, batch: int) -> float:
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=10, img_size=img)
    split = split_model(model, layer_groups(model), boundary)
    assert split is not None
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(samples, 3, img, img, generator=g), torch.arange(samples) % 10
    )
    cache = FeatureCache(split, data, batch_size=batch, budget_bytes=2**40, across_ranks=True)
    return cache.fill_seconds


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        s = _fill(args.model, args.img_size, args.samples, args.boundary, args.batch_size)
        slowest = [0.0] * world
        dist.all_gather_object(slowest, s)
        if rank == 0:
            Path(out).write_text(json.dumps(max(slowest)))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--boundary", type=int, default=13, help="lowest trainable group")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    one, many = [], []
    for _ in range(args.repeats):
        one.append(_fill(args.model, args.img_size, args.samples, args.boundary, args.batch_size))
        with tempfile.TemporaryDirectory() as d:
            out = str(Path(d) / "t.json")
            mp.spawn(_worker, args=(args.ranks, free_port(), args, out), nprocs=args.ranks)
            many.append(json.loads(Path(out).read_text()))
    result = {
        "args": vars(args),
        "one_rank_s": one,
        f"{args.ranks}_ranks_s": many,
        "ratio_median": statistics.median(m / o for m, o in zip(many, one)),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
