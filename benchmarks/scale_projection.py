"""Project a schedule's wall time to N images on G GPUs, with and without the feature cache.

A projection, not a measurement. It takes the per-level costs ``layerlock bench --json``
measured (for each lock level: the training step with that frozen prefix, the cached
suffix-only step, the prefix's no-grad forward = the fill cost, and the feature bytes per
sample) and applies them to a schedule's stages at a larger scale.

Assumptions (printed with every projection):

1. Stage boundaries the bench did not measure are interpolated linearly between the
   nearest measured levels (exact for equal-cost groups, the cost model of
   :mod:`layerlock.cache_policy`; a ViT's blocks are equal).
2. The ratios between those costs carry over from the measuring device to the target
   GPU; the absolute scale comes from ``--full-images-per-s`` (full fine-tuning
   throughput of ONE target GPU), or the bench's own if not given.
3. G GPUs run data-parallel at ``--efficiency`` of linear scaling for training steps;
   the fill scales linearly (each rank fills N / G samples, no gradient traffic) plus
   the exchange of the features (every rank receives (G-1)/G of them at
   ``--gather-gbps``).
4. Evaluation, data loading and checkpoints are left out (the same in both columns,
   unless loading is the bottleneck: then the cache gains more, since cached epochs
   read no images).
5. Deterministic training transform (one view); ``--views K`` for K fixed augmented
   views multiplies fill time and bytes by K. Caches hold every sample on every rank.

Example:
    python benchmarks/scale_projection.py benchmarks/results/bench_vit_base_224_b8.json \\
        --images 1281167 --gpus 8 --epochs 10 --schedule lp-ft --full-images-per-s 1000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from layerlock.cache_policy import describe_bytes
from layerlock.groups import layer_groups
from layerlock.models import build_model
from layerlock.schedule import resolve_schedule


def _levels(bench: dict[str, Any]) -> list[dict[str, Any]]:
    """Measured levels by boundary, per-image seconds."""
    out = []
    b = bench["batch_size"]
    for lv in bench["levels"]:
        out.append(
            {
                "boundary": lv["boundary"],
                "step": lv["hand"]["median"] / b,
                "cached": lv["cached"]["median"] / b if lv.get("cached") else None,
                "prefix": lv["prefix"]["median"] / b if lv.get("prefix") else 0.0,
                "bytes": lv.get("feature_bytes_per_sample") or 0,
            }
        )
    return sorted(out, key=lambda d: d["boundary"])


def _ideal(levels: list[dict[str, Any]], num_groups: int) -> list[dict[str, Any]]:
    """Every boundary from the cost model (equal groups), scaled to the measured full step."""
    full = _at(levels, 0, "step")
    assert full is not None
    f = full / (3 * num_groups)  # full step = 3 G f
    return [
        {
            "boundary": b,
            "step": (num_groups + 2 * (num_groups - b)) * f,
            "cached": 3 * (num_groups - b) * f if b else None,
            "prefix": b * f,
            "bytes": _bytes(levels, b),
        }
        for b in range(num_groups + 1)
    ]


def _bytes(levels: list[dict[str, Any]], boundary: int) -> int:
    """Feature bytes of the nearest measured level that has a cache (shapes are piecewise
    constant: token maps below the last block, pooled features above it)."""
    have = [lv for lv in levels if lv["bytes"]]
    if not have or boundary == 0:
        return 0
    return int(min(have, key=lambda lv: (abs(lv["boundary"] - boundary), lv["boundary"]))["bytes"])


def _at(levels: list[dict[str, Any]], boundary: int, what: str) -> float | None:
    """``what`` at ``boundary``: measured, or linear between the nearest measured levels."""
    if what == "bytes":
        return float(_bytes(levels, boundary))
    have = [lv for lv in levels if lv[what] is not None]
    for lv in have:
        if lv["boundary"] == boundary:
            return float(lv[what])
    lo = [lv for lv in have if lv["boundary"] < boundary]
    hi = [lv for lv in have if lv["boundary"] > boundary]
    if not lo or not hi:
        return None
    a, b = lo[-1], hi[0]
    t = (boundary - a["boundary"]) / (b["boundary"] - a["boundary"])
    return float(a[what] + t * (b[what] - a[what]))


def project(
    bench: dict[str, Any],
    *,
    schedule: str,
    images: int,
    gpus: int,
    epochs: int,
    full_images_per_s: float | None,
    efficiency: float,
    gather_gbps: float,
    views: int,
    ideal: bool = False,
) -> dict[str, Any]:
    levels = _levels(bench)
    full = _at(levels, 0, "step")
    if full is None:
        sys.exit("the bench has no level with every group trainable (--levels ...,all)")
    scale = 1.0 if full_images_per_s is None else (1.0 / full_images_per_s) / full
    model = build_model(bench["model"], num_classes=1000, pretrained=False)
    groups = layer_groups(model)
    if ideal:
        levels = _ideal(levels, len(groups))
    plan = resolve_schedule(schedule, groups, epochs, steps_per_epoch=1)
    per_gpu = images / gpus
    stages = []
    totals = {"uncached_s": 0.0, "cached_s": 0.0, "fill_s": 0.0, "bytes_max": 0}
    for i, event in enumerate(plan.events):
        end = plan.events[i + 1].step if i + 1 < len(plan.events) else plan.total_steps
        n_epochs = end - event.step
        if n_epochs <= 0:
            continue
        boundary = min(event.trainable) if event.trainable else len(groups)
        step = _at(levels, boundary, "step")
        if step is None:
            sys.exit(f"boundary {boundary} lies outside the measured levels: bench more levels")
        uncached = n_epochs * per_gpu * step * scale / efficiency
        cached_step = _at(levels, boundary, "cached") if 0 < boundary < len(groups) else None
        row: dict[str, Any] = {
            "epochs": n_epochs,
            "boundary": boundary,
            "boundary_group": groups[boundary].name if boundary < len(groups) else None,
            "uncached_s": uncached,
            "cached_s": uncached,
            "fill_s": 0.0,
            "cache_bytes": 0,
        }
        if cached_step is not None:
            prefix = _at(levels, boundary, "prefix") or 0.0
            nbytes = int(images * views * (_at(levels, boundary, "bytes") or 0))
            fill = views * per_gpu * prefix * scale
            fill += nbytes * (gpus - 1) / gpus * 8 / (gather_gbps * 1e9)
            train = n_epochs * per_gpu * cached_step * scale / efficiency
            if fill + train < uncached:  # the cost model would cache this stage
                row.update(cached_s=fill + train, fill_s=fill, cache_bytes=nbytes)
        stages.append(row)
        totals["uncached_s"] += row["uncached_s"]
        totals["cached_s"] += row["cached_s"]
        totals["fill_s"] += row["fill_s"]
        totals["bytes_max"] = max(totals["bytes_max"], row["cache_bytes"])
    return {
        "model": bench["model"],
        "bench_device": bench["device"],
        "bench_batch": bench["batch_size"],
        "img_size": bench["img_size"],
        "schedule": schedule,
        "images": images,
        "gpus": gpus,
        "epochs": epochs,
        "full_images_per_s_per_gpu": full_images_per_s or 1.0 / full,
        "efficiency": efficiency,
        "gather_gbps": gather_gbps,
        "views": views,
        "costs": "cost model (equal groups)" if ideal else "measured levels, interpolated",
        "stages": stages,
        **totals,
        "speedup": totals["uncached_s"] / totals["cached_s"],
    }


def _hours(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 360 else f"{s / 60:.1f} min"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bench", type=Path, help="layerlock bench --json output")
    p.add_argument("--schedule", action="append", help="schedule(s) (default: lp-ft, gradual)")
    p.add_argument("--images", type=int, default=1_281_167)
    p.add_argument("--gpus", type=int, action="append", help="GPU counts (default: 1, 8)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--full-images-per-s", type=float, default=None)
    p.add_argument("--efficiency", type=float, default=0.9)
    p.add_argument("--gather-gbps", type=float, default=100.0)
    p.add_argument("--views", type=int, default=1)
    p.add_argument(
        "--ideal",
        action="store_true",
        help="step, cached-step and fill costs from the cost model (equal groups) scaled to "
        "the measured full step, instead of the measured levels (for noisy benches)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    bench = json.loads(args.bench.read_text())
    results = [
        project(
            bench,
            schedule=s,
            images=args.images,
            gpus=g,
            epochs=args.epochs,
            full_images_per_s=args.full_images_per_s,
            efficiency=args.efficiency if g > 1 else 1.0,
            gather_gbps=args.gather_gbps,
            views=args.views,
            ideal=args.ideal,
        )
        for s in args.schedule or ["lp-ft", "gradual"]
        for g in args.gpus or [1, 8]
    ]
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print("| schedule | GPUs | uncached | cached (incl. fill) | fill | cache size | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['schedule']} | {r['gpus']} | {_hours(r['uncached_s'])} | "
            f"{_hours(r['cached_s'])} | {_hours(r['fill_s'])} | "
            f"{describe_bytes(r['bytes_max'])} | {r['speedup']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
