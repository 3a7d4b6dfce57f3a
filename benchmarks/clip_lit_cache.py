"""LiT on the CLIP demo: training epoch time with the locked image tower cached vs uncached.

Both runs side by side in one process, same config except ``cache.mode``; the time of an
epoch is its training part (the epoch row's elapsed time minus its evaluation), epochs after
the first (the cached run fills its cache in epoch 1; the fill time is reported apart).
Reported: the median and the minimum over those epochs (the minimum is the less disturbed
by other processes on a shared machine).

    OMP_NUM_THREADS=2 python benchmarks/clip_lit_cache.py [--shots 200] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from layerlock.config import load_config
from layerlock.finetune import finetune
from layerlock.runs import read_jsonl


def epoch_train_seconds(run_dir: Path) -> list[float]:
    rows = [r for r in read_jsonl(run_dir / "epochs.jsonl") if r["epoch"] >= 1]
    out, prev = [], 0.0
    for r in rows:
        out.append(r["elapsed_s"] - prev - r["eval_s"])
        prev = r["elapsed_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shots", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("off", "on"):
            cfg = load_config(
                overrides=[
                    "task=clip",
                    "unfreeze=lit",
                    f"cache.mode={mode}",
                    f"data.shots_per_class={args.shots}",
                    f"run.epochs={args.epochs}",
                    "run.batch_size=64",
                    "run.device=cpu",
                    "eval.at_start=false",
                    f"run.out_dir={tmp}/{mode}",
                ]
            )
            result = finetune(cfg)
            times = epoch_train_seconds(result.run_dir)
            fill = sum(r.get("fill_s", 0.0) for r in result.cache)
            results[mode] = {
                "epoch_train_s": times,
                "median_after_first_s": statistics.median(times[1:]),
                "min_after_first_s": min(times[1:]),
                "cache_fill_s": fill,
                "final_R@1": result.final_top1,
            }
    ratio = {
        k: results["off"][k] / results["on"][k]
        for k in ("median_after_first_s", "min_after_first_s")
    }
    report = {"config": vars(args), "runs": results, "uncached_over_cached": ratio}
    print(json.dumps(report, indent=2))
    out = Path(__file__).parent / "results" / "clip_lit_cache.json"
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
