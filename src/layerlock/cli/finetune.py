"""``layerlock finetune``: fine-tune a pretrained model by layer groups.

With no arguments it runs the embedded demo: a small ViT pretrained on MNIST digits 0-4,
fine-tuned on a few dozen labelled digits 5-9 per class under ``lp-ft``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any

from ..config import DATA_SOURCES, DEVICES, PRECISIONS, FinetuneConfig, dotted_keys, load_config
from ..errors import ConfigError
from . import examples

__all__ = ["FLAGS", "add_arguments", "add_parser", "config_from_args", "flag_dest", "run"]

_MODEL_HELP = "timm:NAME | open_clip:NAME | hf:NAME | module:PATH:FACTORY | demo"
_SCHEDULE_HELP = "lp-ft | full | lp | gradual | chain-thaw | '0:1, 2:all' ..."
_CACHE_HELP = (
    "auto | on | off: serve the locked groups' output from a feature cache "
    "(auto decides per stage and logs why)"
)


def _one_of(choices: tuple[str, ...]) -> str:
    return " | ".join(choices)


#: ``--flag`` -> dotted config key, for the options most runs set.
FLAGS: dict[str, tuple[str, type, str]] = {
    "--model": ("model.name", str, _MODEL_HELP),
    "--checkpoint": ("model.checkpoint", str, "local weights (safetensors) loaded into the model"),
    "--data": ("data.source", str, _one_of(DATA_SOURCES)),
    "--data-path": ("data.path", str, "ImageFolder root (train/, val/) or HF dataset name"),
    "--train-csv": ("data.train_csv", str, "CSV of path,label rows for training"),
    "--val-csv": ("data.val_csv", str, "CSV of path,label rows for evaluation"),
    "--schedule": ("unfreeze.schedule", str, _SCHEDULE_HELP),
    "--epochs": ("run.epochs", int, "training epochs"),
    "--batch-size": ("run.batch_size", int, "images per step and process"),
    "--lr": ("unfreeze.lr", float, "peak learning rate of the head"),
    "--seed": ("run.seed", int, "seed of everything random"),
    "--workers": ("data.workers", str, "data-loader worker processes, or auto"),
    "--precision": ("run.precision", str, _one_of(PRECISIONS)),
    "--device": ("run.device", str, _one_of(DEVICES)),
    "--out-dir": ("run.out_dir", str, "run directory (a new one: -2, -3 ... if it holds a run)"),
    "--cache": ("cache.mode", str, _CACHE_HELP),
    "--cache-budget": ("cache.budget_mb", int, "MiB the feature cache may use (default 1024)"),
}


def flag_dest(key: str) -> str:
    """The argparse destination of the flag that sets dotted config ``key``.

    Example:
        >>> flag_dest("run.out_dir")
        'opt_run_out_dir'
    """
    return "opt_" + key.replace(".", "_")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``finetune`` and ``compare`` share."""
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help=(
            "any config key, dotted by section, e.g. unfreeze.lr=3e-4 "
            "unfreeze.layer_decay=0.75 'data.augmentation={hflip: 0.0}'"
        ),
    )
    p.add_argument("--config", "-c", metavar="FILE", help="YAML file of config keys")
    for flag, (key, typ, text) in FLAGS.items():
        metavar = key.rpartition(".")[2].upper()
        p.add_argument(
            flag, dest=flag_dest(key), type=typ, default=None, metavar=metavar, help=text
        )
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
            "checkpoint.pt). Config: defaults < --config FILE < KEY=VALUE < --flags; keys are "
            "dotted by section (model., data., unfreeze., cache., run.), a YAML file nests "
            "them. With no arguments: the embedded demo (ViT pretrained on MNIST 0-4, "
            "fine-tuned on 5-9)."
        ),
        epilog=examples(
            "layerlock finetune                                   # the embedded demo",
            "layerlock finetune --model timm:resnet18 --pretrained --data folder --data-path data/",
            "layerlock finetune --model open_clip:ViT-B-32 --pretrained openai --data csv \\",
            "    --train-csv train.csv --val-csv val.csv unfreeze.schedule=gradual \\",
            "    unfreeze.layer_decay=0.75",
            "layerlock finetune --config run.yaml unfreeze.lr=3e-4 run.epochs=20",
            "layerlock finetune --cache on data.deterministic_train_transform=true  # cache the locked prefix",
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

    With ``--resume RUN_DIR`` and no ``--config``, the run's own ``config.yaml`` is the base
    (one written by the previous release, with flat keys, too). ``extra`` holds dotted keys
    that win over everything. Old flat keys among the overrides or in ``--config`` print
    one line each on stderr naming the new key.

    Example:
        >>> import argparse
        >>> p = argparse.ArgumentParser(); add_arguments(p)
        >>> config_from_args(p.parse_args(["run.epochs=2", "--lr", "0.01"])).unfreeze.lr
        0.01
    """
    from ..runs import load_run_config

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
        value = getattr(args, flag_dest(key), None)
        if value is not None:
            overrides[key] = value
    if args.pretrained is not None:
        overrides["model.pretrained"] = args.pretrained
    resume = getattr(args, "resume", None)
    base: dict[str, Any] = {}
    if resume and not args.config:
        # the run's own file: its old flat keys are not the user's to rename
        base, _, _ = dotted_keys(load_run_config(resume))
    if resume:
        overrides["run.resume"] = resume
    overrides.update(extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # printed below, once per key
        if base:
            # dotted base first: an override, even an old flat key, wins
            config = load_config(overrides={**base, **overrides})
        else:
            config = load_config(args.config, overrides)
    command = getattr(args, "command", None) or "finetune"
    for message in config.deprecations:
        print(f"layerlock {command}: warning: {message}", file=sys.stderr)
    return config


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..finetune import finetune, summary_renderable

    stop_after = getattr(args, "stop_after", None)
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after must be >= 1 (optimizer steps), got {stop_after}")
    config = config_from_args(args)
    progress = False if args.quiet else None
    result = finetune(config, stop_after=stop_after, progress=progress)
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
