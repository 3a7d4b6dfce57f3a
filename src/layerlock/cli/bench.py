"""``layerlock bench MODEL``: step time, ratio to a hand-written loop, cache speed-up, memory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, output_errors
from . import examples

__all__ = ["add_parser", "run"]

#: The parsed arguments passed on to :func:`~layerlock.bench.run_bench` under their own names.
_BENCH_OPTIONS = (
    "batch_size",
    "img_size",
    "levels",
    "presets",
    "repeats",
    "warmup",
    "memory",
    "device",
    "controls",
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="measure what locking buys: step time, cache speed-up, memory",
        description=(
            "For each lock level k (the last k groups train): the layerlock training step "
            "(Unfreezer-driven) vs a minimal hand-written loop with the same frozen set, "
            "images/s, peak memory, the suffix-only step on cached prefix features, and the "
            "cost model's ideal; interleaved in one process, median and min-max of --repeats. "
            "Models are built with random weights."
        ),
        epilog=examples(
            "layerlock bench timm:vit_small_patch16_224 --img-size 112 --batch-size 16 --levels 1,2,all",
            "layerlock bench timm:resnet50 --levels 1,2,5,all --repeats 3 --no-memory",
            "layerlock bench timm:vit_small_patch16_224 --presets --json --out bench.json",
            "layerlock bench timm:vit_small_patch16_224 --img-size 112 --batch-size 16 --levels all --repeats 9 --controls --no-memory",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        help="timm:NAME | open_clip:NAME | hf:NAME | torchvision:NAME | module:PATH:FACTORY",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument(
        "--levels", default=None, help="lock levels k: '1,2,all', 'all' (default: 1,2,G/2,G)"
    )
    p.add_argument("--presets", action="store_true", help="also each distinct stage of the presets")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip peak memory")
    p.add_argument(
        "--controls",
        action="store_true",
        help="also time hand-loop variants (a second hand copy, gradients cleared after the "
        "step, the Unfreezer's param groups) as ratios to the hand loop",
    )
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import run_bench

    def log(line: str) -> None:
        print(f"bench: {line}", file=sys.stderr)

    if args.out is not None:  # before the benchmark: its result must have somewhere to go
        if args.out.is_dir():
            raise ConfigError(f"--out {args.out} is a folder; name a .json file")
        if not args.out.parent.is_dir():
            raise ConfigError(f"--out {args.out}: folder {args.out.parent} does not exist")
    options = {name: getattr(args, name) for name in _BENCH_OPTIONS}
    result = run_bench(args.model, progress=log, **options)
    data = result.to_dict()
    if args.out is not None:
        with output_errors(args.out.parent):
            args.out.write_text(json.dumps(data, indent=2))
        log(f"wrote {args.out}")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from rich.console import Console

        Console(width=200).print(result.table())
    return 0
