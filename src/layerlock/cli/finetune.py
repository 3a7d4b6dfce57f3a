"""``layerlock finetune``: fine-tune a pretrained model by layer groups.

With no arguments it runs the embedded demo: a small ViT pretrained on MNIST digits 0-4,
fine-tuned on a few dozen labelled digits 5-9 per class under ``lp-ft``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..config import FinetuneConfig, load_config
from ..errors import ConfigError
from . import examples

__all__ = ["add_arguments", "add_parser", "config_from_args", "run"]

#: ``--flag`` -> config key, for the options most runs set.
FLAGS: dict[str, tuple[str, type, str]] = {
    "--model": ("model", str, "timm:NAME | open_clip:NAME | hf:NAME | module:PATH:FACTORY | demo"),
    "--checkpoint": ("checkpoint", str, "local weights (safetensors) loaded into the model"),
    "--data": ("data", str, "demo | folder | csv | hf"),
    "--data-path": ("data_path", str, "ImageFolder root (train/, val/) or HF dataset name"),
    "--train-csv": ("train_csv", str, "CSV of path,label rows for training"),
    "--val-csv": ("val_csv", str, "CSV of path,label rows for evaluation"),
    "--schedule": ("schedule", str, "lp-ft | full | lp | gradual | chain-thaw | '0:1, 2:all' ..."),
    "--epochs": ("epochs", int, "training epochs"),
    "--batch-size": ("batch_size", int, "images per step and process"),
    "--lr": ("lr", float, "peak learning rate of the head"),
    "--seed": ("seed", int, "seed of everything random"),
    "--workers": ("workers", int, "data-loader worker processes"),
    "--precision": ("precision", str, "auto | fp32 | bf16"),
    "--device": ("device", str, "auto | cpu | cuda | mps"),
    "--out-dir": ("out_dir", str, "run directory (a new one: -2, -3 ... if it holds a run)"),
    "--cache": (
        "cache",
        str,
        "auto | on | off: serve the locked groups' output from a feature cache "
        "(auto decides per stage and logs why)",
    ),
    "--cache-budget": ("cache_budget_mb", int, "MiB the feature cache may use (default 1024)"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``finetune`` and ``compare`` share."""
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="any config key, e.g. lr=3e-4 layer_decay=0.75 'augmentation={hflip: 0.0}'",
    )
    p.add_argument("--config", "-c", metavar="FILE", help="YAML file of config keys")
    for flag, (key, typ, text) in FLAGS.items():
        p.add_argument(flag, dest=f"opt_{key}", type=typ, default=None, help=text)
    p.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=None,
        metavar="TAG",
        help="load published weights (needs network; OpenCLIP takes a tag, e.g. openai)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a pretrained model with a progressive unlocking schedule",
        description=(
            "Fine-tune a pretrained image classifier by layer groups and keep everything in a "
            "run directory (config.yaml, metrics CSV/JSONL, charts, model.safetensors, "
            "checkpoint.pt). Config: defaults < --config FILE < KEY=VALUE < --flags. With no "
            "arguments: the embedded demo (ViT pretrained on MNIST 0-4, fine-tuned on 5-9)."
        ),
        epilog=examples(
            "layerlock finetune                                   # the embedded demo",
            "layerlock finetune --model timm:resnet18 --pretrained --data folder --data-path data/",
            "layerlock finetune --model open_clip:ViT-B-32 --pretrained openai --data csv \\",
            "    --train-csv train.csv --val-csv val.csv schedule=gradual layer_decay=0.75",
            "layerlock finetune --config run.yaml lr=3e-4 --epochs 20",
            "layerlock finetune --cache on deterministic_train_transform=true  # cache the locked prefix",
            "layerlock finetune --resume runs/finetune           # continue an interrupted run",
            "torchrun --nproc_per_node 2 -m layerlock finetune --data folder --data-path data/",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="STEPS",
        help="stop as if interrupted after STEPS optimizer steps (debugging resume)",
    )
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace, **extra: Any) -> FinetuneConfig:
    """Merge defaults, ``--config``, ``KEY=VALUE`` overrides and flags into a config.

    With ``--resume RUN_DIR`` and no ``--config``, the run's own ``config.yaml`` is the base.

    Example:
        >>> import argparse
        >>> p = argparse.ArgumentParser(); add_arguments(p)
        >>> config_from_args(p.parse_args(["epochs=2", "--lr", "0.01"])).lr
        0.01
    """
    from ..finetune import load_run_config

    overrides: dict[str, Any] = {}
    bad: list[str] = []
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            bad.append(f"argument {item!r} is not KEY=VALUE")
            continue
        overrides[key.strip().lstrip("-").replace("-", "_")] = value
    if bad:
        raise ConfigError("; ".join(bad))
    for _, (key, _, _) in FLAGS.items():
        value = getattr(args, f"opt_{key}", None)
        if value is not None:
            overrides[key] = value
    if args.pretrained is not None:
        overrides["pretrained"] = args.pretrained
    resume = getattr(args, "resume", None)
    base: dict[str, Any] = {}
    if resume and not args.config:
        base = load_run_config(resume)
    if resume:
        overrides["resume"] = resume
    overrides.update(extra)
    if base:
        return load_config(overrides={**base, **overrides})
    return load_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..finetune import finetune, summary_renderable

    config = config_from_args(args)
    progress = False if args.quiet else None
    result = finetune(config, stop_after=getattr(args, "stop_after", None), progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return 130 if result.interrupted else 0
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        Console(file=sys.stdout).print(summary_renderable(result, config))
    if result.interrupted:
        print(
            f"layerlock finetune: stopped at step {result.steps}; resume with: "
            f"layerlock finetune --resume {result.run_dir}",
            file=sys.stderr,
        )
        return 130
    return 0
