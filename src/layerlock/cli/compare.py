"""``layerlock compare``: one model and data set under several schedules, one table."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..config import LEGACY_KEYS
from . import examples
from .finetune import add_arguments, config_from_args, flag_dest

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    from ..compare import CLIP_SCHEDULES, DEFAULT_SCHEDULES

    p = sub.add_parser(
        "compare",
        help="run the same model and data under several schedules and compare them",
        description=(
            "Fine-tune the same model on the same data once per schedule (sequentially, same "
            "seed, each in its own subfolder of the run directory), then print one table "
            "(final and best top-1, wall time, trainable parameters at the end) and write "
            "compare.csv, compare.json, compare.md and accuracy_vs_time.png. Takes every "
            "option of 'layerlock finetune'."
        ),
        epilog=examples(
            "layerlock compare                                    # demo task, all schedules",
            "layerlock compare --schedules lp,full,lp-ft,gradual --out-dir runs/compare",
            "layerlock compare --schedules 'gradual:every=2,start=1; lp-ft:at=3' run.epochs=6",
            "layerlock compare --model timm:resnet18 --pretrained --data folder --data-path data/",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--schedules",
        default=",".join(DEFAULT_SCHEDULES),
        metavar="LIST",
        help=(
            "comma-separated schedules (';' when one has commas); default "
            f"{','.join(DEFAULT_SCHEDULES)} ({','.join(CLIP_SCHEDULES)} with task=clip)"
        ),
    )
    add_arguments(p)
    p.set_defaults(run=run, out_dir_default="runs/compare")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..compare import CLIP_SCHEDULES, DEFAULT_SCHEDULES, compare, split_schedules

    given = getattr(args, flag_dest("run.out_dir")) or _has_key(args, "run.out_dir")
    extra = {} if given else {"run.out_dir": "runs/compare"}
    config = config_from_args(args, **extra)
    text = args.schedules
    if config.task == "clip" and text == ",".join(DEFAULT_SCHEDULES):
        text = ",".join(CLIP_SCHEDULES)
    schedules = split_schedules(text, check=config.task == "classify")
    err = Console(stderr=True)
    quiet = args.quiet

    def report(row: Any) -> None:
        if not quiet and int(os.environ.get("RANK", "0")) == 0:
            err.print(
                f"[bold]{row.schedule}[/]: top-1 {row.final_top1:.1%} in {row.wall_time_s:.1f} s"
            )

    result = compare(config, schedules, progress=False if quiet else None, on_result=report)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.json:
        print(json.dumps(json.loads((result.run_dir / "compare.json").read_text()), indent=2))
    else:
        Console(file=sys.stdout).print(result.table())
        print(f"chart: {result.run_dir / 'accuracy_vs_time.png'}")
    return 0


def _has_key(args: argparse.Namespace, key: str) -> bool:
    """Whether a ``KEY=VALUE`` override (dotted or old flat name) or ``--config`` may set ``key``."""
    names = {key} | {old for old, new in LEGACY_KEYS.items() if new == key}
    if any(
        o.split("=", 1)[0].strip().lstrip("-").replace("-", "_") in names for o in args.overrides
    ):
        return True
    return bool(args.config)
