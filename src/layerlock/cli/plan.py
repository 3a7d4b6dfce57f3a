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

__all__ = ["add_parser", "epoch_runs", "plan_data", "render_png", "run"]

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
            "discriminative factor); a run of epochs that train the same groups is one "
            "column ('4...9'). Schedules: 'E:K, E:K' (epoch -> last K groups, 'all' "
            "or a selection), 'sSTEP:K' by optimizer step, or a preset: "
            + ", ".join(PRESETS)
            + " (e.g. 'gradual:every=2', 'lp-ft:at=3', 'surgical:blocks.0,head')."
        ),
        epilog=examples(
            "layerlock plan timm:vit_base_patch16_224 --schedule gradual --epochs 12 --layer-decay 0.65",
            "layerlock plan timm:resnet50 --schedule '0:1, 2:3, 4:all' --epochs 6 --out plan.png",
            "layerlock plan timm:test_vit --schedule chain-thaw --epochs 3 --steps-per-epoch 100 --json",
            "layerlock plan open_clip:ViT-B-32 --schedule lp-ft --epochs 10 --tower visual",
            "layerlock plan open_clip:ViT-B-32 --schedule lit --epochs 10",
            "layerlock plan open_clip:ViT-B-32 --schedule gradual --text locked --epochs 12",
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
        "--visual",
        default=None,
        metavar="SPEC",
        help="two-tower models: the image tower's schedule, or 'locked' (as towers.visual)",
    )
    p.add_argument(
        "--text",
        default=None,
        metavar="SPEC",
        help="two-tower models: the text tower's schedule, or 'locked' (as towers.text)",
    )
    p.add_argument(
        "--out", "-o", type=Path, default=None, metavar="PNG", help="write a chart of the plan"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def epoch_runs(plan: ResolvedSchedule) -> list[tuple[int, int, frozenset[int]]]:
    """Runs of consecutive epochs that train the same groups, from the plan's events.

    Computed from the events, never epoch by epoch, so a plan of a billion epochs costs
    what one of ten does.

    Returns:
        ``(first epoch, last epoch, trainable group indices)`` per run, in order; an epoch's
        set is the one in force at its first step.

    Example:
        >>> import torch.nn as nn
        >>> from layerlock import layer_groups
        >>> g = layer_groups(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
        >>> epoch_runs(parse_schedule("0:1, 1:all").resolve(g, epochs=1_000_000_000))
        [(0, 0, frozenset({1})), (1, 999999999, frozenset({0, 1}))]
    """
    spe, total = plan.steps_per_epoch, plan.total_steps
    # an event inside an epoch shows from the next epoch's first step on
    starts = sorted({0, *(-(-e.step // spe) for e in plan.events if e.step < total)})
    starts = [e for e in starts if e < plan.epochs]
    runs: list[tuple[int, int, frozenset[int]]] = []
    for first, nxt in zip(starts, [*starts[1:], plan.epochs]):
        sel = plan.trainable_in_epoch(first)
        if runs and runs[-1][2] == sel:
            runs[-1] = (runs[-1][0], nxt - 1, sel)
        else:
            runs.append((first, nxt - 1, sel))
    return runs


def plan_data(plan: ResolvedSchedule, multipliers: dict[str, float]) -> dict[str, Any]:
    """Plain-data view of a resolved schedule (what ``--json`` prints).

    ``columns`` are runs of epochs that train the same groups (:func:`epoch_runs`);
    ``trainable`` and ``lr_multiplier`` hold one row per group and one value per column.

    Example:
        >>> import torch.nn as nn
        >>> from layerlock import layer_groups
        >>> g = layer_groups(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
        >>> d = plan_data(parse_schedule("0:1, 1:all").resolve(g, epochs=5), {"0": 0.5, "1": 1.0})
        >>> d["columns"], d["lr_multiplier"]
        ([{'first_epoch': 0, 'last_epoch': 0}, {'first_epoch': 1, 'last_epoch': 4}], [[0.0, 0.5], [1.0, 1.0]])
    """
    names = list(plan.group_names)
    runs = epoch_runs(plan)
    spe = plan.steps_per_epoch
    return {
        "schedule": str(plan.schedule),
        "epochs": plan.epochs,
        "steps_per_epoch": spe,
        "groups": names,
        "columns": [{"first_epoch": a, "last_epoch": b} for a, b, _ in runs],
        "trainable": [[i in s for _, _, s in runs] for i in range(len(names))],
        "lr_multiplier": [
            [multipliers[n] if i in s else 0.0 for _, _, s in runs] for i, n in enumerate(names)
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


def _column_label(column: dict[str, int]) -> str:
    """``"3"`` for one epoch, ``"4...9"`` for a run of identical epochs."""
    a, b = column["first_epoch"], column["last_epoch"]
    return str(a) if a == b else f"{a}...{b}"


def _table(data: dict[str, Any], title: str) -> Any:
    from rich.table import Table

    table = Table(caption=title, caption_justify="left")
    table.add_column("#", justify="right")
    table.add_column("group")
    for column in data["columns"]:
        table.add_column(_column_label(column), justify="right")
    for i in reversed(range(len(data["groups"]))):
        cells = [
            f"{m:.3g}" if on else "-"
            for on, m in zip(data["trainable"][i], data["lr_multiplier"][i])
        ]
        table.add_row(str(i), data["groups"][i], *cells)
    return table


def render_png(data: dict[str, Any], path: Path, title: str) -> None:
    """Write a groups x epochs chart of the plan (LR multiplier as colour, locked blank).

    One column per run of epochs that train the same groups, labelled with its epochs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.ma.masked_equal(np.array(data["lr_multiplier"], dtype=float), 0.0)
    n_groups, n_columns = grid.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * n_columns + 3), max(2.5, 0.28 * n_groups + 1.2)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#eeeeee")
    image = ax.imshow(
        grid, aspect="auto", origin="lower", cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest"
    )
    ax.set_yticks(range(n_groups), data["groups"], fontsize=7)
    ax.set_xticks(range(n_columns), [_column_label(c) for c in data["columns"]], fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_ylabel("layer group (input side at the bottom)")
    ax.set_title(title, fontsize=9)
    spe = data["steps_per_epoch"]
    firsts = [c["first_epoch"] for c in data["columns"]]
    for ev in data["events"][1:]:
        # a change inside an epoch: a dotted line before the column it shows in
        if ev["step"] % spe and -(-ev["step"] // spe) in firsts:
            ax.axvline(firsts.index(-(-ev["step"] // spe)) - 0.5, color="tab:red", lw=0.8, ls=":")
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
    from ..finetune.towers import CLIP_PRESETS, combined_schedule, pair_schedules, tower_plans

    shown: str | None = None
    if args.visual is not None or args.text is not None or args.schedule in CLIP_PRESETS:
        # each tower by its own schedule, as task=clip trains them
        towers = pair_schedules(args.schedule, args.visual, args.text)
        plans = tower_plans(groups, towers, args.epochs, args.steps_per_epoch)
        plan = combined_schedule(groups, plans).resolve(groups, args.epochs, args.steps_per_epoch)
        shown = f"image tower {towers['visual']!r}, text tower {towers['text']!r}"
    else:
        plan = resolve_schedule(
            args.schedule, groups, args.epochs, args.steps_per_epoch, tower=args.tower
        )
    schedule = plan.schedule
    mult = group_multipliers(
        groups, layer_decay=args.layer_decay, discriminative=args.discriminative
    )
    data = plan_data(plan, mult)
    data["model"] = args.model
    title = f"{args.model}  schedule {shown or repr(str(schedule))}  ({args.epochs} epochs x {args.steps_per_epoch} steps)"
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        from rich.console import Console

        widths = sum(len(_column_label(c)) + 3 for c in data["columns"])
        console = Console(width=max(100, 30 + widths))
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
