"""Charts of a run directory: loss and accuracy per epoch, trainable parameters per step.

Example:
    >>> import tempfile
    >>> plot_run(tempfile.mkdtemp(), epochs=[{"epoch": 1, "val_acc": 0.5}])[0].name
    'loss_accuracy.png'
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .runs import EPOCHS, EVENTS_FILE, STEPS, atomic_write, is_main_process, read_jsonl

__all__ = ["plot_run"]


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def plot_run(
    run_dir: str | Path,
    *,
    epochs: Sequence[Mapping[str, Any]] | None = None,
    steps: Sequence[Mapping[str, Any]] | None = None,
    events: Sequence[Mapping[str, Any]] | None = None,
    rank: int | None = None,
) -> list[Path]:
    """Draw ``loss_accuracy.png`` and ``trainable_params.png`` into ``run_dir``.

    Loss and accuracy (``train_loss``/``val_loss``, ``train_acc``/``val_acc``/``val_top5``,
    whichever are present) over epochs, each event (unlock) a dashed vertical line at its
    epoch; trainable parameters over steps. Rows default to the run's logged metrics.

    Returns:
        The files written (none on ranks other than 0, or without any rows).

    Example:
        >>> import tempfile
        >>> plot_run(tempfile.mkdtemp(), epochs=[{"epoch": 1, "val_acc": 0.5}])[0].name
        'loss_accuracy.png'
    """
    if not is_main_process(rank):
        return []
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    epochs = list(epochs if epochs is not None else read_jsonl(run_dir / f"{EPOCHS}.jsonl"))
    steps = list(steps if steps is not None else read_jsonl(run_dir / f"{STEPS}.jsonl"))
    events = list(events if events is not None else read_jsonl(run_dir / EVENTS_FILE))
    written = []

    def mark_events(ax: Any, key: str) -> None:
        for i, event in enumerate(events):
            x = _float(event.get(key))
            if math.isfinite(x):
                ax.axvline(x, color="grey", linestyle="--", linewidth=0.8, alpha=0.7)
                ax.annotate(
                    str(event.get("label", "")),
                    (x, 1.0 - 0.06 * (i % 6)),
                    xycoords=("data", "axes fraction"),
                    fontsize=7,
                    rotation=0,
                    ha="left",
                    va="top",
                    color="dimgrey",
                )

    def save(fig: Any, name: str) -> None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        written.append(atomic_write(run_dir / name, buffer.getvalue()))

    if epochs:
        fig = Figure(figsize=(10, 4), layout="constrained")
        ax_loss, ax_acc = fig.subplots(1, 2)
        xs = [_float(r.get("epoch")) for r in epochs]
        for ax, keys, title in (
            (ax_loss, ("train_loss", "val_loss"), "loss"),
            (ax_acc, ("train_acc", "val_acc", "val_top5"), "accuracy"),
        ):
            for key in keys:
                ys = [_float(r.get(key)) for r in epochs]
                if any(math.isfinite(y) for y in ys):
                    ax.plot(xs, ys, marker="o", markersize=3, label=key)
            mark_events(ax, "epoch")
            ax.set_xlabel("epoch")
            ax.set_title(title)
            if ax.lines:
                ax.legend(fontsize=8, loc="center right")
        save(fig, "loss_accuracy.png")
    if steps:
        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        xs = [_float(r.get("step")) for r in steps]
        ys = [_float(r.get("trainable_params")) for r in steps]
        ax.step(xs, ys, where="post", label="trainable parameters")
        mark_events(ax, "step")
        ax.set_xlabel("step")
        ax.set_ylabel("trainable parameters")
        ax.set_title("trainable parameters over time")
        save(fig, "trainable_params.png")
    return written
