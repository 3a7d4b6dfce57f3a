"""The one-screen summary ``layerlock finetune`` prints at the end of a run.

Example:
    >>> from rich.console import Console
    >>> Console().print(summary_renderable(result, config))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

from ..config import FinetuneConfig
from .state import RunResult

__all__ = ["summary_renderable"]

CACHE_LOG_FILE = "cache.jsonl"
PER_CLASS_FILE = "per_class.csv"


def summary_renderable(result: RunResult, config: FinetuneConfig) -> Any:
    """A one-screen rich summary of a run (what ``layerlock finetune`` prints at the end).

    Example:
        >>> from rich.console import Console
        >>> Console().print(summary_renderable(result, cfg))  # doctest: +SKIP
    """
    from rich.console import Group
    from rich.table import Table

    status = "interrupted" if result.interrupted else "finished"
    head = Table(title=f"layerlock finetune: {status}", title_justify="left", show_header=False)
    head.add_column(style="bold")
    head.add_column()
    top5 = f"{result.final_top5:.1%}" if result.final_top5 is not None else "-"
    share = 100.0 * result.trainable_params / max(result.total_params, 1)
    rows = [
        (
            "model",
            config.model.name
            + (f" (pretrained {config.model.pretrained})" if config.model.pretrained else ""),
        ),
        ("data", f"{config.data.source}: {len(result.classes)} classes"),
        (
            "schedule",
            f"{config.unfreeze.schedule}, {config.run.epochs} epochs, lr {config.unfreeze.lr:g}",
        ),
        (
            "top-1",
            f"{result.final_top1:.1%} (best {result.best_top1:.1%} at epoch {result.best_epoch})",
        ),
        ("top-5", top5),
        *(
            [("other sets", ", ".join(f"{k} {v:.1%}" for k, v in result.final_sets.items()))]
            if result.final_sets
            else []
        ),
        *([("WiSE-FT", _wise_line(result.wise))] if result.wise else []),
        ("val loss", f"{result.final_loss:.4f}"),
        (
            "trainable at end",
            f"{result.trainable_params:,} / {result.total_params:,} ({share:.1f}%)",
        ),
        ("steps / wall time", f"{result.steps:,} / {result.wall_time_s:.1f} s"),
        ("run directory", str(result.run_dir)),
    ]
    if result.skipped_images:
        rows.append(("skipped images", f"{result.skipped_images} unreadable file(s) left out"))
    if any(
        r.get("cached") or r.get("eval_cached") or r.get("eval_images_kept") for r in result.epochs
    ):
        from ..cache import describe_bytes

        n = len(result.epochs)
        trained = sum(bool(r.get("cached")) for r in result.epochs)
        evaluated = sum(bool(r.get("eval_cached")) for r in result.epochs)
        kept = sum(bool(r.get("eval_images_kept")) for r in result.epochs)
        fill = sum(float(r.get("cache_fill_s") or 0.0) for r in result.epochs)
        peak = max(int(r.get("cache_bytes") or 0) for r in result.epochs)
        rows.append(
            (
                "feature cache",
                f"train {trained}/{n} epochs, eval {evaluated}/{n} from features, {kept}/{n} "
                f"from kept images; fill {fill:.1f} s, "
                f"up to {describe_bytes(peak)} (decisions in {CACHE_LOG_FILE})",
            )
        )
    if result.replicas_agree is not None:
        rows.append(("DDP replicas agree", "yes" if result.replicas_agree else "NO"))
    if result.interrupted:
        rows.append(("resume with", f"layerlock finetune --resume {result.run_dir}"))
    if config.task == "clip":
        rows = _clip_rows(rows, result, config)
    for k, v in rows:
        head.add_row(k, v)
    per = Table(title="per-class top-1", title_justify="left")
    items = sorted(result.per_class.items(), key=lambda kv: kv[1])
    shown = items if len(items) <= 10 else items[:5] + items[-5:]
    per.add_column("class")
    per.add_column("accuracy", justify="right")
    for c, a in shown:
        per.add_row(c, f"{a:.1%}" if math.isfinite(a) else "-")
    if len(items) > 10:
        per.caption = f"worst 5 and best 5 of {len(items)}; all in {PER_CLASS_FILE}"
    return Group(head, per) if result.per_class else head


def _clip_rows(
    rows: list[tuple[str, str]], result: RunResult, config: FinetuneConfig
) -> list[tuple[str, str]]:
    """A ``task=clip`` run's rows: retrieval and zero-shot instead of classification."""
    from .towers import tower_schedules

    last = result.epochs[-1] if result.epochs else {}
    first = result.epochs[0] if result.epochs and result.epochs[0].get("epoch") == 0 else {}
    towers = tower_schedules(config)
    renamed = {
        "data": ("data", f"{config.data.source}: image-caption pairs"),
        "schedule": (
            "schedule",
            f"image tower {towers['visual']}, text tower {towers['text']}; "
            f"{config.run.epochs} epochs, lr {config.unfreeze.lr:g}",
        ),
        "top-1": (
            "image->text R@1",
            f"{result.final_top1:.1%} (best {result.best_top1:.1%} at epoch {result.best_epoch})",
        ),
        "top-5": (
            "text->image R@1",
            f"{last['text_to_image_R@1']:.1%}" if "text_to_image_R@1" in last else "-",
        ),
        "val loss": ("clip_val_loss", f"{result.final_loss:.4f}"),
    }
    out = [renamed.get(k, (k, v)) for k, v in rows]
    for key in sorted((k for k in last if k.endswith("zeroshot-val-top1")), reverse=True):
        before = f" (start {first[key]:.1%})" if key in first else ""
        out.insert(5, (f"zero-shot {key.split('/')[0]}", f"{last[key]:.1%}{before}"))
    return out


def _wise_line(found: dict[str, Any]) -> str:
    best = next(r for r in found["rows"] if r["alpha"] == found["best_alpha"])
    others = ", ".join(
        f"{k.rsplit('/', 1)[0]} {v:.1%}" for k, v in best.items() if k.endswith("/val_acc")
    )
    return f"alpha {found['best_alpha']:g}: top-1 {best['val_acc']:.1%}" + (
        f"; {others}" if others else ""
    )
