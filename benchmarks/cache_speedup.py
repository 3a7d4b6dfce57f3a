"""Epoch time with and without the frozen-prefix feature cache (head-only and k=2).

Trains the trainable suffix for a few epochs on a synthetic dataset of N random images
twice: uncached (every step runs the frozen prefix forward) and cached (one fill, then
every epoch from the cache). Reports the fill time, the epoch times and the speed-ups.

    python benchmarks/cache_speedup.py --model vit_small_patch16_224 --img-size 112 \
        --samples 128 --batch-size 16 --epochs 2 --levels 1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

from layerlock import layer_groups, lock
from layerlock.cache import FeatureCache
from layerlock.split import split_model


def epoch(forward, batches, params) -> float:
    opt = torch.optim.AdamW(params, lr=1e-5)
    t = time.perf_counter()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(forward(x), y).backward()
        opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--levels", default="1,2")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    kw = {"img_size": args.img_size} if "vit" in args.model else {}
    model = timm.create_model(args.model, num_classes=10, **kw)
    groups = layer_groups(model)
    data = TensorDataset(
        torch.randn(args.samples, 3, args.img_size, args.img_size),
        torch.randint(0, 10, (args.samples,)),
    )
    rows = []
    for k in (int(s) for s in args.levels.split(",")):
        lock(model, unlocked_groups=k, freeze_bn_stats=True)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        split = split_model(model, groups, len(groups) - k)
        assert split is not None
        loader = DataLoader(data, batch_size=args.batch_size)
        uncached = [epoch(model, loader, params) for _ in range(args.epochs)]
        cache = FeatureCache(split, data, budget_bytes=2**32, batch_size=args.batch_size)
        cached = [
            epoch(split.suffix, cache.loader(args.batch_size, epoch=e), params)
            for e in range(args.epochs)
        ]
        u, c = statistics.median(uncached), statistics.median(cached)
        row = {
            "k": k,
            "boundary": len(groups) - k,
            "uncached_epoch_s": uncached,
            "fill_s": cache.fill_seconds,
            "cached_epoch_s": cached,
            "epoch_speedup": u / c,
            "cache_bytes": cache.nbytes,
            "feature_shape": list(cache.feature_shape),
        }
        rows.append(row)
        print(
            f"k={k}: uncached epoch {u:.2f} s, fill {cache.fill_seconds:.2f} s, cached epoch "
            f"{c:.3f} s -> {u / c:.1f}x per epoch; cache {cache.nbytes / 2**20:.1f} MB "
            f"({args.samples} x {tuple(cache.feature_shape)} fp16)",
            flush=True,
        )
    result = {"args": vars(args), "threads": torch.get_num_threads(), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
