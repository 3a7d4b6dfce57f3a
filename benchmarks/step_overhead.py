"""layerlock step vs a minimal hand-written step at several lock levels (``layerlock bench``).

    python benchmarks/step_overhead.py timm:vit_small_patch16_224 --img-size 112 --batch-size 16 \
        --levels 1,2,all --repeats 5
    python benchmarks/step_overhead.py timm:resnet50 --img-size 112 --batch-size 8 --levels 1,2,5,all

Same as ``layerlock bench MODEL --no-memory``, printing the ratio per level compactly.
"""

from __future__ import annotations

import argparse
import json

from layerlock.bench import run_bench


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--levels", default="1,2,all")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    r = run_bench(
        args.model,
        batch_size=args.batch_size,
        img_size=args.img_size,
        levels=args.levels,
        repeats=args.repeats,
        memory=False,
    )
    for lv in r.levels:
        print(
            f"{lv.label:>6}: layerlock {lv.layerlock}  hand {lv.hand}  ratio {lv.ratio:.3f} "
            f"({lv.ratio_min:.2f}-{lv.ratio_max:.2f})"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(r.to_dict(), f, indent=2)


if __name__ == "__main__":
    main()
