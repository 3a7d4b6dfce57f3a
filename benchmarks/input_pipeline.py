"""The fine-tuning job's images/s against the bare training step's, side by side in one run.

Both feed one and the same training step (full fine-tuning driven by an ``Unfreezer``:
forward, cross-entropy, ``backward()``, ``Unfreezer.step()``):

- **bare**: pre-made tensors, one fixed batch; nothing but the step;
- **job, workers=N**: the job's real input path: an ImageFolder tree of generated images
  (``layerlock.data.image_folder``), decoded and transformed by the job's own training
  transform (``layerlock.data.model_transforms(model).train``), batched by a DataLoader
  with the job's options for the device (``layerlock.data.loading.loader_options``), for
  each worker count asked for (``auto`` resolved by ``resolve_workers``, as the job does).

The configurations run in blocks of ``--steps`` timed steps, interleaved round by round
(the order rotating each round) so that drift on a shared machine hits all alike. Each
block first draws one untimed batch (worker start-up, the loader's first prefetch),
reported separately as ``first_batch_s``. Per block: images/s = batch * steps / elapsed,
and the time spent waiting for the next batch is measured directly around ``next()``.
The ratio job / bare is the median over rounds of the per-round ratios (min-max).

The training order is a plain ``RandomSampler``; the job's own seeded epoch order only
decides which indices come, not what a batch costs.

    python benchmarks/input_pipeline.py --model resnet18 --batch-size 32 --steps 4 \
        --rounds 3 --workers 0,1,auto --out benchmarks/results/pipeline_resnet18_224_b32.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from layerlock.data import image_folder, model_transforms
from layerlock.data.loading import available_cores, loader_options, resolve_workers
from layerlock.unfreezer import Unfreezer


def make_image_folder(
    root: Path, n_images: int, n_classes: int, size: tuple[int, int], fmt: str, seed: int = 0
) -> None:
    """``root/class_i/img_j.<fmt>``: smooth random images (low-frequency noise plus a little
    fine noise), which compress and decode like photographs rather than like white noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    ext = {"jpeg": "jpg", "png": "png"}[fmt]
    for i in range(n_images):
        d = root / f"class_{i % n_classes}"
        d.mkdir(parents=True, exist_ok=True)
        coarse = rng.uniform(0, 255, size=(h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(h, w, 3))
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
        if fmt == "jpeg":
            img.save(d / f"img_{i}.{ext}", quality=90)
        else:
            img.save(d / f"img_{i}.{ext}")


def _workers_list(text: str, device: torch.device) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    seen: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        n = resolve_workers(part if part == "auto" else int(part), device)
        label = f"auto (={n})" if part == "auto" else str(n)
        if n in seen:  # the same loader twice: label the first one with both names
            out = [(f"{lbl}, {label}" if m == n else lbl, m) for lbl, m in out]
            continue
        seen.add(n)
        out.append((label, n))
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = timm.create_model(args.model, num_classes=args.classes).to(device)
    transforms = model_transforms(model)
    input_size = tuple(transforms.data_config.get("input_size", (3, 224, 224)))
    unfreezer = Unfreezer(
        model, "0:all", epochs=1, steps_per_epoch=10**9, lr=1e-5, weight_decay=0.0
    )

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = nn.functional.cross_entropy(unfreezer.model(x), y)
        loss.backward()
        unfreezer.step()

    tmp = tempfile.TemporaryDirectory(prefix="layerlock-pipeline-")
    root = Path(tmp.name) / "train"
    t0 = time.perf_counter()
    make_image_folder(root, args.images, args.classes, (args.width, args.height), args.format)
    gen_s = time.perf_counter() - t0
    dataset = image_folder(root, transform=transforms.train, mode=transforms.mode)
    nbytes = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())

    x = torch.randn(args.batch_size, *input_size, device=device)
    y = torch.arange(args.batch_size, device=device) % args.classes
    configs: list[tuple[str, int | None]] = [("bare", None)]
    configs += [(f"job, workers={lbl}", n) for lbl, n in _workers_list(args.workers, device)]

    def loader(n_workers: int) -> DataLoader:
        options = loader_options(device, n_workers)
        sampler = RandomSampler(
            dataset,
            num_samples=args.batch_size * (args.steps + 1),
            generator=torch.Generator().manual_seed(0),
        )
        return DataLoader(
            dataset,
            batch_size=args.batch_size,
            sampler=sampler,
            drop_last=True,
            **{**options, "persistent_workers": False},
        )

    def block(n_workers: int | None) -> dict[str, float]:
        if n_workers is None:
            batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter([(x, y)] * (args.steps + 1))
        else:
            batches = iter(loader(n_workers))
        t = time.perf_counter()
        xb, yb = next(batches)  # untimed: worker start-up and first prefetch
        first = time.perf_counter() - t
        step(xb.to(device, non_blocking=True), yb.to(device, non_blocking=True))
        wait = 0.0
        t_start = time.perf_counter()
        for _ in range(args.steps):
            t = time.perf_counter()
            xb, yb = next(batches)
            wait += time.perf_counter() - t
            step(xb.to(device, non_blocking=True), yb.to(device, non_blocking=True))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t_start
        del batches
        return {
            "images_per_s": args.batch_size * args.steps / elapsed,
            "step_s": elapsed / args.steps,
            "wait_per_batch_s": wait / args.steps,
            "first_batch_s": first,
        }

    block(None)  # warm-up: optimizer state, allocator
    rounds: list[dict[str, dict[str, float]]] = []
    for r in range(args.rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        rounds.append({label: block(n) for label, n in order})
    tmp.cleanup()

    def stats(xs: list[float]) -> dict[str, float]:
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}

    results = {}
    for label, n in configs:
        ips = [rd[label]["images_per_s"] for rd in rounds]
        ratios = [rd[label]["images_per_s"] / rd["bare"]["images_per_s"] for rd in rounds]
        results[label] = {
            "num_workers": n,
            "images_per_s": stats(ips),
            "ratio_to_bare": stats(ratios),
            "wait_per_batch_s": stats([rd[label]["wait_per_batch_s"] for rd in rounds]),
            "first_batch_s": stats([rd[label]["first_batch_s"] for rd in rounds]),
        }
    return {
        "model": f"timm:{args.model}",
        "input_size": list(input_size),
        "batch_size": args.batch_size,
        "steps_per_block": args.steps,
        "rounds": args.rounds,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "available_cores": available_cores(),
        "images": {
            "count": args.images,
            "format": args.format,
            "size": [args.width, args.height],
            "bytes": nbytes,
            "generated_in_s": gen_s,
        },
        "train_transform": repr(transforms.train),
        "torch": f"{torch.__version__} ({platform.machine()})",
        "cpu_count": os.cpu_count(),
        "configs": results,
        "per_round": rounds,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet18", help="a timm model name")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per block")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="0,auto", help="comma list of counts and/or 'auto'")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--format", choices=("jpeg", "png"), default="jpeg")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    r = measure(args)
    print(
        f"{r['model']} {r['input_size'][1]}px, batch {r['batch_size']}, {r['device']}, "
        f"{r['torch_threads']} torch thread(s), {r['available_cores']} core(s); "
        f"{r['images']['count']} {r['images']['format']} images "
        f"{r['images']['size'][0]}x{r['images']['size'][1]}; median (min-max) of "
        f"{r['rounds']} rounds x {r['steps_per_block']} steps"
    )
    for label, c in r["configs"].items():
        ips, ratio, wait = c["images_per_s"], c["ratio_to_bare"], c["wait_per_batch_s"]
        print(
            f"{label:>22}: {ips['median']:7.1f} img/s ({ips['min']:.1f}-{ips['max']:.1f})  "
            f"ratio {ratio['median']:.3f} ({ratio['min']:.2f}-{ratio['max']:.2f})  "
            f"wait/batch {wait['median'] * 1e3:7.1f} ms  "
            f"first batch {c['first_batch_s']['median'] * 1e3:7.1f} ms"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(r, indent=2))
    return r


if __name__ == "__main__":
    main()
