"""Metrics to TensorBoard and Weights & Biases besides the run directory's files.

``run.report_to=tensorboard,wandb`` wraps the run's
:class:`~layerlock.runs.MetricsLogger`: every step and epoch row still goes to
``steps.csv`` / ``epochs.csv`` and, on rank 0, also to the chosen backends (numbers only;
``train/<column>`` for steps, ``val/<column>`` for epochs, at the global step).

- ``tensorboard``: event files in ``<run>/tensorboard`` (``torch.utils.tensorboard``; needs
  ``pip install 'layerlock[tensorboard]'``).
- ``wandb``: a W&B run in ``<run>/wandb`` with the resolved config; offline (synced later
  with ``wandb sync``) unless ``WANDB_MODE`` says otherwise or ``WANDB_API_KEY`` is set, so
  it works without network (``pip install 'layerlock[wandb]'``).

Example:
    >>> from layerlock.runs import RunDir
    >>> logger = report_to(RunDir("runs/x").metrics(), ("tensorboard",), "runs/x")  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import MissingDependencyError

__all__ = ["BACKENDS", "ReportingLogger", "report_to"]

BACKENDS = ("tensorboard", "wandb")


def _numbers(row: Mapping[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for k, v in row.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if k in ("step",) or not math.isfinite(float(v)):
            continue
        out[f"{prefix}{k}"] = float(v)
    return out


class _TensorBoard:
    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise MissingDependencyError(
                "run.report_to=tensorboard needs tensorboard: pip install 'layerlock[tensorboard]'"
            ) from exc
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        atexit.register(self.writer.close)

    def log(self, values: Mapping[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: Path, config: Mapping[str, Any] | None) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise MissingDependencyError(
                "run.report_to=wandb needs wandb: pip install 'layerlock[wandb]'"
            ) from exc
        mode = os.environ.get("WANDB_MODE") or (
            "online" if os.environ.get("WANDB_API_KEY") else "offline"
        )
        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        self.run: Any = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "layerlock"),
            name=run_dir.name,
            dir=str(run_dir),
            config=dict(config or {}),
            mode=mode,  # type: ignore[arg-type]
            reinit=True,
        )
        atexit.register(self.close)

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class ReportingLogger:
    """A metrics logger that also sends its rows to TensorBoard / W&B (rank 0).

    Everything else (``rows``, ``columns`` ...) is the wrapped logger's.
    """

    def __init__(self, logger: Any, backends: Sequence[Any]) -> None:
        self.logger = logger
        self.backends = list(backends)
        self._last_step = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.logger, name)

    def log_step(self, row: Mapping[str, Any]) -> None:
        self.logger.log_step(row)
        self._last_step = int(row.get("step", self._last_step))
        for b in self.backends:
            b.log(_numbers(row, "train/"), self._last_step)

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        self.logger.log_epoch(row)
        step = int(row.get("step", self._last_step))
        for b in self.backends:
            b.log(_numbers(row, "val/"), step)

    def close(self) -> None:
        """Flush and close the backends."""
        for b in self.backends:
            b.close()


def report_to(
    logger: Any,
    targets: Sequence[str],
    run_dir: str | Path,
    config: Mapping[str, Any] | None = None,
    *,
    rank: int = 0,
) -> Any:
    """``logger`` as is (no targets, or not rank 0), or wrapped to report to ``targets``.

    Raises:
        MissingDependencyError: A backend whose package is not installed, with the command.
    """
    if not targets or rank != 0:
        return logger
    run_dir = Path(run_dir)
    made: list[Any] = []
    for t in targets:
        made.append(_TensorBoard(run_dir) if t == "tensorboard" else _WandB(run_dir, config))
    return ReportingLogger(logger, made)
