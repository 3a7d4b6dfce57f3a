"""layerlock step vs a minimal hand-written step at several lock levels (``layerlock bench``).

    python benchmarks/step_overhead.py timm:vit_small_patch16_224 --img-size 112 --batch-size 16 \
        --levels all --repeats 9 --controls --out benchmarks/results/overhead_vit_small_112_b16.json
    python benchmarks/step_overhead.py timm:resnet50 --img-size 112 --batch-size 8 \
        --levels all --repeats 9 --controls --out benchmarks/results/overhead_resnet50_112_b8.json

Same as ``layerlock bench MODEL --no-memory``, printing one compact line per level: the
ratio layerlock / hand on the wall clock (median, min-max of the per-repeat ratios) and in
process CPU time, and with ``--controls`` the hand-loop variants' ratios to the hand loop
(``layerlock.bench.CONTROLS``). ``--threads`` sets ``torch.set_num_threads`` (default:
torch's choice).
"""

from __future__ import annotations

import argparse
import json

import torch

from layerlock.bench import run_bench


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--levels", default="1,2,all")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--controls", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = run_bench(
        args.model,
        batch_size=args.batch_size,
        img_size=args.img_size,
        levels=args.levels,
        repeats=args.repeats,
        warmup=args.warmup,
        memory=False,
        controls=args.controls,
    )
    print(
        f"{r.model}: batch {r.batch_size}, {r.img_size}px, {r.device}, {r.threads} thread(s), "
        f"median (min-max) of {r.repeats} interleaved repeats"
    )
    for lv in r.levels:
        line = (
            f"{lv.label:>6}: layerlock {lv.layerlock}  hand {lv.hand}  ratio {lv.ratio:.3f} "
            f"({lv.ratio_min:.2f}-{lv.ratio_max:.2f})  cpu {lv.ratio_cpu:.3f}"
        )
        for name, c in lv.controls.items():
            line += f"  {name} {c['ratio']:.3f} ({c['ratio_min']:.2f}-{c['ratio_max']:.2f})"
        print(line)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(r.to_dict(), f, indent=2)


if __name__ == "__main__":
    main()
