"""``compare``: the same model and data under several schedules, one table, one chart.

Each schedule runs as its own :func:`~layerlock.finetune.finetune` run, one after the
other, in a subfolder of the comparison's run directory (``RUN_DIR/lp``, ``RUN_DIR/lp-ft``
...), from the same seed, so the only difference between them is the schedule. The
comparison writes ``compare.csv``, ``compare.json`` and ``accuracy_vs_time.png``
(evaluation accuracy after each epoch against the wall time spent so far).

Example:
    >>> from layerlock.config import load_config
    >>> result = compare(load_config(overrides={"run.epochs": 2}), ["lp", "full"])  # doctest: +SKIP
    >>> [row.schedule for row in result.rows]  # doctest: +SKIP
    ['lp', 'full']
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import FinetuneConfig
from .errors import ConfigError
from .runs import RunDir, atomic_write, fresh_dir
from .schedule import parse_schedule

__all__ = [
    "CLIP_SCHEDULES",
    "DEFAULT_SCHEDULES",
    "CompareResult",
    "CompareRow",
    "compare",
    "split_schedules",
]

DEFAULT_SCHEDULES = ("full", "lp", "lp-ft", "gradual", "chain-thaw")
#: ``compare task=clip`` by default: image tower locked, everything, progressive.
CLIP_SCHEDULES = ("lit", "full", "gradual")
CHART_FILE = "accuracy_vs_time.png"
#: The fields a :class:`CompareRow` copies from the schedule's RunResult.
_RESULT_FIELDS = (
    "final_top1",
    "best_top1",
    "wall_time_s",
    "trainable_params",
    "total_params",
    "run_dir",
)


@dataclass
class CompareRow:
    """One schedule's outcome.

    Attributes:
        schedule: The schedule text.
        final_top1: Top-1 after the last epoch.
        best_top1: Best top-1 over the epochs.
        wall_time_s: Seconds of training and evaluation.
        trainable_params: Parameters trainable at the end.
        total_params: All parameters.
        run_dir: The schedule's run directory.
        curve: ``(elapsed seconds, top-1)`` after each epoch.
        sets: Top-1 on each extra evaluation set after the last epoch.
        alpha: For a ``+wise`` row, the WiSE-FT mixing coefficient.
    """

    schedule: str
    final_top1: float
    best_top1: float
    wall_time_s: float
    trainable_params: int
    total_params: int
    run_dir: Path
    curve: list[tuple[float, float]] = field(default_factory=list)
    sets: dict[str, float] = field(default_factory=dict)
    alpha: float | None = None


@dataclass
class CompareResult:
    """All rows of a comparison and where it was written."""

    run_dir: Path
    rows: list[CompareRow]

    def to_markdown(self) -> str:
        """The table as Markdown (for a README).

        Example:
            >>> CompareResult(Path("x"), [CompareRow("lp", .9, .91, 3.0, 10, 100, Path("x/lp"))]).to_markdown().splitlines()[2]
            '| lp | 90.0% | 91.0% | 3.0 s | 10 / 100 |'
        """
        sets = self.set_names()
        lines = [
            "| schedule | final top-1 | best top-1 | "
            + "".join(f"{s} | " for s in sets)
            + "wall time | trainable params at end |",
            "|---|---:|---:|" + "---:|" * len(sets) + "---:|---:|",
        ]
        for r in self.rows:
            shifted = "".join(f"{_pct(r.sets.get(s))} | " for s in sets)
            lines.append(
                f"| {r.schedule} | {r.final_top1:.1%} | {r.best_top1:.1%} | {shifted}"
                f"{r.wall_time_s:.1f} s | {r.trainable_params:,} / {r.total_params:,} |"
            )
        return "\n".join(lines)

    def set_names(self) -> list[str]:
        """The extra evaluation sets, in first-seen order."""
        names: list[str] = []
        for r in self.rows:
            names.extend(n for n in r.sets if n not in names)
        return names

    def table(self) -> Any:
        """A rich table of the rows."""
        from rich.table import Table

        table = Table(title=f"layerlock compare ({self.run_dir})", title_justify="left")
        sets = self.set_names()
        for col in (
            "schedule",
            "final top-1",
            "best top-1",
            *sets,
            "wall time",
            "trainable at end",
        ):
            table.add_column(col, justify="left" if col == "schedule" else "right")
        best = max((r.final_top1 for r in self.rows if math.isfinite(r.final_top1)), default=None)
        for r in self.rows:
            mark = " *" if best is not None and r.final_top1 == best else ""
            table.add_row(
                r.schedule,
                f"{r.final_top1:.1%}{mark}",
                f"{r.best_top1:.1%}",
                *(_pct(r.sets.get(s)) for s in sets),
                f"{r.wall_time_s:.1f} s",
                f"{r.trainable_params:,} / {r.total_params:,}",
            )
        return table


def split_schedules(text: str | Sequence[str], *, check: bool = True) -> list[str]:
    """Split ``"full,lp,lp-ft"`` (or, when a schedule has commas itself, ``"a; b"``).

    Every schedule is parsed here, so a typo fails before any training starts.

    Raises:
        ScheduleError: A schedule that does not parse.
        ConfigError: No schedule, or one given twice.

    Example:
        >>> split_schedules("full, lp,lp-ft")
        ['full', 'lp', 'lp-ft']
        >>> split_schedules("gradual:every=2,start=1; lp")
        ['gradual:every=2,start=1', 'lp']
    """
    if isinstance(text, str):
        parts = text.split(";") if ";" in text else text.split(",")
    else:
        parts = list(text)
    names = [p.strip() for p in parts if p.strip()]
    if not names:
        raise ConfigError("no schedule to compare; e.g. --schedules full,lp,lp-ft,gradual")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"schedule(s) given twice: {', '.join(twice)}")
    if check:  # task=clip schedules (lit, flyp ...) are checked by the run itself
        for name in names:
            parse_schedule(name)
    return names


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _wise_row(row: CompareRow, found: dict[str, Any]) -> CompareRow:
    """The ``<schedule>+wise`` row: the run's WiSE-FT mixture at its best α."""
    best = next(r for r in found["rows"] if r["alpha"] == found["best_alpha"])
    return CompareRow(
        schedule=f"{row.schedule}+wise",
        final_top1=float(best["val_acc"]),
        best_top1=float(best["val_acc"]),
        wall_time_s=row.wall_time_s,
        trainable_params=row.trainable_params,
        total_params=row.total_params,
        run_dir=row.run_dir,
        sets={k.rsplit("/", 1)[0]: float(v) for k, v in best.items() if k.endswith("/val_acc")},
        alpha=float(found["best_alpha"]),
    )


def _slug(schedule: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", schedule).strip("_") or "schedule"


def compare(
    config: FinetuneConfig,
    schedules: Sequence[str] | str = DEFAULT_SCHEDULES,
    *,
    progress: bool | None = None,
    on_result: Any = None,
) -> CompareResult:
    """Run ``config`` once per schedule and collect one row each.

    Args:
        config: Everything but the schedule (its ``schedule`` is ignored, ``out_dir`` holds
            the comparison; a folder that already holds one gets a ``-2`` suffix).
        schedules: Schedule texts, or one string split by :func:`split_schedules`.
        progress: Progress bars on stderr (default: when stderr is a TTY).
        on_result: Called with each :class:`CompareRow` as soon as its run ends.

    Returns:
        A :class:`CompareResult`; files ``compare.csv``, ``compare.json`` and
        ``accuracy_vs_time.png`` in its run directory.

    Raises:
        ConfigError: Bad config or schedule list; ``resume`` is not supported here.

    Example:
        >>> compare(load_config(overrides={"run.epochs": 1}), "lp,full").rows[0].schedule  # doctest: +SKIP
        'lp'
    """
    from . import distributed
    from .finetune import finetune
    from .finetune.task import make_task

    names = split_schedules(schedules, check=config.task == "classify")
    metric = make_task(config).best_metric
    if config.run.resume:
        raise ConfigError(
            "compare cannot resume; resume each schedule's run with finetune --resume"
        )
    config.validate()
    rank, _, _, created = distributed.init_from_env()
    try:
        out_dir = Path(config.run.out_dir)
        base = Path(distributed.broadcast_object(str(fresh_dir(out_dir) if rank == 0 else out_dir)))
        run = RunDir(base, rank=rank)
        rows: list[CompareRow] = []
        for name in names:
            cfg = replace(
                config,
                unfreeze=replace(config.unfreeze, schedule=name),
                run=replace(config.run, out_dir=str(base / _slug(name)), resume=None),
            )
            result = finetune(cfg, progress=progress)
            row = CompareRow(
                schedule=name,
                **{key: getattr(result, key) for key in _RESULT_FIELDS},
                curve=[
                    (float(e["elapsed_s"]), float(e[metric]))
                    for e in result.epochs
                    if e.get(metric) is not None
                ],
                sets=dict(result.final_sets),
            )
            rows.append(row)
            if on_result is not None:
                on_result(row)
            if result.wise is not None:
                rows.append(_wise_row(row, result.wise))
        out = CompareResult(base, rows)
        if rank == 0:
            _write(run, out)
        return out
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _write(run: RunDir, result: CompareResult) -> None:
    columns = ["schedule", *_RESULT_FIELDS]
    sets = result.set_names()
    records = [
        {
            **{c: (str(getattr(r, c)) if c == "run_dir" else getattr(r, c)) for c in columns},
            **{f"{s}/top1": r.sets.get(s) for s in sets},
            "alpha": r.alpha,
        }
        for r in result.rows
    ]
    run.write_csv("compare.csv", records, [*columns, *(f"{s}/top1" for s in sets), "alpha"])
    run.write_json(
        "compare.json",
        [{**rec, "curve": [list(p) for p in r.curve]} for rec, r in zip(records, result.rows)],
    )
    run.write_text("compare.md", result.to_markdown() + "\n")
    _chart(run.path / CHART_FILE, result)


def _chart(path: Path, result: CompareResult) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for r in result.rows:
        if not r.curve:
            continue
        xs, ys = zip(*r.curve)
        ax.plot(xs, ys, marker="o", markersize=3, label=f"{r.schedule} ({r.final_top1:.1%})")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("evaluation top-1")
    ax.set_title("accuracy vs. wall time per schedule")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write(path, buffer.getvalue())


def load_compare(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows a comparison wrote to ``compare.json``."""
    return json.loads((Path(run_dir) / "compare.json").read_text())
