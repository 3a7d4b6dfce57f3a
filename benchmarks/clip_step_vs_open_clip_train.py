"""Step time of ``layerlock finetune task=clip`` vs open_clip_train 3.3.0, side by side.

Same model config (the CLIP demo architecture, registered with OpenCLIP), same batch, same
lock, fp32 on CPU, one process, data loading in the main process (``--workers 0``), three
locks: none, LiT (``--lock-image``) and partial (``--lock-image-unlocked-groups 2
--lock-text --lock-text-unlocked-layers 1``). open_clip_train trains on its synthetic data
(``--dataset-type synthetic``), layerlock on the demo's image-caption pairs (images of the
same size); the step time of both is a whole iteration, data included: open_clip_train's
``Batch (t)`` (the epoch's mean) and layerlock's ``batch / images_per_s`` of every step row
(``run.log_every=1``; mean). layerlock's tower cache is off (``cache.mode=off``): this is
the cost of the same computation, not of skipping it.

    OMP_NUM_THREADS=2 python benchmarks/clip_step_vs_open_clip_train.py [--batch 64] [--steps 15]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import tempfile
from pathlib import Path

from layerlock.config import load_config
from layerlock.data.clip_demo import register_demo_clip
from layerlock.finetune import finetune
from layerlock.runs import read_jsonl

LOCKS = {
    "none": ([], ["towers.visual=full", "towers.text=full"]),
    "lit": (["--lock-image"], ["towers.visual=locked", "towers.text=full"]),
    "partial": (
        [
            "--lock-image",
            "--lock-image-unlocked-groups",
            "2",
            "--lock-text",
            "--lock-text-unlocked-layers",
            "1",
            "--lock-text-freeze-layer-norm",
        ],
        ["towers.visual=0:2", "towers.text=0:1"],
    ),
}


def open_clip_train_step(tmp: str, tag: str, batch: int, steps: int, lock: list[str]) -> float:
    from open_clip_train.main import main

    name = register_demo_clip()
    main(
        [
            "--model", name, "--dataset-type", "synthetic",
            "--train-num-samples", str(batch * steps), "--batch-size", str(batch),
            "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--workers", "0",
            "--logs", tmp, "--name", tag, "--log-every-n-steps", "1", "--save-frequency", "0",
            "--lr", "1e-3", "--warmup", "0", *lock,
        ]
    )  # fmt: skip
    text = (Path(tmp) / tag / "out.log").read_text()
    return float(re.findall(r"Batch \(t\): ([0-9.]+)", text)[-1])


def layerlock_step(tmp: str, tag: str, batch: int, steps: int, towers: list[str]) -> float:
    cfg = load_config(
        overrides=[
            "task=clip",
            *towers,
            f"data.shots_per_class={math.ceil(batch * steps / 5)}",
            f"run.batch_size={batch}",
            "run.epochs=1",
            "run.device=cpu",
            "run.precision=fp32",
            "data.workers=0",
            "cache.mode=off",
            "eval.at_start=false",
            "run.log_every=1",
            f"run.out_dir={tmp}/{tag}",
        ]
    )
    result = finetune(cfg)
    rows = read_jsonl(result.run_dir / "steps.jsonl")[:steps]
    return statistics.mean(batch / r["images_per_s"] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (flags, towers) in LOCKS.items():
            ours = layerlock_step(tmp, f"ll-{name}", args.batch, args.steps, towers)
            theirs = open_clip_train_step(tmp, f"oct-{name}", args.batch, args.steps, flags)
            out[name] = {
                "layerlock_step_s": ours,
                "open_clip_train_step_s": theirs,
                "ratio": ours / theirs,
                "open_clip_train_flags": " ".join(flags),
                "layerlock_keys": " ".join(towers),
            }
            print(name, json.dumps(out[name]), flush=True)
    report = {"config": vars(args), "locks": out}
    path = Path(__file__).parent / "results" / "clip_step_vs_open_clip_train.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
