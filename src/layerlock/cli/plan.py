"""``layerlock plan MODEL --schedule SPEC --epochs N``: which groups train when, at what LR."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ScheduleError
from ..groups import layer_groups
from ..optim import group_multipliers
from ..options import UnfreezeOptions
from ..schedule import PRESETS, ResolvedSchedule, parse_schedule, resolve_schedule
from . import add_model_arguments, examples

__all__ = ["add_parser", "plan_data", "render_png", "run"]

# the flags' defaults are the unfreezing options' own
_DEFAULTS = UnfreezeOptions()
#: flag, type, default, metavar, help
_NUMBER_FLAGS: tuple[tuple[str, type, float, str, str], ...] = (
    ("--steps-per-epoch", int, 1, "S", "optimizer steps per epoch (default 1)"),
    ("--layer-decay", float, _DEFAULTS.layer_decay, "D", "layer-wise LR decay (1 = off)"),
    ("--discriminative", float, _DEFAULTS.discriminative, "F", "ULMFiT factor per group (1 = off)"),
)


def add_parser(sub: Any) -> None:
    """Register ``layerlock plan`` on the dispatcher's subparsers."""
    p = sub.add_parser(
        "plan",
        help="show which layer groups a schedule trains in each epoch",
        description=(
            "Resolve an unfreezing schedule against a model and print a table of groups x "
            "epochs: '-' for locked, else the group's LR multiplier (layer-wise decay and "
            "discriminative factor). Schedules: 'E:K, E:K' (epoch -> last K groups, 'all' "
            "or a selection), 'sSTEP:K' by optimizer step, or a preset: "
            + ", ".join(PRESETS)
            + " (e.g. 'gradual:every=2', 'lp-ft:at=3', 'surgical:blocks.0,head')."
        ),
        epilog=examples(
            "layerlock plan timm:vit_base_patch16_224 --schedule gradual --epochs 12 --layer-decay 0.65",
            "layerlock plan timm:resnet50 --schedule '0:1, 2:3, 4:all' --epochs 6 --out plan.png",
            "layerlock plan timm:test_vit --schedule chain-thaw --epochs 3 --steps-per-epoch 100 --json",
            "layerlock plan open_clip:ViT-B-32 --schedule lp-ft --epochs 10 --tower visual",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p, pretrained_help="load published weights")
    p.add_argument(
        "--schedule", "-s", required=True, metavar="SPEC", help="schedule text or preset"
    )
    p.add_argument("--epochs", "-e", required=True, type=int, metavar="N", help="epochs of the run")
    for flag, kind, default, metavar, text in _NUMBER_FLAGS:
        p.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)
    p.add_argument(
        "--tower", choices=["visual", "text"], default=None, help="apply to one tower only"
    )
    p.add_argument(
        "--out", "-o", type=Path, default=None, metavar="PNG", help="write a chart of the plan"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def plan_data(plan: ResolvedSchedule, multipliers: dict[str, float]) -> dict[str, Any]:
    """Plain-data view of a resolved schedule (what ``--json`` prints).

    Example:
        >>> import torch.nn as nn
        >>> from layerlock import layer_groups
        >>> g = layer_groups(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
        >>> d = plan_data(parse_schedule("0:1, 1:all").resolve(g, epochs=2), {"0": 0.5, "1": 1.0})
        >>> d["lr_multiplier"]
        [[0.0, 0.5], [1.0, 1.0]]
    """
    names = list(plan.group_names)
    per_epoch = [plan.trainable_in_epoch(e) for e in range(plan.epochs)]
    spe = plan.steps_per_epoch
    return {
        "schedule": str(plan.schedule),
        "epochs": plan.epochs,
        "steps_per_epoch": spe,
        "groups": names,
        "trainable": [[i in s for s in per_epoch] for i in range(len(names))],
        "lr_multiplier": [
            [multipliers[n] if i in s else 0.0 for s in per_epoch] for i, n in enumerate(names)
        ],
        "events": [
            {
                "step": e.step,
                "epoch": e.step / spe,
                "unlocked": [names[i] for i in sorted(e.unlocked)],
                "locked": [names[i] for i in sorted(e.locked)],
            }
            for e in plan.events
        ],
        "notes": list(plan.notes),
    }


def _table(data: dict[str, Any], title: str) -> Any:
    from rich.table import Table

    table = Table(caption=title, caption_justify="left")
    table.add_column("#", justify="right")
    table.add_column("group")
    for e in range(data["epochs"]):
        table.add_column(str(e), justify="right")
    for i in reversed(range(len(data["groups"]))):
        cells = [
            f"{m:.3g}" if on else "-"
            for on, m in zip(data["trainable"][i], data["lr_multiplier"][i])
        ]
        table.add_row(str(i), data["groups"][i], *cells)
    return table


def render_png(data: dict[str, Any], path: Path, title: str) -> None:
    """Write a groups x epochs chart of the plan (LR multiplier as colour, locked blank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.ma.masked_equal(np.array(data["lr_multiplier"], dtype=float), 0.0)
    n_groups, epochs = grid.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * epochs + 3), max(2.5, 0.28 * n_groups + 1.2)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#eeeeee")
    image = ax.imshow(
        grid, aspect="auto", origin="lower", cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest"
    )
    ax.set_yticks(range(n_groups), data["groups"], fontsize=7)
    ax.set_xticks(range(epochs))
    ax.set_xlabel("epoch")
    ax.set_ylabel("layer group (input side at the bottom)")
    ax.set_title(title, fontsize=9)
    spe = data["steps_per_epoch"]
    for ev in data["events"][1:]:
        if ev["step"] % spe:
            ax.axvline(ev["epoch"] - 0.5, color="tab:red", lw=0.8, ls=":")
    fig.colorbar(image, ax=ax, label="LR multiplier (grey: locked)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Build the model, resolve the schedule, print the plan, optionally write the chart."""
    from ..models import build_model

    problems = []
    if args.epochs < 1:
        problems.append(f"--epochs must be >= 1, got {args.epochs}")
    if args.steps_per_epoch < 1:
        problems.append(f"--steps-per-epoch must be >= 1, got {args.steps_per_epoch}")
    if args.out is not None and args.out.suffix.lower() != ".png":
        problems.append(f"--out must name a .png file, got {str(args.out)!r}")
    if problems:
        try:
            parse_schedule(args.schedule)
        except ScheduleError as exc:
            problems.append(str(exc))
        raise ConfigError("; ".join(problems))
    model = build_model(args.model, pretrained=args.pretrained)
    groups = layer_groups(model, args.coarse)
    # syntax and fit problems together, one per line
    plan = resolve_schedule(
        args.schedule, groups, args.epochs, args.steps_per_epoch, tower=args.tower
    )
    schedule = plan.schedule
    mult = group_multipliers(
        groups, layer_decay=args.layer_decay, discriminative=args.discriminative
    )
    data = plan_data(plan, mult)
    data["model"] = args.model
    title = f"{args.model}  schedule {str(schedule)!r}  ({args.epochs} epochs x {args.steps_per_epoch} steps)"
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from rich.console import Console

        console = Console(width=max(100, 24 + 6 * args.epochs))
        console.print(_table(data, title))
        for event, line in zip(plan.events, plan.describe()):
            if event.step < plan.total_steps:
                console.print(f"  {line}", highlight=False)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.out is not None:
        render_png(data, args.out, title)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
