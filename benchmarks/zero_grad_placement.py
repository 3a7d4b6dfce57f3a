"""Does clearing gradients right after ``optimizer.step()`` cost anything in a training job?

``Unfreezer.step()`` clears gradients (``zero_grad(set_to_none=True)``) right after
``optimizer.step()``; the hand loop of ``layerlock bench`` clears them before the forward.
In ``layerlock bench --controls`` the hand variant that clears late ("hand_late") shows the
same CPU-time excess as the layerlock step. This script finds out whether that excess is a
property of the step or of the interleaved benchmark, by counting what the kernel does for
each step: minor page faults (``ru_minflt``, first touches of memory the process had given
back or never had) and process CPU time, for three steps (layerlock, hand, hand_late) run

- **interleaved**: layerlock, hand, hand_late, layerlock, ... (what ``layerlock bench``
  does: other model copies run between two steps of one method), and
- **blocked**: ``--block`` consecutive steps of one method, then the next method (what a
  training job does: one model, step after step); the first step of each block, which
  follows another method, is left out.

Page-fault counts do not depend on the machine's load, so they settle the question even
where the timings are noisy.

    python benchmarks/zero_grad_placement.py --model vit_small_patch16_224 --img-size 112 \
        --batch-size 16 --levels 14,6 --repeats 9 --block 4 \
        --out benchmarks/results/zero_grad_placement_vit_small_112_b16.json
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import timm
import torch
from torch import nn

from layerlock.groups import layer_groups
from layerlock.schedule import parse_schedule
from layerlock.unfreezer import Unfreezer

Step = Callable[[], None]


def _steps(base: nn.Module, k: int, x: torch.Tensor, y: torch.Tensor) -> dict[str, Step]:
    groups = layer_groups(base)
    g = len(groups)
    trainable = range(g - k, g)
    ll_model = copy.deepcopy(base).train()
    u = Unfreezer(
        ll_model,
        parse_schedule({0: ",".join(groups[i].name for i in trainable)}),
        epochs=1,
        steps_per_epoch=10**9,
        lr=1e-5,
        weight_decay=0.0,
        freeze_bn_stats=False,
    )

    def layerlock() -> None:
        nn.functional.cross_entropy(u.model(x), y).backward()
        u.step()

    def hand_copy(late: bool) -> Step:
        model = copy.deepcopy(base).train()
        hg = layer_groups(model)
        for gi, grp in enumerate(hg):
            for p in grp.params:
                p.requires_grad_(gi in trainable)
        opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.0
        )

        def step() -> None:
            if not late:
                opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if late:
                opt.zero_grad(set_to_none=True)

        return step

    return {"layerlock": layerlock, "hand": hand_copy(False), "hand_late": hand_copy(True)}


def _measure(fn: Step) -> tuple[int, float]:
    f0, c0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0, time.process_time() - c0


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    base = timm.create_model(args.model, img_size=args.img_size, num_classes=10)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    y = torch.arange(args.batch_size) % 10
    out: dict[str, Any] = {
        "model": f"timm:{args.model}",
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "block": args.block,
        "levels": [],
    }
    for k in (int(v) for v in args.levels.split(",")):
        steps = _steps(base, k, x, y)
        names = list(steps)
        for fn in steps.values():
            fn(), fn()
        samples: dict[str, dict[str, list[tuple[int, float]]]] = {
            mode: {n: [] for n in names} for mode in ("interleaved", "blocked")
        }
        for i in range(args.repeats):
            order = names[i % len(names) :] + names[: i % len(names)]
            for n in order:
                samples["interleaved"][n].append(_measure(steps[n]))
            for n in order:
                steps[n]()  # the step after another method: left out
                for _ in range(args.block - 1):
                    samples["blocked"][n].append(_measure(steps[n]))
        row: dict[str, Any] = {"label": f"k={k}"}
        for mode, by_name in samples.items():
            row[mode] = {
                n: {
                    "minor_faults_per_step": statistics.median(f for f, _ in xs),
                    "cpu_s": statistics.median(c for _, c in xs),
                }
                for n, xs in by_name.items()
            }
            hand = row[mode]["hand"]["cpu_s"]
            for n in names:
                row[mode][n]["cpu_ratio_to_hand"] = row[mode][n]["cpu_s"] / hand
        out["levels"].append(row)
        del steps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--levels", default="14,6")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--block", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    r = run(args)
    print(
        f"{r['model']} {r['img_size']}px batch {r['batch_size']}, {r['threads']} thread(s); "
        "median per step: minor page faults, CPU ms (ratio to hand)"
    )
    for lv in r["levels"]:
        for mode in ("interleaved", "blocked"):
            cells = "  ".join(
                f"{n} {v['minor_faults_per_step']:>7,.0f} flt {v['cpu_s'] * 1e3:7.1f} ms "
                f"({v['cpu_ratio_to_hand']:.3f})"
                for n, v in lv[mode].items()
            )
            print(f"{lv['label']:>5} {mode:>11}: {cells}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
