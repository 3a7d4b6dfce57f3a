"""The CLIP demo's table: lit, full and a progressive schedule from the same start.

Zero-shot top-1 on digits 0-4 (held out of pretraining: what the model knew) and 5-9 (what
it learns), image->text and text->image R@1 on the validation pairs, before training
(epoch 0) and after; default settings of ``layerlock finetune task=clip`` otherwise.

    OMP_NUM_THREADS=2 python benchmarks/clip_demo_table.py [--epochs 16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from layerlock.config import load_config
from layerlock.finetune import finetune
from layerlock.runs import read_jsonl

SCHEDULES = {"lit": "unfreeze=lit", "full": "unfreeze=full", "gradual": "unfreeze=gradual"}
COLUMNS = {
    "0-4 zero-shot": "digits0-4/zeroshot-val-top1",
    "5-9 zero-shot": "digits5-9/zeroshot-val-top1",
    "i->t R@1": "image_to_text_R@1",
    "t->i R@1": "text_to_image_R@1",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=16)
    args = ap.parse_args()
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, override in SCHEDULES.items():
            cfg = load_config(
                overrides=[
                    "task=clip",
                    override,
                    f"run.epochs={args.epochs}",
                    "run.device=cpu",
                    f"run.out_dir={tmp}/{name}",
                ]
            )
            result = finetune(cfg)
            rows = read_jsonl(result.run_dir / "epochs.jsonl")
            table["start"] = {k: rows[0][c] for k, c in COLUMNS.items()}
            table[name] = {k: rows[-1][c] for k, c in COLUMNS.items()}
            table[name]["wall_s"] = result.wall_time_s
    print("| schedule | " + " | ".join(COLUMNS) + " | wall s |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for name, row in table.items():
        cells = [f"{row[k]:.1%}" for k in COLUMNS]
        wall = f"{row['wall_s']:.0f}" if "wall_s" in row else "-"
        print(f"| {name} | " + " | ".join(cells) + f" | {wall} |")
    out = Path(__file__).parent / "results" / "clip_demo_table.json"
    out.write_text(json.dumps({"epochs": args.epochs, "table": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
