"""``layerlock groups MODEL``: the group table of a model."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from torch import nn

from ..groups import LayerGroups, layer_groups
from ..lock import lock
from . import add_model_arguments, examples

__all__ = ["add_parser", "group_table", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "groups",
        help="show the layer groups of a model",
        description=(
            "Show a model's layer groups, input side first: parameters, what "
            "--unlocked-groups K or --groups SPEC would train, BatchNorm layers, and the "
            "smallest k that unlocks each group. Models are built with random weights and "
            "no network unless --pretrained is given."
        ),
        epilog=examples(
            "layerlock groups timm:vit_base_patch16_224",
            "layerlock groups timm:resnet50 --coarse --unlocked-groups 2",
            "layerlock groups open_clip:ViT-B-16 --tower visual",
            "layerlock groups torchvision:resnet18 --groups 'layer4.*,fc' --json",
            "layerlock groups module:my_models.py:build",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(
        p, pretrained_help="load published weights (needs network; OpenCLIP takes a tag)"
    )
    sel = p.add_mutually_exclusive_group()
    sel.add_argument(
        "--unlocked-groups",
        "-k",
        type=int,
        default=None,
        metavar="K",
        help="mark the groups the last K unlock (per tower)",
    )
    sel.add_argument(
        "--groups",
        default=None,
        metavar="SPEC",
        help="mark an arbitrary selection: indices, names, globs, slices ('0,blocks.1*,-1')",
    )
    p.add_argument(
        "--tower",
        choices=["visual", "text", "both"],
        default="both",
        help="for CLIP-style models: which tower to show / address (default: both)",
    )
    p.add_argument("--num-classes", type=int, default=None, help="classifier size, where supported")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def _bn_count(groups: LayerGroups) -> dict[int, int]:
    counts: dict[int, int] = {}
    for mname, module in groups.model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            gi = groups.module_group.get(mname)
            if gi is not None:
                counts[gi] = counts.get(gi, 0) + 1
    return counts


def group_table(
    model: nn.Module,
    *,
    unlocked_groups: int | None = None,
    groups_spec: str | None = None,
    tower: str = "both",
    coarse: bool = False,
) -> dict[str, Any]:
    """Plain-data group table of ``model`` (what ``layerlock groups --json`` prints).

    Example:
        >>> import timm
        >>> table = group_table(timm.create_model("test_resnet"), unlocked_groups=1)
        >>> table["rows"][-1]["name"], table["rows"][-1]["trainable"]
        ('fc', True)
    """
    groups = layer_groups(model, coarse)
    towers = [t for t in groups.towers if t not in (None, "model")]
    scope = tower if tower != "both" and towers else None
    report = None
    if unlocked_groups is not None or groups_spec is not None:
        report = lock(
            model,
            unlocked_groups,
            groups=groups_spec,
            tower=scope,
            partition=groups,
        )
    bn = _bn_count(groups)
    total = groups.num_params or 1
    rows = []
    for g in groups:
        if scope is not None and g.tower != scope:
            continue
        row: dict[str, Any] = {
            "index": g.index,
            "name": g.name,
            "tower": g.tower,
            "params": g.num_params,
            "share": g.num_params / total,
            "batchnorm": bn.get(g.index, 0),
            "unlocked_by_k": groups.first_unlocked_by(g.index),
        }
        if report is not None:
            row["trainable"] = report.groups[g.index].trainable
            row["trainable_params"] = report.groups[g.index].trainable_params
        rows.append(row)
    return {
        "model": type(groups.model).__name__,
        "adapter": groups.adapter,
        "coarse": coarse,
        "num_groups": len(groups),
        "total_params": groups.num_params,
        "trainable_params": None if report is None else report.trainable_params,
        "notes": list(groups.notes),
        "rows": rows,
    }


def run(args: argparse.Namespace) -> int:
    from ..models import build_model

    model = build_model(args.model, pretrained=args.pretrained, num_classes=args.num_classes)
    selection = {"unlocked_groups": args.unlocked_groups, "groups_spec": args.groups}
    table = group_table(model, **selection, tower=args.tower, coarse=args.coarse)
    table["spec"] = args.model
    if args.json:
        json.dump(table, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    render(table)
    return 0


def render(table: dict[str, Any]) -> None:
    """Print a group table with rich."""
    from rich.console import Console
    from rich.table import Table

    rows = table["rows"]
    marked = table["trainable_params"] is not None
    title = (
        f"{table.get('spec', table['model'])}: {table['num_groups']} groups via "
        f"{table['adapter']} adapter{' (coarse)' if table['coarse'] else ''}, "
        f"{table['total_params']:,} parameters"
    )
    t = Table()
    t.add_column("#", justify="right")
    t.add_column("group")
    if any(r["tower"] for r in rows):
        t.add_column("tower")
    t.add_column("params", justify="right")
    t.add_column("share", justify="right")
    if marked:
        t.add_column("trainable", justify="center")
    t.add_column("BN", justify="right")
    t.add_column("unlocked by k>=", justify="right")
    for r in rows:
        cells = [str(r["index"]), r["name"]]
        if any(x["tower"] for x in rows):
            cells.append(r["tower"] or "")
        cells += [f"{r['params']:,}", f"{100 * r['share']:.1f}%"]
        if marked:
            cells.append("yes" if r["trainable"] else ("partly" if r["trainable_params"] else "-"))
        cells += [str(r["batchnorm"] or ""), str(r["unlocked_by_k"])]
        t.add_row(*cells)
    console = Console()
    console.print(title, highlight=False)
    console.print(t)
    if marked:
        share = 100 * table["trainable_params"] / max(table["total_params"], 1)
        console.print(
            f"trainable {table['trainable_params']:,} / {table['total_params']:,} ({share:.1f}%)"
        )
    for note in table["notes"]:
        print(f"note: {note}", file=sys.stderr)
