"""``layerlock wise``: WiSE-FT mixtures of a finished run's start and end weights."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import examples

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "wise",
        help="interpolate a run's start and end weights (WiSE-FT) and evaluate each mixture",
        description=(
            "theta(alpha) = (1 - alpha) * theta_start + alpha * theta_end between the run's "
            "start.safetensors (after its head-only stage, or before training) and its final "
            "model.safetensors. Every evaluation set of the run is evaluated for each alpha; "
            "prints a table, writes wise.json and wise.png (validation accuracy against the "
            "other sets', one point per alpha) into RUN_DIR."
        ),
        epilog=examples(
            "layerlock wise runs/finetune",
            "layerlock wise runs/finetune --alphas 0:1:0.05 --save best",
            "layerlock wise runs/finetune --eval-sets demo-rotated,demo-noisy --save 0.6",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished layerlock finetune run")
    p.add_argument(
        "--alphas", default="0:1:0.1", help="START:STOP:STEP or a list (default 0:1:0.1)"
    )
    p.add_argument(
        "--eval-sets",
        default=None,
        metavar="SETS",
        help="evaluation sets instead of the run's eval.sets (e.g. demo-rotated,mine=folder:DIR)",
    )
    p.add_argument(
        "--save",
        default=None,
        metavar="ALPHA",
        help="write wise-ALPHA.safetensors ('best': the best alpha)",
    )
    p.add_argument("--device", default=None, help="override the run's device")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..wise import WISE_CHART, wise

    result = wise(
        args.run_dir,
        alphas=args.alphas,
        eval_sets=args.eval_sets,
        save=args.save,
        device=args.device,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    columns = [k for k in result.rows[0] if k != "alpha" and k.endswith("acc")]
    table = Table(title=f"WiSE-FT of {args.run_dir} (start: epoch {result.start_epoch})")
    table.add_column("alpha", justify="right")
    for c in columns:  # "demo-rotated/val_acc" -> "demo-rotated"
        table.add_column("val" if c == "val_acc" else c.rsplit("/", 1)[0], justify="right")
    for r in result.rows:
        mark = " *" if r["alpha"] == result.best_alpha else ""
        table.add_row(f"{r['alpha']:g}{mark}", *(f"{r[c]:.1%}" for c in columns))
    Console(file=sys.stdout).print(table)
    print(f"* best on the validation split; chart: {args.run_dir}/{WISE_CHART}")
    if result.reused_groups:
        print(f"{result.reused_groups} group(s) equal in both endpoints were run once per image")
    if result.saved:
        print(f"saved {result.saved}")
    return 0
